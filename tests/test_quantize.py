"""FP8 quantiser on small real exports: runs in onnxruntime CPU, stays close to the source, numerics match the numpy
E4M3 emulation, weights really shrink, excluded ops and names stay, bad input gives one clear error."""

from __future__ import annotations

import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

from gr00t_export.errors import InputError
from gr00t_export.pipeline.quantize import E4M3_MAX, _e4m3_codes, quantize_fp8

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
NP = {"fp32": np.float32, "fp16": np.float16}
E4M3_VALUES = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)  # code -> value


def fp8_roundtrip(x: np.ndarray, scale: float | np.ndarray, axis: int | None = None) -> np.ndarray:
    """QuantizeLinear -> DequantizeLinear to float8e4m3fn (saturate=1), emulated in numpy with quantize.py's encoder.

    `x / scale` is taken in float32 and rounded to E4M3 half-to-even, then multiplied back by the scale and cast to
    x's dtype, which is how onnxruntime computes it. `axis` gives a per-channel scale (1-D) along that axis of x.
    """
    x = np.asarray(x)
    s = np.asarray(scale, dtype=np.float32)
    if axis is not None and s.ndim == 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        s = s.reshape(shape)
    q = E4M3_VALUES[_e4m3_codes(x.astype(np.float32) / s)]
    return (q * s).astype(x.dtype)


def _export(module: nn.Module, args: tuple, path: Path, names: list[str], opset: int = 19) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=names,
                          output_names=["out"])
    return path


def _session(path: Path, layout: str = "portable") -> ort.InferenceSession:
    options = ort.SessionOptions()
    if layout == "tensorrt":
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class Block(nn.Module):
    """Patch Conv + pre-LN transformer block (SDPA attention, GELU MLP), like one SigLIP/DiT layer."""

    def __init__(self, d: int = 64, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patch(img).flatten(2).transpose(1, 2)
        b, t, d = x.shape
        q, k, v = (y.reshape(b, t, self.heads, -1).transpose(1, 2) for y in self.qkv(self.ln1(x)).split(d, -1))
        x = x + self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class CategoryHead(nn.Module):
    """A shared linear plus a per-embodiment weight stack gathered by id (GR00T's CategorySpecificLinear)."""

    def __init__(self, cats: int = 6, d: int = 64):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.W = nn.Parameter(torch.randn(cats, d, 2 * d) * 0.05)

    def forward(self, x: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.lin(F.relu(self.lin(x))))  # one weight used twice, as in the 4x unrolled DiT
        return torch.bmm(h, self.W[cat])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("fp8")
    block, mlp = Block().eval(), nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512)).eval()
    linear = nn.Linear(64, 48, bias=False).eval()
    head = CategoryHead().eval()
    out = {}
    for tag, dt in DTYPES.items():
        out[f"block_{tag}"] = _export(block.to(dt), (torch.randn(2, 3, 32, 32, dtype=dt),), root / f"block_{tag}.onnx",
                                      ["img"])
        out[f"mlp_{tag}"] = _export(mlp.to(dt), (torch.randn(8, 512, dtype=dt),), root / f"mlp_{tag}.onnx", ["x"])
        out[f"linear_{tag}"] = _export(linear.to(dt), (torch.randn(2, 10, 64, dtype=dt),), root / f"linear_{tag}.onnx",
                                       ["x"])
    out["head_fp32"] = _export(head, (torch.randn(2, 16, 64), torch.tensor([1, 4])), root / "head_fp32.onnx",
                               ["x", "cat"])
    out["linear_opset17"] = _export(linear.float(), (torch.randn(2, 10, 64),), root / "linear_opset17.onnx", ["x"], 17)
    return out


def _feeds(rng: np.random.Generator, make, n: int = 4) -> list[dict[str, np.ndarray]]:
    return [make(rng) for _ in range(n)]


def _image(tag: str):
    return lambda rng: {"img": rng.standard_normal((2, 3, 32, 32)).astype(NP[tag])}


# --------------------------------------------------------------------------------------------- numerics


