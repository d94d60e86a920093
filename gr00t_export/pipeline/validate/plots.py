"""Validation figures, drawn headless (matplotlib's Agg canvas, no pyplot state, no display needed).

Two kinds: three overview plots of one policy's actions over the validation steps (time series, heatmap,
per-joint statistics), and per action key the comparison a person looks at first: reference vs export
(and the dataset's recorded actions) per joint, with their difference underneath.

Figure sizes are fixed (no tight bounding box) so a test can check the PNG's pixel size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpecFromSubplotSpec

DPI = 100
OVERVIEW_SIZE = (14.0, 8.0)  # inches: 1400 x 800 px
COMPARISON_SIZE = (18.0, 10.0)  # inches: 1800 x 1000 px
OVERVIEW_FILES = ("time_series_plot.png", "heatmap_plot.png", "feature_statistics.png")
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.titlesize": 15}
COLOURS = {"python": "#1f5fbf", "onnx": "#e8710a", "truth": "#555555", "diff": "#b3261e"}


@dataclass(frozen=True)
class KeyGroup:
    """One action key's columns in a (T, F) matrix and the names of its joints."""

    key: str
    joints: tuple[str, ...]
    unit: str = "a.u."


@dataclass(frozen=True)
class SeriesStats:
    time_steps: int
    features: int
    mean: float
    std: float
    max: float
    min: float
    clipped: int  # values outside [-clamp, clamp] before clamping


def series_stats(data: np.ndarray, clamp: float) -> SeriesStats:
    return SeriesStats(time_steps=int(data.shape[0]), features=int(data.shape[1]), mean=float(data.mean()),
                       std=float(data.std()), max=float(data.max()), min=float(data.min()),
                       clipped=int((np.abs(data) > clamp).sum()))


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


def _with_gaps(values: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(N*H,) chunk-concatenated values -> x and y with a NaN between chunks, so lines do not join
    actions of unrelated policy ticks."""
    chunks = values.reshape(-1, horizon)
    x = np.arange(values.size, dtype=float).reshape(-1, horizon)
    pad = np.full((chunks.shape[0], 1), np.nan)
    return np.hstack([x, pad]).ravel(), np.hstack([chunks, pad]).ravel()


def joint_label(group: KeyGroup, joint: str) -> str:
    """`left_arm[3]` as is; a bare joint name gets its key: `left_arm: elbow_pitch`."""
    short = group.key.removeprefix("action.")
    return joint if joint.startswith(short) else f"{short}: {joint}"


def _group_starts(groups: list[KeyGroup]) -> list[int]:
    starts, at = [], 0
    for g in groups:
        starts.append(at)
        at += len(g.joints)
    return starts


def clamped_counts(data: np.ndarray, groups: list[KeyGroup], clamp: float) -> dict[str, int]:
    """Per action key: how many of its values lie outside [-clamp, clamp] (drawn at the limit)."""
    data = np.asarray(data, dtype=np.float64)
    return {g.key: int((np.abs(data[:, start:start + len(g.joints)]) > clamp).sum())
            for g, start in zip(groups, _group_starts(groups), strict=True)}


def _clamp_note(ax, count: int, clamp: float) -> None:
    """A panel whose values were clamped says so, with how many, so a flat line at ±clamp is not taken as real."""
    if count:
        ax.text(0.995, 0.97, f"{count} value{'s' if count != 1 else ''} beyond ±{clamp:g} clamped",
                transform=ax.transAxes, ha="right", va="top", fontsize=9, color="#b3261e",
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "#b3261e", "pad": 2})


def time_series_figure(data: np.ndarray, groups: list[KeyGroup], label: str, horizon: int, clamp: float = 3.5
                       ) -> Figure:
    """One panel per action key, every joint's actions over the validation steps, clamped to ±clamp."""
    counts = clamped_counts(data, groups, clamp)
    clipped = np.clip(np.asarray(data, dtype=np.float64), -clamp, clamp)
    fig = Figure(figsize=OVERVIEW_SIZE)
    axes = fig.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0]
    for ax, group, start in zip(axes, groups, _group_starts(groups), strict=True):
        for j, name in enumerate(group.joints):
            x, y = _with_gaps(clipped[:, start + j], horizon)
            ax.plot(x, y, lw=1.1, label=name)
        ax.set_ylabel(f"[{group.unit}]")
        ax.set_title(group.key, loc="left", fontsize=11, pad=3)
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.005, 0.5), ncols=1 if len(group.joints) <= 8 else 2,
                  frameon=False)
        _clamp_note(ax, counts[group.key], clamp)
    axes[-1].set_xlabel(_overview_xlabel(data, horizon))
    fig.suptitle(f"{label}: predicted actions over the validation steps (clamped to ±{clamp:g})")
    fig.subplots_adjust(left=0.06, right=0.86, top=0.92, bottom=0.07, hspace=0.35)
    return fig


