"""`gr00t-export bench --grid`: whole policy ticks over batch x camera-count cells, exported vs torch.compile in the
same process, CUDA graphs kept per input shape."""

from __future__ import annotations

import gc
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from gr00t_export.errors import InputError
from gr00t_export.families import family_for_checkpoint
from gr00t_export.families.base import (
    Observation,
    OpenedPolicy,
    PolicyInterface,
    make_noise,
    synthetic_observation,
)
from gr00t_export.runtime.cuda_graphs import StaticCudaGraphOnnxRunner, StaticCudaGraphTorchRunner
from gr00t_export.runtime.runner import (
    ExportedGr00tRunner,
    InstructionCache,
    StageRunner,
    TorchStageRunner,
    run_pipeline,
)
from gr00t_export.spec import PRECISIONS, SPEC_FILE, GraphSpec, load_graph_spec
from gr00t_export.tools.bench import Timing, open_targets, sync_device, time_pipeline, twin_runner

GRID_BACKENDS = ("torch", "torch-compile", "ort", "ort-cudagraph")
GRID_SETUP_RUNS = 3  # untimed calls per new shape: compile or capture, record (cudagraph trees), first replay
VARYING_DIMS = ("batch", "num_images", "seq_len")


@dataclass
class GridCell:
    """One backend at one (batch, views): a whole policy tick for `batch` robots with `views` cameras each."""

    batch: int
    views: int
    backend: str
    end_to_end: Timing | None = None
    samples_per_s: float | None = None  # batch / median latency
    stages: dict[str, Timing] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)  # the graph's varying dims as run (num_images, seq_len, ...)
    setup_s: float | None = None  # the untimed first calls at this shape: compiles, CUDA-graph captures, sessions
    new_graphs: int | None = None  # made in setup: graphs compiled (torch-compile) or captured (ort-cudagraph)
    gpu_used_gib: float | None = None  # the whole device's memory in use after the cell (onnxruntime's included)
    note: str = ""