def test_fp8_roundtrip_e4m3_grid():
    x = np.array([0.0, -0.0, 1.0, 1.0625, 1.1875, 448.0, 449.0, 464.0, 1e6, -1e6, np.inf, -np.inf, 2.0**-9,
                  2.0**-10, 1.5 * 2.0**-9, 2.0**-6, 0.3], np.float32)
    got = fp8_roundtrip(x, 1.0)
    want = np.array([0.0, -0.0, 1.0, 1.0, 1.25, 448.0, 448.0, 448.0, 448.0, -448.0, 448.0, -448.0, 2.0**-9, 0.0,
                     2.0**-8, 2.0**-6, 0.3125], np.float32)
    np.testing.assert_array_equal(got, want)  # ties to even, saturation (inf too), subnormals
    assert np.signbit(got[1]) and np.isnan(fp8_roundtrip(np.array([np.nan], np.float32), 1.0)[0])
    # Every finite E4M3 value is a fixed point; the table holds 2 NaN codes and 254 finite values up to 448.
    finite = E4M3_VALUES[np.isfinite(E4M3_VALUES)]
    assert finite.size == 254 and finite.max() == E4M3_MAX
    np.testing.assert_array_equal(fp8_roundtrip(finite, 1.0), finite)
    # Per-axis scales apply along the axis: column j uses scale[j].
    w = np.array([[1.1, 100.0], [2.3, 300.0]], np.float32)
    scale = np.array([0.01, 1.0], np.float32)
    got = fp8_roundtrip(w, scale, axis=1)
    for j in range(2):
        np.testing.assert_array_equal(got[:, j], fp8_roundtrip(w[:, j], scale[j]))
    assert fp8_roundtrip(np.float16([3.3]), 0.5).dtype == np.float16


def test_fp8_encoding_matches_ml_dtypes_on_a_float32_sweep():
    ml_dtypes = pytest.importorskip("ml_dtypes")  # onnx's own dependency: an independent E4M3 reference
    x = np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32).view(np.float32)  # every binade, both signs
    x = x[~np.isnan(x)]
    ref = np.clip(x, -E4M3_MAX, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)  # saturating RNE
    np.testing.assert_array_equal(fp8_roundtrip(x, 1.0), ref)


def _hand_written_e4m3_codes(v: np.ndarray) -> np.ndarray:
    """The encoder quantize.py had before it used ml_dtypes, kept as the oracle: float32 bit arithmetic, round half to
    even, saturation at +-448 (inf too), NaN -> 0x7F with the sign bit."""
    v = np.ascontiguousarray(v, dtype=np.float32)
    bits = v.view(np.uint32)
    mag = bits & np.uint32(0x7FFFFFFF)
    code = mag >> 20
    code &= np.uint32(1)
    code += mag
    code += np.uint32(0x7FFFF)
    code >>= 20
    code -= np.uint32(120 << 3)
    np.minimum(code, np.uint32(0x7E), out=code)
    small = np.flatnonzero(mag < np.uint32(0x3C800000))
    if small.size:
        code.flat[small] = np.rint(mag.flat[small].view(np.float32) * np.float32(512.0)).astype(np.uint32)
    nan = np.flatnonzero(mag > np.uint32(0x7F800000))
    if nan.size:
        code.flat[nan] = 0x7F
    code |= (bits >> 24) & np.uint32(0x80)
    return code.astype(np.uint8)


def test_fp8_codes_are_bit_identical_to_the_hand_written_encoder():
    """>= 4M float32 inputs: a stride through every bit pattern (both signs, every binade, float32 subnormals, NaN
    payloads), every tie and near-tie of the E4M3 grid, and the specials."""
    sweep = np.arange(0, 2**32, 1021, dtype=np.uint64).astype(np.uint32).view(np.float32)
    grid = np.unique(np.abs(E4M3_VALUES[np.isfinite(E4M3_VALUES)]))
    ties = ((grid[:-1].astype(np.float64) + grid[1:]) / 2).astype(np.float32)  # exact in float32
    near = np.concatenate([ties, np.nextafter(ties, np.float32(0)), np.nextafter(ties, np.float32(np.inf)),
                           grid, np.nextafter(grid, np.float32(0)), np.nextafter(grid, np.float32(np.inf))])
    specials = np.array([np.inf, np.nan, 448.0, 449.0, 463.99997, 464.0, 465.0, 1e38, 2.0**-9, 2.0**-10,
                         1.5 * 2.0**-10, 2.0**-6, np.finfo(np.float32).tiny, np.finfo(np.float32).smallest_subnormal],
                        np.float32)
    x = np.concatenate([sweep, near, specials])
    x = np.concatenate([x, -x, np.uint32([0x7FC00001, 0xFFC00000, 0x7F800001, 0x80000000]).view(np.float32)])
    assert x.size >= 4_000_000 and np.isnan(x).any() and np.isinf(x).any()
    assert (np.abs(x[np.isfinite(x)]) < np.finfo(np.float32).tiny).sum() > 1000  # float32 subnormals included
    np.testing.assert_array_equal(_e4m3_codes(x), _hand_written_e4m3_codes(x))