def heatmap_figure(data: np.ndarray, groups: list[KeyGroup], label: str, horizon: int, clamp: float = 3.5
                   ) -> Figure:
    """Every joint as a row, every action step as a column, colours clamped to ±clamp."""
    clipped = np.clip(np.asarray(data, dtype=np.float64), -clamp, clamp)
    fig = Figure(figsize=OVERVIEW_SIZE)
    ax = fig.subplots()
    image = ax.imshow(clipped.T, aspect="auto", cmap="RdBu_r", vmin=-clamp, vmax=clamp, interpolation="nearest")
    names = [joint_label(g, n) for g in groups for n in g.joints]
    ax.set_yticks(range(len(names)), names, fontsize=8 if len(names) <= 40 else 6)
    for start in _group_starts(groups)[1:]:
        ax.axhline(start - 0.5, color="black", lw=1.2)
    ax.set_xlabel(_overview_xlabel(data, horizon))
    colorbar = fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    colorbar.set_label(f"action value (clamped to ±{clamp:g})")
    ax.set_title(f"{label}: actions as a heatmap (rows: joints, grouped by key)")
    _clamp_note(ax, sum(clamped_counts(data, groups, clamp).values()), clamp)
    fig.subplots_adjust(left=0.12, right=0.93, top=0.94, bottom=0.07)
    return fig


def statistics_figure(data: np.ndarray, groups: list[KeyGroup], label: str, clamp: float = 3.5) -> Figure:
    """Per joint: mean ± std, max and min of the clamped values, coloured by key."""
    clipped = np.clip(np.asarray(data, dtype=np.float64), -clamp, clamp)
    fig = Figure(figsize=OVERVIEW_SIZE)
    ax = fig.subplots()
    x = np.arange(clipped.shape[1])
    names = [joint_label(g, n) for g in groups for n in g.joints]
    palette = [f"C{i % 10}" for i in range(len(groups))]
    colours = [palette[k] for k, g in enumerate(groups) for _ in g.joints]
    ax.bar(x, clipped.mean(axis=0), yerr=clipped.std(axis=0), color=colours, alpha=0.75, capsize=2,
           label="mean ± std")
    ax.scatter(x, clipped.max(axis=0), marker="v", color="black", s=18, zorder=3, label="max")
    ax.scatter(x, clipped.min(axis=0), marker="^", color="grey", s=18, zorder=3, label="min")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8 if len(names) <= 40 else 6)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel(f"action value (clamped to ±{clamp:g})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=3, frameon=False)
    ax.set_title(f"{label}: per-joint statistics over {clipped.shape[0]} action steps", loc="left")
    _clamp_note(ax, sum(clamped_counts(data, groups, clamp).values()), clamp)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.94, bottom=0.16)
    return fig


def _overview_xlabel(data: np.ndarray, horizon: int) -> str:
    return f"action step ({data.shape[0] // horizon} policy ticks x {horizon}-step chunks)"


def overview_plots(data: np.ndarray, groups: list[KeyGroup], out_dir: Path, label: str, horizon: int,
                   clamp: float = 3.5) -> list[Path]:
    """time_series_plot.png, heatmap_plot.png and feature_statistics.png of (T, F) actions in `out_dir`.

    T = validation steps x action horizon (chunks concatenated), F = every joint of every key. Values beyond
    ±clamp are drawn at the limit, and each panel holding such values says how many.
    """
    with rc_context(STYLE):
        figures = (time_series_figure(data, groups, label, horizon, clamp),
                   heatmap_figure(data, groups, label, horizon, clamp), statistics_figure(data, groups, label, clamp))
        return [_save(fig, out_dir / name) for fig, name in zip(figures, OVERVIEW_FILES, strict=True)]


