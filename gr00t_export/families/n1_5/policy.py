"""The PyTorch reference policy: the oracle every exported artifact is compared against.

raw observation dict -> eval transforms (video, chat prompt + tokens, state) -> `Gr00tN15` ->
un-normalise and split -> `{"action.<key>": (16, d)}`, as NVIDIA's `Gr00tPolicy.get_action` does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gr00t_export.errors import InputError
from gr00t_export.families.base import Observation, RawInputs, make_noise
from gr00t_export.families.n1_5.checkpoint import Checkpoint
from gr00t_export.families.n1_5.embodiments import DATA_CONFIGS, ModalityConfig, embodiment_index, load_modality_config
from gr00t_export.families.n1_5.interface import interface
from gr00t_export.families.n1_5.metadata import (
    EmbodimentMetadata,
    check_against,
    matching_data_configs,
    metadata_tags,
    read_metadata,
)
from gr00t_export.families.n1_5.model import Gr00tN15
from gr00t_export.families.n1_5.preprocess.state_action import ActionPostprocessor, StatePreprocessor
from gr00t_export.families.n1_5.preprocess.tokenizer import EagleTokenizer
from gr00t_export.families.n1_5.preprocess.video import MultiViewVideo


@dataclass
class ModelInputs:
    """What the model consumes after the eval transforms (one policy tick, batch B)."""

    pixel_values: torch.Tensor  # (B*T*V, 3, 224, 224) float32 in [-1, 1]
    input_ids: torch.Tensor  # (B, L) int64
    attention_mask: torch.Tensor  # (B, L) int64
    state: torch.Tensor  # (B, 1, 64) float32
    embodiment_id: torch.Tensor  # (B,) int64


def batch_observation(obs: Observation, modality: ModalityConfig) -> tuple[Observation, bool]:
    """Adds the batch axis to an unbatched observation; returns (batched obs, was_batched)."""
    for key in (*modality.video_keys, *modality.state_keys):
        if key not in obs:
            have = ", ".join(sorted(obs)) or "nothing"
            raise InputError(f"observation lacks {key!r} (has: {have}); provide every key of the modality config")
    batched = np.asarray(obs[modality.video_keys[0]]).ndim == 5
    if batched:
        return obs, True
    out = {}
    for key, value in obs.items():
        arr = np.asarray(value)
        out[key] = arr[None]
    return out, False


def instructions(obs: Observation, modality: ModalityConfig, batch: int) -> list[str]:
    key = modality.language_key
    if key is None or key not in obs:
        return [modality.default_instruction] * batch
    arr = np.asarray(obs[key])
    if arr.ndim == 1 and batch == 1 and arr.shape[0] >= 1 and not isinstance(arr[0], np.ndarray):
        arr = arr[None]
    return [str(np.asarray(row).reshape(-1)[0]) for row in arr]


class ObservationReader:
    """Checks an observation against the modality config and flattens it into `RawInputs`."""

    def __init__(self, modality: ModalityConfig, state_dims: list[int]):
        self.modality, self.state_dims = modality, state_dims

    def frames(self, obs: Observation) -> list[np.ndarray]:
        """One (B, T, H, W, 3) uint8 array per camera; cameras may differ in resolution, not in B or T."""
        views = []
        for key in self.modality.video_keys:
            v = np.asarray(obs[key])
            if v.dtype != np.uint8 or v.ndim != 5 or v.shape[-1] != 3:
                raise InputError(f"{key} must be uint8 (T, H, W, 3) frames, got {v.dtype} {v.shape[1:]}")
            if min(v.shape[2:4]) < 2:
                raise InputError(f"{key} frames are {v.shape[2]}x{v.shape[3]} pixels; send real camera images")
            views.append(np.ascontiguousarray(v))
        if len({v.shape[:2] for v in views}) != 1:
            raise InputError(f"camera views differ in batch or time steps ({[v.shape[:2] for v in views]}); send "
                             "the same number of frames for every camera")
        return views

    def raw_state(self, obs: Observation) -> np.ndarray:
        parts = []
        for key, dim in zip(self.modality.state_keys, self.state_dims, strict=True):
            s = np.asarray(obs[key])
            if s.dtype.kind not in "fiu" or s.ndim != 3 or s.shape[-1] != dim:
                raise InputError(f"{key} must be numeric (T, {dim}) per sample (the metadata's dim), "
                                 f"got {s.dtype} {s.shape[1:]}; give it the {dim} values the checkpoint was trained "
                                 "on (from a dataset: fix the key's start/end in meta/modality.json)")
            if not np.isfinite(s).all():
                raise InputError(f"{key} contains NaN or inf; fix the observation")
            parts.append(s.astype(np.float64))
        return np.concatenate(parts, axis=-1)  # (B, T, D_raw)

    def __call__(self, obs: Observation) -> RawInputs:
        """The graph's external inputs: frames_<i> per camera (each its own size), raw_state, instructions."""
        obs, batched = batch_observation(obs, self.modality)
        frames = self.frames(obs)
        batch = np.asarray(obs[self.modality.video_keys[0]]).shape[0]
        external = {**{f"frames_{i}": f for i, f in enumerate(frames)}, "raw_state": self.raw_state(obs),
                    "instructions": instructions(obs, self.modality, batch)}
        return RawInputs(external, batch=batch, batched=batched)