def parse_grid_axis(text: str, option: str) -> list[int]:
    """'1,2,4,8' -> [1, 2, 4, 8]: whole numbers >= 1, each once."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise InputError(f"{option} takes distinct whole numbers >= 1 separated by commas (e.g. 1,2,4,8), got "
                         f"{text!r}")
    return values


def grid_observation(iface: PolicyInterface, batch: int, seed: int = 0) -> Observation:
    """`batch` different seeded observations of the interface's shapes stacked on a leading axis, one per robot;
    every sample has the same instruction, so the prompt length (seq_len) does not depend on the batch."""
    samples = [synthetic_observation(iface, seed + i) for i in range(batch)]
    return {k: np.stack([np.asarray(s[k]) for s in samples]) for k in samples[0]}


def _views_of(opened: OpenedPolicy, views: int) -> OpenedPolicy:
    if len(opened.interface.video_keys) == views:
        return opened
    if not hasattr(opened, "with_views"):
        raise InputError(f"the {opened.family.name} family cannot vary the camera count yet; pass --views "
                         f"{len(opened.interface.video_keys)}")
    return opened.with_views(views)


def exported_stages_for_views(runner: ExportedGr00tRunner, opened: OpenedPolicy, model: torch.nn.Module,
                              scratch: Path) -> tuple[GraphSpec, dict[str, StageRunner]]:
    """The exported pipeline for `opened`'s camera count: the build's ONNX sessions (their batch, num_images and
    seq_len dims are dynamic, so one build serves every count) and TorchScript stages for that count.

    For the build's own count these are the build's files; for another, the family's partition for that count is
    scripted and reloaded as `build` does (`export_torchscript`, into `scratch`): the per-camera video stage and
    the tokenizer (whose prompt holds one image block per camera) depend on it, the state and action stages do not.
    """
    from gr00t_export.pipeline.export import export_torchscript

    views = len(opened.interface.video_keys)
    graph = load_graph_spec(runner.dir / SPEC_FILE, views=views)
    if views == runner.manifest.views:
        return graph, dict(runner.stages)
    part = opened.partition(model, runner.manifest.precision)
    stages: dict[str, StageRunner] = {}
    for spec in graph.stages:
        if spec.format == "onnx":
            stages[spec.name] = runner.stages[spec.name]
            continue
        on_cpu = "instructions" in spec.input_names
        path = scratch / f"views_{views}" / spec.file
        module = export_torchscript(part.modules[spec.name], spec, {}, path)
        stage = TorchStageRunner(module if on_cpu else module.to(runner.device), spec,
                                 "cpu" if on_cpu else runner.device)
        stages[spec.name] = InstructionCache(stage) if on_cpu else stage
    return graph, stages


def _varying_dims(graph: GraphSpec, trace: dict) -> dict[str, int]:
    dims: dict[str, int] = {}
    for stage in graph.stages:
        for t in stage.inputs:
            value = trace.get(stage.name, {}).get(t.name)
            for axis, dim in enumerate(t.shape):
                if dim in VARYING_DIMS and hasattr(value, "shape"):
                    dims.setdefault(dim, int(value.shape[axis]))
    return dims


class _GridColumn:
    """One backend's stage sets, one per camera count, built on first use. The model stages (ONNX in the spec) are
    shared by every count: one set of sessions, one compiled module, one CUDA-graph pool per stage."""

    def __init__(self, backend: str, runner: ExportedGr00tRunner | None, model: torch.nn.Module, dtype: str,
                 device: torch.device, scratch: Path, max_shapes: int):
        self.backend, self.runner, self.model, self.dtype, self.device = backend, runner, model, dtype, device
        self.scratch, self.max_shapes = scratch, max_shapes
        self.sets: dict[int, tuple[GraphSpec, dict[str, StageRunner]]] = {}
        self.shared: dict[str, StageRunner] = {}
        self.pools: list = []
        # the graphed stages queue on one stream, as in `graphed_stages`
        self.stream = torch.cuda.Stream() if backend == "ort-cudagraph" and device.type == "cuda" else None

    def stages(self, opened: OpenedPolicy) -> tuple[GraphSpec, dict[str, StageRunner]]:
        views = len(opened.interface.video_keys)
        if views not in self.sets:
            self.sets[views] = self._build(opened)
        return self.sets[views]

    def _build(self, opened: OpenedPolicy) -> tuple[GraphSpec, dict[str, StageRunner]]:
        if self.backend.startswith("torch"):
            part = opened.partition(self.model, self.dtype)
            stages: dict[str, StageRunner] = {}
            for spec in part.spec.stages:
                if spec.format == "onnx" and spec.name in self.shared:
                    stages[spec.name] = self.shared[spec.name]
                    continue
                stage = twin_runner(spec, part.modules[spec.name], self.device, self.backend == "torch-compile",
                                     dynamic=True)
                stages[spec.name] = InstructionCache(stage) if "instructions" in spec.input_names else stage
                if spec.format == "onnx":
                    self.shared[spec.name] = stage
            return part.spec, stages
        graph, stages = exported_stages_for_views(self.runner, opened, self.model, self.scratch)
        if self.backend == "ort-cudagraph":
            for spec in graph.stages:
                if spec.format == "onnx":
                    if spec.name not in self.shared:
                        self.shared[spec.name] = StaticCudaGraphOnnxRunner(
                            self.runner.dir / spec.file, spec, None, self.scratch / "pinned" / spec.name,
                            self.max_shapes, stream=self.stream)
                        self.pools.append(self.shared[spec.name])
                    stages[spec.name] = self.shared[spec.name]
                elif getattr(stages[spec.name], "device", torch.device("cpu")).type == "cuda":
                    stages[spec.name] = StaticCudaGraphTorchRunner(stages[spec.name], None, self.max_shapes,
                                                                   self.stream)
                    self.pools.append(stages[spec.name])
        return graph, stages

    def graphs_made(self) -> int | None:
        if self.backend in ("torch", "ort"):
            return None
        if self.backend == "torch-compile":
            from torch._dynamo.utils import counters

            return int(counters["stats"]["unique_graphs"])
        return sum(p.pool.made for p in self.pools)

    def close(self) -> None:
        for pool in self.pools:
            if isinstance(pool, StaticCudaGraphOnnxRunner):
                pool.close()
        self.sets.clear()
        self.shared.clear()
        self.pools.clear()


def bench_grid(artifact_dir: Path | None, model_path: Path | None, backends: list[str], dtype: str, iters: int,
               warmup: int, device: str, batches: list[int], views: list[int], eagle_path: Path | None = None,
               embodiment_tag: str | None = None, modality_config: str | None = None,
               log: Callable[[str], None] = print, denoising_steps: int | None = None,
               compile_cells: set[tuple[int, int]] | None = None, budget_s: float | None = None,
               max_shapes: int = 16, setup_runs: int = GRID_SETUP_RUNS) -> list[GridCell]:
    """Each backend at every (batch, views) cell: end-to-end latency of one tick (median, p90) and samples/s.

    A cell is the whole pipeline (video and state preprocessing, tokenizer cached per instruction as the exported
    runtime does, vit, llm, denoiser, postprocess) on `batch` seeded synthetic observations of `views` cameras.
    The model stages are the same objects in every cell of a backend (one build, one compiled module); the
    per-camera stages come from the family for each count (`exported_stages_for_views`). Each new shape first
    gets `setup_runs` untimed calls (compiles, captures; timed apart as `setup_s`), then `warmup` and `iters`.

    `compile_cells`: the (batch, views) cells torch-compile runs (default all; each graph it compiles costs tens
    of seconds at 3B). `budget_s`: cells not started within that many seconds of this call are reported as
    not run, so one device call ends in time. Backends run one after another, each releasing its sessions and
    graphs before the next.
    """
    start = time.perf_counter()
    unsupported = [b for b in backends if b not in GRID_BACKENDS]
    backends = [b for b in backends if b in GRID_BACKENDS]
    if unsupported:
        log(f"grid: left out {', '.join(unsupported)} (single-shape backends; run bench without --grid for them)")
    if not backends:
        raise InputError(f"--grid times {', '.join(GRID_BACKENDS)}; pass --backends with some of them")
    if artifact_dir is None and any(b.startswith("ort") for b in backends):
        raise InputError("the ort backends need ARTIFACT_DIR (an exported build)")
    if "ort-cudagraph" in backends and torch.device(device).type != "cuda":
        raise InputError("ort-cudagraph needs --device cuda")
    dev, runner, model_path = open_targets(artifact_dir, model_path, device, denoising_steps)
    if not (model_path and Path(model_path).is_dir()):
        raise InputError("--grid needs the checkpoint (the per-camera stages of each view count come from it): pass "
                         "--model_path CKPT")
    family = family_for_checkpoint(model_path)
    opened = family.open_for_manifest(model_path, eagle_path, runner.manifest) if runner is not None else \
        family.open(model_path, eagle_path, embodiment_tag=embodiment_tag, modality_config=modality_config,
                    denoising_steps=denoising_steps)
    most = load_graph_spec(family.graph_spec_path()).max_views
    if most is not None and max(views) > most:
        raise InputError(f"--views {max(views)}: the {family.name} video stage takes 1 to {most} cameras; pass "
                         f"--views with counts up to {most}")
    per_views = {v: _views_of(opened, v) for v in views}
    if any(b.startswith("torch") for b in backends):
        model = opened.load(torch.float32, "cpu").to(device=dev, dtype=PRECISIONS[dtype])
    else:  # the exported backends need only the per-camera modules of the partition, no weights
        model = opened.load(PRECISIONS[runner.manifest.precision], "meta")
    cells = [(b, v) for v in views for b in batches]
    results: list[GridCell] = []
    with tempfile.TemporaryDirectory(prefix="gr00t-grid-") as scratch:
        for backend in backends:
            column = _GridColumn(backend, runner, model, dtype, dev, Path(scratch) / backend, max_shapes)
            for batch, v in cells:
                cell = GridCell(batch, v, backend)
                results.append(cell)
                if backend == "torch-compile" and compile_cells is not None and (batch, v) not in compile_cells:
                    cell.note = "not run: torch-compile measured on a subset of cells"
                    continue
                if budget_s is not None and time.perf_counter() - start > budget_s:
                    cell.note = f"not run: the grid's {budget_s:.0f} s budget was spent"
                    continue
                log(f"grid: {backend} batch {batch} x {v} view(s) ...")
                try:
                    _time_cell(cell, column, per_views[v], warmup, iters, dev, setup_runs)
                except Exception as err:  # noqa: BLE001 - one cell failing must not hide the others' figures
                    cell.note = f"failed: {type(err).__name__}: {str(err)[:200]}"
            column.close()
            del column
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return results


def _time_cell(cell: GridCell, column: _GridColumn, opened: OpenedPolicy, warmup: int, iters: int,
               dev: torch.device, setup_runs: int) -> None:
    iface = opened.interface
    raw = opened.reader()(grid_observation(iface, cell.batch))
    init = make_noise((raw.batch, *iface.noise_shape), None, 0).to(dev)
    made = column.graphs_made()
    begin = time.perf_counter()
    graph, stages = column.stages(opened)
    trace: dict = {}
    for _ in range(max(1, setup_runs)):
        run_pipeline(graph, stages, raw, init, trace)
    sync_device(dev)
    cell.setup_s = time.perf_counter() - begin
    cell.new_graphs = None if made is None else column.graphs_made() - made
    cell.dims = _varying_dims(graph, trace)
    cell.stages, cell.end_to_end = time_pipeline(graph, stages, raw, init, dev, warmup, iters)
    cell.samples_per_s = cell.batch / cell.end_to_end.median_ms * 1e3
    if dev.type == "cuda":
        free, total = torch.cuda.mem_get_info(dev)
        cell.gpu_used_gib = (total - free) / 2**30


def grid_baseline(cells: list[GridCell]) -> str:
    """What the ratio column compares against: torch.compile when it ran, else eager torch."""
    ran = {c.backend for c in cells if c.end_to_end is not None}
    return "torch-compile" if "torch-compile" in ran else "torch"


def grid_rows(cells: list[GridCell]) -> tuple[list[str], list[list[str]]]:
    """One row per cell and backend, cells in order: latency p50/p90, samples/s, and the ratio of this backend's
    median to the baseline's in the same cell (< 1: faster)."""
    baseline = grid_baseline(cells)
    reference = {(c.batch, c.views): c.end_to_end.median_ms for c in cells
                 if c.backend == baseline and c.end_to_end is not None}
    header = ["batch", "views", "prompt tokens", "backend", "p50 ms", "p90 ms", "samples/s", f"vs {baseline}"]
    rows = []
    for c in sorted(cells, key=lambda c: (c.views, c.batch)):
        if c.end_to_end is None:
            rows.append([str(c.batch), str(c.views), "-", c.backend, "-", "-", "-", "-"])
            continue
        ref = reference.get((c.batch, c.views))
        rows.append([str(c.batch), str(c.views), str(c.dims.get("seq_len", "-")), c.backend,
                     f"{c.end_to_end.median_ms:.2f}", f"{c.end_to_end.p90_ms:.2f}", f"{c.samples_per_s:.1f}",
                     f"{c.end_to_end.median_ms / ref:.3f}" if ref else "-"])
    return header, rows


def write_grid_json(cells: list[GridCell], path: Path, context: dict) -> None:
    data = {"tool": {"name": "gr00t-export", "command": "bench --grid"}, "context": {"mode": "grid", **context},
            "results": [asdict(c) for c in cells]}
    path.write_text(json.dumps(data, indent=2))
