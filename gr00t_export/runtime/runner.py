"""Running the stages: one runner interface whatever executes a stage, and the exported policy built on it.

`StageRunner.infer(feeds) -> outputs` (named tensors) is the same for an eager PyTorch twin, a TorchScript
artifact and an onnxruntime session, so the pipeline, the validation tiers and the benchmark drive them
all the same way (the shape of Polygraphy's runners, without its dependency on the hot path).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from gr00t_export.errors import InputError
from gr00t_export.families import family_named
from gr00t_export.families.base import Observation, RawInputs, make_noise
from gr00t_export.manifest import Manifest
from gr00t_export.spec import SPEC_FILE, GraphSpec, StageSpec, load_graph_spec

ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16,
             "tensor(int64)": torch.int64, "tensor(uint8)": torch.uint8, "tensor(double)": torch.float64}


# IOBinding's element type per torch dtype: a numpy type where numpy has one, else the ONNX TensorProto number
# (onnxruntime >= 1.20 binds those too; numpy has no bfloat16)
ORT_ELEMENT_TYPES: dict[torch.dtype, Any] = {
    torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.uint8: np.uint8,
    torch.float64: np.float64, torch.int32: np.int32, torch.int8: np.int8, torch.bool: np.bool_,
    torch.bfloat16: 16}  # onnx.TensorProto.BFLOAT16


class StageRunner(Protocol):
    spec: StageSpec

    def infer(self, feeds: Mapping[str, Any]) -> dict[str, Any]: ...


def _outputs(spec: StageSpec, result: Any) -> dict[str, Any]:
    if isinstance(result, dict):
        return dict(result)
    if not isinstance(result, tuple | list):
        result = (result,)
    return dict(zip(spec.output_names, result, strict=True))


class TorchStageRunner:
    """An eager module or a TorchScript artifact; inputs passed positionally in spec order."""

    def __init__(self, module: torch.nn.Module, spec: StageSpec, device: str | torch.device = "cpu"):
        self.module, self.spec, self.device = module, spec, torch.device(device)

    def infer(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        args = [feeds[n].to(self.device) if isinstance(feeds[n], torch.Tensor) else feeds[n]
                for n in self.spec.input_names]
        with torch.no_grad():
            return _outputs(self.spec, self.module(*args))


def ort_providers(device: str, strict: bool = True) -> list[str]:
    """CUDA EP for a cuda device; with `strict=False` (build-time checks) fall back to the CPU EP."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if strict:
            raise InputError("--device cuda asked for but onnxruntime has no CUDA EP; install onnxruntime-gpu")
    return ["CPUExecutionProvider"]


