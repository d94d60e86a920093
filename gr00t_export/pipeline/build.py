"""`gr00t-export build`: load -> partition -> export/optimise -> manifest; the output appears whole or not at all."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from gr00t_export import __version__
from gr00t_export.errors import InputError, ValidationFailure
from gr00t_export.families.n1_5.checkpoint import load_model, open_checkpoint
from gr00t_export.families.n1_5.config import config_to_dict
from gr00t_export.families.n1_5.embodiments import ModalityConfig, modality_config_to_dict
from gr00t_export.families.n1_5.metadata import EmbodimentMetadata
from gr00t_export.families.n1_5.partition import graph_spec_path, partition
from gr00t_export.families.n1_5.policy import Observation, Transforms, resolve_policy_inputs
from gr00t_export.families.n1_5.preprocess.rotation import convert
from gr00t_export.families.n1_5.preprocess.tokenizer import EagleTokenizer
from gr00t_export.pipeline.export import ONNX_OPS, ExportedStage, export_partition
from gr00t_export.runtime.runner import MANIFEST, SPEC_FILE, manifest_seal, ort_providers, read_manifest
from gr00t_export.spec import PRECISIONS, GraphSpec, Partition
from gr00t_export.util import atomic_output_dir, check_output_dir, sha256_file


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


def example_observation(modality: ModalityConfig, metadata: EmbodimentMetadata, dataset_path: Path | None
                        ) -> Observation:
    """A real dataset step when a dataset is given; else a seeded frame and the metadata's mean state."""
    if dataset_path is not None:
        from gr00t_export.data.lerobot import LeRobotDataset

        dataset = LeRobotDataset(dataset_path)
        episode, step = next(iter(dataset.iter_steps(modality, 1)))
        return dataset.observation(episode, step, modality)
    rng = np.random.default_rng(0)
    obs: Observation = {}
    for key in modality.video_keys:
        w, h = metadata.modalities.get("video", {}).get(ModalityConfig.short(key), {}).get("resolution", [256, 256])
        obs[key] = rng.integers(0, 256, (modality.state_horizon, h, w, 3), dtype=np.uint8)  # each camera its size
    for key in modality.state_keys:
        short = ModalityConfig.short(key)
        stats = metadata.state.get(short)
        mean = stats.mean if stats is not None else np.zeros(metadata.state_dim(short))
        rotation = metadata.entry("state", short)["rotation_type"]
        if rotation is not None:  # the mean of rotations is no rotation: take the identity, in its representation
            mean = convert(np.zeros(3), "axis_angle", rotation)
        obs[key] = np.repeat(mean[None], modality.state_horizon, axis=0)
    if modality.language_key:
        obs[modality.language_key] = np.array(["pick up the object and place it on the plate"])
    return obs


def seq_len_profile(tokenizer: EagleTokenizer, views: int, spec: GraphSpec) -> dict[str, int]:
    """min/opt/max prompt lengths for TensorRT profiles, measured with the build's own tokenizer."""
    prof = spec.profiles
    base = tokenizer.encode([""], views)[0].shape[1]
    typical = tokenizer.encode([prof["typical_instruction"]], views)[0].shape[1]
    return {"min": int(base), "opt": int(typical), "max": int(base + prof["max_instruction_tokens"])}


def resolve_profiles(tokenizer: EagleTokenizer, spec: GraphSpec, max_batch: int, build_views: int | None = None
                     ) -> dict[str, dict]:
    """One TensorRT profile per view count of the spec, plus the build's own (`build_views`)."""
    profiles = {}
    for views in sorted({*spec.profiles["views"], *([build_views] if build_views else [])}):
        batch = {"min": 1, "opt": 1, "max": max_batch}
        profiles[f"views_{views}"] = {
            "batch": batch,
            "num_images": {k: v * views for k, v in batch.items()},
            "seq_len": seq_len_profile(tokenizer, views, spec),
        }
    return profiles


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    versions = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    try:
        import onnxslim

        versions["onnxslim"] = onnxslim.__version__
    except ImportError:
        pass
    return versions


def file_entries(root: Path) -> list[dict]:
    return [{"path": str(f.relative_to(root)), "sha256": sha256_file(f), "size": f.stat().st_size}
            for f in sorted(root.rglob("*")) if f.is_file() and f.name != MANIFEST]


