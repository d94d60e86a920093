"""Export a GR00T N1.5 policy fine-tuned on a custom robot: a Unitree G1 waving (upper body + hands).

The robot is described by `unitree_g1_v2.yaml` beside this file (keys, normalisation, joint names) under the
`new_embodiment` tag. On first run a synthetic `g1_wave/` dataset is generated (waving trajectories and
rendered frames); with no --model_path a tiny checkpoint whose statistics come from that dataset stands in
for your fine-tuned one. The export is validated on `action.upper_body` and `action.hands` and written to
`handwave_model/`, IGG config included.

    python export_examples/custom_modality/export_handwave_gr00t.py --model_path /path/to/finetuned_g1
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from utils import CONFIG_PATH, HERE, load_config, make_wave_dataset

from gr00t_export.errors import Gr00tExportError, InputError
from gr00t_export.pipeline.build import BuildOptions, build
from gr00t_export.pipeline.igg import check_igg_config, emit_igg_config

PLOT_ACTIONS = ["action.upper_body", "action.hands"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_path", type=Path, default=None,
                   help="fine-tuned checkpoint for unitree_g1_v2 [default: a tiny stand-in]")
    p.add_argument("--dataset_path", type=Path, default=HERE / "g1_wave",
                   help="LeRobot dataset; generated here on first run when missing")
    p.add_argument("--save_model_path", type=Path, default=HERE / "handwave_model", help="artifact dir to write")
    p.add_argument("--num_plot_steps", type=int, default=30, help="dataset steps validated and plotted")
    p.add_argument("--episodes", type=int, default=2, help="episodes of a generated g1_wave dataset")
    p.add_argument("--episode_length", type=int, default=60, help="steps per generated episode (20 Hz)")
    p.add_argument("--precision", default="fp32", help="fp32, fp16 or bf16 for the ONNX stages")
    p.add_argument("--force", action="store_true", help="replace an existing --save_model_path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.num_plot_steps < 1:
        raise InputError(f"--num_plot_steps must be >= 1, got {args.num_plot_steps}")
    cfg = load_config()
    if not (args.dataset_path / "meta" / "info.json").is_file():
        print(f"generating the g1_wave dataset in {args.dataset_path}")
        make_wave_dataset(args.dataset_path, cfg, episodes=args.episodes, length=args.episode_length)
    model_path = args.model_path
    if model_path is None:
        from gr00t_export.families.n1_5.synthetic import make_checkpoint

        model_path = args.save_model_path.resolve().parent / f"{args.save_model_path.name}_demo_inputs" / "checkpoint"
        if not (model_path / "config.json").is_file():
            print(f"making a tiny stand-in checkpoint for {cfg.name} in {model_path}")
            make_checkpoint(model_path, "tiny", 0, cfg.embodiment_tag, CONFIG_PATH, dataset_path=args.dataset_path,
                            force=True, show_progress=False)

    result = build(BuildOptions(model_path=model_path, output=args.save_model_path, embodiment_tag=cfg.embodiment_tag,
                                modality_config=str(CONFIG_PATH), precision=args.precision,
                                dataset_path=args.dataset_path, force=args.force),
                   on_step=lambda label: print(f"build: {label}", flush=True))
    print(f"built {result.output} in {result.seconds:.1f} s")

    passed = True
    if importlib.util.find_spec("gr00t_export.pipeline.validate") is not None:
        from gr00t_export.pipeline.validate import validate

        report = validate(result.output, model_path=model_path, dataset_path=args.dataset_path,
                          num_steps=args.num_plot_steps, plot_actions=PLOT_ACTIONS)
        passed = report.passed
    else:
        print("gr00t_export.pipeline.validate is not available in this version: skipping validation")

    config = emit_igg_config(result.output, measure_timings=False)  # picks up the validation timings
    problems = check_igg_config(config)
    for problem in problems:
        print(f"IGG config problem: {problem}")
    print(f"IGG config: {config} ({'ok' if not problems else f'{len(problems)} problem(s)'})")
    print(f"done in {time.perf_counter() - start:.1f} s; inspect with: gr00t-export inspect {result.output}")
    return 0 if passed and not problems else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Gr00tExportError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
