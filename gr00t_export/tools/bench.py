"""`gr00t-export bench`: per-stage and end-to-end latency of every runtime on one machine, in one table.

Backends: `torch` (the PyTorch twins of the stages, eager), `torch-compile` (the same with
`torch.compile(mode="reduce-overhead")`, i.e. CUDA graphs, on vit/llm/denoising), `ort` (the exported
artifacts in onnxruntime; CUDA EP with device-resident I/O on a GPU), `ort-cudagraph` (the same, shapes
pinned and replayed as CUDA graphs), `aoti` (AOTInductor `.pt2` of vit/llm/denoising, one CUDA graph each) and
`trt` (TensorRT engines, when the module and engines exist). All run the same observation and noise; ratios are
against eager. With `profile`, a CUPTI trace of each model stage says how many kernels it launches and where
its GPU time goes, which is what decides latency at batch 1. `bench_grid` (`--grid`) times whole ticks over
batch x camera-count cells, CUDA graphs kept per input shape, and compares each backend with torch.compile.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import statistics
import tempfile
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gr00t_export.errors import InputError
from gr00t_export.families import family_for_checkpoint
from gr00t_export.families.base import (
    Observation,
    OpenedPolicy,
    PolicyInterface,
    RawInputs,
    make_noise,
    synthetic_observation,
)
from gr00t_export.runtime.runner import (
    ORT_ELEMENT_TYPES,
    ORT_TYPES,
    ExportedGr00tRunner,
    InstructionCache,
    StageRunner,
    TorchStageRunner,
    check_denoising_steps,
    run_pipeline,
)
from gr00t_export.spec import PRECISIONS, SPEC_FILE, GraphSpec, StageSpec, load_graph_spec

COMPILED_STAGES = ("vit", "llm", "denoising_subgraph")
FUSED_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "SkipLayerNormalization",
             "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "FastGelu", "BiasGelu", "Gelu",
             "FusedMatMul", "RotaryEmbedding", "LayerNormalization", "Softmax", "MatMul")


@dataclass
class Timing:
    median_ms: float
    p90_ms: float


@dataclass
class KernelProfile:
    """What one call of a stage puts on the GPU: kernel count, summed kernel time, and where that time goes."""

    kernels: float  # per call
    gpu_ms: float  # summed kernel durations per call; wall time minus this is launch gaps and idle
    by_kind: dict[str, tuple[float, float]] = field(default_factory=dict)  # kind -> (ms, kernels) per call
    top: list[tuple[str, float, float]] = field(default_factory=list)  # the costliest kernels: (name, ms, count)


@dataclass
class BackendResult:
    backend: str
    stages: dict[str, Timing] = field(default_factory=dict)
    end_to_end: Timing | None = None
    note: str = ""
    kernels: dict[str, KernelProfile] = field(default_factory=dict)


# kernel-name patterns, first match wins: which kind of work a CUDA kernel does
KERNEL_KINDS = (
    ("attention", ("flash", "fmha", "attention", "mha", "attn")),
    ("matmul", ("gemm", "cutlass", "xmma", "cublas", "nvjet", "matmul", "splitk")),
    ("softmax", ("softmax",)),
    ("norm", ("layer_norm", "layernorm", "rms", "skiplayernorm", "welford")),
    ("triton (fused)", ("triton",)),
    ("copy/transpose", ("transpose", "copy", "memset", "concat", "slice", "gather", "expand", "cat_")),
    ("reduce", ("reduce",)),
    ("elementwise", ("elementwise", "unary", "binary", "vectorized", "gelu", "add", "mul", "cast", "where",
                     "pow", "sqrt", "tanh", "sigmoid", "silu")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in lowered for k in keys)), "other")


def kernel_profile(runner: StageRunner, feeds: dict, iters: int = 5, top_n: int = 12) -> KernelProfile:
    """CUPTI trace (torch.profiler) of `iters` calls; sees onnxruntime's kernels too, CUDA-graph replays included."""
    from torch.profiler import ProfilerActivity, profile

    runner.infer(feeds)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            runner.infer(feeds)
        torch.cuda.synchronize()
    by_kind: dict[str, list[float]] = {}
    by_name: dict[str, list[float]] = {}
    count, total = 0, 0.0
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA or "memcpy" in event.name.lower():
            continue  # the inputs' host->device copies belong to the caller, not the stage
        ms = event.time_range.elapsed_us() / 1e3
        for table, key in ((by_kind, kernel_kind(event.name)), (by_name, event.name[:160])):
            entry = table.setdefault(key, [0.0, 0])
            entry[0] += ms
            entry[1] += 1
        count, total = count + 1, total + ms
    ranked = sorted(by_kind.items(), key=lambda kv: -kv[1][0])
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top_n]
    return KernelProfile(count / iters, total / iters, {k: (ms / iters, n / iters) for k, (ms, n) in ranked},
                         [(name, ms / iters, n / iters) for name, (ms, n) in top])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(samples: list[float]) -> Timing:
    ordered = sorted(samples)
    return Timing(statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))])


