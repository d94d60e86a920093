"""Export a GR00T N1.5 checkpoint for deployment: build the stages, validate them, write the IGG config.

Copy this file and edit it for your robot; every step is one library call.

    python export_examples/gr00t_model/export_gr00t_model.py \\
        --model_path /path/to/GR00T-N1.5-3B --dataset_path demo_data/robot_sim.PickNPlace \\
        --save_model_path exported_gr00t_model

With no --model_path it makes the tiny demo checkpoint (random weights, real layout), and with no
--dataset_path a small synthetic LeRobot dataset, so the whole flow runs anywhere in about a minute.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from gr00t_export.errors import Gr00tExportError, InputError
from gr00t_export.pipeline.build import BuildOptions, build
from gr00t_export.pipeline.igg import check_igg_config, emit_igg_config

VIDEO_BACKENDS = ("pyav",)  # the dataset reader decodes with PyAV; decord/torchvision are not used here


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset_path", type=Path, default=None,
                   help="LeRobot v2 dataset: the export example and the validation steps [default: synthetic]")
    p.add_argument("--model_path", type=Path, default=None,
                   help="GR00T N1.5 checkpoint dir [default: make the tiny demo checkpoint]")
    p.add_argument("--save_model_path", type=Path, default=Path("exported_gr00t_model"),
                   help="where the artifact dir is written")
    p.add_argument("--embodiment_tag", default="gr1", help="embodiment tag of the checkpoint's metadata")
    p.add_argument("--modality_config", default="fourier_gr1_arms_only",
                   help="data config name or a modality YAML file")
    p.add_argument("--video_backend", default="pyav", help="video decoder of the dataset reader: pyav")
    p.add_argument("--plot_actions", nargs="+", default=["action.left_arm", "action.right_arm"],
                   help="action keys to plot in the validation report")
    p.add_argument("--num_plot_steps", type=int, default=30, help="dataset steps validated and plotted")
    p.add_argument("--precision", default="fp32", help="fp32, fp16 or bf16 for the ONNX stages")
    p.add_argument("--frequency", type=float, default=20.0, help="control rate written into the IGG config (Hz)")
    p.add_argument("--force", action="store_true", help="replace an existing --save_model_path")
    return p.parse_args(argv)


def demo_inputs(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The tiny checkpoint (and a synthetic dataset) beside the output when the user gave none."""
    from gr00t_export.data.synthetic import make_dataset
    from gr00t_export.families.n1_5.embodiments import load_modality_config
    from gr00t_export.families.n1_5.synthetic import make_checkpoint

    root = args.save_model_path.resolve().parent / f"{args.save_model_path.name}_demo_inputs"
    dataset = args.dataset_path
    if dataset is None:
        dataset = root / "dataset"
        if not (dataset / "meta" / "info.json").is_file():
            print(f"making a synthetic dataset in {dataset}")
            make_dataset(dataset, load_modality_config(args.modality_config))
    model = args.model_path
    if model is None:
        model = root / "tiny_checkpoint"
        if not (model / "config.json").is_file():
            print(f"making the tiny demo checkpoint in {model}")
            make_checkpoint(model, "tiny", 0, args.embodiment_tag, args.modality_config, dataset_path=dataset,
                            force=True, show_progress=False)
    return model, dataset


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.video_backend not in VIDEO_BACKENDS:
        raise InputError(f"--video_backend {args.video_backend!r} is not supported; use one of "
                         f"{', '.join(VIDEO_BACKENDS)} (frames are decoded with PyAV)")
    if args.num_plot_steps < 1:
        raise InputError(f"--num_plot_steps must be >= 1, got {args.num_plot_steps}")
    model_path, dataset_path = demo_inputs(args)

    # 1. build: checkpoint -> TorchScript/ONNX stages, each checked against PyTorch; also writes igg/*.yaml
    result = build(BuildOptions(model_path=model_path, output=args.save_model_path, embodiment_tag=args.embodiment_tag,
                                modality_config=args.modality_config, precision=args.precision,
                                dataset_path=dataset_path, force=args.force),
                   on_step=lambda label: print(f"build: {label}", flush=True))
    print(f"built {result.output} in {result.seconds:.1f} s")

    # 2. validate against the PyTorch reference on dataset steps (when this version has the validator)
    passed = True
    if importlib.util.find_spec("gr00t_export.pipeline.validate") is not None:
        from gr00t_export.pipeline.validate import validate

        report = validate(result.output, model_path=model_path, dataset_path=dataset_path,
                          num_steps=args.num_plot_steps, plot_actions=args.plot_actions)
        passed = report.passed
    else:
        print("gr00t_export.pipeline.validate is not available in this version: skipping validation")

    # 3. the IGG config again, now with the validation's per-stage timings
    config = emit_igg_config(result.output, frequency_hz=args.frequency, measure_timings=False)
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
