"""GR00T N1.6 through the real command line, as a user runs it on the CPU machine: make-checkpoint (n1.6-tiny) and
make-dataset (N1.6's GR1 config), build (fp32, fp16 with onnxruntime ops and fp8, validated on the dataset),
predict on both sides, validate, engines (the on-target plan), pack, bench, and serve to both dialects' clients."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from serving import serving
from typer.testing import CliRunner

from gr00t_export.cli import app
from gr00t_export.data.lerobot import LeRobotDataset
from gr00t_export.runtime.runner import ExportedGr00tRunner
from gr00t_export.serve import Client, PolicyClient, to_current_observation

STAGE_FILES = ("preprocess/preprocess_video.pt", "preprocess/preprocess_state_action.pt",
               "preprocess/eagle2_tokenizer.pt", "eagle2/vit.onnx", "eagle2/llm.onnx",
               "action_head/denoising_subgraph.onnx", "postprocess/postprocess_modules.pt")
GR1_ACTIONS = {"action.left_arm": 7, "action.right_arm": 7, "action.left_hand": 6, "action.right_hand": 6,
               "action.waist": 3}
runner = CliRunner()


def _cli(args: list[str], code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def drop(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("n16cli")
    _cli(["make-checkpoint", root / "ckpt", "--preset", "n1.6-tiny", "--seed", "3"])
    _cli(["make-dataset", root / "ds", "--modality_config", "gr00t_n1_6:gr1"])
    result = _cli(["build", "--model_path", root / "ckpt", "--embodiment_tag", "gr1", "--dataset_path", root / "ds",
                   "--output", root / "fp32"])
    assert "validation PASSED" in result.output
    return {"root": root, "ckpt": root / "ckpt", "ds": root / "ds", "fp32": root / "fp32"}


def test_build_writes_every_stage_and_an_n16_igg_config(drop):
    out = drop["fp32"]
    for rel in STAGE_FILES:
        assert (out / rel).stat().st_size > 0, rel
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["family"] == "gr00t_n1_6"
    assert manifest["interface"]["action_dims"] == GR1_ACTIONS
    report = json.loads((out / "validation" / "validation_report.json").read_text())
    assert report["passed"] and report["mode"] == "full"
    igg = yaml.safe_load((out / "igg" / "gr00t_n1_6_gr1_fp32.yaml").read_text())
    files = json.dumps(igg)
    for rel in ("eagle2/vit.onnx", "eagle2/llm.onnx", "action_head/denoising_subgraph.onnx"):
        assert rel in files


def test_predict_exported_matches_the_reference(drop):
    root = drop["root"]
    step = ["--dataset_path", drop["ds"], "--episode", "1", "--step", "7"]
    _cli(["predict", "--artifacts", drop["fp32"], *step, "--out", root / "exported.npz"])
    _cli(["predict", "--model_path", drop["ckpt"], "--embodiment_tag", "gr1", *step, "--out", root / "ref.npz"])
    exported, ref = np.load(root / "exported.npz"), np.load(root / "ref.npz")
    assert set(exported.files) == set(GR1_ACTIONS)
    for key, width in GR1_ACTIONS.items():
        assert exported[key].shape == (16, width)
        np.testing.assert_allclose(exported[key], ref[key], atol=2e-5, err_msg=key)
    assert np.abs(ref["action.left_arm"]).max() > 1e-3  # not a vacuous zero chunk


def test_validate_passes_and_catches_a_flipped_byte(drop, tmp_path: Path):
    import shutil

    copy = tmp_path / "drop"
    shutil.copytree(drop["fp32"], copy)
    _cli(["validate", copy, "--model_path", drop["ckpt"], "--dataset_path", drop["ds"], "--num_steps", "4",
          "--junit", tmp_path / "j.xml"])
    assert "failures=\"0\"" in (tmp_path / "j.xml").read_text()
    llm = copy / "eagle2" / "llm.onnx"
    data = bytearray(llm.read_bytes())
    data[len(data) // 2] ^= 0xFF
    llm.write_bytes(bytes(data))
    result = _cli(["validate", copy, "--model_path", drop["ckpt"], "--dataset_path", drop["ds"], "--num_steps", "4"],
                  code=1)
    assert "llm.onnx" in result.output


def test_fp16_build_validates_and_matches_the_reference(drop):
    """fp16 in the onnxruntime dialect (fused attention, RoPE, GELU: the GPU form); the standard dialect's fp16 path is
    the one N1.5's fp16 tests cover (3.9e-4 here when last run both ways)."""
    root, onnx_ops = drop["root"], "onnxruntime"
    out = root / f"fp16_{onnx_ops}"
    result = _cli(["build", "--model_path", drop["ckpt"], "--embodiment_tag", "gr1", "--dataset_path", drop["ds"],
                   "--precision", "fp16", "--onnx_ops", onnx_ops, "--output", out])
    assert "validation PASSED" in result.output
    step = ["--dataset_path", drop["ds"], "--episode", "0", "--step", "3"]
    _cli(["predict", "--artifacts", out, *step, "--out", root / f"{onnx_ops}.npz"])
    _cli(["predict", "--model_path", drop["ckpt"], "--embodiment_tag", "gr1", *step, "--out", root / "ref16.npz"])
    exported, ref = np.load(root / f"{onnx_ops}.npz"), np.load(root / "ref16.npz")
    diff = max(float(np.abs(exported[k] - ref[k]).max()) for k in GR1_ACTIONS)
    print(f"N1.6 tiny fp16 ({onnx_ops} ops) vs the fp32 reference: max abs {diff:.3g}")
    assert 0 < diff < 2e-2  # fp16 rounding, not fp32 agreement and not a broken stage


