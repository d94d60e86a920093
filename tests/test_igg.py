"""The IGG config: emitted by every build, parseable, sound (DAG, fed, hashed), and run by LEAPP's own runtime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from gr00t_export.errors import InputError
from gr00t_export.families.base import make_noise
from gr00t_export.families.n1_5.family import example_observation
from gr00t_export.families.n1_5.partition import graph_spec_path
from gr00t_export.families.n1_5.synthetic import make_checkpoint
from gr00t_export.pipeline.build import BuildOptions, build
from gr00t_export.pipeline.igg import LEAPP_DTYPES, check_igg_config, emit_igg_config, load_igg_config
from gr00t_export.spec import load_graph_spec
from gr00t_export.util import sha256_file

REPO = Path(__file__).resolve().parents[1]
NAME = "gr00t_n1_5_gr1_fp32"


@pytest.fixture(scope="module")
def drop(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny fp32 build (the build itself emits the config) and its checkpoint."""
    root = tmp_path_factory.mktemp("igg")
    ckpt = make_checkpoint(root / "ckpt", "tiny", seed=0, show_progress=False)
    build(BuildOptions(model_path=ckpt, output=root / "drop"))
    return root / "drop", ckpt


@pytest.fixture
def copy(drop, tmp_path) -> Path:
    """A private copy of the drop a test may tamper with."""
    return Path(shutil.copytree(drop[0], tmp_path / "drop"))


def test_build_emits_a_config_that_parses_in_leapp_layout(drop):
    root, _ = drop
    path = root / "igg" / f"{NAME}.yaml"
    text = path.read_text()
    doc = yaml.safe_load(text)
    assert list(doc) == ["models", "pipeline", "pre_graph", "system information"]
    assert "!!python" not in text and "---" not in text  # plain data, one document
    assert "shape: [1, 3, 224, 224]" in text  # flow-style shapes, as LEAPP writes them
    spec = load_graph_spec(graph_spec_path())
    assert list(doc["models"]) == [s.name for s in spec.stages if s.name != "eagle2_tokenizer"]
    assert doc["system information"]["leapp config version"] == "1.3"
    for node in doc["models"].values():
        for port in (*node["inputs"], *node["outputs"]):
            assert port["type"] == "tensor" and port["dtype"] in LEAPP_DTYPES
            assert all(isinstance(d, int) for d in port["shape"])
        for port in node["inputs"]:
            assert "source" in port
        assert node["parameters"]["warp_segments"] == 0 and len(node["parameters"]["sha256sum"]) == 64
    # the YAML and its sidecars are hashed in the manifest with everything else
    files = {f["path"]: f["sha256"] for f in json.loads((root / "manifest.json").read_text())["files"]}
    for rel in (f"igg/{NAME}.yaml", f"igg/{NAME}_timings.json", "igg/postprocess_outputs.pt"):
        assert files[rel] == sha256_file(root / rel)