class OnnxStageRunner:
    """An onnxruntime session; float inputs are cast to the graph's declared types.

    On the CUDA EP, inputs and outputs stay on the GPU (IOBinding on torch tensors): no host round trip
    between stages.
    """

    def __init__(self, path: Path, spec: StageSpec, providers: list[str], threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # idle ORT workers spin by default and starve the TorchScript stages that run between ONNX ones
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.spec = spec
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_types = {i.name: ORT_TYPES.get(i.type) for i in self.session.get_inputs()}
        self.on_cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"
        # numpy cannot carry bfloat16: such graphs run through IOBinding on torch tensors on the CPU as well
        bf16 = "tensor(bfloat16)" in {v.type for v in (*self.session.get_inputs(), *self.session.get_outputs())}
        self.bound_device = "cuda" if self.on_cuda else "cpu" if bf16 else None
        self._out_shapes: dict[tuple, list[tuple[tuple[int, ...], torch.dtype]]] = {}

    def _bind_inputs(self, inputs: Mapping[str, torch.Tensor]):
        binding = self.session.io_binding()
        for name, t in inputs.items():
            binding.bind_input(name, self.bound_device, 0, ORT_ELEMENT_TYPES[t.dtype], tuple(t.shape), t.data_ptr())
        return binding

    def _infer_bound(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Inputs and outputs as torch tensors on `bound_device`, bound in place (no host round trip on CUDA)."""
        device = self.bound_device
        inputs = {name: torch.as_tensor(feeds[name]).to(device, dtype).contiguous()
                  for name, dtype in self.input_types.items()}
        binding = self._bind_inputs(inputs)
        key = tuple(tuple(t.shape) for t in inputs.values())
        if key not in self._out_shapes:  # first call at these shapes: let ORT allocate, remember shapes
            for name in self.spec.output_names:
                binding.bind_output(name, device)
            self.session.run_with_iobinding(binding)
            outs = binding.get_outputs()
            self._out_shapes[key] = [(tuple(o.shape()), ORT_TYPES[o.data_type()]) for o in outs]
            binding = self._bind_inputs(inputs)
        outputs = {}
        for name, (shape, dtype) in zip(self.spec.output_names, self._out_shapes[key], strict=True):
            out = torch.empty(shape, dtype=dtype, device=device)
            binding.bind_output(name, device, 0, ORT_ELEMENT_TYPES[dtype], shape, out.data_ptr())
            outputs[name] = out
        if device == "cuda":
            torch.cuda.current_stream().synchronize()  # torch wrote the inputs on its stream; ORT reads on its own
        self.session.run_with_iobinding(binding)
        return outputs

    def infer(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        if self.bound_device is not None:
            return self._infer_bound(feeds)
        arrays = {}
        for name, dtype in self.input_types.items():
            t = feeds[name]
            t = t.to(dtype) if isinstance(t, torch.Tensor) and dtype is not None else t
            arrays[name] = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        out = self.session.run(self.spec.output_names, arrays)
        return {n: torch.from_numpy(np.asarray(v)) for n, v in zip(self.spec.output_names, out, strict=True)}


class InstructionCache:
    """The tokenizer stage memoised per instruction batch: a robot repeats one instruction for a whole episode, so
    tokenizing it again every tick is wasted host time. Bounded, oldest entry dropped first."""

    def __init__(self, inner: StageRunner, size: int = 64):
        self.inner, self.spec, self.size = inner, inner.spec, size
        self.module = getattr(inner, "module", None)  # the TorchScript itself, for spec checks
        self._cache: dict[tuple[str, ...], dict[str, Any]] = {}

    def infer(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        key = tuple(str(s) for s in np.asarray(feeds["instructions"]).reshape(-1))
        if key not in self._cache:
            if len(self._cache) >= self.size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self.inner.infer(feeds)
        return self._cache[key]


def run_pipeline(spec: GraphSpec, stages: Mapping[str, StageRunner], raw: RawInputs, init_actions: torch.Tensor,
                 trace: dict[str, dict[str, Any]] | None = None) -> dict[str, torch.Tensor]:
    """Runs every stage in `spec.launch_order()`, feeding each input from its `from:`; returns the outputs of the
    spec's last stage.

    With `trace`, records each stage's feeds (so a stage can be re-run alone on real inputs).
    """
    external = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in raw.external.items()}
    external["init_actions"] = init_actions
    produced: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    for stage in spec.launch_order():
        feeds = {t.name: external[t.name] if t.source == "external" else produced[t.source] for t in stage.inputs}
        if trace is not None:
            trace[stage.name] = feeds
        outputs[stage.name] = stages[stage.name].infer(feeds)
        produced |= {f"{stage.name}/{k}": v for k, v in outputs[stage.name].items()}
    return outputs[spec.stages[-1].name]


def check_denoising_steps(artifact_dir: Path, requested: int | None) -> None:
    """An exported denoiser runs the steps it was built with; asking for others is a usage error, not a silent no-op."""
    if requested is None:
        return
    built = Manifest.read(Path(artifact_dir)).denoising_steps
    if requested != built:
        raise InputError(f"{artifact_dir} was built with {built} denoising steps, unrolled into its graph; rebuild "
                         f"with `gr00t-export build --denoising_steps {requested}`, or leave out --denoising_steps")


class ExportedGr00tRunner:
    """The exported policy: TorchScript stages in torch, ONNX stages in onnxruntime (CUDA EP when asked).

    Same `get_action(obs, noise, seed)` as `ReferencePolicy`, so both run the same observation and noise.
    """

    def __init__(self, artifact_dir: str | Path, device: str = "cpu", threads: int = 0, backend: str = "ort"):
        """backend "trt" runs the ONNX stages from `engines/<stage>.engine` (TensorRT, CUDA) instead."""
        if backend not in ("ort", "trt"):
            raise InputError(f"unknown backend {backend!r} for an artifact dir; use ort (onnxruntime) or trt")
        self.dir = Path(artifact_dir)
        if not self.dir.is_dir():
            raise InputError(f"artifact dir {self.dir} does not exist; run `gr00t-export build` first")
        self.manifest = Manifest.read(self.dir)
        self.manifest.verify_seal(self.dir)
        spec_path = self.manifest.verify_file(self.dir, SPEC_FILE)
        self.graph = load_graph_spec(spec_path, views=self.manifest.views)
        self.interface = self.manifest.interface
        self.reader = family_named(self.manifest.family).reader(self.manifest)
        self.device, self.backend = device, backend
        self.pad_batches = False
        if backend == "trt":
            from gr00t_export.runtime.tensorrt import require_engines

            require_engines(self.dir, self.graph, device)
        providers = ort_providers(device) if backend == "ort" else []
        self.stages: dict[str, StageRunner] = {}
        for stage in self.graph.stages:
            path = self.manifest.verify_file(self.dir, stage.file)
            if stage.format == "onnx" and backend == "trt":
                from gr00t_export.runtime.tensorrt import trt_stage_runner

                self.stages[stage.name] = trt_stage_runner(self.dir, stage, device)
            elif stage.format == "onnx":
                self.stages[stage.name] = OnnxStageRunner(path, stage, providers, threads)
            else:
                on_cpu = "instructions" in stage.input_names  # the tokenizer: strings in, on the host
                module = torch.jit.load(str(path), map_location="cpu" if on_cpu else device)
                runner = TorchStageRunner(module, stage, device)
                self.stages[stage.name] = InstructionCache(runner) if on_cpu else runner

    def run_raw(self, raw: RawInputs, init_actions: torch.Tensor, trace: dict | None = None) -> dict[str, Any]:
        return run_pipeline(self.graph, self.stages, raw, init_actions, trace)

    def get_action(self, obs: Observation, noise: np.ndarray | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """With `pad_batches` (set where the stages run as CUDA graphs per shape), a batch of B runs as the next
        power of two, the last sample repeated, so a server meets a few shapes instead of every B."""
        raw = self.reader(obs)
        init = make_noise((raw.batch, *self.interface.noise_shape), noise, seed)
        size = 1 << (raw.batch - 1).bit_length() if self.pad_batches else raw.batch
        actions = self.run_raw(*pad_batch(raw, init, size))
        return {k: (v[:raw.batch].float().cpu().numpy() if raw.batched else v[0].float().cpu().numpy())
                for k, v in actions.items()}


def pad_batch(raw: RawInputs, init_actions: torch.Tensor, size: int) -> tuple[RawInputs, torch.Tensor]:
    """`raw` and its initial actions grown to `size` samples by repeating the last one (every external input is
    batch-first; a repeated sample changes no other sample's prompt padding or result)."""
    extra = size - raw.batch
    if extra <= 0:
        return raw, init_actions
    external = {name: value + [value[-1]] * extra if isinstance(value, list)
                else np.concatenate([value, np.repeat(value[-1:], extra, axis=0)])
                for name, value in raw.external.items()}
    init = torch.cat([init_actions, init_actions[-1:].expand(extra, *init_actions.shape[1:])])
    return RawInputs(external, size, raw.batched), init
