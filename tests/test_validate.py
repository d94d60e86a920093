"""`gr00t-export validate`: clean builds pass every tier; each kind of damage fails the tier meant to catch it,
naming the stage or file; reports agree with the exit code; the CLI maps outcomes to 0/1/2."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from xml.etree import ElementTree

import onnx
import pytest
import torch
import yaml
from onnx import numpy_helper
from typer.testing import CliRunner

from gr00t_export.cli import app
from gr00t_export.data.synthetic import make_dataset
from gr00t_export.families.n1_5.embodiments import load_modality_config
from gr00t_export.families.n1_5.synthetic import make_checkpoint
from gr00t_export.pipeline.build import BuildOptions, build
from gr00t_export.pipeline.validate import (
    Reporter,
    Tolerance,
    ValidationReport,
    compare_tensors,
    default_suite_path,
    load_suite,
    validate,
)
from gr00t_export.pipeline.validate.plots import COMPARISON_SIZE, DPI, OVERVIEW_FILES, OVERVIEW_SIZE
from gr00t_export.util import sha256_file

STAGES = ["preprocess_video", "preprocess_state_action", "eagle2_tokenizer", "vit", "llm", "denoising_subgraph",
          "postprocess"]
ACTION_KEYS = ["action.left_arm", "action.right_arm", "action.left_hand", "action.right_hand"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("validate")


@pytest.fixture(scope="module")
def checkpoint(work: Path) -> Path:
    return make_checkpoint(work / "ckpt", "tiny", 0, "gr1", "fourier_gr1_arms_only", show_progress=False)


@pytest.fixture(scope="module")
def synthetic(work: Path) -> Path:
    return make_dataset(work / "synthetic", load_modality_config("fourier_gr1_arms_only"))


@pytest.fixture(scope="module")
def builds(work: Path, checkpoint: Path, synthetic: Path) -> dict[str, Path]:
    """One fp32 and one fp16 build of the tiny checkpoint, shared by every test (never modified in place)."""
    out, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny preset: one thread avoids contention on small shared CI machines
    try:
        for precision in ("fp32", "fp16"):
            result = build(BuildOptions(model_path=checkpoint, output=work / f"build_{precision}",
                                        precision=precision, dataset_path=synthetic))
            out[precision] = result.output
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def quick_suite(work: Path) -> Path:
    """Few steps and no plots (laid over the default suite): for the damage tests, which need one tier to fail."""
    path = work / "quick.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "num_steps": 2, "per_module": {"num_steps": 1},
                                    "determinism": {"num_steps": 1}, "plots": {"enabled": False}}))
    return path


def copy_build(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("validation"))
    return dst


def rehash(artifact_dir: Path) -> None:
    """Re-signs the manifest after a deliberate edit, so only the checks after integrity can catch it."""
    path = artifact_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    for entry in manifest["files"]:
        f = artifact_dir / entry["path"]
        entry["sha256"], entry["size"] = sha256_file(f), f.stat().st_size
    path.write_text(json.dumps(manifest, indent=2))


def pixel_size(figsize: tuple[float, float]) -> tuple[int, int]:
    """(width, height) in pixels of a PNG the validation plots save."""
    return round(figsize[0] * DPI), round(figsize[1] * DPI)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def assert_reports_agree(report: ValidationReport, json_path: Path, junit_path: Path | None = None) -> dict:
    data = json.loads(json_path.read_text())
    assert data["passed"] is report.passed and data["exit_code"] == report.exit_code == (0 if report.passed else 1)
    statuses = {c["name"]: c["status"] for c in data["checks"]}
    assert statuses == {c.name: c.status for c in report.checks}
    assert data["summary"]["failed"] == sum(s == "failed" for s in statuses.values())
    if junit_path is not None:
        root = ElementTree.parse(junit_path).getroot()
        cases = root.findall(".//testcase")
        assert {c.get("name") for c in cases} == set(statuses)
        failed = {c.get("name") for c in cases if c.find("failure") is not None}
        assert failed == {n for n, s in statuses.items() if s == "failed"}
        assert int(root.get("failures")) == len(failed)
        assert (int(root.get("failures")) == 0) == report.passed
    assert (json_path.parent / "validation_report.md").is_file() or report.output_dir.joinpath(
        "validation_report.md").is_file()
    return data


def run_clean(artifact: Path, checkpoint: Path, dataset: Path, out: Path, num_steps: int | None
              ) -> tuple[ValidationReport, list[str]]:
    lines: list[str] = []
    report = validate(artifact, model_path=checkpoint, dataset_path=dataset, num_steps=num_steps,
                      output_dir=out, junit=out / "junit.xml", reporter=Reporter(lines.append), threads=1,
                      verbose=True)
    return report, lines


def assert_clean(report: ValidationReport, lines: list[str], steps: int, out: Path) -> None:
    bad = [f"{c.name}: {c.message}" for c in report.checks if c.status != "passed"]
    assert not bad, bad
    names = {c.name for c in report.checks}
    assert {f"accuracy/{s}" for s in STAGES} | {f"spec/{s}" for s in STAGES} <= names
    assert {f"consistency/{k}" for k in ACTION_KEYS} | {"integrity/manifest", "determinism", "plots"} <= names
    assert f"network consistency test passed over {steps} runs" in lines
    assert any(line.endswith(f"get_actions for iteration {steps - 1}") and "plots/onnx" in line for line in lines)
    assert "Validating ONNX model accuracy..." in lines and "Within tolerance: True" in lines
    assert "comparing: pixel_values" in lines
    assert f"[onnx] Time series data: {steps * 16} time steps, 26 features" in lines
    assert set(report.stage_timings_ms) == set(STAGES) and all(v > 0 for v in report.stage_timings_ms.values())
    data = assert_reports_agree(report, out / "validation_report.json", out / "junit.xml")
    assert set(data["stage_timings_ms"]) == set(STAGES)
    for side in ("python", "onnx"):
        for name in OVERVIEW_FILES:
            path = out / "plots" / side / name
            assert path.stat().st_size > 10_000 and png_size(path) == pixel_size(OVERVIEW_SIZE), path
    for key in ACTION_KEYS:  # every action key by default
        assert png_size(out / "plots" / f"compare_{key}.png") == pixel_size(COMPARISON_SIZE)


@pytest.mark.parametrize(("precision", "steps"), [("fp32", 5), ("fp16", 3)])
def test_clean_build_passes_every_tier_on_pick_n_place(builds, checkpoint, pick_n_place, work, precision, steps):
    out = work / f"report_pnp_{precision}"
    report, lines = run_clean(builds[precision], checkpoint, pick_n_place, out, num_steps=steps)
    assert_clean(report, lines, steps, out)
    assert report.mode == "full" and report.precision == precision


def test_default_thirty_steps_fp32_on_synthetic_data(builds, checkpoint, synthetic, work):
    out = work / "report_syn_fp32"
    report, lines = run_clean(builds["fp32"], checkpoint, synthetic, out, num_steps=None)
    assert report.inputs["num_steps"] == 30 and len(report.inputs["samples"]) == 30
    assert_clean(report, lines, 30, out)
    worst = max(c.metrics["max_abs"] for c in report.checks if c.name.startswith(("accuracy/", "consistency/")))
    assert worst < 1e-4  # fp32 export vs PyTorch on CPU


def test_fp16_on_synthetic_data(builds, checkpoint, synthetic, work):
    out = work / "report_syn_fp16"
    report, lines = run_clean(builds["fp16"], checkpoint, synthetic, out, num_steps=3)
    assert_clean(report, lines, 3, out)


def test_corrupted_onnx_weight_fails_tier1_naming_the_stage(builds, checkpoint, synthetic, work, quick_suite):
    artifact = copy_build(builds["fp32"], work / "corrupt_weight")
    path = artifact / "eagle2" / "llm.onnx"
    model = onnx.load(str(path))
    matmul_weights = {n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm")}
    init = next(i for i in model.graph.initializer  # the first linear layer every token goes through
                if i.name in matmul_weights and i.data_type == onnx.TensorProto.FLOAT)
    weights = numpy_helper.to_array(init).copy()
    weights.flat[0] += 25.0
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    onnx.save(model, str(path))
    rehash(artifact)
    report = validate(artifact, model_path=checkpoint, dataset_path=synthetic, suite=quick_suite,
                      output_dir=work / "corrupt_weight_report", reporter=Reporter(lambda _: None), threads=1)
    failed = {c.name: c for c in report.failures}
    assert "accuracy/llm" in failed and "llm" in failed["accuracy/llm"].message
    assert failed["accuracy/llm"].stage == "llm"
    assert all(next(c for c in report.checks if c.name == f"accuracy/{s}").passed for s in STAGES if s != "llm")
    assert next(c for c in report.checks if c.name == "integrity/manifest").passed
    assert_reports_agree(report, work / "corrupt_weight_report" / "validation_report.json")


def test_one_flipped_byte_in_any_artifact_fails_integrity_naming_it(builds, work, quick_suite):
    artifact = copy_build(builds["fp16"], work / "flipped")
    files = json.loads((artifact / "manifest.json").read_text())["files"]
    assert len(files) >= 8
    for entry in files:
        path = artifact / entry["path"]
        data = bytearray(path.read_bytes())
        original = data[len(data) // 2]
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        report = validate(artifact, output_dir=work / "flipped_report", reporter=Reporter(lambda _: None))
        assert not report.passed and report.failures[0].name == "integrity/manifest"
        assert entry["path"] in report.failures[0].message
        assert {c.status for c in report.checks[1:]} == {"skipped"}  # nothing loaded from a tampered drop
        data[len(data) // 2] = original
        path.write_bytes(bytes(data))
    assert validate(artifact, output_dir=work / "flipped_report", suite=quick_suite,
                    reporter=Reporter(lambda _: None)).passed


def test_missing_artifact_fails_naming_it(builds, work):
    artifact = copy_build(builds["fp32"], work / "missing")
    (artifact / "action_head" / "denoising_subgraph.onnx").unlink()
    report = validate(artifact, output_dir=work / "missing_report", junit=work / "missing_report" / "junit.xml",
                      reporter=Reporter(lambda _: None))
    assert not report.passed
    assert "action_head/denoising_subgraph.onnx is missing" in report.failures[0].message
    assert_reports_agree(report, work / "missing_report" / "validation_report.json",
                         work / "missing_report" / "junit.xml")


def test_nondeterministic_stage_is_caught_and_named(builds, work, quick_suite):
    artifact = copy_build(builds["fp32"], work / "noisy")
    path = artifact / "preprocess" / "preprocess_state_action.pt"

    class Noisy(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, raw_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            state, ids = self.inner(raw_state)
            return state + 1e-3 * torch.rand_like(state), ids

    torch.jit.save(torch.jit.script(Noisy(torch.jit.load(str(path)))), str(path))
    rehash(artifact)
    lines: list[str] = []
    report = validate(artifact, suite=quick_suite, output_dir=work / "noisy_report", reporter=Reporter(lines.append))
    assert any("no --model_path" in line for line in lines)
    check = next(c for c in report.checks if c.name == "determinism")
    assert check.status == "failed" and check.stage == "preprocess_state_action"
    assert "preprocess_state_action" in check.message
    assert [c.name for c in report.failures] == ["determinism"]
    assert next(c for c in report.checks if c.name == "accuracy/vit").status == "skipped"


def test_default_suite_is_shipped_and_linked(quick_suite):
    suite = load_suite()
    assert suite.num_steps == 30 and set(suite.consistency) >= {"fp32", "fp16", "bf16", "fp8"}
    assert suite.tolerance("fp16", "denoising_subgraph").atol > suite.tolerance("fp16", "vit").atol
    quick = load_suite(quick_suite)  # a suite names only what it changes; the rest comes from default.yaml
    assert (quick.num_steps, quick.plots_enabled, quick.consistency) == (2, False, suite.consistency)
    link = Path(__file__).resolve().parents[1] / "validation"
    assert link.is_symlink() and (link / "default.yaml").resolve() == default_suite_path().resolve()


def test_tensor_comparison_rules():
    x = torch.linspace(-1, 1, 64)
    loose, cosine = Tolerance(1e-2, 1e-2), Tolerance(1e-3, 1e-3, cosine_min=0.99)
    assert compare_tensors("t", x.clone(), x, loose).exact
    near = compare_tensors("t", x + 5e-3, x, loose)
    assert near.within and not near.exact and abs(near.max_abs - 5e-3) < 1e-6
    assert not compare_tensors("t", x + 5e-3, x, Tolerance(1e-2, 1e-2, exact=True)).within
    assert not compare_tensors("t", x + 0.05, x, loose).within
    assert compare_tensors("t", x * 1.1, x, cosine).within  # off by 10 % but pointing the same way
    assert not compare_tensors("t", x.flip(0), x, cosine).within
    assert not compare_tensors("ids", torch.tensor([1, 2, 4]), torch.tensor([1, 2, 3]), loose).within
    assert compare_tensors("t", x[:32], x, loose).problem.startswith("shape")
    assert compare_tensors("t", x.half(), x, loose).problem.startswith("dtype")
    assert compare_tensors("t", x * float("nan"), x, loose).problem


def cli(*args: str):
    return CliRunner().invoke(app, ["validate", *map(str, args)])


def test_cli_exit_codes(builds, work, quick_suite):
    clean = builds["fp32"]
    ok = cli(clean, "--suite", quick_suite, "--output_dir", work / "cli_ok", "--junit", work / "cli_ok" / "j.xml")
    assert ok.exit_code == 0, ok.output
    assert "no --model_path" in ok.output
    assert json.loads((work / "cli_ok" / "validation_report.json").read_text())["exit_code"] == 0

    flipped = copy_build(clean, work / "cli_flipped")
    vit = flipped / "eagle2" / "vit.onnx"
    data = bytearray(vit.read_bytes())
    data[-1] ^= 0xFF
    vit.write_bytes(bytes(data))
    bad = cli(flipped, "--output_dir", work / "cli_bad", "--report", work / "cli_bad" / "r.json")
    assert bad.exit_code == 1 and "eagle2/vit.onnx" in bad.output
    assert json.loads((work / "cli_bad" / "r.json").read_text())["exit_code"] == 1

    assert cli(work / "no_such_dir").exit_code == 2
    broken = work / "broken.yaml"
    broken.write_text("version: 1\ntolerances: {fp32: {default: {rtol: -1}}}\n")
    assert cli(clean, "--suite", broken, "--output_dir", work / "cli_x").exit_code == 2
    broken.write_text("version: [1\n")
    assert cli(clean, "--suite", broken, "--output_dir", work / "cli_x").exit_code == 2
    assert cli(clean, "--suite", work / "absent.yaml").exit_code == 2
    unknown = cli(clean, "--plot_actions", "action.left_foot", "--output_dir", work / "cli_x")
    assert unknown.exit_code == 2 and "action.left_foot" in unknown.output


@pytest.mark.parametrize("args", [
    ["--plot_actions", "action.left_arm", "--plot_actions", "right_hand"],
    ["--plot_actions", "action.left_arm,action.right_hand"],
    ["--plot_actions", "left_arm right_hand"],
    ["--plot_actions", "action.left_arm", "action.right_hand"],
])
def test_cli_plot_actions_forms(builds, work, quick_suite, args):
    out = work / "cli_plot_keys"
    result = cli(builds["fp32"], "--suite", quick_suite, "--num_steps", "1", "--output_dir", out, *args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "validation_report.json").read_text())
    assert data["inputs"]["plot_actions"] == ["action.left_arm", "action.right_hand"]
