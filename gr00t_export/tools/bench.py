"""`gr00t-export bench`: per-stage and end-to-end latency of every runtime on one machine, in one table.

Backends: `torch` (the PyTorch twins of the stages, eager), `torch-compile` (the same with
`torch.compile(mode="reduce-overhead")`, i.e. CUDA graphs, on vit/llm/denoising), `ort` (the exported
artifacts in onnxruntime; CUDA EP with device-resident I/O on a GPU), `ort-cudagraph` (the same, shapes
pinned and replayed as CUDA graphs), `aoti` (AOTInductor `.pt2` of vit/llm/denoising, one CUDA graph each) and
`trt` (TensorRT engines, when the module and engines exist). All run the same observation and noise; ratios are
against eager. With `profile`, a CUPTI trace of each model stage says how many kernels it launches and where
its GPU time goes, which is what decides latency at batch 1. `tools.grid` (`--grid`) times whole ticks over batch x
camera-count cells.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gr00t_export.errors import InputError
from gr00t_export.families import family_for_checkpoint
from gr00t_export.families.base import (
    Observation,
    OpenedPolicy,
    RawInputs,
    make_noise,
    synthetic_observation,
)
from gr00t_export.runtime.cuda_graphs import capture_cuda_graph, graphed_stages, graphs_note
from gr00t_export.runtime.runner import (
    ExportedGr00tRunner,
    StageRunner,
    TorchStageRunner,
    check_denoising_steps,
    run_pipeline,
)
from gr00t_export.spec import PRECISIONS, StageSpec

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
class TickTimeline:
    """Where one whole tick's wall time goes on the GPU (medians over ticks): what separates the end-to-end latency
    from the summed kernel time is either short gaps between back-to-back kernels (launch latency, also inside CUDA
    graphs) or stalls where the GPU waits for the host."""

    wall_ms: float  # host: tick start to its outputs on the host
    busy_ms: float  # union of the device's kernels, copies and memsets
    activities: float  # device activities per tick (kernels, copies, memsets)
    lead_ms: float  # tick start to the first device activity (host work before the GPU has anything)
    tail_ms: float  # last device activity's end to the tick's end (the readback's host side)
    gaps_ms: float  # gaps shorter than `stall_us` between device activities: launch latency
    stalls_ms: float  # gaps of `stall_us` or more: the GPU idles, waiting for the host
    stall_us: float = 5.0
    worst_stalls: list[tuple[float, str]] = field(default_factory=list)  # (us, the activity after it), per tick


@dataclass
class BackendResult:
    backend: str
    stages: dict[str, Timing] = field(default_factory=dict)
    end_to_end: Timing | None = None
    note: str = ""
    kernels: dict[str, KernelProfile] = field(default_factory=dict)
    timeline: TickTimeline | None = None


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


def kernel_profile(runner: StageRunner, feeds: dict, iters: int = 5, top_n: int = 30) -> KernelProfile:
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


def tick_timeline(ticks: list[tuple[float, float]], activities: list[tuple[float, float, str]],
                  stall_us: float = 5.0, worst: int = 5) -> TickTimeline:
    """Splits each tick (host start, end; us) into lead, device busy, short gaps, stalls and tail, given the device
    activities (start, end, name; us, the host's clock) that fall inside it; medians over ticks."""
    rows, stalls_named = [], {}
    for start, end in ticks:
        inside = sorted((a for a in activities if a[0] >= start and a[1] <= end), key=lambda a: a[0])
        if not inside:
            continue
        busy = gaps = stalls = 0.0
        covered = inside[0][0]  # the union's frontier: overlapping activities (copies beside kernels) count once
        for a_start, a_end, name in inside:
            if a_start > covered:
                gap = a_start - covered
                if gap < stall_us:
                    gaps += gap
                else:
                    stalls += gap
                    stalls_named.setdefault(name[:80], []).append(gap)
            busy += max(0.0, a_end - max(a_start, covered))
            covered = max(covered, a_end)
        rows.append((end - start, busy, len(inside), inside[0][0] - start, end - covered, gaps, stalls))
    if not rows:
        raise InputError("no device activity inside any tick: was the profile taken on the GPU?")
    med = [statistics.median(col) / 1e3 for col in zip(*rows, strict=True)]
    per_tick = len(rows)
    top = sorted(((sum(v) / per_tick, k) for k, v in stalls_named.items()), reverse=True)[:worst]
    return TickTimeline(med[0], med[1], med[2] * 1e3, med[3], med[4], med[5], med[6], stall_us, top)


def profile_ticks(tick: Callable[[], object], iters: int = 20, stall_us: float = 5.0) -> TickTimeline:
    """CUPTI trace (torch.profiler) of `iters` whole ticks, each synchronised at its end, read by `tick_timeline`."""
    from torch.profiler import ProfilerActivity, profile, record_function

    label = "gr00t_export.tick"
    tick()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            with record_function(label):
                tick()
                torch.cuda.synchronize()
    ticks, activities = [], []
    for event in prof.events():
        if event.name == label:  # the host range; its GPU-side annotation (same name) is no device work
            if event.device_type == torch.autograd.DeviceType.CPU:
                ticks.append((event.time_range.start, event.time_range.end))
        elif event.device_type == torch.autograd.DeviceType.CUDA:
            activities.append((event.time_range.start, event.time_range.end, event.name))
    return tick_timeline(ticks, activities, stall_us)


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(samples: list[float]) -> Timing:
    """Median and p90 of wall-time samples in ms."""
    ordered = sorted(samples)
    return Timing(statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))])


