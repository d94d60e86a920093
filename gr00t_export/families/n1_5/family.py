"""GR00T N1.5 as a model family: what the generic stages ask of it, on top of this package's modules."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gr00t_export.data.rotation import convert
from gr00t_export.errors import InputError, ValidationFailure
from gr00t_export.families.base import Observation, PolicyInterface
from gr00t_export.families.n1_5.checkpoint import Checkpoint, load_model, open_checkpoint
from gr00t_export.families.n1_5.config import config_to_dict
from gr00t_export.families.n1_5.embodiments import (
    DATA_CONFIGS,
    ModalityConfig,
    load_modality_config,
    modality_config_from_dict,
    modality_config_to_dict,
)
from gr00t_export.families.n1_5.interface import NAME, interface
from gr00t_export.families.n1_5.metadata import EmbodimentMetadata, KeyStats
from gr00t_export.families.n1_5.preprocess.tokenizer import EagleTokenizer
from gr00t_export.spec import GraphSpec, Partition


def metadata_from_manifest(manifest: dict[str, Any]) -> EmbodimentMetadata:
    meta = manifest["metadata"]
    return EmbodimentMetadata(
        tag=meta["embodiment_tag"],
        state={k: KeyStats.from_dict(v, k) for k, v in meta["statistics"]["state"].items()},
        action={k: KeyStats.from_dict(v, k) for k, v in meta["statistics"]["action"].items()},
        modalities=meta["modalities"],
    )


def example_observation(modality: ModalityConfig, metadata: EmbodimentMetadata, dataset_path: Path | None
                        ) -> Observation:
    """A real dataset step when a dataset is given; else a seeded frame and the metadata's mean state."""
    if dataset_path is not None:
        from gr00t_export.data.lerobot import LeRobotDataset

        dataset = LeRobotDataset(dataset_path)
        episode, step = next(iter(dataset.iter_steps(modality, 1)))
        return dataset.observation(episode, step, modality)
    rng = np.random.default_rng(0)
    obs: Observation = {}
    for key in modality.video_keys:
        w, h = metadata.modalities.get("video", {}).get(ModalityConfig.short(key), {}).get("resolution", [256, 256])
        obs[key] = rng.integers(0, 256, (modality.state_horizon, h, w, 3), dtype=np.uint8)  # each camera its size
    for key in modality.state_keys:
        short = ModalityConfig.short(key)
        stats = metadata.state.get(short)
        mean = stats.mean if stats is not None else np.zeros(metadata.state_dim(short))
        rotation = metadata.entry("state", short)["rotation_type"]
        if rotation is not None:  # the mean of rotations is no rotation: take the identity, in its representation
            mean = convert(np.zeros(3), "axis_angle", rotation)
        obs[key] = np.repeat(mean[None], modality.state_horizon, axis=0)
    if modality.language_key:
        obs[modality.language_key] = np.array(["pick up the object and place it on the plate"])
    return obs


def seq_len_profile(tokenizer: EagleTokenizer, views: int, spec: GraphSpec) -> dict[str, int]:
    """min/opt/max prompt lengths for TensorRT profiles, measured with the build's own tokenizer."""
    prof = spec.profiles
    base = tokenizer.encode([""], views)[0].shape[1]
    typical = tokenizer.encode([prof["typical_instruction"]], views)[0].shape[1]
    return {"min": int(base), "opt": int(typical), "max": int(base + prof["max_instruction_tokens"])}