class Transforms:
    """The eval transforms of N1.5 for one modality config, in torch."""

    def __init__(self, modality: ModalityConfig, metadata: EmbodimentMetadata, tokenizer: EagleTokenizer,
                 max_state_dim: int):
        check_against(metadata, modality)
        self.modality, self.metadata, self.tokenizer = modality, metadata, tokenizer
        self.video = MultiViewVideo()
        self.state = StatePreprocessor(modality, metadata, max_state_dim=max_state_dim)
        self.reader = ObservationReader(modality, [metadata.state_dim(ModalityConfig.short(k))
                                                   for k in modality.state_keys])
        self.embodiment_id = embodiment_index(modality.embodiment_tag)

    def __call__(self, obs: Observation) -> ModelInputs:
        raw = self.reader(obs)
        frames = [torch.from_numpy(v) for k, v in raw.external.items() if k.startswith("frames_")]
        with torch.no_grad():
            pixel_values = self.video(frames)
            state, _ = self.state(torch.from_numpy(raw.external["raw_state"]))
        images_per_sample = sum(f.shape[1] for f in frames)  # time steps x camera views
        ids, mask = self.tokenizer.encode(raw.external["instructions"], images_per_sample)
        return ModelInputs(
            pixel_values=pixel_values,
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            state=state[:, -1:].float(),  # N1.5 conditions on the last observed state
            embodiment_id=torch.full((raw.batch,), self.embodiment_id, dtype=torch.long),
        )


def resolve_policy_inputs(ckpt: Checkpoint, embodiment_tag: str | None,
                          modality_config: str | Path | ModalityConfig | None
                          ) -> tuple[ModalityConfig, EmbodimentMetadata]:
    """The modality config and metadata entry a policy runs with.

    No tag: the config's when its entry exists, else the metadata's only one. No config: the one built-in data
    config whose keys the metadata's entry matches (`matching_data_configs`; the CLI says which it took); none
    or several is an InputError naming the candidates.
    """
    modality = modality_config if isinstance(modality_config, ModalityConfig) or modality_config is None else \
        load_modality_config(modality_config)
    if embodiment_tag is None:
        tags = metadata_tags(ckpt.metadata_path)
        if modality is not None and modality.embodiment_tag in tags:
            embodiment_tag = modality.embodiment_tag
        elif len(tags) == 1:
            embodiment_tag = tags[0]
        else:
            raise InputError(f"the checkpoint's metadata has entries for {', '.join(tags) or 'no'} embodiment tags; "
                             "pass --embodiment_tag with the one to export")
    embodiment_index(embodiment_tag)
    metadata = read_metadata(ckpt.metadata_path, embodiment_tag)
    if modality is None:
        modality = DATA_CONFIGS[select_data_config(metadata)]
    if modality.embodiment_tag != embodiment_tag:
        modality = dataclasses.replace(modality, embodiment_tag=embodiment_tag)
    return modality, metadata


def select_data_config(metadata: EmbodimentMetadata) -> str:
    """The built-in data config for a checkpoint run without --modality_config, or an InputError listing the
    candidates."""
    candidates = matching_data_configs(metadata)
    if len(candidates) == 1:
        return candidates[0]
    keys = "; ".join(f"{m}: {', '.join(sorted(metadata.modalities.get(m, {}))) or 'none'}"
                     for m in ("video", "state", "action"))
    if candidates:
        raise InputError(f"the checkpoint's '{metadata.tag}' metadata fits several data configs "
                         f"({', '.join(candidates)}); pass --modality_config with the one it was trained with")
    raise InputError(f"no built-in data config matches the checkpoint's '{metadata.tag}' metadata ({keys}); pass "
                     "--modality_config with a YAML describing it (schema: gr00t_export/families/n1_5/embodiments.py)")


class ReferencePolicy:
    def __init__(self, model: Gr00tN15, transforms: Transforms, device: str | torch.device = "cpu"):
        self.model, self.transforms, self.device = model, transforms, torch.device(device)
        ah = model.cfg.action_head
        self.interface = interface(transforms.modality, transforms.metadata, (ah.action_horizon, ah.action_dim))
        self.postprocess = ActionPostprocessor(transforms.modality, transforms.metadata)

    @torch.no_grad()
    def action_pred(self, inputs: ModelInputs, init_actions: torch.Tensor) -> torch.Tensor:
        """Model-space inputs -> normalised (B, 16, 32) float32."""
        dtype = next(self.model.parameters()).dtype
        d = self.device
        out = self.model(inputs.pixel_values.to(d, dtype), inputs.input_ids.to(d), inputs.attention_mask.to(d),
                         inputs.state.to(d, dtype), inputs.embodiment_id.to(d), init_actions.to(d, dtype))
        return out.float().cpu()

    def get_action(self, obs: Observation, noise: np.ndarray | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        _, batched = batch_observation(obs, self.transforms.modality)
        inputs = self.transforms(obs)
        init = make_noise((inputs.input_ids.shape[0], *self.interface.noise_shape), noise, seed)
        return decode_actions(self.postprocess, self.action_pred(inputs, init), batched)


def decode_actions(postprocess: ActionPostprocessor, action_pred: torch.Tensor, batched: bool
                   ) -> dict[str, np.ndarray]:
    with torch.no_grad():
        actions = postprocess.split(postprocess(action_pred.double()))
    return {k: (v.float().numpy() if batched else v[0].float().numpy()) for k, v in actions.items()}
