"""The graph spec: the contract between the stages of an exported policy.

A family's `graph_spec.yaml` says which stages exist, their files, tensor names, dtypes and symbolic dims, and
where each input comes from (`external` or `<stage>/<output>`). The exporter, the runners, validation and the IGG
emitter all follow it; `Partition` is a family's policy split into modules that honour it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from gr00t_export.errors import InputError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SPEC_FILE = "graph_spec.yaml"  # the copy every build carries
PER_VIEW_DIMS = ("height", "width")  # a per-camera input's own resolution: height_<i>, width_<i>


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype a stage partition is traced in (fp8 builds trace in fp16 and quantise after)."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "float" = the build precision; else a concrete dtype name
    shape: tuple[str | int, ...]
    source: str | None = None  # inputs only: "external" or "<stage>/<output>"


@dataclass(frozen=True)
class StageSpec:
    name: str
    file: str
    format: str  # "torchscript" | "onnx"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Symbolic dims that vary at run time (batch, views, prompt length), for the ONNX exporter."""
        varying = {"batch", "num_images", "seq_len"}
        return {t.name: {i: d for i, d in enumerate(t.shape) if d in varying}
                for t in (*self.inputs, *self.outputs) if any(d in varying for d in t.shape)}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    opset: int
    stages: tuple[StageSpec, ...]
    profiles: dict
    max_views: int | None = None  # cameras the family's video stage can take

    def edges(self) -> dict[str, list[str]]:
        """Data flow `"stage/output": ["stage/input", ...]`: what the IGG config and the runners follow."""
        flow: dict[str, list[str]] = {}
        for s in self.stages:
            for t in s.inputs:
                if t.source != "external":
                    flow.setdefault(t.source, []).append(f"{s.name}/{t.name}")
        return flow

    def launch_order(self) -> tuple[StageSpec, ...]:
        """The stages in spec order, except that each one reading strings (the tokenizer: host work) waits until the
        first stage that reads its outputs: the host tokenizes while the GPU runs the stages queued before (the
        vit), instead of the GPU idling while the host tokenizes."""
        deferred = [s for s in self.stages if any(t.dtype == "string" for t in s.inputs)]
        order: list[StageSpec] = []
        for s in self.stages:
            if s in deferred:
                continue
            reads = {t.source.split("/")[0] for t in s.inputs if t.source != "external"}
            order += [d for d in deferred if d.name in reads and d not in order]
            order.append(s)
        return (*order, *(d for d in deferred if d not in order))

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def for_views(self, views: int) -> GraphSpec:
        """The spec with each per-camera input (`frames_*`) spelled out for `views` cameras: frames_0 ..
        frames_<views-1>, each with its own `height_<i>`/`width_<i>` (cameras may differ in resolution)."""
        if views < 1 or (self.max_views is not None and views > self.max_views):
            raise InputError(f"{views} camera views; the exported video stage takes 1 to {self.max_views}, so use a "
                             "modality config with fewer video keys")

        def expand(t: TensorSpec) -> list[TensorSpec]:
            if not t.name.endswith("_*"):
                return [t]
            stem = t.name[:-1]
            return [dataclasses.replace(t, name=f"{stem}{i}",
                                        shape=tuple(f"{d}_{i}" if d in PER_VIEW_DIMS else d for d in t.shape))
                    for i in range(views)]

        stages = tuple(dataclasses.replace(s, inputs=tuple(x for t in s.inputs for x in expand(t)))
                       for s in self.stages)
        return dataclasses.replace(self, stages=stages)


def load_graph_spec(path: str | Path, views: int | None = None) -> GraphSpec:
    """The spec at `path`; with `views`, per-camera inputs spelled out (`for_views`)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
        stages = tuple(
            StageSpec(
                name=s["name"], file=s["file"], format=s["format"],
                inputs=tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"]), t["from"]) for t in s["inputs"]),
                outputs=tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in s["outputs"]),
            )
            for s in raw["stages"]
        )
        max_views = raw.get("max_views")
        spec = GraphSpec(raw["name"], int(raw["opset"]), stages, raw["profiles"],
                         int(max_views) if max_views is not None else None)
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise InputError(f"graph spec {path} is unreadable or incomplete ({err}); reinstall the package") from None
    return spec.for_views(views) if views is not None else spec


@dataclass
class Partition:
    """The stage modules of one policy for one precision and view count, in execution order."""

    spec: GraphSpec
    modules: dict[str, nn.Module]
    precision: str
    views: int

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]
