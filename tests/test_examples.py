"""The export examples run end to end on the tiny preset, as a user would run them (fresh processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gr00t_export.pipeline.igg import check_igg_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "export_examples"


def run(script: Path, *args: str, timeout: int = 400) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=script.parent)
    return proc, time.perf_counter() - start


def check_drop(out: Path, plotted: list[str]) -> None:
    configs = sorted((out / "igg").glob("*.yaml"))
    assert configs and all(check_igg_config(c) == [] for c in configs)
    report = out / "validation" / "validation_report.json"
    assert report.is_file(), "the example did not validate its export"
    data = json.loads(report.read_text())
    assert data["passed"] and data["mode"] == "full" and data["inputs"]["plot_actions"] == plotted
    assert data["manifest_sha256"] == json.loads((out / "manifest.json").read_text())["manifest_sha256"]
    assert all(Path(p).is_file() for p in data["plots"]) and any(Path(p).name.startswith("compare_") for p in
                                                                  data["plots"])
    sidecar = json.loads(next((out / "igg").glob("*_timings.json")).read_text())
    assert sidecar["source"] == "validation_report"


def test_general_example_exports_the_demo_checkpoint(tmp_path):
    out = tmp_path / "gr00t_model"
    proc, seconds = run(EXAMPLES / "gr00t_model" / "export_gr00t_model.py", "--save_model_path", str(out),
                        "--num_plot_steps", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    print(f"export_gr00t_model.py: {seconds:.1f} s")
    check_drop(out, ["action.left_arm", "action.right_arm"])
    assert (tmp_path / "gr00t_model_demo_inputs" / "tiny_checkpoint" / "config.json").is_file()


def test_general_example_rejects_other_video_backends(tmp_path):
    proc, _ = run(EXAMPLES / "gr00t_model" / "export_gr00t_model.py", "--save_model_path", str(tmp_path / "x"),
                  "--video_backend", "decord", timeout=60)
    assert proc.returncode == 2
    assert "--video_backend 'decord' is not supported; use one of pyav" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_handwave_example_generates_g1_wave_and_exports_it(tmp_path):
    out, data = tmp_path / "handwave_model", tmp_path / "g1_wave"
    proc, seconds = run(EXAMPLES / "custom_modality" / "export_handwave_gr00t.py", "--save_model_path", str(out),
                        "--dataset_path", str(data), "--num_plot_steps", "2", "--episode_length", "24")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    print(f"export_handwave_gr00t.py: {seconds:.1f} s")
    assert (data / "meta" / "info.json").is_file()
    assert "wave" in (data / "meta" / "tasks.jsonl").read_text()
    check_drop(out, ["action.upper_body", "action.hands"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modality_config"]["name"] == "unitree_g1_v2"
    assert manifest["embodiment_tag"] == "new_embodiment"
    outputs = {s["name"]: s for s in manifest["stages"]}["postprocess"]["outputs"]
    assert [(o["name"], o["shape"][-1]) for o in outputs] == [("action.upper_body", 17), ("action.hands", 14)]


@pytest.mark.parametrize("script", ["gr00t_model/export_gr00t_model.py", "custom_modality/export_handwave_gr00t.py"])
def test_examples_explain_their_flags(script):
    proc, _ = run(EXAMPLES / script, "--help", timeout=60)
    assert proc.returncode == 0 and "--save_model_path" in proc.stdout and "--num_plot_steps" in proc.stdout
