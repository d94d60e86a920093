"""An N1.5 data config and metadata entry as the generic `PolicyInterface` serving and validation work with."""

from __future__ import annotations

import numpy as np

from gr00t_export.families.base import PolicyInterface
from gr00t_export.families.n1_5.embodiments import ModalityConfig
from gr00t_export.families.n1_5.metadata import EmbodimentMetadata, key_plans

NAME = "gr00t_n1_5"


def action_spans(modality: ModalityConfig, metadata: EmbodimentMetadata) -> dict[str, tuple[float, ...]]:
    """What validation divides a joint's error by: the statistics' range of a key normalised from them; 2 (the span
    of the model's normalised space) for a key the model emits un-normalised (identity mode, or a rotation converted
    back from its target), so it is held to the same model-space error; 1 for binary."""
    spans = {}
    for plan in key_plans(metadata, modality, "action"):
        stats = metadata.action.get(ModalityConfig.short(plan.key))
        if plan.mode == "binary":
            span = np.ones(plan.raw_dim)
        elif plan.mode == "identity" or plan.conversion is not None or stats is None:
            span = np.full(plan.raw_dim, 2.0)
        else:
            span = np.asarray(stats.max - stats.min, dtype=np.float64)
        spans[plan.key] = tuple(float(x) for x in span)
    return spans


def interface(modality: ModalityConfig, metadata: EmbodimentMetadata, noise_shape: tuple[int, int]
              ) -> PolicyInterface:
    short = ModalityConfig.short
    videos = metadata.modalities.get("video", {})
    return PolicyInterface(
        family=NAME, embodiment_tag=modality.embodiment_tag, name=modality.name,
        video_keys=modality.video_keys, state_keys=modality.state_keys, action_keys=modality.action_keys,
        language_key=modality.language_key, observation_indices=modality.observation_indices,
        action_indices=modality.action_indices,
        state_dims={k: metadata.state_dim(short(k)) for k in modality.state_keys},
        action_dims={k: metadata.action_dim(short(k)) for k in modality.action_keys},
        noise_shape=noise_shape,
        video_resolutions={k: tuple(videos[short(k)]["resolution"]) for k in modality.video_keys
                           if "resolution" in videos.get(short(k), {})},
        state_encodings={k: modality.state_mode(k) for k in modality.state_keys},
        joint_names=dict(modality.joint_names), action_spans=action_spans(modality, metadata),
        default_instruction=modality.default_instruction)
