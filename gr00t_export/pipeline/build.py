"""`gr00t-export build`: load -> partition -> export/optimise -> manifest; the output appears whole or not at all."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gr00t_export.errors import InputError, ValidationFailure
from gr00t_export.families import family_for_checkpoint
from gr00t_export.families.base import OpenedPolicy
from gr00t_export.manifest import Manifest
from gr00t_export.pipeline.export import ONNX_OPS, ExportedStage, export_partition
from gr00t_export.runtime.runner import ort_providers
from gr00t_export.spec import PRECISIONS, SPEC_FILE, Partition
from gr00t_export.util import atomic_output_dir, check_output_dir


@dataclass
class BuildOptions:
    model_path: Path
    output: Path
    embodiment_tag: str | None = None  # None: the modality config's, or the metadata's only tag
    modality_config: str | None = None  # None: the built-in data config the metadata's keys match
    eagle_path: Path | None = None
    precision: str = "fp32"
    views: int | None = None
    max_batch: int = 1
    dataset_path: Path | None = None
    force: bool = False
    simplify: bool = True
    device: str = "cpu"
    calib_steps: int = 16  # fp8: dataset steps the activation ranges are calibrated on
    calib_observations: list | None = None  # fp8: observations to calibrate on instead of --dataset_path steps
    onnx_ops: str = "standard"  # "onnxruntime": fused com.microsoft attention/GELU kernels (not TensorRT-parsable)
    denoising_steps: int | None = None  # Euler steps unrolled in the denoiser; None: the checkpoint's own count
    time_stages: bool = True  # without validation, time each stage on the CPU for the IGG sidecar (minutes on 3B)


@dataclass
class BuildResult:
    output: Path
    stages: list[ExportedStage]
    seconds: float
    manifest: dict = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)  # wall time of each on_step step, in order
    staging_dir: Path | None = None  # where the build is while `before_commit` runs (renamed to `output` after)


class _StepClock:
    """Calls `on_step(label)` and records how long each step took (until the next one starts)."""

    def __init__(self, on_step: Callable[[str], None] | None):
        self.on_step = on_step or (lambda label: None)
        self.seconds: dict[str, float] = {}
        self._label: str | None = None
        self._mark = 0.0

    def __call__(self, label: str | None) -> None:
        now = time.perf_counter()
        if self._label is not None:
            self.seconds[self._label] = self.seconds.get(self._label, 0.0) + now - self._mark
        self._label, self._mark = label, now
        if label is not None:
            self.on_step(label)


def manifest_body(opts: BuildOptions, opened: OpenedPolicy, part: Partition, stages: list[ExportedStage],
                  profiles: dict, quantization: dict | None = None) -> dict:
    """What the build is: the family's own entries (statistics, key layout, model config) and the generic ones."""
    return {
        "family": opened.family.name,
        "source": {"model_path": str(opts.model_path.resolve()), "fingerprint_sha256": opened.fingerprint()},
        **opened.manifest_entries(),
        "interface": opened.interface.to_dict(),
        "precision": opts.precision,
        "onnx_ops": opts.onnx_ops,
        "quantization": quantization or {},
        "views": part.views,
        "max_batch": opts.max_batch,
        "profiles": profiles,
        "stages": [asdict(s) | {"passed": s.passed} for s in stages],
    }


def build_inputs(opts: BuildOptions) -> dict[str, Path | None]:
    """What a build reads: its output may not be, contain or lie inside any of these."""
    return {"--model_path": opts.model_path, "--eagle_path": opts.eagle_path, "--dataset_path": opts.dataset_path}