class TimedStage:
    """Wraps a stage runner and records its wall time (synchronised on GPU) per call."""

    def __init__(self, inner: StageRunner, device: torch.device):
        self.inner, self.spec, self.device, self.samples = inner, inner.spec, device, []

    def infer(self, feeds):
        sync_device(self.device)
        start = time.perf_counter()
        out = self.inner.infer(feeds)
        sync_device(self.device)
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
        sync_device(device)
        start = time.perf_counter()
        run_pipeline(graph, timed, raw, init)
        sync_device(device)
        if i >= warmup:
            e2e.append((time.perf_counter() - start) * 1e3)
    # the per-stage syncs inflate e2e slightly; measure e2e again without them
    free = []
    for _ in range(iters):
        sync_device(device)
        start = time.perf_counter()
        run_pipeline(graph, stages, raw, init)
        sync_device(device)
        free.append((time.perf_counter() - start) * 1e3)
    return {n: summarize(t.samples) for n, t in timed.items()}, summarize(free)


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


def twin_runner(spec: StageSpec, module: torch.nn.Module, device: torch.device, compile_: bool,
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
    stages = {spec.name: twin_runner(spec, part.modules[spec.name], device, compile_) for spec in part.spec.stages}
    return part.spec, stages


def open_targets(artifact_dir: Path | None, model_path: Path | None, device: str, denoising_steps: int | None
                 ) -> tuple[torch.device, ExportedGr00tRunner | None, Path | None]:
    """The device (checked), the drop's runner and the checkpoint (the drop's source when not given), for `bench`
    and `--grid` alike."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but no GPU is visible; use --device cpu")
    if artifact_dir is not None:
        check_denoising_steps(artifact_dir, denoising_steps)
    runner = ExportedGr00tRunner(artifact_dir, device=device) if artifact_dir else None
    if model_path is None and runner is not None:
        model_path = Path(runner.manifest["source"]["model_path"])
    return dev, runner, model_path


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
    dev, runner, model_path = open_targets(artifact_dir, model_path, device, denoising_steps)
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
                    stages = graphed_stages(graph, stages, runner.dir, device, Path(tempfile.mkdtemp()))
                    run_pipeline(graph, stages, raw, init)  # captures this observation's shapes
                except Exception as err:  # noqa: BLE001 - reported in the table, the other backends still run
                    results.append(BackendResult(backend, note=f"failed: {type(err).__name__}: {str(err)[:200]}"))
                    continue
                graphed = graphs_note(stages)
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
            try:
                result.timeline = profile_ticks(functools.partial(run_pipeline, graph, stages, raw, init))
            except Exception as err:  # noqa: BLE001 - a profiler without CUPTI must not lose the timings
                result.note = f"tick profile failed: {type(err).__name__}: {str(err)[:120]}"
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


def timeline_rows(results: list[BackendResult]) -> tuple[list[str], list[list[str]]]:
    """Per backend: one whole tick's wall time split into host lead-in, GPU busy, launch gaps, stalls and tail."""
    header = ["backend", "tick ms", "GPU busy", "launch gaps", "stalls (GPU waits for host)", "lead-in", "tail",
              "activities", "worst stalls (us, before)"]
    rows = []
    for r in results:
        t = r.timeline
        if t is None:
            continue
        worst = ", ".join(f"{us:.0f} {name[:40]}" for us, name in t.worst_stalls[:3])
        rows.append([r.backend, f"{t.wall_ms:.2f}", f"{t.busy_ms:.2f}", f"{t.gaps_ms:.2f}", f"{t.stalls_ms:.2f}",
                     f"{t.lead_ms:.2f}", f"{t.tail_ms:.2f}", f"{t.activities:.0f}", worst])
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
