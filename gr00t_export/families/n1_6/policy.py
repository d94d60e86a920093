"""The N1.6 PyTorch reference policy: raw observation -> actions, the oracle exported stages are compared with.

observation -> video (GR00T transform + Eagle processor), prompt + tokens, state encoding -> `Gr00tN16` with an
explicit initial noise (B, 50, 128) -> action decoding with the raw state -> `{key: (B, horizon, d)}`, as NVIDIA's
`Gr00tPolicy.get_action` does for N1.6.

Observations come as NVIDIA's N1.6 policy takes them, `{"video": {key: uint8 (B, T, H, W, 3)}, "state": {key:
float32 (B, T, d)}, "language": {key: [[str], ...]}}`, or flat as the sim wrapper sends them (`video.<key>`,
`state.<key>`, `task` / `annotation.human.coarse_action`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gr00t_export.errors import InputError
from gr00t_export.families.n1_6.config import Gr00tN16Config
from gr00t_export.families.n1_6.load import load_model, open_checkpoint
from gr00t_export.families.n1_6.model import Gr00tN16
from gr00t_export.families.n1_6.processor_files import (
    ProcessorConfig,
    embodiment_id,
    read_embodiment_ids,
    read_processor_config,
    read_statistics,
)
from gr00t_export.families.n1_6.state_action import ActionDecoder, StateEncoder
from gr00t_export.families.n1_6.tokenizer import N16Tokenizer
from gr00t_export.families.n1_6.video import VideoPreprocessor
from gr00t_export.weights import torch_dtype

LANGUAGE_FALLBACK_KEYS = ("task", "annotation.human.coarse_action")


@dataclass
class ModelInputs:
    """What `Gr00tN16` consumes for one policy tick (batch B)."""

    pixel_values: torch.Tensor  # (B*T*V, 3, 252, 252) float32 in [-1, 1], (batch, time, view) order
    input_ids: torch.Tensor  # (B, L) int64
    attention_mask: torch.Tensor  # (B, L) int64
    state: torch.Tensor  # (B, T_state, 128) float32
    embodiment_id: torch.Tensor  # (B,) int64
    raw_state: torch.Tensor  # (B, T_state, D_raw) float32: decoding needs it (relative actions)


def _section(obs: dict[str, Any], modality: str, key: str) -> Any:
    nested = obs.get(modality)
    if isinstance(nested, dict) and key in nested:
        return nested[key]
    flat = f"{modality}.{key}"
    if flat in obs:
        return obs[flat]
    raise InputError(f"observation lacks {modality} {key!r} (give obs['{modality}']['{key}'] or obs['{flat}'])")


class Transforms:
    """NVIDIA's eval-mode N1.6 processor for one embodiment, in torch."""

    def __init__(self, processor: ProcessorConfig, statistics: dict, embodiment_ids: dict[str, int], tag: str,
                 tokenizer: N16Tokenizer, cfg: Gr00tN16Config):
        if tag not in statistics:
            raise InputError(f"statistics.json has no entry for embodiment {tag!r} (has {', '.join(statistics)}); "
                             "use the checkpoint's statistics.json")
        self.tag, self.cfg, self.tokenizer, self.processor = tag, cfg, tokenizer, processor
        self.modalities = processor.embodiment(tag)
        if processor.max_state_dim != cfg.action_head.max_state_dim or \
                processor.max_action_dim != cfg.action_head.max_action_dim:
            raise InputError(f"processor_config.json pads to {processor.max_state_dim}/{processor.max_action_dim} "
                             f"but the model takes {cfg.action_head.max_state_dim}/{cfg.action_head.max_action_dim}; "
                             "use the processor files saved with these weights")
        self.video = VideoPreprocessor(processor.shortest_image_edge, processor.crop_fraction)
        self.state = StateEncoder(processor, statistics[tag], tag)
        self.decoder = ActionDecoder(processor, statistics[tag], tag, self.state.key_slices)
        self.embodiment_id = embodiment_id(embodiment_ids, tag, cfg.action_head.max_num_embodiments)
        language = self.modalities.language
        self.language_keys = (*(language.modality_keys if language else ()), *LANGUAGE_FALLBACK_KEYS)

    def frames(self, obs: dict[str, Any]) -> list[np.ndarray]:
        """Per camera: uint8 (B, T, H, W, 3), checked."""
        views = []
        horizon = len(self.modalities.video.delta_indices)
        for key in self.modalities.video.modality_keys:
            v = np.asarray(_section(obs, "video", key))
            if v.dtype != np.uint8 or v.ndim != 5 or v.shape[-1] != 3 or v.shape[1] != horizon:
                raise InputError(f"video {key!r} must be uint8 (B, {horizon}, H, W, 3), got {v.dtype} {v.shape}")
            views.append(v)
        if len({v.shape[0] for v in views}) != 1:
            raise InputError("camera views disagree on the batch size; send one frame stack per sample and camera")
        return views

    def instructions(self, obs: dict[str, Any], batch: int) -> list[str]:
        for key in self.language_keys:
            nested = obs.get("language")
            value = nested.get(key) if isinstance(nested, dict) else obs.get(key, obs.get(f"language.{key}"))
            if value is None:
                continue
            rows = [value] if isinstance(value, str) else list(np.asarray(value, dtype=object).reshape(batch, -1)[:, 0])
            if len(rows) != batch or not all(isinstance(r, str) for r in rows):
                raise InputError(f"language {key!r} must hold one str per sample ({batch}), got {value!r}")
            return [str(r) for r in rows]
        raise InputError(f"observation has no instruction; give one of {', '.join(self.language_keys)}")

    def __call__(self, obs: dict[str, Any]) -> ModelInputs:
        views = self.frames(obs)
        batch, steps = views[0].shape[0], views[0].shape[1]
        with torch.no_grad():
            per_camera = [self.video(torch.from_numpy(np.ascontiguousarray(v.reshape(-1, *v.shape[2:]))))
                          for v in views]
            sizes = {tuple(p.shape[-2:]) for p in per_camera}
            if len(sizes) != 1:
                raise InputError(f"cameras give different image sizes {sorted(sizes)} after preprocessing")
            # (B*T, V, ...) -> (batch, time, view) order, as NVIDIA stacks views per time step
            pixel_values = torch.stack(per_camera, dim=1).flatten(0, 1)
            raw_state = torch.from_numpy(self.state.concat({k: _section(obs, "state", k) for k, _, _ in
                                                            self.state.key_slices}))
            state = self.state(raw_state)
        height, width = pixel_values.shape[-2:]
        tokens = [self.cfg.tokens_per_image(height, width)] * (steps * len(views))
        ids, mask = self.tokenizer.encode(self.instructions(obs, batch), tokens)
        return ModelInputs(pixel_values=pixel_values, input_ids=torch.from_numpy(ids),
                           attention_mask=torch.from_numpy(mask), state=state,
                           embodiment_id=torch.full((batch,), self.embodiment_id, dtype=torch.long),
                           raw_state=raw_state)


