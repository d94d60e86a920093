"""Stage 3 — export: each stage module to its artifact (TorchScript or ONNX), checked against its twin.

Every stage is exported from the feeds it actually receives when the whole pipeline runs on a real
observation, and the written artifact is re-loaded and run on those same feeds before it is accepted.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch

from gr00t_export.compare import compare_outputs, worst
from gr00t_export.errors import ValidationFailure
from gr00t_export.families.base import RawInputs
from gr00t_export.pipeline.lowering import onnxruntime_contrib_ops
from gr00t_export.pipeline.optimize import OptimizeReport, consolidate, optimize
from gr00t_export.runtime.runner import OnnxStageRunner, TorchStageRunner, ort_providers, run_pipeline
from gr00t_export.spec import Partition, StageSpec
from gr00t_export.util import save_torchscript

# How far an artifact may drift from its PyTorch twin on the export inputs before the build fails.
EXPORT_ATOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1}
# ONNX dialects: plain opset ops (TensorRT parses and fuses them), or onnxruntime's fused contrib kernels
ONNX_OPS = ("standard", "onnxruntime")


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[int]


@dataclass
class ExportedStage:
    name: str
    file: str
    format: str
    precision: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    max_abs_diff: float
    atol: float
    optimize: OptimizeReport | None = None
    extra_files: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol


def _info(name: str, value: Any) -> TensorInfo:
    if isinstance(value, torch.Tensor):
        return TensorInfo(name, str(value.dtype).removeprefix("torch."), list(value.shape))
    return TensorInfo(name, "string", [len(value)])


def max_abs_diff(got: dict[str, Any], expected: dict[str, Any]) -> float:
    """Largest |artifact - twin| over a stage's outputs; a missing or mis-shaped output is a ValidationFailure."""
    comparisons = compare_outputs(got, expected, check_dtypes=False)
    for c in comparisons.values():
        if c.problem:
            raise ValidationFailure(f"output {c.name}: {c.problem}")
    return worst(comparisons).max_abs if comparisons else 0.0


def stage_device(stage: StageSpec, device: str | torch.device) -> torch.device:
    """ONNX stages run where the model is; the small TorchScript pre/post stages always trace on CPU."""
    return torch.device(device) if stage.format == "onnx" else torch.device("cpu")


class _RecordingRunner(TorchStageRunner):
    """A twin that keeps what it returned, so the export check reuses the trace run instead of a second one."""

    def infer(self, feeds):
        self.outputs = super().infer(feeds)
        return self.outputs


