"""The onnxruntime residual-norm fusion on small real exports: what it fuses, what it must leave alone, and that
onnxruntime computes the same outputs before and after."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gr00t_export.pipeline.optimize import (
    fuse_onnxruntime_norms,
    fuse_residual_norms,
    rounding_excess,
    topological_order,
)


class PreNormStack(nn.Module):
    """x + pos -> [x + linear(LN(x))] x layers -> gate -> LN(x + linear(x)); the gated stream is also returned."""

    def __init__(self, dim: int = 16, layers: int = 3, tokens: int = 5):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, tokens, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.pos  # constant operand, broadcast over the batch: must not be fused
        for norm, proj in zip(self.norms, self.proj, strict=True):
            x = x + proj(norm(x))
        x = x * gate  # no residual add in front of this norm
        return F.layer_norm(x + proj(x), (self.pos.shape[-1],)), x


def _export(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    torch.manual_seed(0)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32),
             "gate": np.random.default_rng(1).standard_normal((2, 5, 16)).astype(np.float32)}
    path = tmp_path / "stack.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(PreNormStack().eval(), tuple(torch.from_numpy(v) for v in feeds.values()), str(path),
                          dynamo=False, opset_version=19, input_names=list(feeds), output_names=["out", "stream"],
                          dynamic_axes={"x": {0: "batch"}, "gate": {0: "batch"}})
    return path, feeds


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # our fusion, not its own
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def test_residual_norms_fuse_with_their_bias_and_compute_the_same(tmp_path: Path):
    path, feeds = _export(tmp_path)
    before = _ops(onnx.load(str(path)))
    want = _run(path, feeds)
    assert fuse_onnxruntime_norms(path) == 3  # norms 2 and 3 (after residual adds) and the final one
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    after = _ops(model)
    assert after["SkipLayerNormalization"] == 3
    # the first norm reads x + pos (constant operand) and stays; every fused residual add takes its bias add along
    assert after["LayerNormalization"] == before["LayerNormalization"] - 3 == 1
    assert before["Add"] - after["Add"] == 6
    skips = [n for n in model.graph.node if n.op_type == "SkipLayerNormalization"]
    assert all(len(n.input) == 5 for n in skips)  # input, skip, gamma, beta, bias
    # a sum that the next residual add (or the gate) also reads comes out of the fused node; the final norm's does not
    assert [len([o for o in n.output if o]) for n in skips] == [2, 2, 1]
    got = _run(path, feeds)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_fusion_is_idempotent_and_leaves_plain_graphs_alone(tmp_path: Path):
    path, feeds = _export(tmp_path)
    fuse_onnxruntime_norms(path)
    model = onnx.load(str(path))
    assert fuse_residual_norms(model) == 0
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])
    plain = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    assert fuse_residual_norms(plain) == 0 and len(plain.opset_import) == 1


def test_topological_order_puts_producers_first():
    nodes = [onnx.helper.make_node("Relu", ["b"], ["c"]), onnx.helper.make_node("Relu", ["a"], ["b"]),
             onnx.helper.make_node("Relu", ["c"], ["d"])]
    graph = onnx.helper.make_graph([], "g", [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1])], [])
    assert [n.output[0] for n in topological_order(nodes, graph)] == ["b", "c", "d"]


def test_rounding_excess_accepts_a_few_ulps_of_the_output_type_and_nothing_more():
    """The simplification check must fit fp16: one ulp at |x| = 6 is 0.0039, above the fp16 build's atol/10."""
    rng = np.random.default_rng(0)
    ref16 = (rng.uniform(4, 8, 1000) * rng.choice([-1, 1], 1000)).astype(np.float16)
    one_ulp = np.nextafter(ref16, np.float16(np.inf))  # 1 ulp, 0.0039 at these magnitudes
    diff, ratio = rounding_excess([ref16], [one_ulp], atol=2e-3)
    assert diff == pytest.approx(2.0**-8) and ratio <= 1  # the old `max |diff| <= atol` rejected this
    far = ref16 + np.float16(0.05)  # ~13 ulp: real drift
    assert rounding_excess([ref16], [far], atol=2e-3)[1] > 1
    # fp32 outputs keep the absolute tolerance: 4 ulp of fp32 is negligible next to atol
    ref32 = ref16.astype(np.float32)
    assert rounding_excess([ref32], [ref32 + 1.5e-3], atol=2e-3)[1] <= 1
    assert rounding_excess([ref32], [ref32 + 2.5e-3], atol=2e-3)[1] > 1
    # the worst output decides
    assert rounding_excess([ref32, ref16], [ref32, far], atol=2e-3)[1] > 1


