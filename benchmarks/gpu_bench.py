"""Full-size GR00T N1.5 (random weights) on one GPU: generate, export fp16, time every runtime, check parity.

One device call (see README "GPU benchmark"):
    python benchmarks/gpu_bench.py --work /root/gb --eagle_path .bench_data/eagle --obs .bench_data/obs.npz --out $OUT

Steps (each skipped when its output already exists in --work, so a run can be split over calls):
  make   gr00t-export make-checkpoint --preset n1.5-3b (sharded safetensors, real tokenizer files if given)
  build  fp16 artifacts, traced and exported on the GPU
  bench  torch eager (bf16, fp16), torch.compile(reduce-overhead) fp16, onnxruntime CUDA EP fp16
  parity exported fp16 vs the fp32 PyTorch reference, same observation and noise
Prints the table last and writes every number to --out/gpu_bench.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_obs(path: Path | None) -> dict | None:
    if path is None:
        return None
    with np.load(path, allow_pickle=False) as data:
        return {k.removeprefix("obs."): data[k] for k in data.files if k.startswith("obs.")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/root/gb"))
    ap.add_argument("--eagle_path", type=Path, default=None)
    ap.add_argument("--obs", type=Path, default=None, help="npz with obs.* keys (the golden test vector)")
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--steps", default="make,build,bench,parity")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--backends", default="torch,torch-compile,ort,ort-cudagraph")
    args = ap.parse_args()
    steps = set(args.steps.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt, b16 = args.work / "ck3b", args.work / "b3b_fp16"
    report: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    results_path = args.out / "gpu_bench.json"
    if results_path.exists():
        report = json.loads(results_path.read_text()) | report

    def save() -> None:
        results_path.write_text(json.dumps(report, indent=2, default=str))

    if "make" in steps and not (ckpt / "config.json").exists():
        from gr00t_export.make_checkpoint import make_checkpoint

        t = time.perf_counter()
        make_checkpoint(ckpt, "n1.5-3b", 0, eagle_path=args.eagle_path, force=True, show_progress=False)
        report["make_checkpoint_s"] = time.perf_counter() - t
        log(f"checkpoint in {report['make_checkpoint_s']:.1f} s")
        save()
    if "build" in steps and not (b16 / "manifest.json").exists():
        from gr00t_export.build import BuildOptions, build

        t = time.perf_counter()
        res = build(BuildOptions(model_path=ckpt, output=b16, precision="fp16", device="cuda", simplify=False,
                                 force=True), on_step=log)
        report["build_fp16_s"] = time.perf_counter() - t
        report["build_fp16_stages"] = [{"stage": s.name, "max_abs_diff": s.max_abs_diff} for s in res.stages]
        report["artifact_sizes_mb"] = {f["path"]: f["size"] / 2**20 for f in res.manifest["files"]}
        log(f"fp16 build in {report['build_fp16_s']:.1f} s")
        save()
    obs = load_obs(args.obs)
    if "parity" in steps:
        from gr00t_export.build import example_observation
        from gr00t_export.policy import ReferencePolicy
        from gr00t_export.runner import ExportedGr00tRunner

        ref = ReferencePolicy.from_checkpoint(ckpt, dtype="fp32", device="cuda")
        exported = ExportedGr00tRunner(b16, device="cuda")
        o = obs or example_observation(ref.spec.modality, ref.spec.metadata, None)
        a, b = ref.get_action(o, seed=7), exported.get_action(o, seed=7)
        report["parity_fp16_vs_fp32"] = {k: {"max_abs": float(np.abs(a[k] - b[k]).max()),
                                             "cosine": float(np.dot(a[k].ravel(), b[k].ravel())
                                                             / (np.linalg.norm(a[k]) * np.linalg.norm(b[k])))}
                                         for k in a}
        report["prompt_tokens"] = int(ref.transforms(o).input_ids.shape[1])
        log(f"parity: {report['parity_fp16_vs_fp32']}")
        del ref, exported
        torch.cuda.empty_cache()
        save()
    if "bench" in steps:
        from gr00t_export.bench import bench, floor_analysis, table_rows
        from gr00t_export.load import open_checkpoint

        rows = []
        for dtype, backends in (("bf16", ["torch"]), ("fp16", args.backends.split(","))):
            res = bench(b16, ckpt, backends, dtype, args.iters, args.warmup, "cuda", log=log, observation=obs)
            for r in res:
                r.backend = f"{r.backend} ({dtype})" if r.backend.startswith("torch") else r.backend
            rows.extend(res)
            torch.cuda.empty_cache()
        report["bench"] = [asdict(r) for r in rows]
        from gr00t_export.bench import fusion_report
        from gr00t_export.partition import load_graph_spec

        report["ort_fusion"] = fusion_report(b16, load_graph_spec(b16 / "graph_spec.yaml"), "cuda")
        print("onnxruntime CUDA EP op counts after its graph optimisation:", json.dumps(report["ort_fusion"]))
        cfg = open_checkpoint(ckpt).config
        report["floor"] = floor_analysis(cfg, report.get("prompt_tokens", 297), 1, 4)
        save()
        header, table = table_rows([r for r in rows if r.backend != "torch (bf16)"] + [r for r in rows
                                   if r.backend == "torch (bf16)"])
        print("\nfloor analysis (H100 fp16: 3.35 TB/s, 989 TFLOP/s dense)")
        for f in report["floor"]:
            print(f"  {f['stage']:20s} {f['params_M']:8.1f} M params {f['gflop']:8.1f} GFLOP "
                  f"weights {f['weight_read_ms']:.2f} ms compute {f['compute_ms']:.2f} ms "
                  f"-> floor {f['floor_ms']:.2f} ms")
        print(f"\nlatency (ms, median of {args.iters}) on {report['gpu']}, batch 1, 1 view, 4 steps, "
              f"{report.get('prompt_tokens')} tokens")
        print(" | ".join(header))
        for row in table:
            print(" | ".join(row))


if __name__ == "__main__":
    main()
