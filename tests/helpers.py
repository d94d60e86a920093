"""Test-side helpers: plain-numpy references the package's modules are held to (GR00T's per-key statistics, the
float64 normalisation formulas of every mode, which the TorchScript state/action transforms must agree with), and
a modality config written as the YAML a user would write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from gr00t_export.errors import InputError
from gr00t_export.families.n1_5.embodiments import MODES, ModalityConfig, modality_config_to_dict
from gr00t_export.families.n1_5.metadata import KeyStats


def save_modality_config(cfg: ModalityConfig, path: str | Path) -> Path:
    """Write a config as YAML, to be loaded back with `load_modality_config`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(modality_config_to_dict(cfg), sort_keys=False))
    return path


def compute_key_stats(array: np.ndarray) -> KeyStats:
    """Statistics over frames (N, d), as GR00T computes them (population std, np.quantile 0.01/0.99)."""
    arr = np.asarray(array, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise InputError(f"cannot compute statistics of an array of shape {arr.shape}; pass (N, d) with N > 0")
    return KeyStats(
        min=arr.min(axis=0),
        max=arr.max(axis=0),
        mean=arr.mean(axis=0),
        std=arr.std(axis=0),
        q01=np.quantile(arr, 0.01, axis=0),
        q99=np.quantile(arr, 0.99, axis=0),
    )


def _bounds(stats: KeyStats, mode: str) -> tuple[np.ndarray, np.ndarray]:
    if mode == "min_max":
        return stats.min, stats.max
    if mode == "q99":
        return stats.q01, stats.q99
    return stats.mean, stats.std


def normalize(x: np.ndarray, stats: KeyStats | None, mode: str) -> np.ndarray:
    """Forward transform of one key in float64 (`x` is (..., d); sin_cos returns (..., 2d))."""
    x = np.asarray(x, dtype=np.float64)
    if mode == "identity":
        return x.copy()
    if mode == "sin_cos":
        return np.concatenate([np.sin(x), np.cos(x)], axis=-1)
    if mode == "binary":
        return (x > 0.5).astype(np.float64)
    if mode not in MODES or stats is None:
        raise InputError(f"cannot normalise with mode '{mode}' without statistics; pass the key's KeyStats")
    a, b = _bounds(stats, mode)
    if mode == "mean_std":
        ok = b != 0
        return np.where(ok, (x - a) / np.where(ok, b, 1.0), x)
    ok = a != b
    y = 2 * ((x - a) / np.where(ok, b - a, 1.0)) - 1
    if mode == "min_max":
        return np.where(ok, y, 0.0)
    return np.clip(np.where(ok, y, x), -1.0, 1.0)


def unnormalize(y: np.ndarray, stats: KeyStats | None, mode: str) -> np.ndarray:
    """Inverse of `normalize` in float64 (sin_cos takes (..., 2d) and returns atan2 angles)."""
    y = np.asarray(y, dtype=np.float64)
    if mode == "identity":
        return y.copy()
    if mode == "sin_cos":
        d = y.shape[-1] // 2
        return np.arctan2(y[..., :d], y[..., d:])
    if mode == "binary":
        return (y > 0.5).astype(np.float64)
    if mode not in MODES or stats is None:
        raise InputError(f"cannot un-normalise with mode '{mode}' without statistics; pass the key's KeyStats")
    a, b = _bounds(stats, mode)
    if mode == "mean_std":
        return y * b + a
    return (y + 1) / 2 * (b - a) + a
