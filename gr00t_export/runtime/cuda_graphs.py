"""CUDA-graph runners: the exported stages replayed as CUDA graphs, one pinned onnxruntime session or one captured
TorchScript call per input shape, kept in a bounded pool so batch and camera changes keep their graphs."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from gr00t_export.errors import InputError
from gr00t_export.runtime.runner import (
    ORT_ELEMENT_TYPES,
    ORT_TYPES,
    StageRunner,
)
from gr00t_export.spec import StageSpec

ShapeKey = tuple[tuple[int, ...], ...]


def shape_key(spec: StageSpec, feeds: Mapping[str, Any]) -> ShapeKey:
    """A stage's input shapes in spec order (a batch of strings counts by its length): what a CUDA graph or a
    session with pinned dims is valid for."""
    return tuple(tuple(feeds[n].shape) if hasattr(feeds[n], "shape") else (len(feeds[n]),) for n in spec.input_names)


class ShapePool:
    """Entries keyed by input shapes, made on first sight of a shape and reused afterwards.

    A captured CUDA graph (or a session whose dims are pinned) is valid for the shapes it was made at only, so
    batch 1 and batch 4 each keep their own. At most `size` entries: making one more first drops the least recently
    used (its graph, buffers and session freed), so a stream of new shapes cannot grow memory without bound.
    """

    def __init__(self, make: Callable[[Mapping[str, Any]], Any], size: int = 16,
                 drop: Callable[[Any], None] | None = None):
        if size < 1:
            raise InputError(f"a shape pool holds at least one entry, got size {size}")
        self.make, self.size, self.drop = make, size, drop
        self.entries: OrderedDict[ShapeKey, Any] = OrderedDict()
        self.made = 0  # entries made so far, dropped ones included: each one a capture

    def get(self, key: ShapeKey, feeds: Mapping[str, Any]) -> Any:
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        while len(self.entries) >= self.size:
            _, oldest = self.entries.popitem(last=False)
            if self.drop is not None:
                self.drop(oldest)
        entry = self.make(feeds)
        self.made += 1
        self.entries[key] = entry
        return entry


@contextlib.contextmanager
def on_stream(stream: torch.cuda.Stream | None) -> Iterator[None]:
    """Work queued inside runs on `stream`, ordered after what the caller's stream queued before and before what it
    queues after, with no host wait: stages sharing one stream run back to back on the GPU while the host queues
    the next one."""
    if stream is None:
        yield
        return
    caller = torch.cuda.current_stream()
    stream.wait_stream(caller)
    with torch.cuda.stream(stream):
        yield
    caller.wait_stream(stream)


def copy_into(buffer: torch.Tensor, value: Any) -> None:
    """`value` into a fixed buffer on the current stream. A host value goes through pinned memory without a host
    wait (a pageable copy would block until the stream drained, stalling the queue of stages behind it)."""
    value = torch.as_tensor(value)
    if buffer.is_cuda and value.device.type == "cpu":
        buffer.copy_(value.to(buffer.dtype).pin_memory(), non_blocking=True)
    else:
        buffer.copy_(value)


def pinned_output_shapes(model: Any, spec: StageSpec, path: Path) -> dict[str, tuple[int, ...]]:
    """Each output's shape once the inputs' dims are pinned: the exporter names output dims after input dims
    (the graph spec's), so pinning the inputs fixes every output dim."""
    declared = {o.name: o.type.tensor_type.shape.dim for o in model.graph.output}
    shapes = {}
    for name in spec.output_names:
        dims = declared[name]
        if any(not d.HasField("dim_value") for d in dims):
            raise InputError(f"{path}: output {name} keeps a dim not named after an input's, so its shape is unknown "
                             "before a run; rebuild the artifacts with this gr00t-export")
        shapes[name] = tuple(d.dim_value for d in dims)
    return shapes


class PinnedOnnxSession:
    """One onnxruntime session with every dynamic dim pinned to one set of input shapes and fixed I/O buffers; on
    the CUDA EP the run is captured once and replayed as a CUDA graph.

    Pinning (`make_dim_param_fixed`) lets onnxruntime fold the shape arithmetic, so none of it falls back to the
    CPU during a capture; inputs are copied into buffers whose addresses never change. With `stream`, onnxruntime
    computes on that torch stream and returns without synchronising, so torch and onnxruntime stages queue on one
    stream and the host never waits between them.
    """

    def __init__(self, model_path: Path, spec: StageSpec, feeds: Mapping[str, Any], device: str,
                 stream: torch.cuda.Stream | None = None, cuda_options: Mapping[str, str] | None = None):
        import onnx
        import onnxruntime as ort
        from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

        self.spec, self.on_cuda = spec, device.startswith("cuda")
        model = onnx.load(str(model_path), load_external_data=False)
        for t in spec.inputs:
            for axis, dim in enumerate(t.shape):
                if isinstance(dim, str) and t.name in feeds:
                    make_dim_param_fixed(model.graph, dim, int(feeds[t.name].shape[axis]))
        label = "_".join("x".join(map(str, shape)) for shape in shape_key(spec, feeds))
        self.path = model_path.with_name(f"{model_path.stem}.{label}.onnx")  # beside the shared weights file
        onnx.save_model(model, str(self.path))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        cuda = {**(cuda_options or {}), "enable_cuda_graph": "1"}
        self.stream, self.run_options = (stream if self.on_cuda else None), ort.RunOptions()
        if self.stream is not None:
            cuda["user_compute_stream"] = str(self.stream.cuda_stream)
            self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"] if self.on_cuda \
            else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        types = {i.name: ORT_TYPES.get(i.type) for i in self.session.get_inputs()}
        bound = "cuda" if self.on_cuda else "cpu"
        self.inputs = {n: torch.as_tensor(feeds[n]).to(bound, types[n]).contiguous().clone() for n in types}
        self.binding = self.session.io_binding()
        for n, t in self.inputs.items():
            self.binding.bind_input(n, bound, 0, ORT_ELEMENT_TYPES[t.dtype], tuple(t.shape), t.data_ptr())
        # Outputs bound to their final buffers before the first run: onnxruntime may capture on any run, and a
        # graph replays into the addresses bound when it was captured (a capture over onnxruntime's own output
        # buffers leaves these untouched).
        out_types = {o.name: ORT_TYPES[o.type] for o in self.session.get_outputs()}
        self.outputs = {n: torch.empty(s, dtype=out_types[n], device=bound)
                        for n, s in pinned_output_shapes(model, spec, model_path).items()}
        for n, t in self.outputs.items():
            self.binding.bind_output(n, bound, 0, ORT_ELEMENT_TYPES[t.dtype], tuple(t.shape), t.data_ptr())
        if self.on_cuda:  # a regular run, then the capture (replayed at once); the CPU has nothing to capture
            self._sync()
            for _ in range(2):
                self.session.run_with_iobinding(self.binding)
            self._sync()

    def infer(self, feeds):
        with on_stream(self.stream):
            for n, t in self.inputs.items():
                copy_into(t, feeds[n])
            if self.stream is None:
                self._sync()
            self.session.run_with_iobinding(self.binding, self.run_options)
        return self.outputs

    def _sync(self) -> None:
        if self.on_cuda:  # without a shared stream, torch writes the inputs on its stream and ORT reads on its own
            torch.cuda.synchronize()

    def close(self) -> None:
        del self.session
        self.path.unlink(missing_ok=True)


class StaticCudaGraphOnnxRunner:
    """An ONNX stage as onnxruntime CUDA graphs: one `PinnedOnnxSession` per input shape seen (a `ShapePool`),
    captured on the first call at that shape and replayed after. `feeds`, when given, are captured at once.

    Each session holds its own copy of the stage's weights on the GPU: `size` bounds how many shapes are kept.
    The pinned graphs live in a scratch dir with one shared copy (a hard link where the filesystem allows) of the
    external weights file, removed with the runner. `device="cpu"` pins shapes without graphs (tests).
    """

    def __init__(self, path: Path, spec: StageSpec, feeds: Mapping[str, Any] | None = None,
                 workdir: Path | None = None, size: int = 16, device: str = "cuda",
                 stream: torch.cuda.Stream | None = None, cuda_options: Mapping[str, str] | None = None):
        import onnx

        from gr00t_export.pipeline.optimize import save_onnx

        self.spec = spec
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=f"{spec.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.workdir, True)
        data = path.with_name(path.name + "_data")
        base = self.workdir / path.name
        if data.exists():
            if not (self.workdir / data.name).exists():
                try:  # onnxruntime refuses external data reached through a symlink out of the model's dir
                    os.link(data, self.workdir / data.name)
                except OSError:
                    shutil.copyfile(data, self.workdir / data.name)
            shutil.copyfile(path, base)  # the graph proto alone; its weights are in the file linked above
        else:  # weights inside the .onnx: moved out once, so each pinned shape writes only its small graph proto
            save_onnx(onnx.load(str(path)), base, external=True)
        self.pool = ShapePool(lambda f: PinnedOnnxSession(base, spec, f, device, stream, cuda_options), size,
                              drop=PinnedOnnxSession.close)
        if feeds is not None:
            self.pool.get(shape_key(spec, feeds), feeds)

    def infer(self, feeds):
        return self.pool.get(shape_key(self.spec, feeds), feeds).infer(feeds)

    def close(self) -> None:
        for entry in self.pool.entries.values():
            entry.close()
        self.pool.entries.clear()
        self._cleanup()


def capture_cuda_graph(fn: Callable[[], object], warmup: int) -> tuple[torch.cuda.CUDAGraph, object]:
    """`fn` run `warmup` times on a side stream, then captured; returns the graph and the outputs it writes."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


class CapturedTorchGraph:
    """A torch stage captured as one CUDA graph at one set of input shapes, with fixed input buffers, replayed on
    `stream` (see `on_stream`)."""

    def __init__(self, inner: StageRunner, feeds: Mapping[str, Any], stream: torch.cuda.Stream | None = None):
        self.stream = stream
        self.inputs = {n: torch.as_tensor(feeds[n]).to("cuda").clone() for n in inner.spec.input_names}
        # 5 warm-ups: past TorchScript's profiling runs, so nothing compiles during capture
        self.graph, self.outputs = capture_cuda_graph(lambda: inner.infer(self.inputs), warmup=5)

    def infer(self, feeds):
        with on_stream(self.stream):
            for n, t in self.inputs.items():
                copy_into(t, feeds[n])
            self.graph.replay()
        return self.outputs


class StaticCudaGraphTorchRunner:
    """A TorchScript pre/post stage as CUDA graphs: one capture per input shape seen (a `ShapePool`), replayed after.

    At batch 1 these stages are dozens of tiny kernels, so their time is launch overhead; one replay replaces the
    launches. The outputs live in each graph's pool and are overwritten by its next replay, as with
    `StaticCudaGraphOnnxRunner`. `feeds`, when given, are captured at once.
    """

    def __init__(self, inner: StageRunner, feeds: Mapping[str, Any] | None = None, size: int = 16,
                 stream: torch.cuda.Stream | None = None):
        self.spec = inner.spec
        self.pool = ShapePool(lambda f: CapturedTorchGraph(inner, f, stream), size)
        if feeds is not None:
            self.pool.get(shape_key(self.spec, feeds), feeds)

    def infer(self, feeds):
        return self.pool.get(shape_key(self.spec, feeds), feeds).infer(feeds)


class CapturedWherePossible:
    """A GPU TorchScript stage as CUDA graphs where it can be captured. A stage whose capture fails (one that makes
    host tensors per call, as N1.6's video resize builds its taps) runs uncaptured from then on: `failure` says why.
    """

    def __init__(self, inner: StageRunner, size: int = 16, stream: torch.cuda.Stream | None = None):
        self.spec, self.inner, self.failure = inner.spec, inner, ""
        self.graphs: StaticCudaGraphTorchRunner | None = StaticCudaGraphTorchRunner(inner, None, size, stream)

    def infer(self, feeds):
        if self.graphs is not None:
            try:
                return self.graphs.infer(feeds)
            except RuntimeError as err:  # a capture that cannot be made; a real input error recurs just below
                self.graphs, self.failure = None, f"{type(err).__name__}: {str(err)[:160]}"
        return self.inner.infer(feeds)


def graphed_stages(graph: Any, stages: Mapping[str, StageRunner], artifact_dir: Path, device: str,
                   workdir: Path | None = None, size: int = 16, one_stream: bool = True,
                   cuda_options: Mapping[str, str] | None = None) -> dict[str, StageRunner]:
    """An exported pipeline's stages as CUDA graphs per input shape: each ONNX stage a pool of pinned onnxruntime
    sessions, each GPU TorchScript stage captured where it can be (the tokenizer stays on the host). Captures
    happen on the first call at each shape. Every graphed stage runs on one CUDA stream, so a tick is queued
    without the host waiting between stages (`one_stream=False`: each stage synchronised, as before; for
    comparison). `cuda_options`: more onnxruntime CUDA EP options for every ONNX stage (e.g. `sdpa_kernel`, which
    attention kernels it may pick). `device="cpu"` pins the ONNX stages' shapes without graphs (tests)."""
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="cuda-graphs-"))
    on_cuda = device.startswith("cuda")
    stream = torch.cuda.Stream() if on_cuda and one_stream else None
    out = dict(stages)
    for spec in graph.stages:
        inner = stages[spec.name]
        if spec.format == "onnx":
            out[spec.name] = StaticCudaGraphOnnxRunner(Path(artifact_dir) / spec.file, spec, None,
                                                       workdir / spec.name, size, device, stream, cuda_options)
        elif on_cuda and getattr(inner, "device", torch.device("cpu")).type == "cuda":
            out[spec.name] = CapturedWherePossible(inner, size, stream)
    return out


def graphs_note(stages: Mapping[str, StageRunner]) -> str:
    """Which stages run as CUDA graphs, and which could not be captured."""
    captured = [n for n, s in stages.items() if isinstance(s, CapturedWherePossible) and s.graphs is not None]
    kept = [f"{n} ({s.failure})" for n, s in stages.items() if isinstance(s, CapturedWherePossible) and s.failure]
    note = f"CUDA graphs: every ONNX stage, {', '.join(captured) or 'no TorchScript stage'}"
    return note + (f"; not capturable: {', '.join(kept)}" if kept else "")