@pytest.mark.parametrize(
    "tag,layout,granularity",
    [("fp32", "portable", "channel"), ("fp16", "portable", "tensor"), ("fp16", "tensorrt", "channel"),
     ("fp32", "tensorrt", "tensor")],
)
def test_single_matmul_matches_numpy_emulation(models, tmp_path, tag, layout, granularity):
    src = models[f"linear_{tag}"]
    rng = np.random.default_rng(1)
    feeds = _feeds(rng, lambda r: {"x": (r.standard_normal((2, 10, 64)) * 3).astype(NP[tag])})
    out = tmp_path / "q.onnx"
    rep = quantize_fp8(src, out, feeds, layout=layout, weight_granularity=granularity)
    assert len(rep.quantized) == 1 and rep.output_cosine["out"] > 0.99

    # Expose every DequantizeLinear output, then compare onnxruntime with the emulation bit for bit.
    model = onnx.load(str(out))
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    inits = {t.name: t for t in model.graph.initializer}
    model.graph.output.extend(onnx.ValueInfoProto(name=n.output[0]) for n in dqs)
    probe = tmp_path / "probe.onnx"
    onnx.save(model, str(probe))
    x = (rng.standard_normal((2, 10, 64)) * 5).astype(NP[tag])  # past the calibrated range: saturation too
    got = dict(zip([o.name for o in model.graph.output], _session(probe, layout).run(None, {"x": x}), strict=True))

    (act_t, act_scale), = rep.activation_scale.items()
    assert act_scale >= rep.activation_amax[act_t] / E4M3_MAX and np.isclose(act_scale * E4M3_MAX,
                                                                          rep.activation_amax[act_t], rtol=1e-3)
    act_dq = next(n for n in dqs if n.input[0] not in inits)
    # portable: Q/DQ run in the other float type (fp32 -> fp16, fp16 -> fp32) between two Casts.
    x_q = x.astype({"fp32": np.float16, "fp16": np.float32}[tag]) if layout == "portable" else x
    want_act = fp8_roundtrip(x_q, np.float32(act_scale))
    assert got[act_dq.output[0]].dtype == want_act.dtype
    np.testing.assert_array_equal(got[act_dq.output[0]], want_act)

    w_dq = next(n for n in dqs if n.input[0] in inits)
    w_eff = numpy_helper.to_array(next(t for t in onnx.load(str(src)).graph.initializer if t.dims == [64, 48]))
    w_scale = numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float32)
    assert w_scale.shape == ((48,) if granularity == "channel" else ())
    want_w = fp8_roundtrip(w_eff.astype(np.float32), w_scale, axis=1 if w_scale.ndim else None).astype(NP[tag])
    np.testing.assert_array_equal(got[w_dq.output[0]], want_w)
    codes = np.frombuffer(inits[w_dq.input[0]].raw_data, np.uint8).reshape(64, 48)  # stored as real FP8 bytes
    np.testing.assert_array_equal((E4M3_VALUES[codes] * w_scale).astype(NP[tag]), want_w)

    y = got["out"].astype(np.float64)
    ref = want_act.astype(np.float64) @ want_w.astype(np.float64)
    tol = 1e-5 if tag == "fp32" else 2e-3
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * np.abs(ref).max())


# --------------------------------------------------------------------------------------------- whole graphs


