"""Steady-state latency of the TorchScript tokenizer stage (`preprocess/eagle2_tokenizer.pt`), on this machine.

A timing, not a test: it moved out of tests/test_tokenizer_script.py, where a wall-clock bound on a shared
2-core machine failed for reasons unrelated to the code. Exports the stage from an Eagle tokenizer dir (the real
one via --eagle_path, else a freshly trained tiny BPE), reloads it like a runtime would, warms it up (TorchScript's
profiling executor optimises over the first calls), then times single-instruction calls.

    python benchmarks/tokenizer_latency.py --eagle_path ../shared/data/eagle2_hg_model --calls 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gr00t_export.families.n1_5.preprocess.tokenizer import EagleTokenizer
from gr00t_export.families.n1_5.preprocess.tokenizer_script import export_tokenizer
from gr00t_export.text.tiny import train_tiny_tokenizer

INSTRUCTION = "pick the pear from the counter and place it in the basket"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eagle_path", type=Path, help="Eagle 2.5 tokenizer dir (default: a tiny trained BPE)")
    p.add_argument("--instruction", default=INSTRUCTION)
    p.add_argument("--views", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (a robot's host runs this inline)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="tokenizer_latency_") as tmp:
        eagle_dir = args.eagle_path
        if eagle_dir is None:
            eagle_dir = Path(tmp) / "eagle"
            eagle_dir.mkdir()
            train_tiny_tokenizer(eagle_dir, vocab_size=1024, seed=0)
        tokenizer = EagleTokenizer.from_dir(eagle_dir)
        module = torch.jit.load(str(export_tokenizer(tokenizer, args.views, Path(tmp) / "eagle2_tokenizer.pt")))
        first = []
        for _ in range(args.warmup):
            start = time.perf_counter()
            module([args.instruction])
            first.append((time.perf_counter() - start) * 1e3)
        times = []
        for _ in range(args.calls):
            start = time.perf_counter()
            module([args.instruction])
            times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    figures = {"tokenizer": str(args.eagle_path or "tiny BPE"), "views": args.views, "threads": args.threads,
               "warmup_ms": [round(t, 3) for t in first], "calls": args.calls,
               "median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))],
               "min_ms": times[0], "max_ms": times[-1]}
    print(f"tokenizer stage ({figures['tokenizer']}, {args.views} view(s), {args.threads} thread(s)): median "
          f"{figures['median_ms']:.3f} ms, p90 {figures['p90_ms']:.3f} ms over {args.calls} calls; warm-up calls "
          f"{', '.join(f'{t:.1f}' for t in first)} ms")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
