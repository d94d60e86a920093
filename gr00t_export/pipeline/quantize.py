"""Calibrated FP8 (E4M3) post-training quantisation of exported ONNX stages.

Why our own pass rather than ModelOpt: `modelopt.onnx` needs its `[onnx]` extra, which pins onnxruntime-gpu, cupy
and an older onnx than ours; and its FP8 output keeps weights as fp16 Q->DQ pairs, so files do not shrink.

The recipe follows NVIDIA's (ModelOpt FP8): weights and input activations of the linear layers (MatMul/Gemm with a
constant weight) in E4M3 with max calibration, scale = amax / 448, optionally the attention BMMs (q/k/v and the
softmax output); everything else (norms, softmax, residual adds, embedding Gather, the patch Conv) stays in the
source precision. Weights are stored as float8e4m3fn initializers feeding DequantizeLinear, so the file holds one
byte per weight; activations get a per-tensor QuantizeLinear -> DequantizeLinear pair.

Weights are per output channel by default (axis 1 of a MatMul's (K, N) weight, axis 0 of a Gemm's transB (N, K)),
as ModelOpt's ONNX FP8 path emits and TensorRT accepts; `weight_granularity="tensor"` gives the single scale of
ModelOpt's FP8_DEFAULT_CFG. FP8 is floating point, so per-channel mostly helps channels far below the tensor's max.

Two layouts, because onnxruntime's CPU graph optimiser (1.31 still) mishandles float8 Q/DQ: it turns a MatMul/Gemm
fed by two DequantizeLinear into MatMulIntegerToFloat/QGemm (no FP8 kernel), and it moves Q/DQ through Reshape and
Transpose (its own MatMul+Add -> Reshape/Gemm rewrite included) and then drops them, leaving a Transpose or Reshape
on float8 data it cannot run. Either way the session fails to load.

* "portable" (default): linear inputs go `Cast(other float) -> Q -> DQ -> Cast(back) -> MatMul`, weights
  `fp8 -> DQ -> MatMul`, attention BMMs as below with a Cast before each Q. No Q or DQ touches an op onnxruntime
  rewrites, so the default CPU session runs it. Its Q/DQ ops compute what the tensorrt layout's do for fp16
  graphs; fp32 graphs round activations to fp16 before E4M3.
* "tensorrt": ModelOpt's layout, `Q -> DQ -> MatMul <- DQ <- fp8` with scales in the graph's type (a Cast between DQ
  and MatMul stops TensorRT fusing the FP8 GEMM), attention BMMs as ModelOpt's FP8 fMHA pattern
  (fp16 Q/DQ -> Cast fp32 -> BMM -> Cast back). onnxruntime needs `session.disable_quant_qdq=1` to load it.

Calibrate once, emit both: pass the first report's `activation_amax` to the second call.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gr00t_export.compare import compare_outputs
from gr00t_export.errors import InputError, ValidationFailure
from gr00t_export.pipeline.optimize import save_onnx

E4M3_MAX = 448.0
_FP16_MAX = 65504.0
_MIN_OPSET = 19
_CHUNK = 1 << 22  # elements per encode step
_FLOAT_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}
_WEIGHT_CHAIN_OPS = {"Transpose", "Cast", "Identity", "Reshape"}

ExcludeSpec = Callable[[onnx.NodeProto], bool] | str | Sequence[str] | None


# --------------------------------------------------------------------------------------------- E4M3 numerics


def _e4m3_codes(v: np.ndarray) -> np.ndarray:
    """float32 -> float8e4m3fn bit patterns (uint8): round half to even, saturate at +-448 (inf too), NaN -> NaN.

    ml_dtypes' cast rounds half to even but turns values past the format's range into NaN (E4M3FN has no inf), so
    the values are clipped first: QuantizeLinear's saturate=1, which onnxruntime and TensorRT compute."""
    clipped = np.clip(np.asarray(v, dtype=np.float32), -E4M3_MAX, E4M3_MAX)
    return clipped.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)