def test_ports_carry_profile_shapes_semantics_and_sources(drop):
    root, _ = drop
    doc = load_igg_config(root / "igg" / f"{NAME}.yaml")
    manifest = json.loads((root / "manifest.json").read_text())
    models, pipeline = doc["models"], doc["pipeline"]
    opt = manifest["profiles"]["views_1"]["seq_len"]["opt"]
    llm_in = {p["name"]: p for p in models["llm"]["inputs"]}
    assert [p["name"] for p in models["llm"]["inputs"]] == ["input_ids", "vit_embeds", "attention_mask"]
    assert llm_in["input_ids"]["shape"] == [1, opt] and llm_in["input_ids"]["symbolic_shape"] == ["batch", "seq_len"]
    assert llm_in["input_ids"]["source"] == "eagle2_tokenizer/input_ids"
    assert llm_in["vit_embeds"]["source"] == "vit/vit_embeds"
    frames = models["preprocess_video"]["inputs"]
    assert [(p["name"], p["shape"], p["source"], p["camera"]) for p in frames] == [
        ("frames_0", [1, 1, 256, 256, 3], "frames_0", "video.ego_view")]
    raw_state = models["preprocess_state_action"]["inputs"][0]
    assert raw_state["kind"] == "state/joint/position" and raw_state["source"] == "raw_state"
    assert raw_state["element_names"][:2] == [None, None] and raw_state["element_names"][2][0] == "left_arm_0"
    assert len(raw_state["element_names"][2]) == raw_state["shape"][-1] == 26
    outs = models["postprocess"]["outputs"]
    assert [o["name"] for o in outs] == manifest["modality_config"]["action_keys"]
    for o in outs:
        assert o["kind"] == "target/joint/position" and o["temporal_period_ms"] == 50.0
        assert o["element_names"][:2] == [None, "__temporal_axis__"] and len(o["element_names"][2]) == o["shape"][-1]
        assert o["shape"][:2] == [1, 16]
    assert "feedback_flow" not in pipeline  # the Euler loop is inside denoising_subgraph.onnx
    assert pipeline["inputs"]["denoising_subgraph"] == ["backbone_attention_mask", "init_actions"]
    assert pipeline["data_flow"]["vit/vit_embeds"] == ["llm/vit_embeds"]
    configs = pipeline["configs"]
    assert configs["frequency"] == 20.0 and configs["denoising_steps"] == 4 and configs["action_horizon"] == 16
    tok = doc["pre_graph"]["eagle2_tokenizer"]
    assert tok["inputs"][0]["dtype"] == "string"
    assert tok["feeds"]["attention_mask"] == ["llm/attention_mask", "denoising_subgraph/backbone_attention_mask"]


def test_timings_sidecar_measured_then_taken_from_the_validation_report(drop, copy):
    root, _ = drop
    doc = load_igg_config(root / "igg" / f"{NAME}.yaml")
    sidecar = json.loads((root / "igg" / doc["pipeline"]["configs"]["timings_file"]).read_text())
    assert sidecar["source"] == "measured_cpu"
    assert set(sidecar["stage_timings_ms"]) == {s.name for s in load_graph_spec(graph_spec_path()).stages}
    (copy / "validation").mkdir()
    (copy / "validation" / "validation_report.json").write_text(json.dumps({"stage_timings_ms": {"vit": 1.5}}))
    path = emit_igg_config(copy, name="custom", frequency_hz=50.0, measure_timings=False)
    assert path == copy / "igg" / "custom.yaml"
    sidecar = json.loads((copy / "igg" / "custom_timings.json").read_text())
    assert sidecar == {**sidecar, "source": "validation_report", "stage_timings_ms": {"vit": 1.5}}
    doc = load_igg_config(path)
    assert doc["models"]["postprocess"]["outputs"][0]["temporal_period_ms"] == 20.0
    assert check_igg_config(path) == []


def test_emit_rejects_bad_arguments(drop, tmp_path):
    with pytest.raises(InputError, match="frequency"):
        emit_igg_config(drop[0], frequency_hz=0)
    with pytest.raises(InputError, match="plain file name"):
        emit_igg_config(drop[0], name="../elsewhere")
    with pytest.raises(InputError, match="does not exist"):
        emit_igg_config(tmp_path / "nothing")


def test_a_tensorrt_engine_replaces_its_onnx_stage(copy):
    (copy / "engines").mkdir()
    (copy / "engines" / "vit.engine").write_bytes(b"not really an engine")
    doc = load_igg_config(emit_igg_config(copy, measure_timings=False))
    params = doc["models"]["vit"]["parameters"]
    assert params["backend"] == "trt" and params["model_path"] == "../engines/vit.engine"
    assert params["onnx_model_path"] == "../eagle2/vit.onnx" and params["sha256sum"] == sha256_file(
        copy / "engines" / "vit.engine")
    assert doc["models"]["llm"]["parameters"]["backend"] == "onnx"
    assert check_igg_config(copy / "igg" / f"{NAME}.yaml") == []


def test_check_passes_on_the_emitted_config(drop):
    assert check_igg_config(drop[0] / "igg" / f"{NAME}.yaml") == []


