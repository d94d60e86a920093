"""bfloat16 stages in onnxruntime: numpy has no bfloat16, so they run through IOBinding on torch tensors.

On the CUDA EP every stage binds this way, and the element-type table used to lack bfloat16 (a KeyError on the
first bf16 build run there). The same binding code runs on the CPU EP for graphs with bfloat16 inputs or
outputs, which is what runs here; the CUDA path differs only in the device string and a stream sync.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from gr00t_export.runtime.runner import ORT_ELEMENT_TYPES, ORT_TYPES, OnnxStageRunner
from gr00t_export.spec import StageSpec, TensorSpec


def test_every_dtype_a_graph_can_declare_can_be_bound():
    assert set(ORT_TYPES.values()) <= set(ORT_ELEMENT_TYPES), set(ORT_TYPES.values()) - set(ORT_ELEMENT_TYPES)


@pytest.fixture(scope="module")
def bf16_stage(tmp_path_factory) -> tuple[Path, StageSpec, torch.Tensor]:
    """y = bf16(float(x) @ W): a bfloat16 input and output around an fp32 MatMul (the CPU EP has no bf16 MatMul)."""
    weight = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),
         helper.make_node("MatMul", ["x32", "w"], ["y32"]),
         helper.make_node("Cast", ["y32"], ["y"], to=TensorProto.BFLOAT16)],
        "bf16_probe",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["batch", 3])],
        [numpy_helper.from_array(weight.numpy(), "w")])
    path = tmp_path_factory.mktemp("bf16") / "probe.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    spec = StageSpec("probe", path.name, "onnx", (TensorSpec("x", "float", ("batch", 4)),),
                     (TensorSpec("y", "float", ("batch", 3)),))
    return path, spec, weight


def test_bf16_stage_runs_through_iobinding_on_cpu(bf16_stage):
    path, spec, weight = bf16_stage
    runner = OnnxStageRunner(path, spec, ["CPUExecutionProvider"])
    assert runner.bound_device == "cpu" and runner.input_types == {"x": torch.bfloat16}
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))  # fp32 in: cast to the graph's bf16
    got = runner.infer({"x": x})["y"]
    want = (x.bfloat16().float() @ weight).bfloat16()
    assert got.dtype == torch.bfloat16 and got.shape == (2, 3)
    assert torch.equal(got, want)
    x3 = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))  # new shapes: outputs re-sized
    assert torch.equal(runner.infer({"x": x3})["y"], (x3.bfloat16().float() @ weight).bfloat16())