class TimedStage:
    """Wraps a stage runner and records its wall time (synchronised on GPU) per call."""

    def __init__(self, inner: StageRunner, device: torch.device):
        self.inner, self.spec, self.device, self.samples = inner, inner.spec, device, []

    def infer(self, feeds):
        _sync(self.device)
        start = time.perf_counter()
        out = self.inner.infer(feeds)
        _sync(self.device)
        self.samples.append((time.perf_counter() - start) * 1e3)
        return out


def time_pipeline(graph, stages: dict[str, StageRunner], raw: RawInputs, init: torch.Tensor, device: torch.device,
                  warmup: int, iters: int) -> tuple[dict[str, Timing], Timing]:
    timed = {name: TimedStage(s, device) for name, s in stages.items()}
    e2e = []
    for i in range(warmup + iters):
        if i == warmup:
            for t in timed.values():
                t.samples.clear()
        _sync(device)
        start = time.perf_counter()
        run_pipeline(graph, timed, raw, init)
        _sync(device)
        if i >= warmup:
            e2e.append((time.perf_counter() - start) * 1e3)
    # the per-stage syncs inflate e2e slightly; measure e2e again without them
    free = []
    for _ in range(iters):
        _sync(device)
        start = time.perf_counter()
        run_pipeline(graph, stages, raw, init)
        _sync(device)
        free.append((time.perf_counter() - start) * 1e3)
    return {n: _stats(t.samples) for n, t in timed.items()}, _stats(free)


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


class PinnedOnnxSession:
    """One onnxruntime session with every dynamic dim pinned to one set of input shapes and fixed I/O buffers; on
    the CUDA EP the run is captured once and replayed as a CUDA graph.

    Pinning (`make_dim_param_fixed`) lets onnxruntime fold the shape arithmetic, so none of it falls back to the
    CPU during a capture; inputs are copied into buffers whose addresses never change.
    """

    def __init__(self, model_path: Path, spec: StageSpec, feeds: Mapping[str, Any], device: str):
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
        providers = [("CUDAExecutionProvider", {"enable_cuda_graph": "1"}), "CPUExecutionProvider"] if self.on_cuda \
            else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        types = {i.name: ORT_TYPES.get(i.type) for i in self.session.get_inputs()}
        bound = "cuda" if self.on_cuda else "cpu"
        self.inputs = {n: torch.as_tensor(feeds[n]).to(bound, types[n]).contiguous().clone() for n in types}
        self.binding = self.session.io_binding()
        for n, t in self.inputs.items():
            self.binding.bind_input(n, bound, 0, ORT_ELEMENT_TYPES[t.dtype], tuple(t.shape), t.data_ptr())
        for n in spec.output_names:
            self.binding.bind_output(n, bound)
        self._sync()
        self.session.run_with_iobinding(self.binding)  # warm-up run (onnxruntime allocates the outputs), then capture
        shapes = [(tuple(o.shape()), ORT_TYPES[o.data_type()]) for o in self.binding.get_outputs()]
        self.outputs = {n: torch.empty(s, dtype=d, device=bound) for n, (s, d) in zip(spec.output_names, shapes,
                                                                                        strict=True)}
        self.binding.clear_binding_outputs()
        for n, t in self.outputs.items():
            self.binding.bind_output(n, bound, 0, ORT_ELEMENT_TYPES[t.dtype], tuple(t.shape), t.data_ptr())
        self.session.run_with_iobinding(self.binding)

    def infer(self, feeds):
        for n, t in self.inputs.items():
            t.copy_(torch.as_tensor(feeds[n]).to(t.device, t.dtype))
        self._sync()
        self.session.run_with_iobinding(self.binding)
        return self.outputs

    def _sync(self) -> None:
        if self.on_cuda:
            torch.cuda.current_stream().synchronize()  # torch wrote the inputs on its stream; ORT reads on its own

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
                 workdir: Path | None = None, size: int = 16, device: str = "cuda"):
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
        self.pool = ShapePool(lambda f: PinnedOnnxSession(base, spec, f, device), size, drop=PinnedOnnxSession.close)
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
    """A torch stage captured as one CUDA graph at one set of input shapes, with fixed input buffers."""

    def __init__(self, inner: StageRunner, feeds: Mapping[str, Any]):
        self.inputs = {n: torch.as_tensor(feeds[n]).to("cuda").clone() for n in inner.spec.input_names}
        # 5 warm-ups: past TorchScript's profiling runs, so nothing compiles during capture
        self.graph, self.outputs = capture_cuda_graph(lambda: inner.infer(self.inputs), warmup=5)

    def infer(self, feeds):
        for n, t in self.inputs.items():
            t.copy_(torch.as_tensor(feeds[n]))
        self.graph.replay()
        return self.outputs


