"""Validation plots: the ±clamp of NVIDIA's guide stays, and a panel that clamped values says how many."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gr00t_export.pipeline.validate.plots import (
    OVERVIEW_FILES,
    KeyGroup,
    clamped_counts,
    heatmap_figure,
    overview_plots,
    statistics_figure,
    time_series_figure,
)

HORIZON = 4
GROUPS = [KeyGroup("action.left_arm", ("a0", "a1"), "rad"), KeyGroup("action.right_hand", ("h0", "h1", "h2"))]


def _actions() -> np.ndarray:
    """3 policy ticks x 4 steps, 5 joints; three left_arm values beyond ±3.5 (one exactly at the limit is not)."""
    data = np.random.default_rng(0).uniform(-1, 1, (3 * HORIZON, 5))
    data[2, 0], data[7, 1], data[11, 0] = 4.2, -9.0, 3.6
    data[5, 1] = 3.5
    return data


def _notes(ax) -> list[str]:
    return [t.get_text() for t in ax.texts if "clamped" in t.get_text()]


def test_clamped_counts_per_key():
    assert clamped_counts(_actions(), GROUPS, 3.5) == {"action.left_arm": 3, "action.right_hand": 0}
    assert clamped_counts(_actions(), GROUPS, 10.0) == {"action.left_arm": 0, "action.right_hand": 0}


def test_time_series_panel_says_how_many_values_it_clamped():
    fig = time_series_figure(_actions(), GROUPS, "onnx", HORIZON, clamp=3.5)
    left, right = fig.axes[:2]
    assert _notes(left) == ["3 values beyond ±3.5 clamped"]
    assert _notes(right) == []  # nothing clamped, nothing said
    drawn = np.concatenate([line.get_ydata() for line in left.lines])
    assert np.nanmax(drawn) == 3.5 and np.nanmin(drawn) == -3.5  # the clamp itself stays


def test_heatmap_and_statistics_panels_count_every_clamped_value():
    data = _actions()
    data[0, 4] = -5.0  # one in right_hand too
    assert _notes(heatmap_figure(data, GROUPS, "python", HORIZON, 3.5).axes[0]) == ["4 values beyond ±3.5 clamped"]
    assert _notes(statistics_figure(data, GROUPS, "python", 3.5).axes[0]) == ["4 values beyond ±3.5 clamped"]
    single = np.zeros_like(data)
    single[1, 2] = 7.0
    assert _notes(heatmap_figure(single, GROUPS, "python", HORIZON, 3.5).axes[0]) == ["1 value beyond ±3.5 clamped"]
    assert _notes(heatmap_figure(np.zeros_like(data), GROUPS, "python", HORIZON, 3.5).axes[0]) == []


def test_overview_plots_write_the_three_pngs(tmp_path: Path):
    paths = overview_plots(_actions(), GROUPS, tmp_path, "onnx", HORIZON, 3.5)
    assert [p.name for p in paths] == list(OVERVIEW_FILES)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