def comparison_plot(group: KeyGroup, onnx: np.ndarray, python: np.ndarray | None, truth: np.ndarray | None,
                    out_path: Path, precision: str, step_labels: list[str] | None = None) -> Path:
    """Per joint of one key: reference (python) and export (onnx) actions over the steps, the dataset's
    recorded actions when given, and python - onnx underneath. Arrays are (N, H, J)."""
    n, horizon, joints = onnx.shape
    cols = min(joints, 4)
    rows = -(-joints // cols)
    diff = None if python is None else python.astype(np.float64) - onnx.astype(np.float64)
    with rc_context(STYLE):
        fig = Figure(figsize=COMPARISON_SIZE)
        outer = fig.add_gridspec(rows, cols, hspace=0.32, wspace=0.28)
        handles = None
        for j in range(joints):
            slot = outer[j // cols, j % cols]
            cell = None if diff is None else GridSpecFromSubplotSpec(2, 1, subplot_spec=slot, height_ratios=(3, 1),
                                                                     hspace=0.08)
            ax = fig.add_subplot(slot if cell is None else cell[0])
            if truth is not None:
                ax.plot(*_with_gaps(truth[..., j].ravel(), horizon), color=COLOURS["truth"], lw=1.6, ls=":",
                        label="dataset (recorded)")
            if python is not None:
                ax.plot(*_with_gaps(python[..., j].ravel(), horizon), color=COLOURS["python"], lw=1.8,
                        label="python (PyTorch reference)")
            ax.plot(*_with_gaps(onnx[..., j].ravel(), horizon), color=COLOURS["onnx"], lw=1.2,
                    ls="-" if diff is None else "--", label=f"onnx (exported, {precision})")
            ax.set_title(f"{group.key} · {group.joints[j]}")
            ax.set_ylabel(f"joint value [{group.unit}]")
            ax.grid(alpha=0.3)
            ax.tick_params(labelbottom=diff is None)
            handles = ax.get_legend_handles_labels()
            if diff is None:
                ax.set_xlabel("action step")
                continue
            dax = fig.add_subplot(cell[1], sharex=ax)
            worst = float(np.abs(diff[..., j]).max())
            exponent = math.floor(math.log10(worst)) if worst > 0 else 0
            scale = 10.0 ** exponent if abs(exponent) > 2 else 1.0
            dax.plot(*_with_gaps(diff[..., j].ravel() / scale, horizon), color=COLOURS["diff"], lw=1.0)
            dax.axhline(0, color="black", lw=0.5)
            limit = max(worst / scale, 1e-12) * 1.3
            dax.set_ylim(-limit, limit)
            dax.text(0.99, 0.92, f"max |Δ| {worst:.2e}", transform=dax.transAxes, ha="right", va="top", fontsize=9,
                     bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 1.5})
            dax.set_ylabel("py − onnx" + (f"\n(×1e{exponent})" if scale != 1.0 else ""), fontsize=9)
            dax.set_xlabel("action step")
            dax.grid(alpha=0.3)
        if handles and diff is not None:
            handles[0].append(fig.axes[-1].lines[0])
            handles[1].append(f"difference python − onnx [{group.unit}]")
        if handles:
            fig.legend(*handles, loc="upper right", ncols=2, frameon=False, bbox_to_anchor=(0.995, 0.995))
        summary = f"{n} validation steps x {horizon}-step chunks"
        if diff is not None:
            summary += f"; max |python − onnx| = {np.abs(diff).max():.2e} {group.unit}"
        if step_labels:
            summary += f"; steps: {step_labels[0]} … {step_labels[-1]}"
        title = (f"{group.key}: PyTorch reference vs exported ({precision})" if diff is not None else
                 f"{group.key}: exported ({precision}) actions (no reference: validate with --model_path)")
        fig.suptitle(title, x=0.01, ha="left", y=0.985)
        fig.text(0.01, 0.935, summary, fontsize=11, ha="left")
        fig.subplots_adjust(left=0.05, right=0.99, top=0.88, bottom=0.06)
        return _save(fig, out_path)
