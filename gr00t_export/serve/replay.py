"""The replay policy: one LeRobot episode's recorded actions behind `gr00t-export serve`, chunk by chunk, the way
Isaac-GR00T's `run_gr00t_server --dataset_path` lets users test a robot or simulator client before a model is ready.

Each call answers the action chunk at the current step (step + the config's action indices, clamped to the
episode, so past the end the last recorded row repeats), as float32, one copy per environment of the request's
batch, then advances the step by the execution horizon. `reset` goes back to step 0, or to the options'
`episode_index` / `step_index`. Observations are checked by the server exactly as for a model; their content
is not read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gr00t_export.data.lerobot import LeRobotDataset
from gr00t_export.errors import InputError
from gr00t_export.families.base import ObservationKeys, PolicyInterface


def replay_interface(dataset: LeRobotDataset, keys: ObservationKeys, name: str) -> PolicyInterface:
    """What a replay reads and answers: `keys`, with the widths the dataset's meta/modality.json gives them."""
    dataset.check_config(keys)  # every key is in modality.json with a valid slice
    widths = {f"{mod}.{short}": int(e["end"]) - int(e["start"])
              for mod in ("state", "action") for short, e in dataset.modality.get(mod, {}).items()}
    return PolicyInterface(
        family="replay", embodiment_tag="", name=name, video_keys=tuple(keys.video_keys),
        state_keys=tuple(keys.state_keys), action_keys=tuple(keys.action_keys), language_key=keys.language_key,
        observation_indices=tuple(keys.observation_indices), action_indices=tuple(keys.action_indices),
        state_dims={k: widths[k] for k in keys.state_keys}, action_dims={k: widths[k] for k in keys.action_keys},
        noise_shape=(len(keys.action_indices), 0))


class ReplayPolicy:
    def __init__(self, dataset_path: str | Path, keys: ObservationKeys, episode: int = 0,
                 execution_horizon: int | None = None, name: str = "replay"):
        self.dataset = LeRobotDataset(dataset_path)
        self.interface = replay_interface(self.dataset, keys, name)
        chunk = self.interface.action_horizon
        horizon = execution_horizon if execution_horizon is not None else chunk
        if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= chunk:
            raise InputError(f"--execution_horizon {horizon} must be an integer in 1..{chunk} "
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
        iface = self.interface
        first = obs[iface.video_keys[0]] if iface.video_keys else obs[iface.state_keys[0]]
        batched = np.ndim(first) == (5 if iface.video_keys else 3)
        info = self.info()
        chunk = self.dataset.actions(self.episode, min(self.step, self.episode_length - 1), iface)
        actions = {}
        for key, rows in chunk.items():
            rows = rows.astype(np.float32)
            actions[key] = np.repeat(rows[None], len(first), axis=0) if batched else rows
        self.step += self.execution_horizon
        return actions, info

    def get_action(self, obs: dict[str, np.ndarray], noise: np.ndarray | None = None, seed: int = 0
                   ) -> dict[str, np.ndarray]:
        return self.get_action_with_info(obs, noise, seed)[0]
