"""Requests that arrive together, run as one policy call (`serve --batch_window_ms`).

The server merges get_action requests only where the merged call answers each of them exactly as it would be
answered alone:

- Shapes. Every key has the same per-sample shape and dtype (each camera's image size, T, state widths and dtypes,
  instructions per sample), so the arrays concatenate along the batch axis; each request may carry B >= 1
  environments, and an unbatched N1.5 observation counts as B = 1.
- Instructions. The tokenizer left-pads a batch's prompts to the longest one, and N1.5 attends to the padding
  (positions stay arange(L)), so a sample padded more than it would be alone gets other actions. Requests are
  merged only when they hold the same set of instructions: then every prompt is padded as it is alone.
- Noise. Each request's initial noise is drawn as it is alone (its explicit noise, or N(0, 1) seeded with its seed
  at its own batch size) and the merged call gets them concatenated.

A stateful policy (one with `reset` or `get_action_with_info`: the replay, whose every call advances it) is never
batched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gr00t_export.families.base import PolicyInterface, make_noise
from gr00t_export.serve.protocol import CURRENT, current_actions


@dataclass
class ActionRequest:
    """A checked get_action: the observation in the policy's (N1.5) keys, its noise and seed, and how to answer."""

    obs: dict[str, Any]
    noise: np.ndarray | None
    seed: int
    batch: int  # environments in the request
    batched: bool  # False: an unbatched N1.5 observation, answered without the batch axis
    protocol: str  # the dialect of the request, which its reply follows
    flat: bool = False  # current dialect: the sim wrapper's flat keys, answered with action.<k>

    @classmethod
    def of(cls, obs: dict[str, Any], interface: PolicyInterface, noise: np.ndarray | None, seed: int,
           protocol: str, flat: bool = False) -> ActionRequest:
        keys = interface.video_keys or interface.state_keys
        first = obs[keys[0]]
        batched = first.ndim == (5 if interface.video_keys else 3)
        return cls(obs, noise, seed, first.shape[0] if batched else 1, batched, protocol, flat)

    def reply(self, actions: dict[str, np.ndarray], info: dict[str, Any]) -> Any:
        """The policy's actions for this request in its dialect: `(action, info)` in the current one."""
        if self.protocol == CURRENT:
            return current_actions(actions, self.flat), info
        return {key: np.ascontiguousarray(value) for key, value in actions.items()}

    def batched_obs(self) -> dict[str, Any]:
        return self.obs if self.batched else {k: np.asarray(v)[None] for k, v in self.obs.items()}

    def merge_key(self, language_key: str | None) -> tuple:
        """Requests with equal keys can run as one call (see the module docstring)."""
        obs = self.batched_obs()
        arrays = tuple((key, value.dtype.kind if value.dtype.kind in "US" else value.dtype.str, value.shape[1:])
                       for key, value in sorted(obs.items()))
        instructions = frozenset(obs[language_key].reshape(-1).tolist()) if language_key in obs else frozenset()
        return arrays, instructions


def plan(requests: list[ActionRequest], language_key: str | None, max_batch: int) -> list[list[int]]:
    """The policy calls for a window's requests, as indices into `requests`: mergeable ones together, in arrival
    order, at most `max_batch` environments per call (a request larger than that runs alone)."""
    open_calls: dict[tuple, list[int]] = {}
    calls: list[list[int]] = []
    for i, request in enumerate(requests):
        key = request.merge_key(language_key)
        call = open_calls.get(key)
        if call is None or sum(requests[j].batch for j in call) + request.batch > max_batch:
            call = open_calls[key] = []
            calls.append(call)
        call.append(i)
    return calls


def merge(requests: list[ActionRequest], noise_shape: tuple[int, int]) -> tuple[dict[str, Any], np.ndarray]:
    """One batched observation and the noise each request would get alone, concatenated in request order."""
    parts = [r.batched_obs() for r in requests]
    obs = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    noise = np.concatenate([make_noise((r.batch, *noise_shape), r.noise, r.seed).numpy() for r in requests])
    return obs, noise


def split(actions: dict[str, np.ndarray], requests: list[ActionRequest]) -> list[dict[str, np.ndarray]]:
    """A merged call's actions back per request, in order; unbatched requests lose the batch axis again."""
    out, start = [], 0
    for request in requests:
        part = {key: value[start:start + request.batch] for key, value in actions.items()}
        out.append(part if request.batched else {key: value[0] for key, value in part.items()})
        start += request.batch
    return out