def _weights_model(sizes: dict[str, int]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """y = x + sum of float32 initializers of the given element counts (each reshaped to broadcast over x)."""
    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal(n).astype(np.float32) for name, n in sizes.items()}
    nodes, last = [], "x"
    for i, name in enumerate(arrays):
        nodes.append(onnx.helper.make_node("ReduceSum", [name], [f"{name}_sum"], keepdims=0))
        nodes.append(onnx.helper.make_node("Add", [last, f"{name}_sum"], [f"s{i}"]))
        last = f"s{i}"
    nodes.append(onnx.helper.make_node("Identity", [last], ["y"]))
    graph = onnx.helper.make_graph(
        nodes, "w", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [])],
        [onnx.numpy_helper.from_array(a, n) for n, a in arrays.items()])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)]), arrays


def _locations(path: Path) -> dict[str, dict[str, str]]:
    model = onnx.load(str(path), load_external_data=False)
    return {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer}


def test_save_onnx_writes_one_page_aligned_data_file_with_ordinary_permissions(tmp_path: Path):
    from gr00t_export.pipeline.optimize import PAGE, save_onnx

    model, arrays = _weights_model({"big": 3000, "odd": 1001, "small": 10})
    path = tmp_path / "g.onnx"
    (tmp_path / "g.onnx_data").write_bytes(b"stale bytes that must not survive")
    assert save_onnx(model, path, external=True)
    locations = _locations(path)
    assert locations["small"] == {}  # 40 bytes stay inside the .onnx
    assert {loc["location"] for n, loc in locations.items() if n != "small"} == {"g.onnx_data"}
    assert all(int(loc["offset"]) % PAGE == 0 for n, loc in locations.items() if n != "small")
    umask = os.umask(0)
    os.umask(umask)
    assert (path.with_name("g.onnx_data").stat().st_mode & 0o777) == 0o666 & ~umask
    loaded = onnx.load(str(path))
    for t in loaded.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), arrays[t.name])
    y = _run(path, {"x": np.array(1.0, np.float32)})[0]
    assert y == pytest.approx(1.0 + sum(float(a.sum()) for a in arrays.values()), rel=1e-5)
    assert not list(tmp_path.glob(".*tmp*"))

    # by default a small graph stays in one file, and a data file left from an earlier save goes
    assert not save_onnx(onnx.load(str(path)), path)
    assert not path.with_name("g.onnx_data").exists() and _locations(path)["big"] == {}


def test_consolidate_streams_scattered_external_tensors_into_one_file(tmp_path: Path):
    from gr00t_export.pipeline.optimize import consolidate

    model, arrays = _weights_model({"a": 5000, "b": 300, "c": 70_000})
    src = tmp_path / "raw" / "g.onnx"
    src.parent.mkdir()
    onnx.save_model(model, str(src), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    assert len(list(src.parent.iterdir())) == 4  # the exporter's layout: one file per tensor
    dst = tmp_path / "out" / "g.onnx"
    dst.parent.mkdir()
    consolidate(src, dst)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["g.onnx", "g.onnx_data"]
    assert {loc["location"] for loc in _locations(dst).values()} == {"g.onnx_data"}
    for t in onnx.load(str(dst)).graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), arrays[t.name])
    zero = {"x": np.array(0.0, np.float32)}
    assert _run(dst, zero)[0] == pytest.approx(_run(src, zero)[0])