class ReferencePolicy:
    def __init__(self, model: Gr00tN16, transforms: Transforms, device: str | torch.device = "cpu"):
        self.model, self.transforms, self.device = model, transforms, torch.device(device)
        if transforms.tokenizer.image_token_id != model.cfg.image_token_index:
            raise InputError(f"tokenizer's <IMG_CONTEXT> id {transforms.tokenizer.image_token_id} != the model's "
                             f"image_token_index {model.cfg.image_token_index}; use the matching Eagle dir")

    @classmethod
    def from_checkpoint(cls, model_path: str | Path, eagle_path: str | Path | None = None,
                        embodiment_tag: str = "gr1", dtype: str = "fp32", device: str = "cpu") -> ReferencePolicy:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError("--device cuda asked for but no CUDA GPU is visible; use --device cpu")
        ckpt = open_checkpoint(model_path, eagle_path)
        processor = read_processor_config(ckpt.processor_config_path)
        statistics = read_statistics(ckpt.statistics_path)
        ids = read_embodiment_ids(ckpt.embodiment_id_path)
        tokenizer = N16Tokenizer.from_dir(ckpt.eagle_dir, formalize=processor.formalize_language)
        transforms = Transforms(processor, statistics, ids, embodiment_tag, tokenizer, ckpt.config)
        model, _ = load_model(ckpt, dtype=torch_dtype(dtype), device=device)
        return cls(model, transforms, device)

    def noise(self, batch: int, noise: np.ndarray | None = None, seed: int = 0) -> torch.Tensor:
        """The sampler's initial actions: `noise` (50, 128) or (B, 50, 128), else seeded N(0, 1)."""
        ah = self.model.cfg.action_head
        shape = (batch, ah.action_horizon, ah.max_action_dim)
        if noise is None:
            return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
        arr = np.asarray(noise, dtype=np.float32)
        if arr.shape == shape[1:]:
            arr = np.broadcast_to(arr, shape)
        if arr.shape != shape:
            raise InputError(f"noise has shape {arr.shape}, expected {shape[1:]} or {shape}; regenerate it")
        return torch.from_numpy(arr.copy())

    @torch.no_grad()
    def action_pred(self, inputs: ModelInputs, init_actions: torch.Tensor) -> torch.Tensor:
        """Model-space inputs -> normalised action_pred (B, 50, 128) float32."""
        dtype = next(self.model.parameters()).dtype
        d = self.device
        out = self.model(inputs.pixel_values.to(d, dtype), inputs.input_ids.to(d), inputs.attention_mask.to(d),
                         inputs.state.to(d, dtype), inputs.embodiment_id.to(d), init_actions.to(d, dtype))
        return out.float().cpu()

    def get_action(self, obs: dict[str, Any], noise: np.ndarray | None = None, seed: int = 0
                   ) -> dict[str, np.ndarray]:
        inputs = self.transforms(obs)
        pred = self.action_pred(inputs, self.noise(inputs.input_ids.shape[0], noise, seed))
        with torch.no_grad():
            actions = self.transforms.decoder(pred, inputs.raw_state)
        return {key: value.numpy() for key, value in self.transforms.decoder.split(actions).items()}
