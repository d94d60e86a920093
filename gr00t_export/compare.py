"""Outputs against their reference, one typed result per output: the project's only numerical comparison.

Polygraphy's comparator (`SimpleCompareFunc` on two `IterationResult`s, with per-output tolerances) computes the
error statistics: max/mean/median absolute and relative error, and refuses outputs of different shapes. The verdict
is numpy's allclose rule, `|got - want| <= atol + rtol * |want|` element-wise, which the validation suites document
and the optimiser's fp16-aware check relies on, kept as the worst ratio of the error to that allowance; Polygraphy's
own element-wise verdict (`|d| <= atol` or `|d| <= rtol * |want|`) is stricter by up to 2x where both tolerances
are set, so it is not used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Tolerance = float | Mapping[str, float]  # one value, or per output name with "" as the default


@dataclass(frozen=True)
class OutputComparison:
    """One output against its reference. A `problem` (shape/dtype mismatch, NaN/inf, differing strings) fails it
    and leaves no statistics: the error figures are inf and the cosine 0."""

    name: str
    passed: bool  # bitwise equal, or tolerance_ratio <= 1
    exact: bool  # bitwise equal (same dtype, same values)
    max_abs: float
    mean_abs: float
    median_abs: float
    min_abs: float
    max_rel: float  # |got - want| / |want|, Polygraphy's definition (2.2e-16 added where want is 0)
    mean_rel: float
    cosine: float
    atol: float
    rtol: float
    tolerance_ratio: float  # worst |got - want| / (atol + rtol * |want|)
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tolerance(tol: Tolerance, name: str) -> float:
    if isinstance(tol, Mapping):
        return float(tol.get(name, tol.get("", 0.0)))
    return float(tol)


def _array(value: Any) -> np.ndarray | None:
    """numpy view of a tensor or array (bf16 widened to fp32, exactly); None for strings."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    if isinstance(value, list | tuple):
        return None
    arr = np.asarray(value)
    return None if arr.dtype.kind in "USO" else arr


def dtype_name(value: Any) -> str:
    """The dtype's name ("float32", "int64", ...) of a tensor or array; "string" for a list of strings."""
    if hasattr(value, "detach"):
        return str(value.dtype).removeprefix("torch.")
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return "string"
    return str(np.asarray(value).dtype)


def shape_of(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else (len(value),)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flattened arrays in float64; 1 when both are (numerically) zero."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na < 1e-12 and nb < 1e-12:
        return 1.0
    return float(a @ b / (na * nb)) if na * nb > 0 else 0.0


def _failed(name: str, atol: float, rtol: float, problem: str) -> OutputComparison:
    inf = math.inf
    return OutputComparison(name, False, False, inf, inf, inf, inf, inf, inf, 0.0, atol, rtol, inf, problem)


def compare_outputs(got: Mapping[str, Any], want: Mapping[str, Any], atol: Tolerance = 0.0, rtol: Tolerance = 0.0,
                    check_dtypes: bool = True) -> dict[str, OutputComparison]:
    """Every output of `want` (the reference) against the same name in `got`: torch tensors, numpy arrays or
    string lists. `check_dtypes=False` compares values across dtypes (the export check of a graph whose
    integer outputs the runtime widens)."""
    from polygraphy.comparator import IterationResult, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    results: dict[str, OutputComparison] = {}
    numeric_got: dict[str, np.ndarray] = {}
    numeric_want: dict[str, np.ndarray] = {}
    for name, reference in want.items():
        a_tol, r_tol = _tolerance(atol, name), _tolerance(rtol, name)
        if name not in got:
            results[name] = _failed(name, a_tol, r_tol, "missing from the outputs")
            continue
        value = got[name]
        x, y = _array(value), _array(reference)
        if x is None or y is None:
            same = x is None and y is None and list(value) == list(reference)
            results[name] = (OutputComparison(name, True, True, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, a_tol, r_tol, 0.0)
                             if same else _failed(name, a_tol, r_tol, "strings differ"))
        elif shape_of(value) != shape_of(reference):
            results[name] = _failed(name, a_tol, r_tol, f"shape {shape_of(value)} but its reference has "
                                                        f"{shape_of(reference)}")
        elif check_dtypes and dtype_name(value) != dtype_name(reference):
            results[name] = _failed(name, a_tol, r_tol, f"dtype {dtype_name(value)} but its reference has "
                                                        f"{dtype_name(reference)}")
        elif x.size == 0:
            results[name] = OutputComparison(name, True, True, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, a_tol, r_tol, 0.0)
        elif x.dtype.kind in "fc" and not np.isfinite(x).all():
            results[name] = _failed(name, a_tol, r_tol, "output has NaN/inf")
        else:
            numeric_got[name] = np.ascontiguousarray(x, dtype=np.float64)  # Polygraphy views them flat
            numeric_want[name] = np.ascontiguousarray(y, dtype=np.float64)
    if numeric_got:
        # quantile 0 of the error is its minimum, which Polygraphy computes but does not keep otherwise
        compare = SimpleCompareFunc(atol={n: _tolerance(atol, n) for n in numeric_got},
                                    rtol={n: _tolerance(rtol, n) for n in numeric_got},
                                    check_error_stat="quantile", error_quantile=0.0)
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
            stats = compare(IterationResult(numeric_got, runner_name="got"),
                            IterationResult(numeric_want, runner_name="want"))
        for name, x in numeric_got.items():
            y, s = numeric_want[name], stats[name]
            a_tol, r_tol = _tolerance(atol, name), _tolerance(rtol, name)
            exact = dtype_name(got[name]) == dtype_name(want[name]) and bool(np.array_equal(_array(got[name]),
                                                                                              _array(want[name])))
            ratio = tolerance_ratio(x, y, a_tol, r_tol)
            results[name] = OutputComparison(name, exact or ratio <= 1, exact, s.max_absdiff, s.mean_absdiff,
                                             s.median_absdiff, s.quantile_absdiff, s.max_reldiff, s.mean_reldiff,
                                             cosine(x, y), a_tol, r_tol, ratio)
    return {name: results[name] for name in want}


def tolerance_ratio(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> float:
    """Worst |got - want| / (atol + rtol * |want|): allclose(got, want, rtol, atol) holds exactly when it is <= 1."""
    diff = np.abs(got - want)
    allowed = atol + rtol * np.abs(want)
    ratio = np.divide(diff, allowed, out=np.where(diff > 0, np.inf, 0.0), where=allowed > 0)
    return float(ratio.max())


def worst(comparisons: Mapping[str, OutputComparison]) -> OutputComparison:
    """The comparison with the largest max |error| (a problem counts as inf)."""
    return max(comparisons.values(), key=lambda c: c.max_abs)