@dataclass
class OpenedN15:
    """An N1.5 checkpoint opened for one embodiment and data config."""

    ckpt: Checkpoint
    modality: ModalityConfig
    metadata: EmbodimentMetadata

    @property
    def family(self):
        return FAMILY

    @property
    def path(self) -> Path:
        return self.ckpt.path

    @property
    def denoising_steps(self) -> int:
        return self.ckpt.config.action_head.num_inference_timesteps

    @cached_property
    def interface(self) -> PolicyInterface:
        ah = self.ckpt.config.action_head
        return interface(self.modality, self.metadata, (ah.action_horizon, ah.action_dim))

    @cached_property
    def tokenizer(self) -> EagleTokenizer:
        return EagleTokenizer.from_dir(self.ckpt.eagle_dir)

    @cached_property
    def transforms(self):
        from gr00t_export.families.n1_5.policy import Transforms

        return Transforms(self.modality, self.metadata, self.tokenizer, self.ckpt.config.action_head.max_state_dim)

    def fingerprint(self) -> str:
        return self.ckpt.fingerprint()

    def manifest_entries(self) -> dict[str, Any]:
        cfg = config_to_dict(self.ckpt.config)
        ah = cfg["action_head"]
        return {"embodiment_tag": self.modality.embodiment_tag,
                "modality_config": modality_config_to_dict(self.modality),
                "metadata": self.metadata.to_dict(),
                "model": {"action_horizon": ah["action_horizon"], "action_dim": ah["action_dim"],
                          "denoising_steps": ah["num_inference_timesteps"], "dims": self.spec_dims(), "config": cfg}}

    def spec_dims(self) -> dict[str, int]:
        cfg = self.ckpt.config
        ah = cfg.action_head
        return {"vision_hidden": cfg.vision.hidden_size, "backbone_dim": ah.backbone_embedding_dim,
                "max_state_dim": ah.max_state_dim, "action_horizon": ah.action_horizon, "action_dim": ah.action_dim,
                "tokens_per_image": cfg.tokens_per_image}

    def load(self, dtype: torch.dtype, device: str | torch.device = "cpu") -> torch.nn.Module:
        return load_model(self.ckpt, dtype=dtype, device=device)[0]

    def reference(self, model: torch.nn.Module, device: str | torch.device = "cpu"):
        from gr00t_export.families.n1_5.policy import ReferencePolicy

        return ReferencePolicy(model, self.transforms, device)

    def reader(self):
        return self.transforms.reader

    def partition(self, model: torch.nn.Module, precision: str) -> Partition:
        from gr00t_export.families.n1_5.partition import partition

        return partition(model, self.transforms, precision)

    def example_observation(self, dataset_path: Path | None) -> Observation:
        return example_observation(self.modality, self.metadata, dataset_path)

    def with_views(self, views: int) -> OpenedN15:
        own = self.modality.video_keys
        keys = own[:views] + tuple(f"video.view_{i}" for i in range(len(own), views))
        if keys == own:
            return self
        opened = OpenedN15(self.ckpt, dataclasses.replace(self.modality, video_keys=keys), self.metadata)
        opened.__dict__["tokenizer"] = self.tokenizer  # the cached tokenizer, not a second load
        return opened

    def profiles(self, spec: GraphSpec, max_batch: int) -> dict[str, dict]:
        """One TensorRT profile per view count of the spec, plus the build's own."""
        profiles = {}
        for views in sorted({*spec.profiles["views"], len(self.modality.video_keys)}):
            batch = {"min": 1, "opt": 1, "max": max_batch}
            profiles[f"views_{views}"] = {"batch": batch, "num_images": {k: v * views for k, v in batch.items()},
                                          "seq_len": seq_len_profile(self.tokenizer, views, spec)}
        return profiles

    def check_artifacts(self, root: Path, spec: GraphSpec) -> None:
        """The written tokenizer stage, reloaded, must give the Python tokenizer's ids on the self-check prompts.

        The export check only compares it with its own eager module on one instruction; this compares it with
        `EagleTokenizer` (the reference) on instructions chosen to cross every special case of the BPE split.
        """
        from gr00t_export.families.n1_5.preprocess.tokenizer_script import check_against_python

        rel = spec.stage("eagle2_tokenizer").file
        try:
            check_against_python(torch.jit.load(str(root / rel)), self.tokenizer)
        except ValidationFailure as err:
            raise ValidationFailure(f"{rel} failed its self-check: {err}; nothing was written") from None


class Gr00tN15Family:
    name = NAME
    model_types = ("gr00t_n1_5",)
    presets = ("tiny", "n1.5-3b")

    def graph_spec_path(self) -> Path:
        from gr00t_export.families.n1_5.partition import graph_spec_path

        return graph_spec_path()

    def open(self, model_path: Path, eagle_path: Path | None = None, *, embodiment_tag: str | None = None,
             modality_config: str | Path | dict | None = None, denoising_steps: int | None = None) -> OpenedN15:
        """`modality_config`: a built-in name, a YAML file, or (from a manifest) the config as a dict."""
        from gr00t_export.families.n1_5.policy import resolve_policy_inputs

        ckpt = open_checkpoint(model_path, eagle_path, denoising_steps)
        if isinstance(modality_config, dict):
            modality_config = modality_config_from_dict(modality_config, where="manifest modality_config")
        modality, metadata = resolve_policy_inputs(ckpt, embodiment_tag, modality_config)
        opened = OpenedN15(ckpt, modality, metadata)
        if opened.tokenizer.image_token_id != ckpt.config.image_token_index:
            raise InputError(f"tokenizer's <IMG_CONTEXT> id {opened.tokenizer.image_token_id} != image_token_index "
                             f"{ckpt.config.image_token_index}; use the Eagle dir that matches the checkpoint")
        return opened

    def open_for_manifest(self, model_path: Path, eagle_path: Path | None, manifest: dict[str, Any]) -> OpenedN15:
        steps = manifest.get("model", {}).get("denoising_steps")
        return self.open(model_path, eagle_path, embodiment_tag=manifest["embodiment_tag"],
                         modality_config=manifest["modality_config"], denoising_steps=steps)

    def reader(self, manifest: dict[str, Any]):
        from gr00t_export.families.n1_5.policy import ObservationReader

        modality = modality_config_from_dict(manifest["modality_config"], where="manifest modality_config")
        metadata = metadata_from_manifest(manifest)
        return ObservationReader(modality, [metadata.state_dim(ModalityConfig.short(k)) for k in modality.state_keys])

    def data_config_names(self) -> list[str]:
        return list(DATA_CONFIGS)

    def data_config(self, name_or_path: str | Path) -> ModalityConfig | None:
        """A DATA_CONFIG_MAP name or a YAML file in this family's schema."""
        if str(name_or_path) in DATA_CONFIGS or Path(name_or_path).is_file():
            return load_modality_config(name_or_path)
        return None

    def match_data_config(self, dataset_path: Path, embodiment_tag: str | None = None) -> str:
        from gr00t_export.families.n1_5.metadata import metadata_from_lerobot_stats
        from gr00t_export.families.n1_5.policy import select_data_config

        return select_data_config(metadata_from_lerobot_stats(dataset_path, None, embodiment_tag))

    def make_checkpoint(self, out: Path, preset: str, seed: int = 0, **options: Any) -> Path:
        from gr00t_export.families.n1_5.synthetic import make_checkpoint

        return make_checkpoint(out, preset, seed, **options)


FAMILY = Gr00tN15Family()
