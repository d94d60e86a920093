"""One device call, for the session's figures that fit its budget: the full-size preset of a family (random
weights) made on the GPU machine, exported fp16 with onnxruntime's fused ops, checked against the fp32 reference,
and timed against the project's own eager and torch.compile(reduce-overhead) of the same model in the same process.

    python benchmarks/device_run.py --preset n1.6-3b --eagle_path .bench_data/eagle_n16 --obs .bench_data/n16.npz \
        --work /root/dr --out $OUT [--backends torch,torch-compile,ort-cudagraph] [--deadline_s 560]

Prints the table last; every figure goes to --out/<preset>.json. Each step is skipped when --deadline_s would pass
(the seconds since start), so one command stays inside the device's per-call limit.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f} s] {msg}", flush=True)


def load_obs(path: Path | None) -> dict | None:
    """`obs.*` keys of a test-vector npz as a flat observation (`obs.video.k` -> `video.k`; `obs.task` ->
    `annotation.task`, the N1.6 language key)."""
    if path is None:
        return None
    with np.load(path, allow_pickle=False) as data:
        obs = {k.removeprefix("obs."): data[k] for k in data.files if k.startswith("obs.")}
    if "task" in obs:
        obs["annotation.task"] = obs.pop("task")
    return obs


def main() -> None:
    from gr00t_export.families import family_for_preset, open_reference
    from gr00t_export.pipeline.build import BuildOptions, build
    from gr00t_export.runtime.runner import ExportedGr00tRunner
    from gr00t_export.tools.bench import bench, table_rows

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="n1.6-3b")
    ap.add_argument("--eagle_path", type=Path, required=True)
    ap.add_argument("--obs", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=Path("/root/dr"))
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--backends", default="ort-cudagraph,torch,torch-compile")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--deadline_s", type=float, default=560.0)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt, built = args.work / f"{args.preset}_ckpt", args.work / f"{args.preset}_fp16_ortops"
    dev = args.device
    report: dict = {"gpu": torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu",
                    "torch": torch.__version__, "preset": args.preset}
    out_json = args.out / f"{args.preset}.json"

    def save() -> None:
        out_json.write_text(json.dumps(report, indent=2, default=str))

    if not (ckpt / "config.json").exists():
        t = time.perf_counter()
        family_for_preset(args.preset).make_checkpoint(ckpt, args.preset, 0, eagle_path=args.eagle_path, force=True,
                                                       show_progress=False)
        report["make_checkpoint_s"] = time.perf_counter() - t
        log(f"checkpoint in {report['make_checkpoint_s']:.1f} s")
    if not (built / "manifest.json").exists():
        t = time.perf_counter()
        res = build(BuildOptions(model_path=ckpt, output=built, precision="fp16",
                                 device=dev, simplify=False, force=True, onnx_ops="onnxruntime", time_stages=False),
                    on_step=log)
        report["build_s"] = time.perf_counter() - t
        report["export_diffs"] = {s.name: s.max_abs_diff for s in res.stages}
        report["sizes_mb"] = {f["path"]: round(f["size"] / 2**20, 1) for f in res.manifest["files"]}
        log(f"fp16 build (onnxruntime ops) in {report['build_s']:.1f} s")
        save()
    obs = load_obs(args.obs)
    exported = ExportedGr00tRunner(built, device=dev)
    if obs is None:
        from gr00t_export.families.base import synthetic_observation

        obs = synthetic_observation(exported.interface)
    ref = open_reference(ckpt, dtype="fp32", device=dev)
    a, b = ref.get_action(obs, seed=7), exported.get_action(obs, seed=7)
    report["parity_fp16_vs_fp32"] = {
        k: {"max_abs": float(np.abs(a[k] - b[k]).max()),
            "cosine": float(np.dot(a[k].ravel(), b[k].ravel()) / (np.linalg.norm(a[k]) * np.linalg.norm(b[k])))}
        for k in a}
    log(f"parity fp16 vs fp32: {report['parity_fp16_vs_fp32']}")
    del ref, exported
    torch.cuda.empty_cache()
    save()
    rows = []
    run = dict(iters=args.iters, warmup=args.warmup, device=dev, log=log, observation=obs)
    for backend in args.backends.split(","):
        if time.perf_counter() - START > args.deadline_s:
            log(f"{backend}: skipped, past the {args.deadline_s:.0f} s deadline")
            continue
        artifacts = built if backend.startswith("ort") else None
        rows += bench(artifacts, ckpt, [backend], "fp16", **run)
        report["bench"] = [asdict(r) for r in rows]
        save()
        torch.cuda.empty_cache()
    header, table = table_rows(rows)
    compiled = next((r for r in rows if r.backend == "torch-compile" and r.end_to_end), None)
    print(f"\nlatency (ms, median of {args.iters}) on {report['gpu']}, {args.preset}, batch 1, one view, fp16")
    print(" | ".join([*header, "vs torch.compile"]))
    for r, row in zip(rows, table, strict=True):
        ratio = f"{r.end_to_end.median_ms / compiled.end_to_end.median_ms:.3f}" if compiled and r.end_to_end else "-"
        print(" | ".join([*row, ratio]))
    log("done")


if __name__ == "__main__":
    main()