def test_check_fails_on_a_tampered_or_missing_artifact(copy):
    path = copy / "igg" / f"{NAME}.yaml"
    with open(copy / "eagle2" / "vit.onnx", "ab") as fh:
        fh.write(b"\0")
    (copy / "preprocess" / "preprocess_video.pt").unlink()
    problems = check_igg_config(path)
    assert any("vit.onnx does not match its sha256sum" in p for p in problems), problems
    assert any("preprocess_video.pt does not exist" in p for p in problems), problems


def test_check_fails_on_a_removed_edge_a_cycle_and_bad_yaml(copy):
    path = copy / "igg" / f"{NAME}.yaml"
    doc = load_igg_config(path)
    del doc["pipeline"]["data_flow"]["vit/vit_embeds"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    problems = check_igg_config(path)
    assert "input llm/vit_embeds is fed by nothing (no data_flow edge, not a pipeline input)" in problems
    assert "output vit/vit_embeds goes nowhere (no edge, not a pipeline output)" in problems

    doc = load_igg_config(path)
    doc["pipeline"]["data_flow"]["vit/vit_embeds"] = ["llm/vit_embeds"]
    doc["models"] = dict(reversed(list(doc["models"].items())))  # right edges, wrong execution order
    doc["pipeline"]["data_flow"]["postprocess/action.left_arm"] = ["preprocess_video/frames_0"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    problems = check_igg_config(path)
    assert any("points backwards" in p for p in problems), problems
    assert any("cycle" in p for p in problems), problems
    assert any("preprocess_video/frames_0 is fed more than once" in p for p in problems), problems

    path.write_text("models: [unclosed")
    assert "not valid YAML" in check_igg_config(path)[0]
    path.write_text("models: {}\n")
    assert "lacks pipeline, system information" in check_igg_config(path)[0]


# --- conformance with LEAPP's own runtime --------------------------------------------------------------

def leapp_python() -> str:
    """A python that imports leapp: this one, else the cached .venv-leapp made by tests/leapp_env.sh."""
    probe = subprocess.run([sys.executable, "-c", "import leapp"], capture_output=True)
    if probe.returncode == 0:
        return sys.executable
    if os.environ.get("GR00T_EXPORT_NO_LEAPP_INSTALL"):
        pytest.skip("leapp is not importable and GR00T_EXPORT_NO_LEAPP_INSTALL is set")
    made = subprocess.run(["bash", str(REPO / "tests" / "leapp_env.sh"), sys.executable], capture_output=True,
                          text=True, timeout=900)
    if made.returncode != 0:
        tail = " ".join(made.stderr.strip().splitlines()[-3:])
        pytest.skip(f"could not install leapp==0.7.2 into .venv-leapp (no PyPI access?): {tail}")
    return made.stdout.strip().splitlines()[-1]


def test_leapp_inference_manager_reproduces_the_reference_policy(drop, tmp_path):
    from gr00t_export.families import open_reference

    root, ckpt = drop
    policy = open_reference(ckpt)
    obs = example_observation(policy.transforms.modality, policy.transforms.metadata, None)
    obs[policy.interface.language_key] = np.array(["wave at the camera"])  # a prompt length other than opt
    expected = policy.get_action(obs, seed=7)
    from gr00t_export.runtime.runner import ExportedGr00tRunner

    raw = ExportedGr00tRunner(root).reader(obs)
    arrays = {k: np.asarray(v) for k, v in raw.external.items()}  # instructions: a str array
    np.savez(tmp_path / "in.npz", **arrays,
             init_actions=make_noise((raw.batch, *policy.interface.noise_shape), None, 7).numpy())
    python = leapp_python()
    run = subprocess.run([python, str(REPO / "tests" / "leapp_conformance.py"), str(root / "igg" / f"{NAME}.yaml"),
                          str(tmp_path / "in.npz"), str(tmp_path / "out.npz")], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    assert float(got["tick_diff"]) == 0.0  # no state leaks between ticks, reset() included
    worst = max(float(np.abs(got[k][0] - v).max()) for k, v in expected.items())
    print(f"leapp InferenceManager vs ReferencePolicy: max |diff| = {worst:.3g}")
    assert worst <= 1e-4
