"""FP8 builds: calibrate the exported fp16 stages on real observations, then quantise them in place.

The calibration inputs of each stage are what that stage receives when the exported fp16 pipeline runs on
real dataset steps through the real preprocessing artifacts, as NVIDIA calibrates on transformed samples.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from gr00t_export.errors import InputError
from gr00t_export.families.base import ObservationReader
from gr00t_export.pipeline.optimize import move_onnx, save_onnx
from gr00t_export.pipeline.quantize import QuantReport, quantize_fp8
from gr00t_export.runtime.runner import OnnxStageRunner, StageRunner, TorchStageRunner, run_pipeline
from gr00t_export.spec import GraphSpec

QUANTIZED_STAGES = ("vit", "llm", "denoising_subgraph")
# NVIDIA keeps the patch-embedding conv in high precision; MatMul/Gemm-only quantisation never touches it.
EXCLUDE = ("*patch_embedding*",)


def stage_runners(artifact_dir: Path, spec: GraphSpec, providers: list[str]) -> dict[str, StageRunner]:
    """Runners straight from freshly written files (trusted: this process just wrote them)."""
    runners: dict[str, StageRunner] = {}
    for stage in spec.stages:
        path = artifact_dir / stage.file
        if stage.format == "onnx":
            runners[stage.name] = OnnxStageRunner(path, stage, providers)
        else:
            runners[stage.name] = TorchStageRunner(torch.jit.load(str(path)), stage)
    return runners


def calibration_feeds(artifact_dir: Path, spec: GraphSpec, observations: list[dict], reader: ObservationReader,
                      action_shape: tuple[int, int], providers: list[str]) -> dict[str, list[dict[str, np.ndarray]]]:
    runners = stage_runners(artifact_dir, spec, providers)
    feeds: dict[str, list[dict[str, np.ndarray]]] = {s: [] for s in QUANTIZED_STAGES}
    for i, obs in enumerate(observations):
        raw = reader(obs)
        init = torch.randn((raw.batch, *action_shape), generator=torch.Generator().manual_seed(1000 + i))
        trace: dict = {}
        run_pipeline(spec, runners, raw, init, trace)
        for name in QUANTIZED_STAGES:
            feeds[name].append({k: torch.as_tensor(v).cpu().numpy() for k, v in trace[name].items()})
    return feeds


def quantize_build(artifact_dir: Path, spec: GraphSpec, observations: list[dict], reader: ObservationReader,
                   action_shape: tuple[int, int], log=lambda msg: None,
                   providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> dict[str, QuantReport]:
    """Replaces the fp16 vit/llm/denoising graphs in `artifact_dir` with calibrated FP8 (E4M3) Q/DQ graphs."""
    if not observations:
        raise InputError("an fp8 build needs calibration observations; pass --dataset_path and --calib_steps >= 1")
    feeds = calibration_feeds(artifact_dir, spec, observations, reader, action_shape, list(providers))
    reports = {}
    for name in QUANTIZED_STAGES:
        log(f"quantise {name} (fp8, {len(feeds[name])} calibration feeds)")
        src = artifact_dir / spec.stage(name).file
        tmp = src.with_name(src.stem + ".fp8.onnx")
        # per-tensor weight scales (ModelOpt's FP8_DEFAULT_CFG): TensorRT's FP8 GEMM wants one scale per operand;
        # the per-embodiment weight stacks are stored FP8 weight-only (dequantised before their Gather)
        reports[name] = quantize_fp8(src, tmp, feeds[name], exclude=list(EXCLUDE), weight_granularity="tensor",
                                     quantize_attention=name == "denoising_subgraph", gathered_weights="weight_only")
        if name == "llm":
            quantize_embedding_int8(tmp)
        for f in (src, src.with_name(src.name + "_data")):
            f.unlink(missing_ok=True)
        tmp_data = tmp.with_name(tmp.name + "_data")
        if tmp_data.exists():
            move_onnx(tmp, src)
        else:
            tmp.rename(src)
    return reports


def quantize_embedding_int8(path: Path, min_elements: int = 1 << 20) -> int:
    """Token-embedding tables as int8 with one scale per row, dequantised by a per-axis DequantizeLinear.

    FP8 cannot be gathered at opset 19, and the 151680 x 2048 table is a third of the LLM graph; int8 rows with
    a per-row scale keep ~2^-8 relative precision at one byte per weight. TensorRT only accepts a quantized
    constant directly before a DQ node (it then folds the table at build time), so the DQ precedes the Gather.
    Returns the number of tables rewritten.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    rewritten, nodes = 0, []
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is None or axis != 0 or len(table.dims) != 2 or np.prod(table.dims) < min_elements:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(table)
        scale = (np.abs(w.astype(np.float32)).max(axis=1) / 127.0).astype(w.dtype)
        scale[scale == 0] = 1
        q = np.clip(np.rint(w.astype(np.float32) / scale[:, None].astype(np.float32)), -127, 127).astype(np.int8)
        base = table.name
        model.graph.initializer.remove(table)
        model.graph.initializer.extend([numpy_helper.from_array(q, base + "_int8"),
                                        numpy_helper.from_array(scale, base + "_row_scale")])
        nodes += [
            helper.make_node("DequantizeLinear", [base + "_int8", base + "_row_scale"], [base + "_dq"],
                             name=node.name + "_dq", axis=0),
            helper.make_node("Gather", [base + "_dq", node.input[1]], list(node.output), name=node.name, axis=0),
        ]
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        save_onnx(model, path)
    return rewritten


def report_dict(report: QuantReport) -> dict:
    """The manifest's record of one quantised stage (without the per-tensor tables)."""
    out = asdict(report)
    for big in ("activation_amax", "activation_scale", "weight_amax", "quantized", "skipped"):
        out[f"num_{big}"] = len(out.pop(big))
    out["size_ratio"] = report.size_ratio
    return out