def _quantize_weight(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """E4M3 codes of w / scale (scale broadcastable to w), a block of rows at a time so 100M-element weights need
    little extra memory."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    s = np.broadcast_to(np.asarray(scale, dtype=np.float32), w.shape)
    out = np.empty(w.shape, dtype=np.uint8)
    rows = max(1, _CHUNK // max(1, w[0].size))
    for i in range(0, w.shape[0], rows):
        out[i : i + rows] = _e4m3_codes(w[i : i + rows] / s[i : i + rows])
    return out


def _fp16_scale(amax: np.ndarray) -> np.ndarray:
    """amax / 448 rounded *up* to an fp16 value, so that amax / scale never passes 448 (no clipping)."""
    want = (np.asarray(amax, dtype=np.float64) / E4M3_MAX).astype(np.float32)
    s16 = want.astype(np.float16)
    low = s16.astype(np.float32) < want
    s16 = np.where(low, np.nextafter(s16, np.float16(np.inf)), s16).astype(np.float16)
    return np.maximum(s16, np.float16(2.0**-24))


# --------------------------------------------------------------------------------------------- report


@dataclass
class QuantReport:
    """What `quantize_fp8` did: quantised nodes by kind, skipped nodes with reasons, ranges, sizes, self-check."""

    quantized: dict[str, str] = field(default_factory=dict)  # node name -> "linear" | "attention" | "weight_only"
    skipped: dict[str, str] = field(default_factory=dict)  # node name -> reason
    activation_amax: dict[str, float] = field(default_factory=dict)  # tensor -> calibrated amax
    activation_scale: dict[str, float] = field(default_factory=dict)
    weight_amax: dict[str, float] = field(default_factory=dict)  # weight tensor -> max over its channels
    weight_granularity: str = "channel"
    shared_weights: int = 0  # weights found identical to an earlier one and stored once
    layout: str = "portable"
    calibration_feeds: int = 0
    size_before: int = 0  # bytes, .onnx plus external data
    size_after: int = 0
    external_data: bool = False
    output_cosine: dict[str, float] = field(default_factory=dict)  # fp8 vs source on the first calibration feed
    ort_session: str = ""  # how the self-check loaded the result in onnxruntime CPU

    @property
    def size_ratio(self) -> float:
        return self.size_after / self.size_before if self.size_before else float("nan")

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for kind in self.quantized.values():
            kinds[kind] = kinds.get(kind, 0) + 1
        by_kind = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        lines = [
            f"fp8: {len(self.quantized)} nodes quantised ({by_kind}), {len(self.skipped)} skipped; "
            f"{self.calibration_feeds} calibration feeds; weights per-{self.weight_granularity}; {self.layout} layout",
            f"size {self.size_before / 1e6:.1f} MB -> {self.size_after / 1e6:.1f} MB ({self.size_ratio:.3f}x)"
            + (", external data" if self.external_data else "")
            + (f"; {self.shared_weights} duplicate weights stored once" if self.shared_weights else ""),
        ]
        if self.activation_amax:
            amax = np.array(list(self.activation_amax.values()))
            lines.append(f"activation amax: min {amax.min():.4g}, median {np.median(amax):.4g}, max {amax.max():.4g}")
        if self.output_cosine:
            lines.append("cosine vs source: " + ", ".join(f"{k} {v:.5f}" for k, v in self.output_cosine.items()))
        reasons: dict[str, int] = {}
        for reason in self.skipped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f"skipped {n}x: {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- graph helpers


def _file_size(path: Path, model: onnx.ModelProto | None = None) -> int:
    """Bytes of the .onnx file plus every external data file it points to."""
    total = path.stat().st_size
    locations: set[str] = set()
    if model is not None:
        for init in model.graph.initializer:
            for entry in init.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    for loc in locations:
        data = path.parent / loc
        if data.exists():
            total += data.stat().st_size
    return total


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(init.data_location == TensorProto.EXTERNAL for init in model.graph.initializer)


class _Graph:
    """Name-indexed view of a GraphProto (producers, initializers, names in use) collecting the nodes to add."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.inits: dict[str, TensorProto] = {t.name: t for t in self.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in self.graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
        self.graph_inputs = {i.name for i in self.graph.input}
        self.graph_outputs = {o.name for o in self.graph.output}
        self.names: set[str] = set(self.inits) | set(self.producer) | self.graph_inputs
        self.names.update(n.name for n in self.graph.node)
        self.new_nodes: list[onnx.NodeProto] = []
        self.new_inits: list[TensorProto] = []

    def unique(self, base: str) -> str:
        base = base.lstrip("/").replace("/", "_") or "t"
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def is_constant(self, name: str) -> bool:
        return name in self.inits and name not in self.graph_inputs

    def add_init(self, base: str, array: np.ndarray) -> str:
        name = self.unique(base)
        self.new_inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def add_fp8_init(self, base: str, codes: np.ndarray) -> str:
        name = self.unique(base)
        t = TensorProto(name=name, data_type=TensorProto.FLOAT8E4M3FN, dims=list(codes.shape))
        t.raw_data = np.ascontiguousarray(codes, dtype=np.uint8).tobytes()
        self.new_inits.append(t)
        return name

    def emit(self, nodes: list[onnx.NodeProto]) -> None:
        self.new_nodes.extend(nodes)

    def finish(self) -> onnx.ModelProto:
        """The rewritten model: new nodes and initializers added, then onnx-graphsurgeon drops the nodes and
        initializers nothing reads any more (reads inside If/Loop bodies count) and sorts the nodes topologically."""
        import onnx_graphsurgeon as gs
        from onnx_graphsurgeon.logger import G_LOGGER

        self.graph.node.extend(self.new_nodes)
        self.graph.initializer.extend(self.new_inits)
        self.new_nodes, self.new_inits = [], []
        with G_LOGGER.suppress(G_LOGGER.ERROR):
            graph = gs.import_onnx(self.model)
            graph.cleanup().toposort()
            return gs.export_onnx(graph, do_type_check=False)


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _const_value(g: _Graph, name: str) -> np.ndarray | None:
    if g.is_constant(name):
        return numpy_helper.to_array(g.inits[name])
    prod = g.producer.get(name)
    if prod is not None and prod.op_type == "Constant" and prod.attribute and prod.attribute[0].name == "value":
        return numpy_helper.to_array(prod.attribute[0].t)
    return None


def _resolve_weight(g: _Graph, name: str) -> tuple[np.ndarray | None, str, onnx.NodeProto | None]:
    """Value of a constant weight as its consumer sees it, following Transpose/Cast/Identity/Reshape up to an
    initializer. Returns (value, "constant", None), or (None, "gathered", the Gather) for a stack of weights indexed
    at run time, or (None, "activation", None), or (None, <why it cannot be used>, None)."""
    chain: list[onnx.NodeProto] = []
    cur = name
    while True:
        value = _const_value(g, cur)
        if value is not None:
            break
        prod = g.producer.get(cur)
        if prod is None:
            return None, "activation", None
        if prod.op_type not in _WEIGHT_CHAIN_OPS:
            if prod.op_type == "Gather" and prod.input and g.is_constant(prod.input[0]):
                return None, "gathered", prod
            return None, "activation", None
        chain.append(prod)
        cur = prod.input[0]
    for node in reversed(chain):
        if node.op_type == "Transpose":
            value = np.transpose(value, _attr(node, "perm", None))
        elif node.op_type == "Cast":
            value = value.astype(helper.tensor_dtype_to_np_dtype(_attr(node, "to", TensorProto.FLOAT)))
        elif node.op_type == "Reshape":
            shape = _const_value(g, node.input[1])
            if shape is None:
                return None, "weight reshaped by a computed shape; constant-fold the graph first (onnxslim)", None
            keep_zero = bool(_attr(node, "allowzero", 0))
            value = value.reshape([value.shape[i] if d == 0 and not keep_zero else int(d) for i, d in enumerate(shape)])
    return value, "constant", None


# --------------------------------------------------------------------------------------------- calibration


def _check_feed(index: int, feed: dict[str, np.ndarray], inputs: dict[str, onnx.ValueInfoProto]) -> dict:
    if not isinstance(feed, dict):
        raise InputError(f"calibration feed #{index} is a {type(feed).__name__}, not a dict of input name -> array; "
                         "yield one {input_name: np.ndarray} per sample")
    unknown = sorted(set(feed) - set(inputs))
    missing = sorted(set(inputs) - set(feed))
    if unknown or missing:
        raise InputError(f"calibration feed #{index} does not match the graph inputs (missing {missing}, unknown "
                         f"{unknown}); feed exactly {sorted(inputs)}")
    out = {}
    for name, value in feed.items():
        want = helper.tensor_dtype_to_np_dtype(inputs[name].type.tensor_type.elem_type)
        arr = np.asarray(value)
        if arr.dtype != want:
            same_kind = (np.issubdtype(arr.dtype, np.floating) and np.issubdtype(want, np.floating)) or (
                np.issubdtype(arr.dtype, np.integer) and np.issubdtype(want, np.integer)
            )
            if not same_kind:
                raise InputError(f"calibration feed #{index} input '{name}' is {arr.dtype}, the graph wants {want}; "
                                 "convert it before quantising")
            arr = arr.astype(want)
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise InputError(f"calibration feed #{index} input '{name}' contains NaN or inf; "
                             "calibrate on real, finite samples")
        out[name] = arr
    return out


@dataclass
class _Stats:
    amax: float = 0.0
    max_rows: int = 0  # largest M seen, for the GEMV check
    shape: tuple[int, ...] = ()  # last seen, for the size check on activation x activation MatMuls
    dtype: np.dtype | None = None


def _calibrate(
    model_path: Path, model: onnx.ModelProto, tensors: list[str], feeds: Iterable[dict[str, np.ndarray]],
    max_feeds: int | None = None,
) -> tuple[dict[str, _Stats], int, dict[str, np.ndarray], list[np.ndarray]]:
    """Run onnxruntime CPU over the feeds one at a time, keeping a running per-tensor amax of `tensors`.

    Returns the stats, the feed count, the first feed and the source's outputs on it (for the self-check)."""
    import onnxruntime as ort

    inits = {t.name for t in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in inits}
    outputs = [o.name for o in model.graph.output]
    from_feed = [t for t in tensors if t in inputs]
    fetch = [t for t in tensors if t not in inputs and t not in outputs]

    aug = onnx.ModelProto()
    aug.CopyFrom(model)  # with external data this is the structure only; weights stay in their file
    aug.graph.output.extend(onnx.ValueInfoProto(name=t) for t in fetch)

    tmp_path: Path | None = None
    try:
        if _uses_external_data(model):
            # External data paths are relative to the model's folder, so the augmented copy must sit beside it.
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{model_path.stem}.calib-", suffix=".onnx", dir=model_path.parent)
            except OSError as err:
                raise InputError(f"cannot write the calibration copy beside {model_path} ({err}); make its folder "
                                 "writable or copy the model and its data elsewhere") from err
            os.close(fd)
            tmp_path = Path(tmp)
            onnx.save(aug, str(tmp_path))
            sess = ort.InferenceSession(str(tmp_path), providers=["CPUExecutionProvider"])
        else:
            sess = ort.InferenceSession(aug.SerializeToString(), providers=["CPUExecutionProvider"])
        names = outputs + fetch
        stats = {t: _Stats() for t in tensors}
        count = 0
        first_feed: dict[str, np.ndarray] = {}
        first_out: list[np.ndarray] = []
        for index, raw in enumerate(feeds):
            if max_feeds is not None and index >= max_feeds:
                break
            feed = _check_feed(index, raw, inputs)
            try:
                results = sess.run(names, feed)
            except Exception as err:  # onnxruntime's own exception types: shapes, ranks
                raise InputError(f"calibration feed #{index} does not run through {model_path.name}: {err}; feed "
                                 "arrays shaped as the graph inputs") from err
            if count == 0:
                first_feed, first_out = feed, results[: len(outputs)]
            values = dict(zip(names, results, strict=True))
            values.update({t: feed[t] for t in from_feed})
            for t in tensors:
                arr = values[t]
                if not np.issubdtype(arr.dtype, np.floating):
                    stats[t].dtype = arr.dtype
                    continue
                amax = float(np.max(np.abs(arr))) if arr.size else 0.0
                if not math.isfinite(amax):
                    raise InputError(f"calibration feed #{index} drives tensor '{t}' to NaN/inf; check the "
                                     "calibration data's scale, or calibrate the fp32 export")
                st = stats[t]
                st.amax = max(st.amax, amax)
                st.max_rows = max(st.max_rows, int(np.prod(arr.shape[:-1])) if arr.ndim >= 2 else 1)
                st.shape, st.dtype = arr.shape, arr.dtype
            del values, results
            count += 1
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
    if count == 0:
        raise InputError("no calibration feeds; pass at least one {input_name: array} dict (NVIDIA calibrates on "
                         "10 real samples)")
    return stats, count, first_feed, first_out


# --------------------------------------------------------------------------------------------- the pass


@dataclass
class _Candidate:
    node: onnx.NodeProto
    kind: str  # linear | attention | weight_only
    acts: list[int]  # input indices that get activation Q/DQ
    weight_shape: tuple[int, ...] = ()  # effective weight shape as the node sees it (linear); values loaded late
    weight_src: str = ""  # consumer-visible weight tensor (cache key for shared weights)
    gather: onnx.NodeProto | None = None  # weight_only: the Gather reading the stacked weights


def _excluder(exclude: ExcludeSpec) -> Callable[[onnx.NodeProto], bool]:
    if exclude is None:
        return lambda node: False
    if callable(exclude):
        return exclude
    patterns = [exclude] if isinstance(exclude, str) else list(exclude)
    return lambda node: any(fnmatch.fnmatchcase(node.name, p) for p in patterns)


def _find_candidates(
    g: _Graph, excluded: Callable[[onnx.NodeProto], bool], quantize_attention: bool, gathered_weights: str,
    min_gemm_dim: int, report: QuantReport,
) -> list[_Candidate]:
    found: list[_Candidate] = []
    for index, node in enumerate(g.graph.node):
        if not node.name:
            node.name = g.unique(f"{node.op_type}_{index}")
        if node.op_type == "Conv":
            report.skipped[node.name] = "Conv stays in source precision (patch embedding, as in NVIDIA's recipe)"
            continue
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        if excluded(node):
            report.skipped[node.name] = "excluded"
            continue
        a_name, b_name = node.input[0], node.input[1]
        if _resolve_weight(g, a_name)[0] is not None:
            report.skipped[node.name] = "constant on the left operand"
            continue
        weight, why, gather = _resolve_weight(g, b_name)
        if weight is not None:
            if not np.issubdtype(weight.dtype, np.floating):
                report.skipped[node.name] = f"integer weight ({weight.dtype})"
                continue
            if weight.ndim < 2:
                report.skipped[node.name] = "matrix-vector product with a 1-D weight"
                continue
            if node.op_type == "Gemm" and _attr(node, "transB", 0):
                n_dim, k_dim = weight.shape[-2], weight.shape[-1]
            else:
                k_dim, n_dim = weight.shape[-2], weight.shape[-1]
            if min(k_dim, n_dim) < min_gemm_dim:
                report.skipped[node.name] = f"GEMM too small for FP8 (K={k_dim}, N={n_dim} < {min_gemm_dim})"
                continue
            found.append(_Candidate(node, "linear", [0], tuple(weight.shape), b_name))
            del weight  # re-read when rewiring, so big graphs never hold every weight twice
        elif why == "gathered" and gather is not None:
            if gathered_weights == "skip":
                report.skipped[node.name] = ("weight gathered per category id: no FP8 GEMM on a data-dependent "
                                             "weight (ModelOpt leaves CategorySpecificLinear unquantised too)")
            elif _attr(gather, "axis", 0) != 0 or len(g.inits[gather.input[0]].dims) < 3:
                report.skipped[node.name] = "gathered weight is not a stack of matrices along axis 0"
            else:
                found.append(_Candidate(node, "weight_only", [], (), gather.input[0], gather))
        elif why != "activation":
            report.skipped[node.name] = why
        elif node.op_type == "MatMul":
            if quantize_attention:
                found.append(_Candidate(node, "attention", [0, 1]))
            else:
                report.skipped[node.name] = "activation x activation MatMul (attention BMM); quantize_attention=False"
        else:
            report.skipped[node.name] = "Gemm without a constant weight"
    return found


def quantize_fp8(
    model_path: str | Path,
    out_path: str | Path,
    calibration: Iterable[dict[str, np.ndarray]],
    *,
    exclude: ExcludeSpec = None,
    quantize_attention: bool = False,
    weight_granularity: Literal["channel", "tensor"] = "channel",
    layout: Literal["portable", "tensorrt"] = "portable",
    gathered_weights: Literal["skip", "weight_only"] = "skip",
    min_gemm_dim: int = 16,
    skip_gemv: bool = False,
    activation_amax: Mapping[str, float] | None = None,
    external_data: bool | None = None,
    verify: bool = True,
) -> QuantReport:
    """Calibrate on `calibration` feeds and write an FP8 (E4M3) Q/DQ copy of the ONNX graph to `out_path`.

    calibration: {input name: array} per sample, streamed one at a time (NVIDIA uses 10 real samples).
    exclude: node-name glob(s) or a predicate on the NodeProto; matching MatMul/Gemm stay in source precision.
    quantize_attention: also quantise activation x activation MatMuls (q/k/v BMMs and the softmax output), as NVIDIA
        does for the DiT.
    layout: "portable" runs in a default onnxruntime CPU session; "tensorrt" is ModelOpt's layout (see module doc).
    gathered_weights: "weight_only" stores per-category stacked weights (Gather -> MatMul) as FP8 with one scale per
        category and dequantises before the Gather (smaller file, no FP8 compute); "skip" keeps them as they are.
    min_gemm_dim / skip_gemv: leave out GEMMs and BMMs whose K or N is below this, and (if set) linears whose M was 1
        in every calibration feed: FP8 tensor cores gain nothing there and the Q/DQ only costs time.
    activation_amax: ranges from an earlier report on the same graph; then only the first feed is run (self-check).
    external_data: None keeps the source's choice and switches to external data past 2 GB.
    verify: load the result in onnxruntime CPU, run the first feed, report cosine vs the source per output.
    """
    model_path, out_path = Path(model_path), Path(out_path)
    if not model_path.is_file():
        raise InputError(f"ONNX model {model_path} not found; export the stage first")
    if out_path.resolve() == model_path.resolve():
        raise InputError(f"output {out_path} is the input model; write the FP8 graph to a new file")
    for name, value, allowed in (
        ("weight_granularity", weight_granularity, ("channel", "tensor")),
        ("layout", layout, ("portable", "tensorrt")),
        ("gathered_weights", gathered_weights, ("skip", "weight_only")),
    ):
        if value not in allowed:
            raise InputError(f"{name}={value!r}; use one of {', '.join(map(repr, allowed))}")

    skeleton = onnx.load(str(model_path), load_external_data=False)
    opset = next((o.version for o in skeleton.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < _MIN_OPSET:
        raise InputError(f"{model_path.name} uses opset {opset}; FP8 QuantizeLinear needs opset >= {_MIN_OPSET}: "
                         f"re-export with torch.onnx.export(..., opset_version={_MIN_OPSET})")
    report = QuantReport(weight_granularity=weight_granularity, layout=layout,
                         size_before=_file_size(model_path, skeleton))
    src_external = _uses_external_data(skeleton)

    model = onnx.load(str(model_path), load_external_data=True) if src_external else skeleton
    g = _Graph(model)
    cands = _find_candidates(g, _excluder(exclude), quantize_attention, gathered_weights, min_gemm_dim, report)
    act_tensors = sorted({c.node.input[i] for c in cands for i in c.acts} | {c.node.input[0] for c in cands})

    stats, report.calibration_feeds, first_feed, first_out = _calibrate(
        model_path, skeleton, act_tensors, calibration, max_feeds=1 if activation_amax is not None else None
    )
    if activation_amax is not None:
        _reuse_amax(stats, activation_amax, {c.node.input[i] for c in cands for i in c.acts})

    weight_cache: dict[tuple, str] = {}
    act_cache: dict[tuple, str] = {}
    zero = g.add_fp8_init("fp8_zero_point", np.zeros((), np.uint8))

    for cand in cands:
        node = cand.node
        dtype = stats[node.input[0]].dtype
        if dtype not in _FLOAT_TYPES:
            report.skipped[node.name] = f"not a float16/float32 MatMul ({dtype})"
            continue
        if skip_gemv and cand.kind == "linear" and stats[node.input[0]].max_rows <= 1:
            report.skipped[node.name] = "GEMV (M=1 in every calibration feed): no FP8 tensor-core gain"
            continue
        if cand.kind == "attention":
            a_shape, b_shape = stats[node.input[0]].shape, stats[node.input[1]].shape
            k_dim, n_dim = (a_shape[-1] if a_shape else 0), (b_shape[-1] if len(b_shape) >= 2 else 0)
            if min(k_dim, n_dim) < min_gemm_dim:  # e.g. a rotary-angle outer product: keep it exact
                report.skipped[node.name] = f"BMM too small for FP8 (K={k_dim}, N={n_dim} < {min_gemm_dim})"
                continue
        bad = [node.input[i] for i in cand.acts if not 0.0 < stats[node.input[i]].amax <= _FP16_MAX * 0.99]
        if bad:
            report.skipped[node.name] = f"activation amax outside (0, fp16 max) in calibration: {bad[0]}"
            continue
        if cand.kind == "weight_only":
            _rewire_gathered(g, cand, dtype, weight_cache, report)
            report.quantized[node.name] = cand.kind
            continue
        if cand.kind == "linear":
            reason = _rewire_weight(g, cand, dtype, weight_granularity, weight_cache, report)
            if reason:
                report.skipped[node.name] = reason
                continue
        attention = cand.kind == "attention"
        for i in cand.acts:
            t = node.input[i]
            node.input[i] = _activation_qdq(g, t, stats[t].amax, dtype, layout, attention, act_cache, zero, report)
        if attention and dtype != np.float32:
            # The BMM now runs in fp32 on Cast inputs (TensorRT's FP8 fMHA pattern); cast its result back.
            mm_out = node.output[0]
            node.output[0] = g.unique(f"{mm_out}_fp32")
            cast = helper.make_node("Cast", [node.output[0]], [mm_out], name=g.unique(f"{node.name}_Cast_out"),
                                    to=_FLOAT_TYPES[dtype])
            g.emit([cast])
        report.quantized[node.name] = cand.kind

    model = g.finish()
    del g  # the source graph's weights, unless the caller's skeleton holds them
    if model.ir_version < 9:
        model.ir_version = 9  # float8 types exist from IR 9

    _save(model, out_path, external_data, src_external, report, model_path.parent)
    if verify:
        report.output_cosine, report.ort_session = _verify(
            out_path, first_feed, first_out, [o.name for o in model.graph.output], strict=layout == "portable"
        )
    return report


def _reuse_amax(stats: dict[str, _Stats], amax: Mapping[str, float], needed: set[str]) -> None:
    missing = sorted(needed - set(amax))
    if missing:
        raise InputError(f"activation_amax has no range for {missing[:3]} (of {len(missing)}); pass the "
                         "activation_amax of a report from the same graph and options, or calibrate afresh")
    for t in needed:
        stats[t].amax = float(amax[t])


def _other_float(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float16) if dtype == np.float32 else np.dtype(np.float32)


def _activation_qdq(
    g: _Graph, t: str, amax: float, dtype: np.dtype, layout: str, attention: bool, cache: dict[tuple, str],
    zero: str, report: QuantReport,
) -> str:
    """Per-tensor Q -> DQ on activation t; one chain per (tensor, layout, attention), shared by its quantised readers.

    Linear inputs: tensorrt `Q -> DQ` in dtype; portable `Cast(other float) -> Q -> DQ -> Cast(dtype)`, the Casts
    fencing the Q/DQ off from onnxruntime's rewrites (module doc); exact for fp16 graphs.
    Attention BMM inputs: ModelOpt's FP8 fMHA form, fp16 Q/DQ then Cast to fp32 for the BMM; portable also puts a
    Cast before the Q (onnxruntime on x86 runs fp16 graphs in fp32 and would merge a Cast after the DQ away).
    """
    key = (t, layout, attention)
    if key in cache:
        return cache[key]
    scale16 = _fp16_scale(np.float32(amax))
    report.activation_amax[t] = float(amax)
    report.activation_scale[t] = float(scale16)
    nodes: list[onnx.NodeProto] = []

    def cast(src: str, to: np.dtype, tag: str) -> str:
        out = g.unique(f"{t}_{tag}")
        nodes.append(helper.make_node("Cast", [src], [out], name=g.unique(f"{t}_Cast_{tag}"), to=_FLOAT_TYPES[to]))
        return out

    fp16, fp32 = np.dtype(np.float16), np.dtype(np.float32)
    if attention:
        q_dtype, dq_dtype, out_dtype = (_other_float(dtype) if layout == "portable" else fp16), fp16, fp32
    elif layout == "portable":
        q_dtype = dq_dtype = _other_float(dtype)
        out_dtype = dtype
    else:
        q_dtype = dq_dtype = out_dtype = dtype
    q_in = t if q_dtype == dtype else cast(t, q_dtype, f"{q_dtype}")
    q_scale = g.add_init(f"{t}_fp8_scale", scale16.astype(q_dtype))
    dq_scale = q_scale if dq_dtype == q_dtype else g.add_init(f"{t}_fp8_scale_{dq_dtype}", scale16.astype(dq_dtype))
    q_out, dq_out = g.unique(f"{t}_fp8"), g.unique(f"{t}_fp8_dq")
    nodes += [
        helper.make_node("QuantizeLinear", [q_in, q_scale, zero], [q_out], name=g.unique(f"{t}_QuantizeLinear")),
        helper.make_node("DequantizeLinear", [q_out, dq_scale, zero], [dq_out],
                         name=g.unique(f"{t}_DequantizeLinear")),
    ]
    result = dq_out if dq_dtype == out_dtype else cast(dq_out, out_dtype, f"fp8_dq_{out_dtype}")
    g.emit(nodes)
    cache[key] = result
    return result


def _rewire_weight(
    g: _Graph, cand: _Candidate, dtype: np.dtype, granularity: str, cache: dict, report: QuantReport
) -> str | None:
    """Store the weight as FP8 + DequantizeLinear and point the node at it; a reason string if it cannot be."""
    node, ndim = cand.node, len(cand.weight_shape)
    if node.op_type == "Gemm":
        axis = 0 if _attr(node, "transB", 0) else 1
    else:
        axis = ndim - 1
    axis_key = axis if granularity == "channel" else None
    key = (cand.weight_src, str(dtype), axis_key)
    if key not in cache:
        w = _resolve_weight(g, cand.weight_src)[0]
        assert w is not None
        # Same values under another name (torch's export folds a reused Linear's transpose once per call site, so
        # an unrolled loop repeats its weights): point at the FP8 copy already made.
        digest = (hashlib.sha1(np.ascontiguousarray(w).tobytes()).hexdigest(), w.shape, str(dtype), axis_key)
        if digest in cache:
            cache[key] = cache[digest]
            report.shared_weights += 1
            node.input[1] = cache[key]
            return None
        w32 = w.astype(np.float32)
        del w
        if axis_key is None:
            amax = np.max(np.abs(w32))
        else:
            amax = np.max(np.abs(w32), axis=tuple(i for i in range(ndim) if i != axis))
        if not np.isfinite(amax).all():
            return "weight holds NaN/inf"
        if np.max(amax) > _FP16_MAX * 0.99:
            return "weight range exceeds fp16"
        amax = np.where(amax > 0, amax, E4M3_MAX)  # all-zero channel: any scale works, codes are zero
        scale16 = _fp16_scale(amax)
        bshape = [1] * ndim
        if axis_key is not None:
            bshape[axis] = -1
        codes = _quantize_weight(w32, scale16.astype(np.float32).reshape(bshape) if axis_key is not None else scale16)
        base = cand.weight_src
        w_name = g.add_fp8_init(f"{base}_fp8", codes)
        scale_name = g.add_init(f"{base}_fp8_scale", scale16.astype(dtype))
        zp = g.add_fp8_init(f"{base}_fp8_zero_point", np.zeros(scale16.shape, np.uint8))
        result = g.unique(f"{base}_fp8_dq")
        attrs = {"axis": axis} if axis_key is not None else {}
        nodes = [helper.make_node("DequantizeLinear", [w_name, scale_name, zp], [result],
                                  name=g.unique(f"{base}_DequantizeLinear"), **attrs)]
        g.emit(nodes)
        cache[key] = cache[digest] = result
        report.weight_amax[cand.weight_src] = float(np.max(amax))
    node.input[1] = cache[key]
    return None


def _rewire_gathered(g: _Graph, cand: _Candidate, dtype: np.dtype, cache: dict, report: QuantReport) -> None:
    """Stacked per-category weight -> FP8 with one scale per category, dequantised ahead of the Gather."""
    gather = cand.gather
    assert gather is not None
    src = cand.weight_src  # the stack's own name: a Gather read by several MatMuls is rewired on the first visit
    key = (src, str(dtype), "gather")
    if key not in cache:
        stack = numpy_helper.to_array(g.inits[src]).astype(np.float32)
        amax = np.max(np.abs(stack).reshape(stack.shape[0], -1), axis=1)
        amax = np.where(amax > 0, amax, E4M3_MAX)
        scale16 = _fp16_scale(amax)
        codes = _quantize_weight(stack, scale16.astype(np.float32).reshape([-1] + [1] * (stack.ndim - 1)))
        w_name = g.add_fp8_init(f"{src}_fp8", codes)
        scale_name = g.add_init(f"{src}_fp8_scale", scale16.astype(dtype))
        zp = g.add_fp8_init(f"{src}_fp8_zero_point", np.zeros(scale16.shape, np.uint8))
        dq_out = g.unique(f"{src}_fp8_dq")
        g.emit([helper.make_node("DequantizeLinear", [w_name, scale_name, zp], [dq_out],
                                 name=g.unique(f"{src}_DequantizeLinear"), axis=0)])
        cache[key] = dq_out
        report.weight_amax[src] = float(np.max(amax))
    gather.input[0] = cache[key]


def _save(model: onnx.ModelProto, out_path: Path, external: bool | None, src_external: bool, report: QuantReport,
          source_dir: Path) -> None:
    data_path = out_path.with_name(out_path.name + "_data")
    report.external_data = save_onnx(model, out_path, True if external is None and src_external else external,
                                     source_dir)
    onnx.checker.check_model(str(out_path))
    report.size_after = out_path.stat().st_size + (data_path.stat().st_size if data_path.exists() else 0)


def _verify(
    out_path: Path, feed: dict[str, np.ndarray], reference: list[np.ndarray], names: list[str], strict: bool
) -> tuple[dict[str, float], str]:
    """Run the FP8 graph in onnxruntime CPU on `feed`; cosine vs the source's outputs.

    strict (portable layout): a default session must load it. Otherwise (tensorrt layout) onnxruntime's QDQ
    rewrites are switched off with its documented `session.disable_quant_qdq` knob; the numerics are the same."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    how = "default CPU session"
    if not strict:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        how = "CPU session with session.disable_quant_qdq=1"
    try:
        sess = ort.InferenceSession(str(out_path), options, providers=["CPUExecutionProvider"])
        got = sess.run(names, feed)
    except Exception as err:  # onnxruntime raises its own exception types
        raise ValidationFailure(f"FP8 graph {out_path} does not run in an onnxruntime {how}: {err}; report this "
                                "graph (a pattern the quantiser does not fence off)") from err
    floats = [i for i, a in enumerate(got) if np.issubdtype(np.asarray(a).dtype, np.floating)]
    comparisons = compare_outputs({names[i]: got[i] for i in floats}, {names[i]: reference[i] for i in floats},
                                  check_dtypes=False)
    return {name: c.cosine for name, c in comparisons.items()}, how
