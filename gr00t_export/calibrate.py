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
from gr00t_export.optimize import move_onnx
from gr00t_export.partition import GraphSpec
from gr00t_export.policy import ObservationReader
from gr00t_export.quantize import QuantReport, quantize_fp8
from gr00t_export.runner import OnnxStageRunner, StageRunner, TorchStageRunner, run_pipeline

QUANTIZED_STAGES = ("vit", "llm", "denoising_subgraph")
# NVIDIA keeps the patch-embedding conv in high precision; MatMul/Gemm-only quantisation never touches it.
EXCLUDE = ("*patch_embedding*",)


def stage_runners(artifact_dir: Path, spec: GraphSpec) -> dict[str, StageRunner]:
    """Runners straight from freshly written files (trusted: this process just wrote them)."""
    runners: dict[str, StageRunner] = {}
    for stage in spec.stages:
        path = artifact_dir / stage.file
        if stage.format == "onnx":
            runners[stage.name] = OnnxStageRunner(path, stage, ["CPUExecutionProvider"])
        else:
            runners[stage.name] = TorchStageRunner(torch.jit.load(str(path)), stage)
    return runners


def calibration_feeds(artifact_dir: Path, spec: GraphSpec, observations: list[dict], reader: ObservationReader,
                      action_shape: tuple[int, int]) -> dict[str, list[dict[str, np.ndarray]]]:
    runners = stage_runners(artifact_dir, spec)
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
                   action_shape: tuple[int, int], log=lambda msg: None) -> dict[str, QuantReport]:
    """Replaces the fp16 vit/llm/denoising graphs in `artifact_dir` with calibrated FP8 (E4M3) Q/DQ graphs."""
    if not observations:
        raise InputError("an fp8 build needs calibration observations; pass --dataset_path and --calib_steps >= 1")
    feeds = calibration_feeds(artifact_dir, spec, observations, reader, action_shape)
    reports = {}
    for name in QUANTIZED_STAGES:
        log(f"quantise {name} (fp8, {len(feeds[name])} calibration feeds)")
        src = artifact_dir / spec.stage(name).file
        tmp = src.with_name(src.stem + ".fp8.onnx")
        reports[name] = quantize_fp8(src, tmp, feeds[name], exclude=list(EXCLUDE),
                                     quantize_attention=name == "denoising_subgraph")
        for f in (src, src.with_name(src.name + "_data")):
            f.unlink(missing_ok=True)
        tmp_data = tmp.with_name(tmp.name + "_data")
        if tmp_data.exists():
            move_onnx(tmp, src)
        else:
            tmp.rename(src)
    return reports


def report_dict(report: QuantReport) -> dict:
    """The manifest's record of one quantised stage (without the per-tensor tables)."""
    out = asdict(report)
    for big in ("activation_amax", "activation_scale", "weight_amax", "quantized", "skipped"):
        out[f"num_{big}"] = len(out.pop(big))
    out["size_ratio"] = report.size_ratio
    return out
