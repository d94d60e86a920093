"""The array files `predict` and `client` read and write: an observation .npz, an initial-noise .npy, an actions .npz.

Nothing is ever unpickled; a file that cannot be read is an InputError naming it and what to pass instead.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from gr00t_export.errors import InputError


def load_observation(obs_path: Path | None, dataset_path: Path | None, episode: int, step: int, modality: Any
                     ) -> dict[str, Any]:
    """The observation of `--obs obs.npz`, or of `--dataset_path`'s step read with `modality`'s keys (exactly one)."""
    if (obs_path is None) == (dataset_path is None):
        raise InputError("give exactly one input: --obs obs.npz or --dataset_path DS (with --episode/--step)")
    if obs_path is not None:
        if not obs_path.is_file():
            raise InputError(f"--obs {obs_path} not found; write one with numpy.savez (keys video.<k>, state.<k>)")
        try:
            with np.load(obs_path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (ValueError, OSError) as err:
            raise InputError(f"--obs {obs_path} is not a readable .npz without pickles ({err})") from None
    from gr00t_export.data.lerobot import LeRobotDataset

    return LeRobotDataset(dataset_path).observation(episode, step, modality)


def load_noise(noise_path: Path | None) -> np.ndarray | None:
    """`--noise noise.npy`, finite; None when not given (the policy seeds its own)."""
    if noise_path is None:
        return None
    try:
        noise = np.load(noise_path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise InputError(f"--noise {noise_path} is not a readable .npy ({err}); save (16,32) float32 with np.save"
                         ) from None
    if not np.isfinite(noise).all():
        raise InputError(f"--noise {noise_path} contains NaN or inf")
    return noise


def is_actions_file(path: Path) -> bool:
    """An earlier `predict --out`: an .npz holding action.<key> arrays only (so --out may replace it)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return bool(data.files) and all(k.startswith("action.") for k in data.files)
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def write_actions(actions: dict[str, np.ndarray], out: Path, inputs: dict[str, Path | None]) -> None:
    """The actions as an .npz at `out`, all or nothing, never onto one of the command's `inputs`."""
    from gr00t_export.util import atomic_output_file

    with atomic_output_file(out, inputs, ours=is_actions_file, what="--out") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **actions)
