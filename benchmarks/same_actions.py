"""Behaviour check across a refactor: build the tiny checkpoint with two checkouts, compare what comes out.

    python benchmarks/same_actions.py run SRC OUT      # SRC: a checkout (its gr00t_export is used), OUT: new dir
    python benchmarks/same_actions.py compare OUT_A OUT_B

`run` makes the tiny checkpoint (seed 0) and a synthetic dataset, builds fp32, fp16, fp16 with onnxruntime ops,
and fp8 (each validated), and predicts episode 0 step 5 with seed 0 from every build with `gr00t-export predict
--out`. `compare` prints, per build, whether the actions are bitwise equal, the graphs' node counts per stage, and
the validation figures of both sides.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

BUILDS = {"fp32": [], "fp16": ["--precision", "fp16"], "fp16_ort": ["--precision", "fp16", "--onnx_ops", "onnxruntime"],
          "fp8": ["--precision", "fp8", "--calib_steps", "4"]}


def _cli(src: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(src)}  # cwd too: `-m` puts the cwd first on sys.path
    subprocess.run([sys.executable, "-m", "gr00t_export", *args], check=True, env=env, cwd=src,
                   stdout=subprocess.DEVNULL)


def run(src: Path, out: Path) -> None:
    out.mkdir(parents=True)
    _cli(src, "make-checkpoint", str(out / "ckpt"), "--preset", "tiny", "--seed", "0")
    _cli(src, "make-dataset", str(out / "dataset"))
    for name, flags in BUILDS.items():
        _cli(src, "build", "--model_path", str(out / "ckpt"), "--dataset_path", str(out / "dataset"),
             "--output", str(out / name), *flags)
        _cli(src, "predict", "--artifacts", str(out / name), "--dataset_path", str(out / "dataset"), "--episode",
             "0", "--step", "5", "--seed", "0", "--out", str(out / f"{name}_actions.npz"))


def _figures(build: Path) -> dict:
    import onnx

    manifest = json.loads((build / "manifest.json").read_text())
    nodes = {f["path"]: len(onnx.load(str(build / f["path"]), load_external_data=False).graph.node)
             for f in manifest["files"] if f["path"].endswith(".onnx")}
    path = build / "validation" / "validation_report.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    checks = {c["name"]: (c["status"], c.get("metrics", {}).get("max_abs"), c.get("metrics", {}).get("mean_abs"))
              for c in report.get("checks", [])}
    stages = {s["name"]: (s.get("max_abs_diff"), (s.get("optimize") or {}).get("note")) for s in
              manifest.get("stages", [])}
    return {"nodes": nodes, "checks": checks, "stages": stages}


def compare(a: Path, b: Path) -> int:
    worst = 0
    for name in BUILDS:
        x, y = np.load(a / f"{name}_actions.npz"), np.load(b / f"{name}_actions.npz")
        same = set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x)
        diff = max(float(np.abs(x[k] - y[k]).max()) for k in x) if set(x) == set(y) else float("inf")
        print(f"{name}: actions {'bitwise equal' if same else f'DIFFER (max {diff:.3g})'}")
        fa, fb = _figures(a / name), _figures(b / name)
        for key in ("nodes", "stages", "checks"):
            for item in sorted(set(fa[key]) | set(fb[key])):
                va, vb = fa[key].get(item), fb[key].get(item)
                print(f"  {key:6} {item:42} {'==' if va == vb else '!='} {va}" + ("" if va == vb else f" | {vb}"))
        worst = max(worst, 0 if same else 1)
    return worst


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "run":
        run(Path(rest[0]).resolve(), Path(rest[1]).resolve())
    else:
        sys.exit(compare(Path(rest[0]), Path(rest[1])))