@pytest.mark.parametrize("tag", ["fp32", "fp16"])
def test_transformer_block_runs_in_ort_and_stays_close(models, tmp_path, tag):
    src = models[f"block_{tag}"]
    rng = np.random.default_rng(2)
    out = tmp_path / "block_fp8.onnx"
    rep = quantize_fp8(src, out, _feeds(rng, _image(tag), 6), quantize_attention=True, exclude="/fc2/*")

    kinds = sorted(rep.quantized.values())
    assert kinds.count("linear") == 3 and kinds.count("attention") == 2  # qkv, o, fc1; QK^T and PV
    assert rep.skipped["/fc2/MatMul"] == "excluded" and "Conv" in rep.skipped["/patch/Conv"]
    assert rep.calibration_feeds == 6 and rep.ort_session == "default CPU session"

    q = onnx.load(str(out))
    s = onnx.load(str(src))
    assert [i.name for i in q.graph.input] == [i.name for i in s.graph.input] == ["img"]
    assert [o.name for o in q.graph.output] == [o.name for o in s.graph.output] == ["out"]
    nodes = {n.name: n for n in q.graph.node}
    producers = {o: n for n in q.graph.node for o in n.output}
    inits = {t.name: t for t in q.graph.initializer}
    conv = nodes["/patch/Conv"]
    assert inits[conv.input[1]].data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    assert conv.input[0] == "img"
    fc2 = nodes["/fc2/MatMul"]  # excluded: float weight, activation straight from the GELU
    assert inits[fc2.input[1]].data_type != onnx.TensorProto.FLOAT8E4M3FN
    assert producers[fc2.input[0]].op_type not in ("DequantizeLinear", "Cast")
    fp8 = [t for t in q.graph.initializer if t.data_type == onnx.TensorProto.FLOAT8E4M3FN and len(t.dims) == 2]
    assert len(fp8) == 3  # qkv, o, fc1 weights

    # Fresh inputs, not the calibration set: the default CPU session runs the graph and stays close.
    img = (rng.standard_normal((2, 3, 32, 32)) * 1.5).astype(NP[tag])
    ref = _session(src).run(None, {"img": img})[0]
    got = _session(out).run(None, {"img": img})[0]
    assert got.dtype == ref.dtype and _cosine(got, ref) >= 0.99

    # The TensorRT layout reuses the ranges (one feed for the self-check); same per-op numerics for fp16 graphs, but
    # onnxruntime runs the two graphs' fp16 regions differently, so a few values land one FP8 step apart.
    trt = tmp_path / "block_trt.onnx"
    rep2 = quantize_fp8(src, trt, _feeds(rng, _image(tag), 1), quantize_attention=True, exclude="/fc2/*",
                        layout="tensorrt", activation_amax=rep.activation_amax)
    assert rep2.calibration_feeds == 1 and rep2.activation_scale == rep.activation_scale
    got2 = _session(trt, "tensorrt").run(None, {"img": img})[0]
    assert _cosine(got2, ref) >= 0.99
    assert _cosine(got2, got) >= 0.999
    trt_nodes = onnx.load(str(trt)).graph.node
    mm = next(n for n in trt_nodes if n.name == "/qkv/MatMul")
    trt_producers = {o: n for n in trt_nodes for o in n.output}
    assert [trt_producers[i].op_type for i in mm.input] == ["DequantizeLinear", "DequantizeLinear"]


@pytest.mark.parametrize("tag,limit", [("fp32", 0.27), ("fp16", 0.52)])
def test_linear_heavy_model_shrinks(models, tmp_path, tag, limit):
    src = models[f"mlp_{tag}"]  # 2-D input: exported as Gemm(transB=1), weights (out, in), per-channel axis 0
    rng = np.random.default_rng(3)

    def make(r):
        x = r.standard_normal((8, 512))
        x[:, :8] *= 20  # a few outlier channels, as real activations have
        return {"x": x.astype(NP[tag])}

    out = tmp_path / "mlp_fp8.onnx"
    rep = quantize_fp8(src, out, _feeds(rng, make))
    assert sorted(rep.quantized) == ["/0/Gemm", "/2/Gemm"]
    assert rep.size_ratio <= limit, rep.summary()
    assert rep.size_after == out.stat().st_size and not rep.external_data
    x = make(rng)["x"]
    assert _cosine(_session(out).run(None, {"x": x})[0], _session(src).run(None, {"x": x})[0]) >= 0.99
    gemm = next(n for n in onnx.load(str(out)).graph.node if n.name == "/0/Gemm")
    dq = next(n for n in onnx.load(str(out)).graph.node if n.output[0] == gemm.input[1])
    assert dq.op_type == "DequantizeLinear" and onnx.helper.get_attribute_value(dq.attribute[0]) == 0