def build(opts: BuildOptions, on_step: Callable[[str], None] | None = None,
          before_commit: Callable[[BuildResult], None] | None = None) -> BuildResult:
    """The whole staged export; `on_step(label)` is called as each step starts (for progress display).

    `before_commit(result)` runs on the complete build in `result.staging_dir` before it is renamed onto
    `opts.output` (validation runs there): if it raises or is interrupted, nothing is left at `opts.output`.
    """
    start = time.perf_counter()
    step = _StepClock(on_step)
    if opts.precision not in (*PRECISIONS, "fp8"):
        raise InputError(f"unknown --precision {opts.precision!r}; use fp32, fp16, bf16 or fp8")
    if opts.precision == "fp8" and not opts.calib_observations and (opts.dataset_path is None or opts.calib_steps < 1):
        raise InputError("--precision fp8 calibrates on real observations: pass --dataset_path DS "
                         "(and --calib_steps >= 1)")
    if opts.onnx_ops not in ONNX_OPS:
        raise InputError(f"unknown --onnx_ops {opts.onnx_ops!r}; use {' or '.join(ONNX_OPS)}")
    if opts.precision == "fp8" and opts.onnx_ops != "standard":
        raise InputError("--precision fp8 makes TensorRT Q/DQ graphs, which need --onnx_ops standard")
    # fp8 = an fp16 export whose linear layers are then calibrated and quantised to E4M3
    export_precision = "fp16" if opts.precision == "fp8" else opts.precision
    if opts.max_batch < 1:
        raise InputError(f"--max_batch must be >= 1, got {opts.max_batch}")
    check_output_dir(opts.output, opts.force, build_inputs(opts))  # refused before the slow part, not after
    step("load checkpoint")
    family = family_for_checkpoint(opts.model_path)
    opened = family.open(opts.model_path, opts.eagle_path, embodiment_tag=opts.embodiment_tag,
                         modality_config=opts.modality_config, denoising_steps=opts.denoising_steps)
    views = len(opened.interface.video_keys)
    if opts.views is not None and opts.views != views:
        raise InputError(f"--views {opts.views} but config {opened.interface.name!r} has {views} camera view(s); "
                         "use a modality config with that many video keys")
    reader = opened.reader()
    raw = reader(opened.example_observation(opts.dataset_path))
    model = opened.load(PRECISIONS[export_precision], opts.device)
    step("partition")
    part = opened.partition(model, export_precision)
    init_actions = torch.randn((raw.batch, *opened.interface.noise_shape), generator=torch.Generator().manual_seed(0))
    with atomic_output_dir(opts.output, force=opts.force, inputs=build_inputs(opts)) as tmp:
        stages = export_partition(part, raw, init_actions, tmp, simplify=opts.simplify,
                                  on_stage=lambda name: step(f"export {name}"), device=opts.device,
                                  release_weights=True, onnx_ops=opts.onnx_ops)
        failed = [s for s in stages if not s.passed]
        if failed:
            worst = failed[0]
            raise ValidationFailure(f"stage {worst.name} drifts from its PyTorch twin by {worst.max_abs_diff:.3g} "
                                    f"(> {worst.atol:g} for {opts.precision}); nothing was written")
        step("self-check the artifacts")
        opened.check_artifacts(tmp, part.spec)
        quant = {}
        if opts.precision == "fp8":
            from gr00t_export.pipeline.calibrate import quantize_build, report_dict

            calib = opts.calib_observations
            if not calib:
                from gr00t_export.data.lerobot import LeRobotDataset

                dataset = LeRobotDataset(opts.dataset_path)
                keys = opened.interface
                try:
                    steps = dataset.spread_steps(keys, opts.calib_steps)
                except InputError:
                    raise InputError(f"--calib_steps {opts.calib_steps} is more steps than {opts.dataset_path} holds; "
                                     "lower --calib_steps") from None
                calib = [dataset.observation(e, s, keys) for e, s in steps]
            step(f"calibrate fp8 on {len(calib)} observations")
            reports = quantize_build(tmp, part.spec, calib, reader, opened.interface.noise_shape,
                                     log=step, providers=tuple(ort_providers(opts.device, strict=False)))
            quant = {name: report_dict(r) for name, r in reports.items()}
            for s in stages:
                if s.name in reports:
                    s.precision = "fp8"
        step("manifest")
        (tmp / SPEC_FILE).write_bytes(family.graph_spec_path().read_bytes())
        manifest = Manifest.new(manifest_body(opts, opened, part, stages, opened.profiles(part.spec, opts.max_batch),
                                              quant)).write(tmp)
        step(None)
        result = BuildResult(Path(opts.output), stages, time.perf_counter() - start, manifest, step.seconds, tmp)
        if before_commit is not None:
            before_commit(result)
        step("emit IGG config")  # after validation, whose report gives the stage timings (no second timing pass)
        from gr00t_export.pipeline.igg import emit_igg_config

        emit_igg_config(tmp, manifest=manifest, measure_timings=opts.time_stages)
        step(None)
        result.step_seconds, result.seconds = step.seconds, time.perf_counter() - start
    result.staging_dir = None
    return result


def demo_inputs(output: Path, embodiment_tag: str | None = None, modality_config: str | None = None,
                log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """`build --demo`'s checkpoint and dataset: the tiny preset and a synthetic dataset in `demo_inputs/` beside
    `output`, made on the first run and reused after."""
    from gr00t_export.data.synthetic import write_dataset
    from gr00t_export.families import family_for_preset

    root = output.resolve().parent / "demo_inputs"
    model_path, dataset_path = root / "tiny_checkpoint", root / "dataset"
    if not (model_path / "config.json").is_file():
        log(f"making the tiny demo checkpoint in {model_path}")
        family_for_preset("tiny").make_checkpoint(model_path, "tiny", 0, embodiment=embodiment_tag,
                                                  modality_config=modality_config or "fourier_gr1_arms_only",
                                                  force=True, show_progress=False)
    if not (dataset_path / "meta" / "info.json").is_file():
        log(f"making the synthetic demo dataset in {dataset_path}")
        write_dataset(dataset_path, modality_config or "fourier_gr1_arms_only", force=True)
    return model_path, dataset_path


def validate_staged_build(result: BuildResult, model_path: Path, eagle_path: Path | None, dataset_path: Path,
                          verbose: bool = False):
    """Validates the complete build in its staging dir, before the final rename (`before_commit`): Ctrl-C here
    leaves nothing. Reports and console lines name the final path."""
    from gr00t_export.pipeline.validate import validate

    try:
        return validate(result.staging_dir, model_path=model_path, eagle_path=eagle_path, dataset_path=dataset_path,
                        shown_as=result.output, verbose=verbose)
    except InputError as err:
        raise InputError(f"validation of the new build could not start: {err}; nothing was written (build with "
                         "--no-validate, then run `gr00t-export validate` with the options that fit)") from None