class StaticCudaGraphTorchRunner:
    """A TorchScript pre/post stage as CUDA graphs: one capture per input shape seen (a `ShapePool`), replayed after.

    At batch 1 these stages are dozens of tiny kernels, so their time is launch overhead; one replay replaces the
    launches. The outputs live in each graph's pool and are overwritten by its next replay, as with
    `StaticCudaGraphOnnxRunner`. `feeds`, when given, are captured at once.
    """

    def __init__(self, inner: StageRunner, feeds: Mapping[str, Any] | None = None, size: int = 16):
        self.spec = inner.spec
        self.pool = ShapePool(lambda f: CapturedTorchGraph(inner, f), size)
        if feeds is not None:
            self.pool.get(shape_key(self.spec, feeds), feeds)

    def infer(self, feeds):
        return self.pool.get(shape_key(self.spec, feeds), feeds).infer(feeds)


def fusion_report(artifact_dir: Path, graph, device: str) -> dict[str, dict[str, int]]:
    """Op histogram of each ONNX stage after onnxruntime's own graph optimisation (fused nodes counted)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    from gr00t_export.runtime.runner import ort_providers

    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in graph.stages:
            if stage.format != "onnx":
                continue
            options = ort.SessionOptions()
            options.log_severity_level = 3
            out = Path(tmp) / f"{stage.name}.opt.onnx"
            options.optimized_model_filepath = str(out)
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             f"{stage.name}.opt.onnx_data")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                             "1024")
            ort.InferenceSession(str(artifact_dir / stage.file), options, providers=ort_providers(device))
            ops: dict[str, int] = {}
            for node in onnx.load(str(out), load_external_data=False).graph.node:
                ops[node.op_type] = ops.get(node.op_type, 0) + 1
            report[stage.name] = {k: v for k, v in sorted(ops.items()) if k in FUSED_OPS} | {"total": sum(ops.values())}
    return report


class CompiledStageRunner(TorchStageRunner):
    """A `torch.compile(mode="reduce-overhead")` stage: each call is a new CUDA-graph step, and its outputs are
    cloned out of the graph's static buffers before the next stage's replay can overwrite them.

    `dynamic_axes` (the grid): the spec's varying dims (batch, num_images, seq_len) are marked dynamic on every
    call, so one compile covers every size >= 2 of them; a dim of size 1 is still specialised (batch 1 keeps its
    static graph). Over batch 1, 2, 4, 8 x views 1, 2, 3 that is 7 graphs for the 3 stages, not 36.
    """

    def __init__(self, module, spec: StageSpec, device: str | torch.device,
                 dynamic_axes: dict[str, dict[int, str]] | None = None):
        super().__init__(module, spec, device)
        self.dynamic_axes = {n: axes for n, axes in (dynamic_axes or {}).items() if n in spec.input_names}

    def infer(self, feeds):
        torch.compiler.cudagraph_mark_step_begin()
        if self.dynamic_axes:  # contiguous: a stride that differs with the camera count would recompile too
            feeds = {n: feeds[n].to(self.device).contiguous() for n in self.spec.input_names}
            for name, axes in self.dynamic_axes.items():
                for axis in axes:
                    torch._dynamo.maybe_mark_dynamic(feeds[name], axis)
        return {k: v.clone() for k, v in super().infer(feeds).items()}


def compile_aoti(module: torch.nn.Module, spec, feeds: dict, package: Path, device: torch.device) -> Path:
    """torch.export + AOTInductor: the stage as a `.pt2` package (the IGG schema's `pt2` backend)."""
    import torch._inductor

    args = tuple(torch.as_tensor(feeds[n]).to(device) for n in spec.input_names)
    package.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.export.export(module, args, strict=False)
        return Path(torch._inductor.aoti_compile_and_package(program, package_path=str(package)))


class AotiStageRunner:
    """A stage's AOTInductor `.pt2`, replayed through one CUDA graph on a GPU: the PyTorch-native exported artifact,
    no Python in the stage. Inputs are copied into fixed buffers, so the graph's addresses never change."""

    def __init__(self, package: Path, spec, feeds: dict, device: torch.device):
        import torch._inductor

        self.spec, self.device = spec, device
        self.model = torch._inductor.aoti_load_package(str(package))
        self.static = [torch.as_tensor(feeds[n]).to(device).clone() for n in spec.input_names]
        self.graph = None
        if device.type == "cuda" and os.environ.get("GR00T_AOTI_CUDA_GRAPH", "1") == "1":
            self.graph, self.out = capture_cuda_graph(lambda: self.model(*self.static), warmup=3)

    def infer(self, feeds):
        for buf, name in zip(self.static, self.spec.input_names, strict=True):
            buf.copy_(torch.as_tensor(feeds[name]).to(buf.device, buf.dtype))
        if self.graph is None:
            out = self.model(*self.static)
        else:
            self.graph.replay()
            out = self.out
        out = out if isinstance(out, list | tuple) else [out]
        return {n: t.clone() for n, t in zip(self.spec.output_names, out, strict=True)}


def _twin_runner(spec: StageSpec, module: torch.nn.Module, device: torch.device, compile_: bool,
                 dynamic: bool = False) -> StageRunner:
    """One stage of a PyTorch backend: the tokenizer on the host, the rest on `device`, the model stages compiled
    with `compile_` (and, with `dynamic`, their varying dims marked dynamic)."""
    on_cpu = "instructions" in spec.input_names  # the tokenizer: strings, on the host
    module = module if on_cpu else module.to(device)
    if compile_ and spec.name in COMPILED_STAGES:
        # dynamic: None lets dynamo make a dim dynamic once it sees it change; False keeps every shape static
        compiled = torch.compile(module, mode="reduce-overhead", dynamic=None if dynamic else False)
        return CompiledStageRunner(compiled, spec, device, spec.dynamic_axes() if dynamic else None)
    return TorchStageRunner(module, spec, "cpu" if on_cpu else device)


def _twin_stages(opened: OpenedPolicy, model: torch.nn.Module, precision: str, device: torch.device,
                 compile_: bool) -> tuple[object, dict[str, StageRunner]]:
    part = opened.partition(model, precision)
    stages = {spec.name: _twin_runner(spec, part.modules[spec.name], device, compile_) for spec in part.spec.stages}
    return part.spec, stages


def bench(artifact_dir: Path | None, model_path: Path | None, backends: list[str], dtype: str, iters: int,
          warmup: int, device: str, dataset_path: Path | None = None, eagle_path: Path | None = None,
          embodiment_tag: str | None = None, modality_config: str | None = None,
          log: Callable[[str], None] = print, observation: Observation | None = None, profile: bool = False,
          aoti_dir: Path | None = None, aoti_phase: str = "both", denoising_steps: int | None = None
          ) -> list[BackendResult]:
    """Times each backend on one observation; with `profile` (GPU only) also counts each stage's kernels.

    The PyTorch backends integrate `denoising_steps` Euler steps (default: ARTIFACT_DIR's, else the checkpoint's),
    so every backend does the same work.

    aoti: `<stage>.pt2` packages are compiled into `aoti_dir` (a temp dir by default), loaded and timed;
    `aoti_phase="compile"` stops after compiling, `"load"` loads the packages an earlier process compiled.
    """
    if artifact_dir is None and model_path is None:
        raise InputError("nothing to benchmark: pass ARTIFACT_DIR and/or --model_path CKPT")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but no GPU is visible; use --device cpu")
    if artifact_dir is not None:
        check_denoising_steps(artifact_dir, denoising_steps)
    runner = ExportedGr00tRunner(artifact_dir, device=device) if artifact_dir else None
    if model_path is None and runner is not None:
        model_path = Path(runner.manifest["source"]["model_path"])
    opened = model = None
    if any(b.startswith("torch") or b == "aoti" for b in backends):
        if not (model_path and Path(model_path).is_dir()):
            raise InputError("torch backends need the checkpoint: pass --model_path CKPT")
        family = family_for_checkpoint(model_path)
        opened = family.open_for_manifest(model_path, eagle_path, runner.manifest) if runner is not None else \
            family.open(model_path, eagle_path, embodiment_tag=embodiment_tag, modality_config=modality_config,
                        denoising_steps=denoising_steps)
        model = opened.load(torch.float32, "cpu").to(device=dev, dtype=PRECISIONS[dtype])
    iface = runner.interface if runner is not None else opened.interface
    obs = observation if observation is not None else _observation(opened, iface, dataset_path)
    raw = (runner.reader if runner is not None else opened.reader())(obs)
    init = make_noise((raw.batch, *iface.noise_shape), None, 0).to(dev)
    results = []
    for backend in backends:
        trace: dict = {}  # each stage's feeds, recorded by the backends that need them to set up
        log(f"timing {backend} ...")
        if backend in ("torch", "torch-compile"):
            graph, stages = _twin_stages(opened, model, dtype, dev, backend == "torch-compile")
        elif backend == "aoti":
            graph, stages = _twin_stages(opened, model, dtype, dev, False)
            run_pipeline(graph, stages, raw, init, trace)
            packages = Path(aoti_dir or tempfile.mkdtemp())
            try:
                for spec_ in graph.stages:
                    if spec_.name in COMPILED_STAGES:
                        package = packages / f"{spec_.name}.pt2"
                        if aoti_phase != "load":
                            compile_aoti(stages[spec_.name].module, spec_, trace[spec_.name], package, dev)
                        if aoti_phase != "compile":
                            stages[spec_.name] = AotiStageRunner(package, spec_, trace[spec_.name], dev)
            except Exception as err:  # noqa: BLE001 - reported in the table, the other backends still run
                results.append(BackendResult(backend, note=f"failed: {type(err).__name__}: {str(err)[:200]}"))
                continue
            if aoti_phase == "compile":
                results.append(BackendResult(backend, note=f"compiled into {packages}"))
                continue
        elif backend in ("ort", "ort-cudagraph"):
            if runner is None:
                raise InputError(f"the {backend} backend needs ARTIFACT_DIR (an exported build)")
            graph, stages = runner.graph, dict(runner.stages)
            if backend == "ort-cudagraph":
                if dev.type != "cuda":
                    raise InputError("ort-cudagraph needs --device cuda")
                run_pipeline(graph, stages, raw, init, trace)
                try:
                    for spec_ in graph.stages:
                        if spec_.format == "onnx":
                            stages[spec_.name] = StaticCudaGraphOnnxRunner(
                                runner.dir / spec_.file, spec_, trace[spec_.name],
                                Path(tempfile.mkdtemp()) / spec_.name)
                except Exception as err:  # noqa: BLE001 - reported in the table, the other backends still run
                    results.append(BackendResult(backend, note=f"failed: {type(err).__name__}: {str(err)[:200]}"))
                    continue
                graphed = _graph_torchscript_stages(graph, stages, trace)
        elif backend == "trt":
            try:
                import tensorrt  # noqa: F401
            except ImportError:
                results.append(BackendResult("trt", note="skipped: the tensorrt module is not installed here"))
                continue
            results.append(BackendResult("trt", note="skipped: no engines/*.engine in the artifact dir"))
            continue
        else:
            raise InputError(f"unknown backend {backend!r}; use torch, torch-compile, aoti, ort, ort-cudagraph, trt")
        try:
            per_stage, e2e = time_pipeline(graph, stages, raw, init, dev, warmup, iters)
        except Exception as err:  # noqa: BLE001 - one runtime failing must not hide the others' figures
            results.append(BackendResult(backend, note=f"failed: {type(err).__name__}: {str(err)[:200]}"))
            continue
        result = BackendResult(backend, per_stage, e2e)
        if backend == "ort-cudagraph":
            result.note = graphed
        if profile and dev.type == "cuda":
            if not trace:
                run_pipeline(graph, stages, raw, init, trace)
            for name in (s.name for s in graph.stages if s.format == "onnx" or s.name in COMPILED_STAGES):
                try:
                    result.kernels[name] = kernel_profile(stages[name], trace[name])
                except Exception as err:  # noqa: BLE001 - a profiler without CUPTI must not lose the timings
                    result.note = f"kernel profile failed: {type(err).__name__}: {str(err)[:120]}"
                    break
        results.append(result)
    return results


def _graph_torchscript_stages(graph, stages: dict[str, StageRunner], trace: dict) -> str:
    """The GPU TorchScript stages as CUDA graphs too (the tokenizer stays on the CPU, cached); returns a note saying
    which were captured and which could not be (they then run as before)."""
    captured, kept = [], []
    for spec_ in graph.stages:
        inner = stages[spec_.name]
        if spec_.format != "torchscript" or getattr(inner, "device", torch.device("cpu")).type != "cuda":
            continue
        try:
            stages[spec_.name] = StaticCudaGraphTorchRunner(inner, trace[spec_.name])
            captured.append(spec_.name)
        except Exception as err:  # noqa: BLE001 - a stage that cannot be captured runs uncaptured
            kept.append(f"{spec_.name} ({type(err).__name__})")
    note = f"CUDA graphs: every ONNX stage, {', '.join(captured) or 'no TorchScript stage'}"
    return note + (f"; not capturable: {', '.join(kept)}" if kept else "")


def _observation(opened: OpenedPolicy | None, iface, dataset_path: Path | None) -> Observation:
    """A dataset's first step, else the checkpoint's example observation, else one of the interface's shapes."""
    if dataset_path is not None:
        from gr00t_export.data.lerobot import LeRobotDataset

        dataset = LeRobotDataset(dataset_path)
        episode, step = next(iter(dataset.iter_steps(iface, 1)))
        return dataset.observation(episode, step, iface)
    return opened.example_observation(None) if opened is not None else synthetic_observation(iface)


def table_rows(results: list[BackendResult]) -> tuple[list[str], list[list[str]]]:
    stages = [s for r in results for s in r.stages]
    stages = list(dict.fromkeys(stages))
    eager = next((r for r in results if r.backend.split(" ")[0] == "torch" and r.end_to_end), None)
    header = ["backend", *stages, "end-to-end (p50 / p90 ms)", "vs eager"]
    rows = []
    for r in results:
        if r.end_to_end is None:
            rows.append([r.backend, *["-"] * len(stages), r.note, "-"])
            continue
        cells = [f"{r.stages[s].median_ms:.2f}" if s in r.stages else "-" for s in stages]
        ratio = f"{r.end_to_end.median_ms / eager.end_to_end.median_ms:.3f}" if eager else "-"
        rows.append([r.backend, *cells, f"{r.end_to_end.median_ms:.2f} / {r.end_to_end.p90_ms:.2f}", ratio])
    return header, rows


def kernel_rows(results: list[BackendResult]) -> tuple[list[str], list[list[str]]]:
    """Per backend and stage: kernels per call, their summed GPU time against the stage's wall time, top kinds."""
    header = ["backend", "stage", "kernels", "GPU busy ms", "wall ms", "busy %", "where the GPU time goes (ms)"]
    rows = []
    for r in results:
        for stage, k in r.kernels.items():
            wall = r.stages[stage].median_ms if stage in r.stages else float("nan")
            kinds = ", ".join(f"{kind} {ms:.2f} ({n:.0f})" for kind, (ms, n) in list(k.by_kind.items())[:4])
            rows.append([r.backend, stage, f"{k.kernels:.0f}", f"{k.gpu_ms:.2f}", f"{wall:.2f}",
                         f"{100 * k.gpu_ms / wall:.0f}", kinds])
    return header, rows


def write_json(results: list[BackendResult], path: Path, context: dict) -> None:
    data = {"tool": {"name": "gr00t-export", "command": "bench"}, "context": context,
            "results": [asdict(r) for r in results]}
    path.write_text(json.dumps(data, indent=2))


def is_bench_json(path: Path) -> bool:
    """An earlier `bench --json` (which `--json` may replace): a JSON object with context and results."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"context", "results"} <= set(data)


# --- the grid: batch x camera views ---------------------------------------------------------------------------

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
                stage = _twin_runner(spec, part.modules[spec.name], self.device, self.backend == "torch-compile",
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
                            self.max_shapes)
                        self.pools.append(self.shared[spec.name])
                    stages[spec.name] = self.shared[spec.name]
                elif getattr(stages[spec.name], "device", torch.device("cpu")).type == "cuda":
                    stages[spec.name] = StaticCudaGraphTorchRunner(stages[spec.name], None, self.max_shapes)
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
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but no GPU is visible; use --device cpu")
    if "ort-cudagraph" in backends and dev.type != "cuda":
        raise InputError("ort-cudagraph needs --device cuda")
    if artifact_dir is not None:
        check_denoising_steps(artifact_dir, denoising_steps)
    runner = ExportedGr00tRunner(artifact_dir, device=device) if artifact_dir else None
    if model_path is None and runner is not None:
        model_path = Path(runner.manifest["source"]["model_path"])
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
    _sync(dev)
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
