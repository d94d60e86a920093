"""One tick of an exported build as CUDA graphs, the stages on one shared stream vs each stage synchronised, and
one-stream variants with other onnxruntime CUDA EP options (which attention kernels it may pick, say).

    python benchmarks/stream_ab.py ARTIFACT_DIR --obs obs.npz [--iters 50] [--out results.json]
        [--cuda_variant "flash attention=sdpa_kernel:1" --cuda_variant "no cudnn=sdpa_kernel:3;prefer_nhwc:1" ...]

Both variants are set up in one process, then timed alternately (A B A B ...) so host drift hits both alike;
median and p90 of the end-to-end tick (observation to actions on the host), as `gr00t-export bench` times it;
then a CUPTI trace of 20 ticks of each says where the tick's wall time goes (GPU busy, launch gaps, stalls).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from gr00t_export.families.base import make_noise
from gr00t_export.runtime.cuda_graphs import graphed_stages
from gr00t_export.runtime.runner import ExportedGr00tRunner
from gr00t_export.tools.bench import profile_ticks, summarize


def non_finite(actions: dict[str, torch.Tensor]) -> dict[str, int]:
    return {k: int((~torch.isfinite(v)).sum()) for k, v in actions.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", type=Path)
    ap.add_argument("--obs", type=Path, required=True, help="npz with obs.* keys")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cuda_variant", action="append", default=[],
                    help='NAME=option:value[;option:value]: one more one-stream variant with these CUDA EP options')
    args = ap.parse_args()
    with np.load(args.obs, allow_pickle=False) as data:
        obs = {k.removeprefix("obs."): data[k] for k in data.files if k.startswith("obs.")}
    plain = ExportedGr00tRunner(args.artifacts, device="cuda")  # no graphs, host round trips: the reference
    raw = plain.reader(obs)
    init = make_noise((raw.batch, *plain.interface.noise_shape), None, 0)
    want = {k: v.float().cpu() for k, v in plain.run_raw(raw, init).items()}
    setups = [("each stage synchronised", False, {}), ("one stream", True, {})]
    for spec in args.cuda_variant:
        name, _, options = spec.partition("=")
        setups.append((name, True, dict(o.split(":", 1) for o in options.split(";") if o)))
    variants, options_of = {}, {}
    for name, one_stream, cuda_options in setups:
        runner = ExportedGr00tRunner(args.artifacts, device="cuda")
        runner.stages = graphed_stages(runner.graph, runner.stages, runner.dir, "cuda", one_stream=one_stream,
                                       cuda_options=cuda_options)
        variants[name], options_of[name] = runner, cuda_options
    outputs, samples = {}, {name: [] for name in variants}
    for i in range(10 + args.iters):
        for name, runner in variants.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            actions = runner.run_raw(raw, init)
            outputs[name] = {k: v.float().cpu() for k, v in actions.items()}  # the host copy ends the tick
            if i >= 10:
                samples[name].append((time.perf_counter() - start) * 1e3)
    rows = {}
    for name, s in samples.items():
        got, timing = outputs[name], summarize(s)
        rows[name] = {"cuda_options": options_of[name], "p50_ms": timing.median_ms, "p90_ms": timing.p90_ms,
                      "non_finite": non_finite(got),
                      "max_abs_vs_ungraphed": {k: float((got[k] - want[k]).abs().nan_to_num(float("inf")).max())
                                               for k in want}}
        tick = variants[name]
        rows[name]["timeline"] = asdict(profile_ticks(lambda r=tick: [v.cpu() for v in r.run_raw(raw, init).values()]))
    report = {"gpu": torch.cuda.get_device_name(), "iters": args.iters, "variants": rows,
              "reference_non_finite": non_finite(want)}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    for name, row in rows.items():
        t = row["timeline"]
        print(f"{name:>26}: p50 {row['p50_ms']:.2f} ms, p90 {row['p90_ms']:.2f} ms; vs the ungraphed runner "
              f"{max(row['max_abs_vs_ungraphed'].values()):.3g}; non-finite {row['non_finite']}")
        print(f"{'':>26}  profiled tick {t['wall_ms']:.2f} ms: GPU busy {t['busy_ms']:.2f}, launch gaps "
              f"{t['gaps_ms']:.2f}, stalls {t['stalls_ms']:.2f}, lead-in {t['lead_ms']:.2f}, tail {t['tail_ms']:.2f}, "
              f"{t['activities']:.0f} activities; worst stalls {t['worst_stalls'][:3]}")
    print(f"ungraphed runner non-finite: {report['reference_non_finite']}")


if __name__ == "__main__":
    main()
