"""Tiers 1 and 2's arithmetic: an artifact's tensors against its PyTorch twin's (per-module accuracy), and the
exported policy's actions against the reference's over many steps (distribution consistency).

The numbers come from `gr00t_export.compare` (Polygraphy's comparator); this module holds the verdicts: the
suite's tolerance per stage, cosine acceptance for fp8, per-joint figures against a joint's range.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gr00t_export.compare import compare_outputs
from gr00t_export.pipeline.validate.report import Check, Reporter, fmt
from gr00t_export.pipeline.validate.suite import Tolerance
from gr00t_export.spec import StageSpec


@dataclass
class TensorComparison:
    name: str
    exact: bool
    within: bool
    max_abs: float
    mean_abs: float
    min_abs: float
    problem: str | None = None  # shape/dtype mismatch, NaN
    cosine: float = 1.0
    max_rel: float = 0.0  # |artifact - twin| / |twin|
    mean_rel: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare_tensors(name: str, got: Any, want: Any, tol: Tolerance) -> TensorComparison:
    """Artifact output vs twin output: shape and dtype first, then exact, then allclose(rtol, atol) or cosine."""
    c = compare_outputs({name: got}, {name: want}, atol=tol.atol, rtol=tol.rtol)[name]
    integer = _array_kind(want) not in "fc"
    within = c.exact or (c.problem is None and not integer and not tol.exact and (
        c.passed or (tol.cosine_min is not None and c.cosine >= tol.cosine_min)))
    return TensorComparison(name, c.exact, within, c.max_abs, c.mean_abs, c.min_abs, c.problem, c.cosine,
                            c.max_rel, c.mean_rel)


def _array_kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "f" if value.is_floating_point() else "i"
    return np.asarray(value).dtype.kind


def merge_comparisons(items: list[TensorComparison]) -> TensorComparison:
    """One verdict per tensor over several steps: worst max, mean of means, smallest min."""
    first = items[0]
    problems = [c.problem for c in items if c.problem]
    return TensorComparison(first.name, all(c.exact for c in items), all(c.within for c in items),
                            max(c.max_abs for c in items), float(np.mean([c.mean_abs for c in items])),
                            min(c.min_abs for c in items), problems[0] if problems else None,
                            min(c.cosine for c in items), max(c.max_rel for c in items),
                            float(np.mean([c.mean_rel for c in items])))


def accuracy_check(stage: StageSpec, comparisons: list[TensorComparison], tol: Tolerance, precision: str,
                   seconds: float, steps: int) -> Check:
    failed = [c for c in comparisons if not c.within]
    worst = max(comparisons, key=lambda c: c.max_abs)
    metrics = {"max_abs": worst.max_abs, "steps": steps, "tensors": [c.to_dict() for c in comparisons],
               "exact": all(c.exact for c in comparisons)}
    thresholds = tol.to_dict() | {"integer_tensors": "exact"}
    if failed:
        c = failed[0]
        why = c.problem or (f"max |diff| {fmt(c.max_abs)} exceeds atol {tol.atol:g} + rtol {tol.rtol:g}·|twin|"
                            + (f" and cosine {c.cosine:.6f} < {tol.cosine_min:g}" if tol.cosine_min is not None else "")
                            if not tol.exact else f"not bitwise equal (max |diff| {fmt(c.max_abs)})")
        return Check(f"accuracy/{stage.name}", 1, "failed", f"stage {stage.name} ({stage.file}) drifts from its "
                     f"PyTorch twin in {precision}: {c.name}: {why}", metrics, thresholds, seconds, stage.name)
    how = "bitwise equal" if metrics["exact"] else f"max |diff| {fmt(worst.max_abs)} within tolerance"
    if tol.cosine_min is not None and not metrics["exact"]:
        how += f" (lowest cosine {min(c.cosine for c in comparisons):.6f})"
    return Check(f"accuracy/{stage.name}", 1, "passed", f"{how} on {steps} step(s)", metrics, thresholds, seconds,
                 stage.name)


def report_comparison(reporter: Reporter, stage: StageSpec, c: TensorComparison, tol: Tolerance) -> None:
    """Console lines in the shape people already grep for (TorchScript and ONNX validators differ)."""
    if stage.format == "onnx":
        reporter.line("Validating ONNX model accuracy...")
        reporter.line("Accuracy Comparison:")
        if c.problem:
            reporter.line(f"Mismatch in {c.name}: {c.problem}")
        reporter.line(f"Max difference: {fmt(c.max_abs)}")
        reporter.line(f"Mean difference: {fmt(c.mean_abs)}")
        reporter.line(f"Within tolerance: {c.within}")
        if tol.cosine_min is not None:
            reporter.line(f"Cosine similarity: {c.cosine:.6f} (accepted from {tol.cosine_min:g})")
        return
    reporter.line(f"comparing: {c.name}")
    if c.problem:
        reporter.line(f"The tensors {c.name} do not match: {c.problem}")
        return
    if c.exact:
        reporter.line(f"The tensors {c.name} are exactly equal!")
        return
    reporter.line(f"The tensors {c.name} are not exactly equal. Mean absolute difference: {fmt(c.mean_abs)}")
    reporter.line(f"Maximum absolute difference for {c.name}: {fmt(c.max_abs)}, Min diff is {fmt(c.min_abs)}")
    if c.within:
        reporter.line(f"The tensors {c.name} are approximately equal (within tolerance).")
    else:
        reporter.line(f"The tensors {c.name} are NOT approximately equal (outside rtol={tol.rtol:g}, "
                      f"atol={tol.atol:g}{', exact required' if tol.exact else ''}).")


def consistency_check(key: str, ref: np.ndarray, exp: np.ndarray, joint_names: tuple[str, ...],
                      joint_range: np.ndarray, limits: dict[str, float | None], precision: str) -> Check:
    """Reference vs exported actions of one key over all steps: (N, H, J) each."""
    joints = range(ref.shape[-1])
    per_joint = compare_outputs({str(j): exp[..., j] for j in joints}, {str(j): ref[..., j] for j in joints},
                                check_dtypes=False)
    whole = compare_outputs({key: exp}, {key: ref}, check_dtypes=False)[key]
    per_joint_max = np.array([per_joint[str(j)].max_abs for j in joints])
    per_joint_mean = np.array([per_joint[str(j)].mean_abs for j in joints])
    span = np.where(joint_range > 1e-12, joint_range, 1.0)
    frac = per_joint_max / span
    cosine = whole.cosine
    metrics = {
        "max_abs": whole.max_abs, "mean_abs": whole.mean_abs, "cosine": cosine, "max_rel": whole.max_rel,
        "worst_joint_range_frac": float(frac.max()),
        "reference_mean": float(ref.mean()), "exported_mean": float(exp.mean()),
        "reference_std": float(ref.std()), "exported_std": float(exp.std()),
        "joints": [{"name": n, "max_abs": float(m), "mean_abs": float(mm), "range": float(r), "range_frac": float(f)}
                   for n, m, mm, r, f in zip(joint_names, per_joint_max, per_joint_mean, joint_range, frac,
                                             strict=True)],
    }
    bad = []
    if limits.get("max_abs") is not None and metrics["max_abs"] > limits["max_abs"]:
        bad.append(f"max |diff| {fmt(metrics['max_abs'])} > {limits['max_abs']:g}")
    if limits.get("mean_abs") is not None and metrics["mean_abs"] > limits["mean_abs"]:
        bad.append(f"mean |diff| {fmt(metrics['mean_abs'])} > {limits['mean_abs']:g}")
    if limits.get("joint_range_frac") is not None:
        for j in np.flatnonzero(frac > limits["joint_range_frac"])[:3]:
            bad.append(f"joint {joint_names[j]} off by {frac[j]:.3g} of its range > {limits['joint_range_frac']:g}")
    if limits.get("cosine_min") is not None and cosine < limits["cosine_min"]:
        bad.append(f"cosine {cosine:.6f} < {limits['cosine_min']:g}")
    name = f"consistency/{key}"
    if bad:
        return Check(name, 2, "failed", f"{key} ({precision}) differs from the reference: " + "; ".join(bad),
                     metrics, dict(limits))
    return Check(name, 2, "passed", f"max |diff| {fmt(metrics['max_abs'])}, mean {fmt(metrics['mean_abs'])}, "
                 f"cosine {cosine:.6f}, worst joint {frac.max():.2g} of its range", metrics, dict(limits))
