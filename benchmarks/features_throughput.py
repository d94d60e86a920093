"""Throughput of `gr00t-export features` on PickNPlace (steps/s), per batch size, on one machine.

Makes a random-weight checkpoint of the preset with PickNPlace's statistics (and the real Eagle tokenizer when
given, so prompts have their real length), builds it in fp16, then runs every step of the chosen episodes through
the backbone at each batch size, and checks that batching did not change the features (max abs difference to
batch 1 on the first steps). Writes `features_throughput.json` under --out and prints a table.

    python benchmarks/features_throughput.py --dataset_path ../shared/data/robot_sim.PickNPlace \
        --eagle_path ../shared/data/eagle2_hg_model --work /tmp/ft --out /tmp/ft --preset tiny
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gr00t_export.tools.features import FeaturesFile, FeaturesOptions, extract_features

CONFIG = "fourier_gr1_arms_only"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset_path", type=Path, required=True)
    ap.add_argument("--eagle_path", type=Path, default=None)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="n1.5-3b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch_sizes", default="1,8,32")
    ap.add_argument("--episodes", default=None, help="e.g. 0-4 (default: every episode)")
    ap.add_argument("--max_steps", type=int, default=None)
    ap.add_argument("--artifacts", type=Path, default=None,
                    help="an existing fp16 build of a gr1 (fourier_gr1_arms_only) checkpoint: no make/build here")
    ap.add_argument("--compare_steps", type=int, default=64, help="steps whose features are compared to batch 1")
    args = ap.parse_args()

    from gr00t_export.families import family_for_preset
    from gr00t_export.pipeline.build import BuildOptions, build
    from gr00t_export.tools.features import parse_episodes

    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report: dict = {"device": gpu, "torch": torch.__version__, "preset": args.preset, "runs": []}
    ckpt, built = args.work / f"ckpt_{args.preset}", args.work / f"build_{args.preset}_fp16"
    if args.artifacts is not None:
        built, report["preset"] = args.artifacts, f"build {args.artifacts.name}"
    elif not (ckpt / "config.json").exists():
        start = time.perf_counter()
        family_for_preset(args.preset).make_checkpoint(ckpt, args.preset, 0, embodiment="gr1", modality_config=CONFIG,
                                                       dataset_path=args.dataset_path, eagle_path=args.eagle_path,
                                                       force=True, show_progress=False)
        log(f"checkpoint in {time.perf_counter() - start:.1f} s")
    if args.artifacts is None and not (built / "manifest.json").exists():
        start = time.perf_counter()
        build(BuildOptions(model_path=ckpt, output=built, precision="fp16", modality_config=CONFIG,
                           device=args.device, simplify=False, force=True), on_step=log)
        log(f"fp16 build in {time.perf_counter() - start:.1f} s")
    files = {}
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        out = args.work / f"features_b{batch}.safetensors"
        out.unlink(missing_ok=True)
        result = extract_features(FeaturesOptions(built, args.dataset_path, out, episodes=parse_episodes(args.episodes),
                                                  max_steps=args.max_steps, batch_size=batch, device=args.device,
                                                  show_progress=False), log=log)
        files[batch] = out
        run = {"batch_size": batch, "steps": result.computed_steps, "seconds": result.compute_seconds,
               "steps_per_s": result.steps_per_second, "backbone_steps_per_s": result.backbone_steps_per_second,
               "file_mib": out.stat().st_size / 2**20}
        report["runs"].append(run)
        log(json.dumps(run))
        (args.out / "features_throughput.json").write_text(json.dumps(report, indent=2))
    reference = FeaturesFile(files[min(files)])
    meta = reference.metadata
    report["dim"], report["dtype"] = meta["dim"], meta["dtype"]
    report["tokens_per_step"] = sorted({reference[i].features.shape[0] for i in range(len(reference))})
    for run in report["runs"]:
        other = FeaturesFile(files[run["batch_size"]])
        steps = min(args.compare_steps, len(other))
        diffs = [(other[i].features.float() - reference[i].features.float()).abs().max().item() for i in range(steps)]
        run["max_abs_diff_vs_smallest_batch"] = max(diffs)
    (args.out / "features_throughput.json").write_text(json.dumps(report, indent=2))
    print(f"\nfeatures on {gpu}, {report['preset']} fp16, {report['runs'][0]['steps']} PickNPlace steps, "
          f"{report['tokens_per_step']} tokens x {report['dim']} per step")
    print("batch | steps/s | backbone alone steps/s | max |diff| vs smallest batch")
    for run in report["runs"]:
        print(f"{run['batch_size']:5d} | {run['steps_per_s']:7.1f} | {run['backbone_steps_per_s']:22.1f} | "
              f"{run['max_abs_diff_vs_smallest_batch']:.3g}")


if __name__ == "__main__":
    main()