def test_gathered_category_weights(models, tmp_path):
    src = models["head_fp32"]
    rng = np.random.default_rng(4)

    def make(r):
        return {"x": r.standard_normal((2, 16, 64)).astype(np.float32), "cat": r.integers(0, 6, 2)}

    feeds = _feeds(rng, make)
    rep = quantize_fp8(src, tmp_path / "skip.onnx", feeds)
    (bmm, reason), = [(k, v) for k, v in rep.skipped.items() if "gathered" in v]
    assert list(rep.quantized.values()) == ["linear", "linear"]
    fp8 = [t for t in onnx.load(str(tmp_path / "skip.onnx")).graph.initializer if len(t.dims) == 2]
    # torch's export gives each call site its own transposed copy of the weight; the FP8 graph stores it once.
    assert len(fp8) == 1 and fp8[0].data_type == onnx.TensorProto.FLOAT8E4M3FN and rep.shared_weights == 1

    out = tmp_path / "weight_only.onnx"
    rep2 = quantize_fp8(src, out, feeds, gathered_weights="weight_only")
    assert rep2.quantized[bmm] == "weight_only" and rep2.size_ratio < 0.3
    gather = next(n for n in onnx.load(str(out)).graph.node if n.op_type == "Gather")
    dq = next(n for n in onnx.load(str(out)).graph.node if n.output[0] == gather.input[0])
    assert dq.op_type == "DequantizeLinear"  # one scale per category, dequantised before the Gather
    feed = make(rng)
    assert _cosine(_session(out).run(None, feed)[0], _session(src).run(None, feed)[0]) >= 0.99


def test_exclude_predicate_and_external_data(models, tmp_path):
    src_model = onnx.load(str(models["block_fp32"]))
    src = tmp_path / "ext" / "block.onnx"
    src.parent.mkdir()
    onnx.save(src_model, str(src), save_as_external_data=True, location="block.onnx_data", size_threshold=0)
    rng = np.random.default_rng(5)
    out = tmp_path / "out" / "block_fp8.onnx"
    rep = quantize_fp8(src, out, _feeds(rng, _image("fp32"), 2), exclude=lambda n: n.name.startswith("/fc"))
    assert rep.external_data and (out.parent / "block_fp8.onnx_data").is_file()
    assert sorted(rep.quantized) == ["/o/MatMul", "/qkv/MatMul"]
    assert rep.skipped["/fc1/MatMul"] == rep.skipped["/fc2/MatMul"] == "excluded"
    assert not list(src.parent.glob(".*calib*"))  # the calibration copy beside the source is gone
    onnx.checker.check_model(str(out))
    assert rep.output_cosine["out"] > 0.99
    assert "2 linear" in rep.summary()


# --------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_one_clear_error(models, tmp_path):
    src = models["linear_fp32"]
    good = {"x": np.ones((2, 10, 64), np.float32)}
    cases = [
        ([], "no calibration feeds"),
        ([good, {"x": np.full((2, 10, 64), np.nan, np.float32)}], "feed #1 input 'x' contains NaN or inf"),
        ([{"x": np.array([[[np.inf] * 64] * 10] * 2, np.float32)}], "contains NaN or inf"),
        ([{"y": good["x"]}], "does not match the graph inputs"),
        ([{"x": np.ones((2, 10, 64), np.int64)}], "is int64, the graph wants float32"),
        (["not a dict"], "not a dict"),
    ]
    for feeds, message in cases:
        with pytest.raises(InputError, match=message):
            quantize_fp8(src, tmp_path / "q.onnx", feeds)
    with pytest.raises(InputError, match="opset 17.*opset_version=19"):
        quantize_fp8(models["linear_opset17"], tmp_path / "q.onnx", [good])
    with pytest.raises(InputError, match="is the input model"):
        quantize_fp8(src, src, [good])
    with pytest.raises(InputError, match="not found"):
        quantize_fp8(tmp_path / "missing.onnx", tmp_path / "q.onnx", [good])
    with pytest.raises(InputError, match="layout='fast'"):
        quantize_fp8(src, tmp_path / "q.onnx", [good], layout="fast")
    with pytest.raises(InputError, match="activation_amax has no range"):
        quantize_fp8(src, tmp_path / "q.onnx", [good], activation_amax={})
