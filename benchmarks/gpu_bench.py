"""Full-size GR00T N1.5 (random weights) on one GPU: generate, export fp16, time every runtime, check parity.

One device call (see README "GPU benchmark"):
    python benchmarks/gpu_bench.py --work /root/gb --eagle_path .bench_data/eagle --obs .bench_data/obs.npz --out $OUT

Steps (each skipped when its output already exists in --work, so a run can be split over calls):
  make   gr00t-export make-checkpoint --preset n1.5-3b (sharded safetensors, real tokenizer files if given)
  build  fp16 artifacts, traced and exported on the GPU, standard ONNX ops (the TensorRT form)
  build_ort  the same with --onnx_ops onnxruntime (MultiHeadAttention / RotaryEmbedding / FastGelu contrib kernels)
  fp8    fp8 artifacts calibrated on --calib (real PickNPlace observations, npz) and drift on --eval
  trt    TensorRT(-RTX) parse + build of every fp16 and fp8 graph (needs tensorrt or tensorrt_rtx_bindings)
  aoti_compile  AOTInductor .pt2 packages of vit/llm/denoiser (child process), ahead of bench
  parity exported fp16 (both builds) vs the fp32 PyTorch reference, same observation and noise
  bench  torch eager (bf16, fp16), torch.compile(reduce-overhead) fp16, onnxruntime CUDA EP fp16 (+ CUDA graphs)
         on both builds, AOTInductor .pt2 (compiled and loaded in child processes: a crash there cannot take the
         table down), and a CUPTI kernel profile of every model stage (kernels per call, busy time, kinds)
  grid   `bench --grid` on the onnxruntime-ops build (else the standard one): batch x cameras (--grid_batches,
         --grid_views), onnxruntime + CUDA graphs (one pinned session and graph per shape) vs torch.compile
         (reduce-overhead, batch/views/prompt dims dynamic), p50/p90 ms and samples/s per cell; new cells stop
         starting once --time_limit (seconds since this script started) is near, so one device call ends in time
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

from gr00t_export.tools.bench import BackendResult, KernelProfile, Timing, bench


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_obs(path: Path | None) -> dict | None:
    if path is None:
        return None
    with np.load(path, allow_pickle=False) as data:
        return {k.removeprefix("obs."): data[k] for k in data.files if k.startswith("obs.")}


def unstack(path: Path | None) -> list[dict]:
    """npz of observations stacked on a leading axis -> list of single observations."""
    if path is None:
        return []
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return [{k: v[i] for k, v in arrays.items()} for i in range(len(next(iter(arrays.values()))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/root/gb"))
    ap.add_argument("--eagle_path", type=Path, default=None)
    ap.add_argument("--obs", type=Path, default=None, help="npz with obs.* keys (the golden test vector)")
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--calib", type=Path, default=None, help="npz of stacked observations for fp8 calibration")
    ap.add_argument("--eval", type=Path, default=None, help="npz of stacked held-out observations for fp8 drift")
    ap.add_argument("--steps", default="make,build,bench,parity")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--backends", default="torch,torch-compile,ort,ort-cudagraph,aoti")
    ap.add_argument("--aoti_timeout", type=float, default=300.0, help="seconds the AOTInductor child may take")
    ap.add_argument("--aoti_child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--aoti_phase", choices=("compile", "load"), default="load", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="n1.5-3b", help="tiny: a CPU smoke run of this script")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--grid_batches", default="1,2,4,8")
    ap.add_argument("--grid_views", default="1,2,3")
    ap.add_argument("--grid_backends", default="ort-cudagraph,torch-compile")
    ap.add_argument("--grid_compile", default="all", help="cells torch-compile runs: all, or e.g. 1x1,8x1,1x3,8x3")
    ap.add_argument("--grid_iters", type=int, default=20)
    ap.add_argument("--grid_warmup", type=int, default=3)
    ap.add_argument("--time_limit", type=float, default=None,
                    help="seconds this script may run: the grid starts no cell after time_limit - 75 s")
    args = ap.parse_args()
    started = time.perf_counter()
    steps = set(args.steps.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt, b16, b8 = args.work / "ck3b", args.work / "b3b_fp16", args.work / "b3b_fp8"
    b16o = args.work / "b3b_fp16_ortops"
    if args.aoti_child is not None:
        return aoti_child(args, ckpt)
    dev = args.device
    gpu = torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"
    report: dict = {"gpu": gpu, "torch": torch.__version__, "preset": args.preset}
    results_path = args.out / "gpu_bench.json"
    if results_path.exists():
        report = json.loads(results_path.read_text()) | report

    def save() -> None:
        results_path.write_text(json.dumps(report, indent=2, default=str))

    if "make" in steps and not (ckpt / "config.json").exists():
        from gr00t_export.families.n1_5.synthetic import make_checkpoint

        t = time.perf_counter()
        make_checkpoint(ckpt, args.preset, 0, eagle_path=args.eagle_path, force=True, show_progress=False)
        report["make_checkpoint_s"] = time.perf_counter() - t
        log(f"checkpoint in {report['make_checkpoint_s']:.1f} s")
        save()
    for step, out, ops in (("build", b16, "standard"), ("build_ort", b16o, "onnxruntime")):
        if step not in steps or (out / "manifest.json").exists():
            continue
        from gr00t_export.pipeline.build import BuildOptions, build

        t = time.perf_counter()
        res = build(BuildOptions(model_path=ckpt, output=out, precision="fp16", device=dev, simplify=False,
                                 force=True, onnx_ops=ops), on_step=log)
        suffix = "" if ops == "standard" else "_ortops"
        report[f"build_fp16{suffix}_s"] = time.perf_counter() - t
        report[f"build_fp16{suffix}_stages"] = [{"stage": s.name, "max_abs_diff": s.max_abs_diff} for s in res.stages]
        report[f"artifact_sizes_mb{suffix}"] = {f["path"]: f["size"] / 2**20 for f in res.manifest["files"]}
        log(f"fp16 build ({ops} ops) in {report[f'build_fp16{suffix}_s']:.1f} s")
        save()
    if "fp8" in steps and not (b8 / "manifest.json").exists():
        from gr00t_export.pipeline.build import BuildOptions, build

        t = time.perf_counter()
        calib = unstack(args.calib)
        res = build(BuildOptions(model_path=ckpt, output=b8, precision="fp8", device=dev, simplify=False,
                                 force=True, calib_observations=calib), on_step=log)
        report["build_fp8_s"] = time.perf_counter() - t
        report["fp8_quantization"] = res.manifest.get("quantization")
        sizes16 = report.get("artifact_sizes_mb", {})
        sizes8 = {f["path"]: f["size"] / 2**20 for f in res.manifest["files"]}
        report["fp8_sizes_mb"] = sizes8
        for stage in ("eagle2/vit.onnx", "eagle2/llm.onnx", "action_head/denoising_subgraph.onnx"):
            s16 = sizes16.get(stage, 0) + sizes16.get(stage + "_data", 0)
            s8 = sizes8.get(stage, 0) + sizes8.get(stage + "_data", 0)
            log(f"{stage}: fp16 {s16:.0f} MiB, fp8 {s8:.0f} MiB ({s8 / s16 if s16 else float('nan'):.3f}x)")
        save()
    if "fp8" in steps and args.eval is not None:
        from gr00t_export.families import open_reference
        from gr00t_export.runtime.runner import ExportedGr00tRunner

        ref = open_reference(ckpt, dtype="fp32", device=dev)
        drift: dict[str, list[float]] = {}
        for label, artifacts in (("fp16", b16), ("fp8", b8)):
            exported = ExportedGr00tRunner(artifacts, device=dev)
            for i, o in enumerate(unstack(args.eval)):
                a, b = ref.get_action(o, seed=i), exported.get_action(o, seed=i)
                for k in a:
                    cos = float(np.dot(a[k].ravel(), b[k].ravel()) / (np.linalg.norm(a[k]) * np.linalg.norm(b[k])))
                    drift.setdefault(f"{label} {k} cosine", []).append(cos)
                    drift.setdefault(f"{label} {k} max_abs", []).append(float(np.abs(a[k] - b[k]).max()))
            del exported
        report["drift_vs_fp32"] = {k: {"min": min(v), "mean": float(np.mean(v)), "max": max(v)}
                                   for k, v in drift.items()}
        for k, v in report["drift_vs_fp32"].items():
            log(f"drift {k}: min {v['min']:.5f} mean {v['mean']:.5f} max {v['max']:.5f}")
        del ref
        torch.cuda.empty_cache()
        save()
    if "trt" in steps:
        from gr00t_export.errors import InputError
        from gr00t_export.pipeline.engines import check_engine_build
        from gr00t_export.runtime.tensorrt import import_tensorrt

        try:
            import_tensorrt("tensorrt,tensorrt_rtx_bindings")
        except InputError as err:
            log(f"trt step skipped: {err}")
            steps.discard("trt")
    if "trt" in steps:
        rows = []
        for label, artifacts in (("fp16", b16), ("fp8", b8)):
            for stage in ("eagle2/vit.onnx", "eagle2/llm.onnx", "action_head/denoising_subgraph.onnx"):
                path = artifacts / stage
                if not path.exists():
                    continue
                ok, seconds, errors = check_engine_build(path, trt_module="tensorrt,tensorrt_rtx_bindings",
                                                         log_path=args.out / f"{label}_{path.stem}.trt.log")
                rows.append({"precision": label, "stage": stage, "ok": ok, "seconds": seconds,
                             "error": errors[0][:300] if errors else ""})
                log(f"trt build {label} {stage}: {'ok' if ok else 'FAILED'} in {seconds:.1f} s {rows[-1]['error']}")
                save()
        report["trt_builds"] = rows
        save()
    obs = load_obs(args.obs)
    if "aoti_compile" in steps and not aoti_compiled(args):  # ahead of the bench step, so each call stays short
        t = time.perf_counter()
        failed = run_aoti_children(args, ("compile",))
        report["aoti_compile_s"] = time.perf_counter() - t
        report["aoti_compile_error"] = failed.note if failed else ""
        log(f"aoti compile: {failed.note if failed else 'ok'} in {report['aoti_compile_s']:.1f} s")
        save()
    if "parity" in steps:
        from gr00t_export.families import open_reference
        from gr00t_export.families.n1_5.family import example_observation
        from gr00t_export.runtime.runner import ExportedGr00tRunner

        ref = open_reference(ckpt, dtype="fp32", device=dev)
        o = obs or example_observation(ref.transforms.modality, ref.transforms.metadata, None)
        a = ref.get_action(o, seed=7)
        report["prompt_tokens"] = int(ref.transforms(o).input_ids.shape[1])
        for label, artifacts in (("parity_fp16_vs_fp32", b16), ("parity_fp16_ortops_vs_fp32", b16o)):
            if not (artifacts / "manifest.json").exists():
                continue
            b = ExportedGr00tRunner(artifacts, device=dev).get_action(o, seed=7)
            report[label] = {k: {"max_abs": float(np.abs(a[k] - b[k]).max()),
                                 "cosine": float(np.dot(a[k].ravel(), b[k].ravel())
                                                 / (np.linalg.norm(a[k]) * np.linalg.norm(b[k])))} for k in a}
            log(f"{label}: {report[label]}")
        del ref
        torch.cuda.empty_cache()
        save()
    if "bench" in steps:
        from gr00t_export.families.n1_5.checkpoint import open_checkpoint
        from gr00t_export.families.n1_5.floor import floor_analysis
        from gr00t_export.spec import load_graph_spec
        from gr00t_export.tools.bench import fusion_report, kernel_rows, table_rows, timeline_rows

        backends = [b for b in args.backends.split(",") if dev.startswith("cuda") or b != "ort-cudagraph"]
        run = dict(iters=args.iters, warmup=args.warmup, device=dev, log=log, observation=obs, profile=True)
        rows = bench(None, ckpt, ["torch"], "bf16", **run) if "torch" in backends else []
        for r in rows:
            r.backend = "torch eager (bf16)"
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
        in_process = [b for b in backends if b != "aoti"]
        if (b16 / "manifest.json").exists():
            rows += bench(b16, ckpt, in_process, "fp16", **run)
        elif any(not b.startswith("ort") for b in in_process):  # no standard-ops build: the PyTorch backends only
            rows += bench(None, ckpt, [b for b in in_process if not b.startswith("ort")], "fp16", **run)
        if (b16o / "manifest.json").exists():
            ort_rows = bench(b16o, ckpt, [b for b in in_process if b.startswith("ort")], "fp16", **run)
            for r in ort_rows:
                r.backend += " [onnxruntime ops]"
            rows += ort_rows
        report["bench"] = [asdict(r) for r in rows]
        save()
        if "aoti" in backends:
            rows.append(run_aoti_children(args, ("load",) if aoti_compiled(args) else ("compile", "load")))
            report["bench"] = [asdict(r) for r in rows]
            save()
        report["ort_fusion"] = {}
        for label, artifacts in (("standard", b16), ("onnxruntime", b16o)):
            if (artifacts / "manifest.json").exists():
                report["ort_fusion"][label] = fusion_report(artifacts, load_graph_spec(artifacts / "graph_spec.yaml"),
                                                            dev)
        cfg = open_checkpoint(ckpt).config
        report["floor"] = floor_analysis(cfg, report.get("prompt_tokens", 297), 1, 4)
        save()
        print("\nonnxruntime op counts after its own graph optimisation (fused ops and total nodes):")
        for label, stages in report["ort_fusion"].items():
            for stage, ops in stages.items():
                print(f"  {label:12s} {stage:20s} {json.dumps(ops)}")
        print("\nfloor analysis (H100 fp16: 3.35 TB/s, 989 TFLOP/s dense)")
        for f in report["floor"]:
            print(f"  {f['stage']:20s} {f['params_M']:8.1f} M params {f['gflop']:8.1f} GFLOP "
                  f"weights {f['weight_read_ms']:.2f} ms compute {f['compute_ms']:.2f} ms "
                  f"-> floor {f['floor_ms']:.2f} ms")
        for title, (header, table) in (("CUDA kernels per call (CUPTI)", kernel_rows(rows)),
                                       ("one whole tick on the GPU, ms (CUPTI)", timeline_rows(rows))):
            if table:
                print(f"\n{title}")
                for row in (header, *table):
                    print(" | ".join(row))
        for r in rows:
            for stage, k in r.kernels.items():
                if r.backend.startswith(("ort-cudagraph", "torch-compile")) and k.top:
                    print(f"\ncostliest kernels, {r.backend} {stage} (ms per call, launches per call)")
                    for name, ms, n in k.top:
                        print(f"  {ms:6.3f} {n:5.0f}  {name[:130]}")
        for r in rows:
            if r.note:
                print(f"note {r.backend}: {r.note}")
        eager_first = [r for r in rows if r.backend == "torch"] + [r for r in rows if r.backend != "torch"]
        header, table = table_rows(eager_first)
        print(f"\nlatency (ms, median of {args.iters}) on {report['gpu']}, batch 1, 1 view, 4 steps, "
              f"{report.get('prompt_tokens')} tokens")
        print(" | ".join(header))
        for row in table:
            print(" | ".join(row))
    if "grid" in steps:
        run_grid(args, ckpt, b16o if (b16o / "manifest.json").exists() else b16, report, save, started)


def run_grid(args, ckpt: Path, artifacts: Path, report: dict, save, started: float) -> None:
    from gr00t_export.tools.grid import bench_grid, grid_rows, parse_grid_axis

    if not (artifacts / "manifest.json").exists():
        log("grid skipped: no fp16 build; add build_ort (or build) to --steps")
        return
    compile_cells = None if args.grid_compile == "all" else {
        (int(b), int(v)) for b, v in (cell.split("x") for cell in args.grid_compile.split(","))}
    budget = None if args.time_limit is None else args.time_limit - 75 - (time.perf_counter() - started)
    t = time.perf_counter()
    cells = bench_grid(artifacts, ckpt, args.grid_backends.split(","), "fp16", args.grid_iters, args.grid_warmup,
                       args.device, parse_grid_axis(args.grid_batches, "--grid_batches"),
                       parse_grid_axis(args.grid_views, "--grid_views"), log=log, compile_cells=compile_cells,
                       budget_s=budget)
    report["grid"] = {"build": artifacts.name, "seconds": time.perf_counter() - t, "budget_s": budget,
                      "cells": [asdict(c) for c in cells]}
    save()
    print(f"\ngrid setup (untimed first calls per shape: s / graphs compiled or captured) and notes, build "
          f"{artifacts.name}")
    for c in cells:
        setup = f"{c.setup_s:.1f} s / {'-' if c.new_graphs is None else c.new_graphs}" if c.setup_s is not None \
            else "-"
        mem = f", GPU {c.gpu_used_gib:.1f} GiB in use" if c.gpu_used_gib is not None else ""
        print(f"  {c.backend:14s} batch {c.batch} x {c.views} view(s): {setup}{mem} {c.note}")
    header, table = grid_rows(cells)
    print(f"\none tick per cell (ms over {args.grid_iters} iterations, 4 steps, fp16) on {report['gpu']}; "
          f"grid {report['grid']['seconds']:.0f} s")
    print(" | ".join(header))
    for row in table:
        print(" | ".join(row))


def aoti_compiled(args) -> bool:
    return all((args.work / "aoti" / f"{s}.pt2").exists() for s in ("vit", "llm", "denoising_subgraph"))


def run_aoti_children(args, phases: tuple[str, ...]) -> BackendResult | None:
    """AOTInductor in child processes (faulthandler on): one compiles the `.pt2` packages, a fresh one loads and times
    them. A segfault in either becomes the row's note (with where it happened); the rest of the table stands.
    Returns the timed row, or None after a successful compile-only run."""
    import subprocess
    import sys

    out = args.out / "aoti.json"
    out.unlink(missing_ok=True)
    base = [sys.executable, "-X", "faulthandler", __file__, "--aoti_child", str(out), "--work", str(args.work),
            "--iters", str(args.iters), "--warmup", str(args.warmup), "--device", args.device]
    base += ["--obs", str(args.obs)] if args.obs else []
    logs = []
    for phase in phases:
        log(f"aoti: {phase} in a child process ...")
        try:
            proc = subprocess.run([*base, "--aoti_phase", phase], capture_output=True, text=True,
                                  timeout=args.aoti_timeout)
        except subprocess.TimeoutExpired:
            return BackendResult("aoti", note=f"{phase} still running after {args.aoti_timeout} s; stopped")
        logs.append(f"== {phase}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
        (args.out / "aoti.log").write_text("\n".join(logs))
        if proc.returncode != 0:
            lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip().startswith("File ")][:4]
            return BackendResult("aoti", note=f"{phase} child exited {proc.returncode} in: {' <- '.join(lines)}"[:400])
    if "load" not in phases:
        return None
    data = json.loads(out.read_text())
    return BackendResult(data["backend"], {k: Timing(**v) for k, v in data["stages"].items()},
                         Timing(**data["end_to_end"]) if data["end_to_end"] else None, data["note"],
                         {k: KernelProfile(**v) for k, v in data["kernels"].items()})


def aoti_child(args, ckpt: Path) -> None:
    phase = args.aoti_phase
    res = bench(None, ckpt, ["aoti"], "fp16", args.iters if phase != "compile" else 1, args.warmup, args.device,
                log=log, observation=load_obs(args.obs), profile=phase != "compile", aoti_dir=args.work / "aoti",
                aoti_phase=phase)[0]
    if res.note.startswith("failed"):
        raise SystemExit(f"aoti {phase}: {res.note}")
    if phase != "compile":
        args.aoti_child.write_text(json.dumps(asdict(res)))

if __name__ == "__main__":
    main()