def write_manifest(root: Path, opts: BuildOptions, part: Partition, stages: list[ExportedStage], fingerprint: str,
                   modality: ModalityConfig, metadata: EmbodimentMetadata, model_cfg: dict,
                   profiles: dict, quantization: dict | None = None) -> dict:
    manifest = {
        "format_version": 1,
        "tool": {"name": "gr00t-export", "version": __version__},
        "libraries": library_versions(),
        "created_unix": int(time.time()),
        "source": {"model_path": str(opts.model_path.resolve()), "fingerprint_sha256": fingerprint},
        "embodiment_tag": modality.embodiment_tag,
        "modality_config": modality_config_to_dict(modality),
        "metadata": metadata.to_dict(),
        "precision": opts.precision,
        "onnx_ops": opts.onnx_ops,
        "quantization": quantization or {},
        "views": part.views,
        "max_batch": opts.max_batch,
        "model": {"action_horizon": model_cfg["action_head"]["action_horizon"],
                  "action_dim": model_cfg["action_head"]["action_dim"],
                  "denoising_steps": model_cfg["action_head"]["num_inference_timesteps"], "config": model_cfg},
        "profiles": profiles,
        "stages": [asdict(s) | {"passed": s.passed} for s in stages],
        "files": file_entries(root),
    }
    manifest = json.loads(json.dumps(manifest))
    manifest["manifest_sha256"] = manifest_seal(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def build_inputs(opts: BuildOptions) -> dict[str, Path | None]:
    """What a build reads: its output may not be, contain or lie inside any of these."""
    return {"--model_path": opts.model_path, "--eagle_path": opts.eagle_path, "--dataset_path": opts.dataset_path}


def check_tokenizer_artifact(root: Path, spec: GraphSpec, tokenizer: EagleTokenizer) -> None:
    """The written tokenizer stage, reloaded, must give the Python tokenizer's ids on the self-check prompts.

    The export check only compares it with its own eager module on one instruction; this compares it with
    `EagleTokenizer` (the reference) on instructions chosen to cross every special case of the BPE split.
    """
    from gr00t_export.families.n1_5.preprocess.tokenizer_script import check_against_python

    rel = spec.stage("eagle2_tokenizer").file
    try:
        check_against_python(torch.jit.load(str(root / rel)), tokenizer)
    except ValidationFailure as err:
        raise ValidationFailure(f"{rel} failed its self-check: {err}; nothing was written") from None


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
    ckpt = open_checkpoint(opts.model_path, opts.eagle_path, opts.denoising_steps)
    modality, metadata = resolve_policy_inputs(ckpt, opts.embodiment_tag, opts.modality_config)
    views = len(modality.video_keys)
    if opts.views is not None and opts.views != views:
        raise InputError(f"--views {opts.views} but modality config {modality.name!r} has {views} camera view(s); "
                         "use a modality config with that many video keys")
    tokenizer = EagleTokenizer.from_dir(ckpt.eagle_dir)
    transforms = Transforms(modality, metadata, tokenizer, ckpt.config.action_head.max_state_dim)
    obs = example_observation(modality, metadata, opts.dataset_path)
    raw = transforms.reader(obs)
    model, _ = load_model(ckpt, dtype=PRECISIONS[export_precision], device=opts.device)
    step("partition")
    part = partition(model, transforms, export_precision)
    ah = ckpt.config.action_head
    init_actions = torch.randn((raw.batch, ah.action_horizon, ah.action_dim),
                               generator=torch.Generator().manual_seed(0))
    fingerprint = ckpt.fingerprint()
    with atomic_output_dir(opts.output, force=opts.force, inputs=build_inputs(opts)) as tmp:
        stages = export_partition(part, raw, init_actions, tmp, simplify=opts.simplify,
                                  on_stage=lambda name: step(f"export {name}"), device=opts.device,
                                  release_weights=True, onnx_ops=opts.onnx_ops)
        failed = [s for s in stages if not s.passed]
        if failed:
            worst = failed[0]
            raise ValidationFailure(f"stage {worst.name} drifts from its PyTorch twin by {worst.max_abs_diff:.3g} "
                                    f"(> {worst.atol:g} for {opts.precision}); nothing was written")
        step("self-check the tokenizer stage")
        check_tokenizer_artifact(tmp, part.spec, tokenizer)
        quant = {}
        if opts.precision == "fp8":
            from gr00t_export.pipeline.calibrate import quantize_build, report_dict

            calib = opts.calib_observations
            if not calib:
                from gr00t_export.data.lerobot import LeRobotDataset

                dataset = LeRobotDataset(opts.dataset_path)
                calib = [dataset.observation(e, s, modality) for e, s in dataset.iter_steps(modality, opts.calib_steps)]
            step(f"calibrate fp8 on {len(calib)} observations")
            reports = quantize_build(tmp, part.spec, calib, transforms.reader, (ah.action_horizon, ah.action_dim),
                                     log=step, providers=tuple(ort_providers(opts.device, strict=False)))
            quant = {name: report_dict(r) for name, r in reports.items()}
            for s in stages:
                if s.name in reports:
                    s.precision = "fp8"
        step("manifest")
        (tmp / SPEC_FILE).write_bytes(graph_spec_path().read_bytes())
        profiles = resolve_profiles(tokenizer, part.spec, opts.max_batch, views)
        manifest = write_manifest(tmp, opts, part, stages, fingerprint, modality, metadata,
                                  config_to_dict(ckpt.config), profiles, quant)
        step("emit IGG config")
        from gr00t_export.pipeline.igg import emit_igg_config

        emit_igg_config(tmp)  # adds igg/* to manifest.json, so the YAML is hashed with the rest
        manifest = read_manifest(tmp)
        step(None)
        result = BuildResult(Path(opts.output), stages, time.perf_counter() - start, manifest, step.seconds, tmp)
        if before_commit is not None:
            before_commit(result)
    result.staging_dir = None
    return result