def trace_feeds(part: Partition, raw: RawInputs, init_actions: torch.Tensor, device: str | torch.device = "cpu",
                outputs: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Runs the eager twins end to end and records what each stage receives (and, into `outputs`, returns)."""
    twins = {s.name: _RecordingRunner(part.modules[s.name], s, stage_device(s, device)) for s in part.spec.stages}
    trace: dict[str, dict[str, Any]] = {}
    run_pipeline(part.spec, twins, raw, init_actions, trace)
    if outputs is not None:
        outputs.update({name: twin.outputs for name, twin in twins.items()})
    return trace


def export_torchscript(module: torch.nn.Module, stage: StageSpec, feeds: dict[str, Any], path: Path) -> torch.nn.Module:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(module)
        save_torchscript(scripted, path)
        return torch.jit.load(str(path))


def export_onnx(module: torch.nn.Module, stage: StageSpec, feeds: dict[str, Any], path: Path, opset: int,
                onnx_ops: str = "standard") -> None:
    """Legacy (TorchScript-based) exporter: it keeps shared weights as one initializer when a loop is unrolled
    and honours dynamic axes; >2 GB graphs are re-saved with all weights in one `.onnx_data` file.

    `onnx_ops="onnxruntime"` writes attention, RoPE and bias+GELU as onnxruntime's fused contrib ops (see
    `pipeline.lowering`); "standard" keeps plain ONNX, the form TensorRT parses and fuses.
    """
    args = tuple(feeds[n] for n in stage.input_names)
    kernels = onnxruntime_contrib_ops(module) if onnx_ops == "onnxruntime" else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as scratch:
        raw_path = Path(scratch) / path.name
        with warnings.catch_warnings(), torch.no_grad(), kernels:
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(raw_path), dynamo=False, opset_version=opset,
                input_names=stage.input_names, output_names=stage.output_names,
                dynamic_axes=stage.dynamic_axes(), do_constant_folding=True,
            )
        consolidate(raw_path, path)


def stamp_io_dims(path: Path, stage: StageSpec, shapes: dict[str, tuple[int, ...]]) -> None:
    """Graph inputs/outputs get the spec's dim names where they vary and concrete sizes elsewhere.

    The exporter invents names for dims it cannot infer (e.g. `LayerNormalizationvit_embeds_dim_1`); onnxslim
    would fold them, but big graphs skip it. Only the small proto is rewritten, never the weights.
    """
    model = onnx.load(str(path), load_external_data=False)
    varying = {"batch", "num_images", "seq_len"}
    specs = {t.name: t for t in (*stage.inputs, *stage.outputs)}
    for value in (*model.graph.input, *model.graph.output):
        spec, shape = specs.get(value.name), shapes.get(value.name)
        if spec is None or shape is None:
            continue
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            name = spec.shape[axis] if axis < len(spec.shape) else None
            if name in varying:
                dim.dim_param = name
            else:
                dim.dim_value = int(shape[axis])
    onnx.save_model(model, str(path))


def export_partition(part: Partition, raw: RawInputs, init_actions: torch.Tensor, out_dir: Path,
                     simplify: bool = True, on_stage: Callable[[str], None] | None = None,
                     device: str = "cpu", release_weights: bool = False, onnx_ops: str = "standard"
                     ) -> list[ExportedStage]:
    """Writes every stage of `part` under `out_dir` (paths from the graph spec) and checks each one.

    With `device="cuda"` the model stages trace and export on the GPU and are checked with onnxruntime's
    CUDA EP when it is installed (the 3B graphs are slow on a CPU in fp16). With `release_weights`, a model
    stage's weights are dropped once its artifact is checked, so a 3B build never holds the whole model and
    the exporter's copy of the biggest stage at once.
    """
    twin_outputs: dict[str, dict[str, Any]] = {}
    trace = trace_feeds(part, raw, init_actions, device, twin_outputs)
    providers = ort_providers(device, strict=False)
    atol = EXPORT_ATOL[part.precision]
    results = []
    for stage in part.spec.stages:
        if on_stage:
            on_stage(stage.name)
        module, feeds, path = part.modules[stage.name], trace[stage.name], out_dir / stage.file
        path.parent.mkdir(parents=True, exist_ok=True)
        expected = twin_outputs[stage.name]
        report = None
        if stage.format == "torchscript":
            loaded = export_torchscript(module, stage, feeds, path)
            got = TorchStageRunner(loaded, stage).infer(feeds)
        else:
            raw_path = path.with_name(path.stem + ".raw.onnx")
            dev = stage_device(stage, device)
            export_onnx(module, stage, {k: v.to(dev) for k, v in feeds.items()}, raw_path, part.spec.opset,
                        onnx_ops)
            numpy_feeds = {k: v.cpu().numpy() for k, v in feeds.items()}
            report = optimize(raw_path, path, numpy_feeds, stage.output_names, atol=atol / 10, simplify=simplify,
                              fuse_norms=onnx_ops == "onnxruntime")
            for f in (raw_path, raw_path.with_name(raw_path.name + "_data")):
                f.unlink(missing_ok=True)
            got = OnnxStageRunner(path, stage, providers).infer(feeds)
            stamp_io_dims(path, stage, {k: tuple(v.shape) for k, v in (*feeds.items(), *got.items())})
            if release_weights:
                module.to("meta")
        for name, value in got.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
                raise ValidationFailure(f"stage {stage.name} output {name} has NaN/inf in {part.precision}; "
                                        "export in fp32 or report this model")
        data = path.with_name(path.name + "_data")
        results.append(ExportedStage(
            name=stage.name, file=stage.file, format=stage.format, precision=part.precision,
            inputs=[_info(k, v) for k, v in feeds.items()], outputs=[_info(k, v) for k, v in got.items()],
            max_abs_diff=max_abs_diff(got, expected), atol=atol, optimize=report,
            extra_files=[str(Path(stage.file).with_name(data.name))] if data.exists() else [],
        ))
    return results