def test_fp8_build_engine_plan_and_pack(drop):
    root = drop["root"]
    result = _cli(["build", "--model_path", drop["ckpt"], "--embodiment_tag", "gr1", "--dataset_path", drop["ds"],
                   "--precision", "fp8", "--calib_steps", "8", "--output", root / "fp8"])
    assert "validation PASSED" in result.output
    manifest = json.loads((root / "fp8" / "manifest.json").read_text())
    assert {s["name"] for s in manifest["stages"] if s["precision"] == "fp8"} == {"vit", "llm", "denoising_subgraph"}
    _cli(["engines", root / "fp8", "--precision", "fp8", "--target", "thor"])
    plan = (root / "fp8" / "engines" / "build_engines.sh").read_text()
    for name in ("vit", "llm", "denoising_subgraph"):
        assert f"{name}.onnx" in plan
    _cli(["pack", root / "fp8", "--target", "thor", "--precision", "fp8", "--dist", root / "dist"])
    (tarball,) = (root / "dist").glob("*-gr1-fp8-thor.tar.gz")
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert any(n.endswith("action_head/denoising_subgraph.onnx") for n in names)


def test_bench_times_the_reference_and_the_drop(drop, tmp_path: Path):
    _cli(["bench", drop["fp32"], "--model_path", drop["ckpt"], "--backends", "torch,ort", "--device", "cpu",
          "--iters", "2", "--warmup", "1", "--json", tmp_path / "bench.json"])
    timings = json.loads((tmp_path / "bench.json").read_text())
    assert {r["backend"] for r in timings["results"]} == {"torch", "ort"}
    for result in timings["results"]:
        assert not result["note"].startswith("failed"), result["note"]
        assert result["end_to_end"]["median_ms"] > 0 and set(result["stages"]) >= {"vit", "llm", "denoising_subgraph"}


def test_serve_answers_both_dialects_as_the_drop_does(drop):
    policy = ExportedGr00tRunner(drop["fp32"])
    obs = LeRobotDataset(drop["ds"]).observation(0, 5, policy.interface)
    direct = policy.get_action(obs, seed=0)
    with serving(policy) as (server, _):
        with PolicyClient("127.0.0.1", server.port, timeout_ms=60000) as client:
            configs = client.get_modality_config()
            action, _ = client.get_action(to_current_observation(obs))
        with Client("127.0.0.1", server.port, timeout_ms=60000) as client:
            flat = client.get_action(obs)
    assert set(configs) >= {"video", "state", "action"}
    for key, width in GR1_ACTIONS.items():
        short = key.split(".", 1)[1]
        assert action[short].shape == (1, 16, width)
        np.testing.assert_allclose(action[short][0], direct[key], atol=1e-6, err_msg=key)
        np.testing.assert_allclose(flat[key], direct[key], atol=1e-6, err_msg=key)
