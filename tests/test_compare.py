"""The one comparison module: Polygraphy's statistics agree with numpy's on real arrays, the verdict is exactly
numpy's allclose with per-output tolerances, and mismatched outputs are named problems rather than numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gr00t_export.compare import compare_outputs, cosine


def test_statistics_agree_with_numpy_per_output():
    rng = np.random.default_rng(0)
    want = {"a": rng.standard_normal((4, 33)).astype(np.float32), "b": rng.standard_normal(1000)}
    got = {"a": want["a"] + rng.normal(0, 1e-3, (4, 33)).astype(np.float32), "b": want["b"] * 1.01}
    results = compare_outputs(got, want, atol={"a": 1e-2, "": 0.0}, rtol={"b": 2e-2})
    for name, c in results.items():
        x, y = got[name].astype(np.float64).ravel(), want[name].astype(np.float64).ravel()
        diff = np.abs(x - y)
        assert c.max_abs == diff.max() and c.min_abs == diff.min()
        assert c.median_abs == pytest.approx(np.median(diff), rel=1e-12)
        assert c.mean_abs == pytest.approx(diff.mean(), rel=1e-6)  # Polygraphy averages in float32
        assert c.max_rel == pytest.approx((diff / np.abs(y)).max(), rel=1e-12)
        assert c.cosine == pytest.approx(x @ y / np.linalg.norm(x) / np.linalg.norm(y), abs=1e-12)
        assert c.passed and not c.exact and c.problem is None
    assert (results["a"].atol, results["a"].rtol, results["b"].atol, results["b"].rtol) == (1e-2, 0.0, 0.0, 2e-2)


@pytest.mark.parametrize("rtol,atol", [(1e-2, 1e-3), (0.0, 5e-3), (3e-2, 0.0), (1e-3, 1e-3)])
def test_verdict_is_numpy_allclose(rtol: float, atol: float):
    rng = np.random.default_rng(1)
    want = rng.standard_normal(2000)
    for scale in (1e-4, 1e-3, 3e-3, 1e-2, 3e-2):
        got = want + rng.normal(0, scale, want.shape)
        c = compare_outputs({"t": got}, {"t": want}, atol=atol, rtol=rtol)["t"]
        assert c.passed == np.allclose(got, want, rtol=rtol, atol=atol), (scale, c.tolerance_ratio)
        assert (c.tolerance_ratio <= 1) == c.passed
    # right at the allowance, and one float either side of it
    want = np.array([2.0, -4.0])
    edge = want + (atol + rtol * np.abs(want)) * np.sign(want)
    for got in (edge, np.nextafter(edge, 2 * edge), np.nextafter(edge, want)):
        c = compare_outputs({"t": got}, {"t": want}, atol=atol, rtol=rtol)["t"]
        assert c.passed == np.allclose(got, want, rtol=rtol, atol=atol)


def test_zero_tolerance_means_bitwise_and_exactness_needs_the_same_dtype():
    x = torch.linspace(-1, 1, 64)
    assert compare_outputs({"t": x.clone()}, {"t": x})["t"].exact
    assert not compare_outputs({"t": x + 1e-7}, {"t": x})["t"].passed
    ids = compare_outputs({"i": torch.tensor([1, 2, 4])}, {"i": torch.tensor([1, 2, 3])}, atol=2.0)["i"]
    assert ids.passed and not ids.exact and ids.max_abs == 1.0
    widened = compare_outputs({"i": np.int64([1, 2])}, {"i": np.int32([1, 2])}, check_dtypes=False)["i"]
    assert widened.passed and not widened.exact  # same values, other dtype
    bf16 = compare_outputs({"b": x.bfloat16()}, {"b": x.bfloat16()})["b"]
    assert bf16.exact and bf16.max_abs == 0.0


def test_problems_are_named_and_carry_no_statistics():
    x = torch.ones(8)
    results = compare_outputs({"s": x[:4], "d": x.half(), "n": x * math.nan, "w": ["a", "b"], "e": torch.zeros(0)},
                              {"s": x, "d": x, "n": x, "w": ["a", "c"], "e": torch.zeros(0), "m": x}, atol=1.0)
    assert results["s"].problem == "shape (4,) but its reference has (8,)"
    assert results["d"].problem == "dtype float16 but its reference has float32"
    assert results["n"].problem == "output has NaN/inf"
    assert results["w"].problem == "strings differ" and results["m"].problem == "missing from the outputs"
    for name in "sdnwm":
        c = results[name]
        assert not c.passed and c.max_abs == c.mean_abs == math.inf and c.cosine == 0.0
    assert results["e"].passed and results["e"].exact  # nothing to compare
    assert list(results) == ["s", "d", "n", "w", "e", "m"]  # the reference's order


def test_cosine_of_zero_vectors():
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0
    assert cosine(np.zeros(3), np.ones(3)) == 0.0
    assert cosine(np.array([1.0, 0.0]), np.array([-1.0, 0.0])) == pytest.approx(-1.0)
