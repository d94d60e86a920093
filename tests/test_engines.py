"""Engine build plan, TensorRT profiles, the TensorRT builder's error paths and `pack` drops.

One tiny fp16 build (max batch 4) serves every test; tests that need TensorRT and a GPU skip with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from gr00t_export.cli import app
from gr00t_export.errors import InputError, ValidationFailure
from gr00t_export.families.n1_5.synthetic import make_checkpoint
from gr00t_export.pipeline.build import BuildOptions, build
from gr00t_export.pipeline.engines import (
    build_engines,
    check_engine_build,
    compare_backends,
    engine_profiles,
    write_build_plan,
)
from gr00t_export.runtime.runner import ExportedGr00tRunner
from gr00t_export.runtime.tensorrt import NO_TENSORRT
from gr00t_export.spec import load_graph_spec
from gr00t_export.tools.pack import pack
from gr00t_export.util import sha256_file

MAX_BATCH = 4
ENGINE_STAGES = ("vit", "llm", "denoising_subgraph")
SHAPE_FLAGS = ("--minShapes", "--optShapes", "--maxShapes")
POINTS = ("min", "opt", "max")


def _trt_missing() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "needs TensorRT: the tensorrt Python module is not installed here"
    if not torch.cuda.is_available():
        return "needs TensorRT on a CUDA GPU: no GPU visible"
    return None


TRT_MISSING = _trt_missing()
requires_trt = pytest.mark.skipif(TRT_MISSING is not None, reason=TRT_MISSING or "")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("engines")
    ckpt = make_checkpoint(root / "tiny_ckpt", "tiny", 0, show_progress=False)
    out = root / "tiny-fp16"
    build(BuildOptions(model_path=ckpt, output=out, precision="fp16", max_batch=MAX_BATCH, simplify=False))
    return out


def _copy(src: Path, dst: Path, views: int | None = None) -> Path:
    shutil.copytree(src, dst)
    if views is not None:
        manifest = json.loads((dst / "manifest.json").read_text())
        manifest["views"] = views
        (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _parse_plan(script: Path) -> dict[str, list[str]]:
    """`build_engine STAGE ARGS...` commands of the script, backslash continuations joined."""
    text = script.read_text().replace("\\\n", " ")
    commands = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True) if line.startswith("build_engine ") else []
        if words:
            commands[words[1]] = words[2:]
    return commands


def _shapes(arg: str) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in dims.split("x")) for name, dims in
            (item.rsplit(":", 1) for item in arg.split("=", 1)[1].split(","))}


def _expected(root: Path, stage_file: str, views: int) -> dict[str, list[tuple[int, ...]]]:
    """Oracle from the ONNX graph itself: fixed dims as written, symbolic ones from the manifest profile."""
    manifest = json.loads((root / "manifest.json").read_text())
    prof = manifest["profiles"][f"views_{views}"]
    model = onnx.load(str(root / stage_file), load_external_data=False)
    out = {}
    for inp in model.graph.input:
        per_point = []
        for p in POINTS:
            sym = {"batch": prof["batch"][p], "num_images": prof["batch"][p] * views, "seq_len": prof["seq_len"][p]}
            per_point.append(tuple(sym[d.dim_param] if d.dim_param else d.dim_value
                                   for d in inp.type.tensor_type.shape.dim))
        out[inp.name] = per_point
    return out


# ------------------------------------------------------------------------------ the plan


def test_plan_is_valid_bash_and_has_the_flags(built: Path):
    script = write_build_plan(built, "fp16", "thor")
    assert script == built / "engines" / "build_engines.sh" and os.access(script, os.X_OK)
    assert (built / "engines" / "README.md").is_file()
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "set -euo pipefail" in text and "gr00t-export engines . --precision fp16 --target local" in text
    commands = _parse_plan(script)
    assert list(commands) == list(ENGINE_STAGES)
    for stage, args in commands.items():
        assert f"--saveEngine=engines/{stage}.engine" in args
        assert {"--stronglyTyped", "--timingCacheFile=engines/timing.cache", "--memPoolSize=workspace:4096M",
                "--verbose"} <= set(args)
        assert not {"--fp16", "--fp8", "--int8"} & set(args)


@pytest.mark.parametrize("views", [1, 2])
def test_plan_shapes_equal_the_profiles(built: Path, tmp_path: Path, views: int):
    root = _copy(built, tmp_path / "drop", views)
    commands = _parse_plan(write_build_plan(root, "fp16", "thor"))
    spec = load_graph_spec(root / "graph_spec.yaml")
    for stage in ENGINE_STAGES:
        args = {a.split("=", 1)[0]: a for a in commands[stage]}
        assert args["--onnx"] == f"--onnx={spec.stage(stage).file}"
        got = {flag: _shapes(args[flag]) for flag in SHAPE_FLAGS}
        want = _expected(root, spec.stage(stage).file, views)
        assert set(want) == set(spec.stage(stage).input_names)
        for name, points in want.items():
            assert [got[flag][name] for flag in SHAPE_FLAGS] == points, (stage, name)
    llm = {flag: _shapes(a) for a in commands["llm"] for flag in SHAPE_FLAGS if a.startswith(flag)}
    vit = {flag: _shapes(a) for a in commands["vit"] for flag in SHAPE_FLAGS if a.startswith(flag)}
    for flag in SHAPE_FLAGS:  # the LLM takes every image the ViT produces: batch x views (NVIDIA #358)
        assert llm[flag]["vit_embeds"][0] == vit[flag]["pixel_values"][0] == llm[flag]["input_ids"][0] * views
        assert llm[flag]["input_ids"][1] >= views * 256
    assert vit["--minShapes"]["pixel_values"][0] == views
    assert vit["--maxShapes"]["pixel_values"][0] == views * MAX_BATCH


@pytest.mark.parametrize("views", [1, 2])
def test_profiles_are_ordered(built: Path, views: int):
    manifest = json.loads((built / "manifest.json").read_text())
    profiles = engine_profiles(manifest, load_graph_spec(built / "graph_spec.yaml"), views=views)
    assert set(profiles) == set(ENGINE_STAGES)
    for shapes in profiles.values():
        for lo, opt, hi in shapes.values():
            assert len(lo) == len(opt) == len(hi)
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)), (lo, opt, hi)
    assert profiles["llm"]["input_ids"][2][0] == MAX_BATCH


def test_profile_made_for_fewer_views_is_refused(built: Path):
    manifest = json.loads((built / "manifest.json").read_text())
    spec = load_graph_spec(built / "graph_spec.yaml")
    one_view = manifest["profiles"]["views_1"]
    manifest["profiles"]["views_2"] = json.loads(json.dumps(one_view))  # the #358 bug: a 1-view profile
    with pytest.raises(ValidationFailure, match="num_images"):
        engine_profiles(manifest, spec, views=2)
    manifest["profiles"]["views_2"]["num_images"] = {p: 2 * v for p, v in one_view["batch"].items()}
    with pytest.raises(ValidationFailure, match="image tokens"):
        engine_profiles(manifest, spec, views=2)
    assert manifest["profiles"]["views_3"]["num_images"]["opt"] == 3  # 3 cameras (panda, DROID, Genie-1)
    with pytest.raises(InputError, match="no TensorRT profile for 4 view"):
        engine_profiles(manifest, spec, views=4)


def test_plan_precision_must_match_the_graphs(built: Path, tmp_path: Path):
    with pytest.raises(InputError, match="need a fp32 build, this one is fp16"):
        write_build_plan(built, "fp32", "thor")
    with pytest.raises(InputError, match="no FP8 graph"):
        write_build_plan(built, "fp8", "thor")
    root = _copy(built, tmp_path / "drop")
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps(manifest | {"precision": "fp32"}))
    with pytest.raises(InputError, match="fp8 engines need an fp8 build"):
        write_build_plan(root, "fp8", "thor")
    with pytest.raises(InputError, match="--target"):
        write_build_plan(built, "fp16", "orin")


def _add_fake_fp8_vit(root: Path) -> str:
    """eagle2/vit_fp8.onnx: the vit graph with an FP8 Q/DQ pair on its input, recorded in the manifest."""
    model = onnx.load(str(root / "eagle2" / "vit.onnx"))
    x = model.graph.input[0].name
    for node in model.graph.node:
        node.input[:] = [f"{x}_dq" if i == x else i for i in node.input]
    model.graph.initializer.extend([numpy_helper.from_array(np.array(1.0, np.float16), "fp8_scale"),
                                    helper.make_tensor("fp8_zero", TensorProto.FLOAT8E4M3FN, [], [0])])
    qdq = [helper.make_node("QuantizeLinear", [x, "fp8_scale", "fp8_zero"], [f"{x}_q"]),
           helper.make_node("DequantizeLinear", [f"{x}_q", "fp8_scale", "fp8_zero"], [f"{x}_dq"])]
    for i, node in enumerate(qdq):
        model.graph.node.insert(i, node)
    rel = "eagle2/vit_fp8.onnx"
    onnx.save(model, str(root / rel))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"].append({"path": rel, "sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size})
    (root / "manifest.json").write_text(json.dumps(manifest))
    return rel


def test_fp8_build_plan_takes_its_stage_graphs(built: Path, tmp_path: Path):
    """An fp8 build quantises in place: the plan builds the stage files themselves."""
    root = _copy(built, tmp_path / "drop")
    rel = _add_fake_fp8_vit(root)
    (root / rel).replace(root / "eagle2" / "vit.onnx")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if f["path"] != rel]
    for entry in manifest["files"]:
        if entry["path"] == "eagle2/vit.onnx":
            entry.update(sha256=sha256_file(root / entry["path"]), size=(root / entry["path"]).stat().st_size)
    (root / "manifest.json").write_text(json.dumps(manifest | {"precision": "fp8"}))
    commands = _parse_plan(write_build_plan(root, "fp8", "thor"))
    assert "--onnx=eagle2/vit.onnx" in commands["vit"]
    assert "FP8 Q/DQ" in (root / "engines" / "README.md").read_text()
    with pytest.raises(InputError, match="need a fp16 build, this one is fp8"):
        write_build_plan(root, "fp16", "thor")


def test_fp8_copies_in_an_fp16_build(built: Path, tmp_path: Path):
    root = _copy(built, tmp_path / "drop")
    (root / "eagle2" / "vit_fp8.onnx").write_bytes(b"not recorded")
    with pytest.raises(InputError, match="not recorded in manifest.json"):
        write_build_plan(root, "fp8", "thor")
    rel = _add_fake_fp8_vit(root)
    script = write_build_plan(root, "fp8", "thor")
    commands = _parse_plan(script)
    assert f"--onnx={rel}" in commands["vit"] and "--stronglyTyped" in commands["vit"]
    assert "--onnx=eagle2/llm.onnx" in commands["llm"]  # no FP8 copy: the fp16 graph
    assert "FP8 Q/DQ (2 Q/DQ nodes)" in script.read_text()


def test_plan_runs_from_its_own_dir_with_a_stub_trtexec(built: Path, tmp_path: Path):
    root = _copy(built, tmp_path / "drop")
    script = write_build_plan(root, "fp16", "thor")
    stub = tmp_path / "trtexec"
    stub.write_text('#!/usr/bin/env bash\nfor a in "$@"; do case $a in --saveEngine=*) out=${a#--saveEngine=};; '
                    'esac; done\necho "$@" >> "$STUB_LOG"\necho engine > "$out"\n')
    stub.chmod(0o755)
    env = {**os.environ, "TRTEXEC": str(stub), "STUB_LOG": str(tmp_path / "calls.log")}
    proc = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 3 and all("--useCudaGraph" in c and "--separateProfileRun" in c for c in calls)
    for stage in ENGINE_STAGES:
        assert (root / "engines" / f"{stage}.engine").is_file() and (root / "engines" / f"{stage}.build.log").is_file()
    # a changed ONNX file stops the plan before trtexec runs
    with open(root / "eagle2" / "llm.onnx", "ab") as fh:
        fh.write(b"\0")
    proc = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "differ from manifest.json" in proc.stderr
    # TRTEXEC names no executable (a trtexec on PATH or in JetPack's folder is then never looked for): a clear
    # message, exit 2, and nothing built
    (root / "engines" / "vit.engine").unlink()
    env = {**os.environ, "TRTEXEC": str(tmp_path / "no_such_dir" / "trtexec")}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "trtexec not found" in proc.stderr and "TRTEXEC=" in proc.stderr, proc.stderr
    assert not (root / "engines" / "vit.engine").exists()


# ------------------------------------------------------------------------------ the TensorRT builder


def test_build_engines_without_tensorrt_is_a_clear_input_error(built: Path, tmp_path: Path):
    root = _copy(built, tmp_path / "drop")
    with pytest.raises(InputError) as err:
        build_engines(root, "fp16", trt_module="tensorrt_not_installed_here")
    assert str(err.value) == NO_TENSORRT and "pip install gr00t-export[tensorrt]" in str(err.value)
    assert (root / "engines" / "build_engines.sh").is_file()  # the message's promise holds
    with pytest.raises(InputError, match="TensorRT is not installed"):
        check_engine_build(root / "eagle2" / "vit.onnx", trt_module="tensorrt_not_installed_here")


def test_polygraphy_log_goes_to_the_file_only(tmp_path: Path, capsys):
    """The builder log (Polygraphy's logger, which TensorRT's messages go through) lands in the build log, errors are
    collected for the report, and nothing reaches the console; the logger is restored afterwards."""
    from polygraphy.logger import G_LOGGER

    from gr00t_export.runtime.tensorrt import polygraphy_log

    log = tmp_path / "engines" / "vit.build.log"
    before = (G_LOGGER.use_python_logging_system, G_LOGGER.colors)
    with polygraphy_log(log) as errors:
        G_LOGGER.extra_verbose("[TRT] tactic 0x1 took 1.0 ms")  # TensorRT's VERBOSE level
        G_LOGGER.error("In node 3 (MatMul): unsupported type")
    assert "tactic 0x1" in log.read_text() and "unsupported type" in log.read_text()
    assert errors == [e for e in errors if "unsupported type" in e] and len(errors) == 1
    assert capsys.readouterr() == ("", "")
    assert (G_LOGGER.use_python_logging_system, G_LOGGER.colors) == before


def test_polygraphy_backend_needs_tensorrt():
    from gr00t_export.runtime.tensorrt import polygraphy_trt

    with pytest.raises(InputError) as err:
        polygraphy_trt("tensorrt_not_installed_here")
    assert str(err.value) == NO_TENSORRT


@pytest.mark.skipif(TRT_MISSING is None, reason="TensorRT and a GPU are present: nothing is missing to report")
def test_cli_engines_without_tensorrt_exits_2_with_one_line(built: Path, tmp_path: Path):
    root = _copy(built, tmp_path / "drop")
    result = CliRunner().invoke(app, ["engines", str(root), "--precision", "fp16", "--target", "local"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    assert "pip install gr00t-export[tensorrt]" in lines[0] or "no CUDA GPU" in lines[0]
    result = CliRunner().invoke(app, ["engines", str(root), "--precision", "fp16", "--target", "thor"])
    assert result.exit_code == 0 and "build_engines.sh" in result.output


def test_runner_backend_argument(built: Path, tmp_path: Path):
    with pytest.raises(InputError, match="unknown backend"):
        ExportedGr00tRunner(built, backend="torch")
    with pytest.raises(InputError, match="engines/vit.engine, engines/llm.engine"):
        ExportedGr00tRunner(built, device="cuda", backend="trt")
    with_engines = _copy(built, tmp_path / "drop")
    (with_engines / "engines").mkdir(exist_ok=True)
    for stage in ENGINE_STAGES:
        (with_engines / "engines" / f"{stage}.engine").write_bytes(b"x")
    with pytest.raises(InputError, match="on CUDA; pass --device cuda"):
        ExportedGr00tRunner(with_engines, device="cpu", backend="trt")


@requires_trt
def test_build_engines_and_run_them(built: Path, tmp_path: Path):
    root = _copy(built, tmp_path / "drop")
    reports = build_engines(root, "fp16", workspace_mb=1024, log=lambda m: None)
    assert [r.stage for r in reports] == list(ENGINE_STAGES) and all(r.ok for r in reports), reports
    assert all((root / r.engine).stat().st_size == r.size_bytes for r in reports)
    assert (root / "engines" / "timing.cache").is_file() and (root / "engines" / "build_report.json").is_file()
    diffs = compare_backends(root)
    assert all(d["cosine"] > 0.99 for d in diffs.values()), diffs


@requires_trt
def test_check_engine_build(built: Path):
    ok, seconds, errors = check_engine_build(built / "eagle2" / "vit.onnx", trt_module="tensorrt")
    assert ok and seconds > 0 and errors == []


@requires_trt
def test_build_reports_profile_errors_and_the_runner_matches_onnxruntime(built: Path, tmp_path: Path):
    from gr00t_export.pipeline.engines import _build, profiles_for_onnx
    from gr00t_export.runtime.runner import OnnxStageRunner
    from gr00t_export.runtime.tensorrt import TrtStageRunner

    vit = built / "eagle2" / "vit.onnx"
    profiles = profiles_for_onnx(vit)
    check, _ = _build("tensorrt", vit, {"no_such_input": next(iter(profiles.values()))}, 1024, tmp_path / "bad.log")
    assert not check.ok and "profile names inputs the network lacks" in check.errors[0]
    engine = tmp_path / "vit.engine"
    check, size = _build("tensorrt", vit, profiles, 1024, tmp_path / "vit.log", tmp_path / "timing.cache", engine)
    assert check.ok and engine.stat().st_size == size and (tmp_path / "timing.cache").is_file()
    assert "Building engine" in (tmp_path / "vit.log").read_text()  # Polygraphy's builder log, in the file
    spec = load_graph_spec(built / "graph_spec.yaml").stage("vit")
    lo = profiles[spec.input_names[0]][0]
    feeds = {spec.input_names[0]: torch.randn(lo).half()}
    want = OnnxStageRunner(vit, spec, ["CPUExecutionProvider"]).infer(feeds)
    runner = TrtStageRunner(engine, spec)
    got = runner.infer({k: v.cuda() for k, v in feeds.items()})
    for name in spec.output_names:
        x, y = got[name].float().cpu(), torch.as_tensor(want[name]).float()
        assert torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0) > 0.999
    with pytest.raises(ValidationFailure, match="wider profile"):
        hi = profiles[spec.input_names[0]][2]
        runner.infer({spec.input_names[0]: torch.randn(hi[0] + 1, *hi[1:]).half().cuda()})
    runner.close()


# ------------------------------------------------------------------------------ pack


def test_pack_holds_every_file_and_runs_the_same(built: Path, tmp_path: Path):
    root = _copy(built, tmp_path / "drop")
    (root / "validation").mkdir()
    (root / "validation" / "report.json").write_text("{}")
    (root / "igg").mkdir(exist_ok=True)  # the build may emit its IGG config there already
    (root / "igg" / "notes.txt").write_text("not in the manifest, packed with igg/\n")
    (root / "engines").mkdir(exist_ok=True)
    (root / "engines" / "vit.engine").write_bytes(b"built for another GPU")
    with pytest.raises(InputError, match="has not passed a full validation"):  # no validation_report.json
        pack(root, "thor", "fp16", tmp_path / "dist")
    out = pack(root, "thor", "fp16", tmp_path / "dist", allow_unvalidated=True)
    assert out == tmp_path / "dist" / "tiny_ckpt-gr1-fp16-thor.tar.gz"
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # nothing temporary left
    manifest = json.loads((root / "manifest.json").read_text())
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "unpacked", filter="data")
    prefix = "tiny_ckpt-gr1-fp16-thor/"
    want = {f["path"] for f in manifest["files"]} | {"manifest.json", "engines/build_engines.sh", "engines/README.md",
                                                     "README_TARGET.md", "validation/report.json", "igg/notes.txt",
                                                     "pack.json"}
    assert {n.removeprefix(prefix) for n in names if not n.endswith("/")} == want
    drop = tmp_path / "unpacked" / prefix
    assert os.access(drop / "engines" / "build_engines.sh", os.X_OK)
    readme = (drop / "README_TARGET.md").read_text()
    assert readme.index("tar -xzf") < readme.index("build_engines.sh") < readme.index("compare_backends") \
        < readme.index("serve")
    subprocess.run(["bash", "-n", str(drop / "engines" / "build_engines.sh")], check=True)

    # the unpacked drop loads (hash-checked) and gives the original dir's actions, bit for bit
    diffs = compare_backends(drop, candidate=("ort", "cpu"), reference=("ort", "cpu"), reference_dir=built, seed=3)
    spec = json.loads((built / "manifest.json").read_text())["modality_config"]
    assert set(diffs) == set(spec["action_keys"])
    assert all(d["max_abs_diff"] == 0.0 and d["cosine"] == pytest.approx(1.0) for d in diffs.values()), diffs


def test_pack_refuses_a_tampered_drop(built: Path, tmp_path: Path):
    root = _copy(built, tmp_path / "drop")
    with open(root / "preprocess" / "preprocess_video.pt", "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 1]))
    dist = tmp_path / "dist"
    with pytest.raises(ValidationFailure, match="preprocess_video.pt does not match"):
        pack(root, "thor", None, dist)
    assert not dist.exists() or not any(dist.iterdir())
    result = CliRunner().invoke(app, ["pack", str(root), "--dist", str(dist)])
    assert result.exit_code == 1 and "does not match its manifest sha256" in result.output
