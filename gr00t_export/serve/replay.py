"""The replay policy: one LeRobot episode's recorded actions behind `gr00t-export serve`, chunk by chunk, the way
Isaac-GR00T's `run_gr00t_server --dataset_path` lets users test a robot or simulator client before a model is ready.

Each call answers the action chunk at the current step (step + the config's action indices, clamped to the
episode, so past the end the last recorded row repeats), as float32, one copy per environment of the request's
batch, then advances the step by the execution horizon. `reset` goes back to step 0, or to the options'
`episode_index` / `step_index`. Observations are checked by the server exactly as for a model; their content
is not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gr00t_export.data.lerobot import LeRobotDataset
from gr00t_export.errors import InputError
from gr00t_export.families.n1_5.embodiments import ModalityConfig


@dataclass(frozen=True)
class ReplaySpec:
    """What the server reads from a policy's spec: the config, the dataset's state widths and the horizon."""

    modality: ModalityConfig
    state_dims: dict[str, int]
    action_horizon: int


class ReplayPolicy:
    def __init__(self, dataset_path: str | Path, modality: ModalityConfig, episode: int = 0,
                 execution_horizon: int | None = None):
        self.dataset = LeRobotDataset(dataset_path)
        self.dataset.check_config(modality)
        state_dims = {}
        for key in modality.state_keys:  # check_config has validated these modality.json entries
            entry = self.dataset.modality["state"][ModalityConfig.short(key)]
            state_dims[key] = int(entry["end"]) - int(entry["start"])
        self.spec = ReplaySpec(modality, state_dims, modality.action_horizon)
        horizon = execution_horizon if execution_horizon is not None else modality.action_horizon
        if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= modality.action_horizon:
            raise InputError(f"--execution_horizon {horizon} must be an integer in 1..{modality.action_horizon} "
                             "(the action chunk's length): how many recorded steps each call advances")
        self.execution_horizon = horizon
        self.episode = self._episode(episode, "--episode")
        self.step = 0

    def _episode(self, episode: Any, name: str) -> int:
        lengths = self.dataset.episode_lengths
        if isinstance(episode, bool) or not isinstance(episode, int) or episode not in lengths:
            raise InputError(f"{name} {episode!r} is not an episode of {self.dataset.path} (it has "
                             f"{len(lengths)}: {min(lengths)}..{max(lengths)}); pick one of those")
        return episode

    @property
    def episode_length(self) -> int:
        return self.dataset.episode_lengths[self.episode]

    def info(self) -> dict[str, int]:
        return {"current_step": self.step, "episode_length": self.episode_length, "episode_index": self.episode}

    def reset(self, options: dict[str, Any] | None = None) -> dict[str, int]:
        """Back to step 0 of the episode, or to `episode_index` / `step_index` when the options name them."""
        options = options or {}
        episode = self._episode(options.get("episode_index", self.episode), "reset option episode_index")
        step = options.get("step_index", 0)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InputError(f"reset option step_index must be an integer >= 0, got {step!r}")
        self.episode, self.step = episode, step
        return self.info()

    def get_action_with_info(self, obs: dict[str, np.ndarray], noise: np.ndarray | None = None, seed: int = 0
                             ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """The recorded chunk at the current step, (B, H, d) for a batched observation, (H, d) otherwise; noise and
        seed have no meaning here."""
        modality = self.spec.modality
        first = obs[modality.video_keys[0]] if modality.video_keys else obs[modality.state_keys[0]]
        batched = np.ndim(first) == (5 if modality.video_keys else 3)
        info = self.info()
        chunk = self.dataset.actions(self.episode, min(self.step, self.episode_length - 1), modality)
        actions = {}
        for key, rows in chunk.items():
            rows = rows.astype(np.float32)
            actions[key] = np.repeat(rows[None], len(first), axis=0) if batched else rows
        self.step += self.execution_horizon
        return actions, info

    def get_action(self, obs: dict[str, np.ndarray], noise: np.ndarray | None = None, seed: int = 0
                   ) -> dict[str, np.ndarray]:
        return self.get_action_with_info(obs, noise, seed)[0]
