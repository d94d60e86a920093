"""GR00T N1.6 as a model family: what the generic stages ask of it, on top of this package's modules.

N1.6 keeps its modality configs in the checkpoint (`processor_config.json`), so `--modality_config` does not apply:
the embodiment tag picks the config. Observations are the flat form (`video.<k>`, `state.<k>`, the language key),
batched (B, T, ...) or not, as NVIDIA's sim wrapper sends them; actions come back as `action.<k>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gr00t_export.errors import InputError, ValidationFailure
from gr00t_export.families.base import (
    Observation,
    PolicyInterface,
    RawInputs,
    make_noise,
    require_denoising_steps,
)
from gr00t_export.families.n1_6.config import MODEL_TYPE, config_to_dict
from gr00t_export.families.n1_6.load import Checkpoint, load_model, open_checkpoint
from gr00t_export.families.n1_6.processor_files import (
    ProcessorConfig,
    processor_config_dict,
    read_embodiment_ids,
    read_processor_config,
    read_statistics,
    statistics_dict,
)
from gr00t_export.spec import GraphSpec, Partition

NAME = "gr00t_n1_6"


def interface(processor: ProcessorConfig, statistics: dict, tag: str, noise_shape: tuple[int, int]
              ) -> PolicyInterface:
    """The observation and actions of embodiment `tag`: keys from processor_config.json, widths from statistics."""
    m, stats = processor.embodiment(tag), statistics[tag]
    language = m.language.modality_keys[0] if m.language and m.language.modality_keys else "task"
    sin_cos = set(m.state.sin_cos_embedding_keys or ()) if processor.apply_sincos_state_encoding else set()
    mean_std = set(m.state.mean_std_embedding_keys or ())
    encodings = {f"state.{k}": "sin_cos" if k in sin_cos else "mean_std" if k in mean_std else "min_max"
                 for k in m.state.modality_keys}
    spans = {}
    for key in m.action.modality_keys:
        relative = m.action_config(key).rep == "RELATIVE" and processor.use_relative_action
        s = stats.relative_action[key] if relative and key in stats.relative_action else stats.action[key]
        span = np.asarray(s.max - s.min, dtype=np.float64)
        spans[f"action.{key}"] = tuple(float(x) for x in (span.max(axis=0) if span.ndim == 2 else span))
    return PolicyInterface(
        family=NAME, embodiment_tag=tag, name=tag,
        video_keys=tuple(f"video.{k}" for k in m.video.modality_keys),
        state_keys=tuple(f"state.{k}" for k in m.state.modality_keys),
        action_keys=tuple(f"action.{k}" for k in m.action.modality_keys),
        language_key=f"annotation.{language}", observation_indices=tuple(m.state.delta_indices),
        action_indices=tuple(m.action.delta_indices),
        state_dims={f"state.{k}": stats.state[k].dim for k in m.state.modality_keys},
        action_dims={f"action.{k}": stats.action[k].dim for k in m.action.modality_keys},
        noise_shape=noise_shape, state_encodings=encodings, action_spans=spans)


class ObservationReader:
    """Flat observation (batched or not) -> the graph's external inputs: frames_<i>, raw_state (float32), the
    instructions. The language arrives under the interface's key (`annotation.<k>`), or bare (`<k>`) as NVIDIA's sim
    wrapper sends it."""

    def __init__(self, iface: PolicyInterface, language_keys: tuple[str, ...]):
        self.iface, self.language_keys = iface, language_keys

    def __call__(self, obs: Observation) -> RawInputs:
        iface = self.iface
        missing = [k for k in (*iface.video_keys, *iface.state_keys) if k not in obs]
        if missing:
            raise InputError(f"observation lacks {', '.join(missing)} (has: {', '.join(sorted(obs)) or 'nothing'}); "
                             "provide every key of the embodiment's modality config")
        batched = np.ndim(obs[iface.video_keys[0]]) == 5
        frames = {}
        for i, key in enumerate(iface.video_keys):
            v = np.asarray(obs[key]) if batched else np.asarray(obs[key])[None]
            if v.dtype != np.uint8 or v.ndim != 5 or v.shape[-1] != 3 or v.shape[1] != iface.state_horizon:
                raise InputError(f"{key} must be uint8 ({iface.state_horizon}, H, W, 3) frames per sample, got "
                                 f"{v.dtype} {v.shape[1:]}")
            frames[f"frames_{i}"] = np.ascontiguousarray(v)
        batch = frames["frames_0"].shape[0]
        parts = []
        for key in iface.state_keys:
            s = np.asarray(obs[key], dtype=np.float64) if batched else np.asarray(obs[key], dtype=np.float64)[None]
            dim = iface.state_dims[key]
            if s.ndim != 3 or s.shape[0] != batch or s.shape[-1] != dim:
                raise InputError(f"{key} must be (T, {dim}) per sample, got {s.shape[1:]}")
            if not np.isfinite(s).all():
                raise InputError(f"{key} contains NaN or inf; fix the observation")
            parts.append(s)
        return RawInputs({**frames, "raw_state": np.concatenate(parts, axis=-1).astype(np.float32),
                          "instructions": self.instructions(obs, batch)}, batch=batch, batched=batched)

    def instructions(self, obs: Observation, batch: int) -> list[str]:
        for key in self.language_keys:
            if key in obs:
                arr = np.asarray(obs[key]).reshape(-1) if batch == 1 else np.asarray(obs[key]).reshape(batch, -1)[:, 0]
                if arr.size < batch:
                    raise InputError(f"{key} must hold one instruction per sample ({batch}), got {arr.size}")
                return [str(x) for x in arr[:batch]]
        raise InputError(f"observation has no instruction; give {self.language_keys[0]}")


class N16Policy:
    """The PyTorch reference behind the generic policy interface (flat observations in, `action.<k>` out)."""

    def __init__(self, inner, iface: PolicyInterface, reader: ObservationReader):
        self.inner, self.interface, self.reader = inner, iface, reader
        self.model = inner.model

    def get_action(self, obs: Observation, noise: np.ndarray | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        raw, iface = self.reader(obs), self.interface
        batched = {k: raw.external[f"frames_{i}"] for i, k in enumerate(iface.video_keys)}  # checked, (B, T, ...)
        start = 0
        for key in iface.state_keys:
            batched[key] = raw.external["raw_state"][..., start:start + iface.state_dims[key]]
            start += iface.state_dims[key]
        batched["task"] = raw.external["instructions"]
        init = make_noise((raw.batch, *iface.noise_shape), noise, seed)
        actions = self.inner.get_action(batched, noise=init.numpy())
        return {f"action.{k}": (v if raw.batched else v[0]) for k, v in actions.items()}


@dataclass
class OpenedN16:
    ckpt: Checkpoint
    processor: ProcessorConfig
    statistics: dict
    embodiment_ids: dict[str, int]
    tag: str

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
    def tokenizer(self):
        from gr00t_export.families.n1_6.tokenizer import N16Tokenizer

        return N16Tokenizer.from_dir(self.ckpt.eagle_dir, formalize=self.processor.formalize_language)

    @cached_property
    def transforms(self):
        from gr00t_export.families.n1_6.policy import Transforms

        return Transforms(self.processor, self.statistics, self.embodiment_ids, self.tag, self.tokenizer,
                          self.ckpt.config)

    @cached_property
    def interface(self) -> PolicyInterface:
        ah = self.ckpt.config.action_head
        return interface(self.processor, self.statistics, self.tag, (ah.action_horizon, ah.max_action_dim))

    def fingerprint(self) -> str:
        return self.ckpt.fingerprint()

    def spec_dims(self) -> dict[str, int]:
        from gr00t_export.families.n1_6.partition import stage_dims

        return stage_dims(self.ckpt.config, self.transforms)

    def manifest_entries(self) -> dict[str, Any]:
        cfg = config_to_dict(self.ckpt.config)
        ah = self.ckpt.config.action_head
        return {"embodiment_tag": self.tag,
                "processor": processor_config_dict(self.processor),
                "statistics": statistics_dict({self.tag: self.statistics[self.tag]}),
                "embodiment_id": self.transforms.embodiment_id,
                "model": {"action_horizon": self.interface.action_horizon, "action_dim": ah.max_action_dim,
                          "denoising_steps": ah.num_inference_timesteps, "dims": self.spec_dims(), "config": cfg}}

    def load(self, dtype: torch.dtype, device: str | torch.device = "cpu") -> torch.nn.Module:
        return load_model(self.ckpt, dtype=dtype, device=device)[0]

    def reader(self) -> ObservationReader:
        return FAMILY.reader_for(self.interface)

    def reference(self, model: torch.nn.Module, device: str | torch.device = "cpu") -> N16Policy:
        from gr00t_export.families.n1_6.policy import ReferencePolicy

        return N16Policy(ReferencePolicy(model, self.transforms, device), self.interface, self.reader())

    def partition(self, model: torch.nn.Module, precision: str) -> Partition:
        from gr00t_export.families.n1_6.partition import partition

        return partition(model, self.transforms, precision)

    def example_observation(self, dataset_path: Path | None) -> Observation:
        """A dataset's first step when one is given, else a seeded frame per camera and the statistics' mean state."""
        iface = self.interface
        if dataset_path is not None:
            from gr00t_export.data.lerobot import LeRobotDataset

            dataset = LeRobotDataset(dataset_path)
            episode, step = next(iter(dataset.iter_steps(iface, 1)))
            return dataset.observation(episode, step, iface)
        rng = np.random.default_rng(0)
        obs: Observation = {k: rng.integers(0, 256, (iface.state_horizon, 256, 256, 3), dtype=np.uint8)
                            for k in iface.video_keys}
        stats = self.statistics[self.tag].state
        for key in iface.state_keys:
            mean = np.asarray(stats[iface.short(key)].mean, dtype=np.float32)
            obs[key] = np.repeat(mean[None], iface.state_horizon, axis=0)
        obs[iface.language_key] = np.array(["pick up the object and place it on the plate"])
        return obs

    def profiles(self, spec: GraphSpec, max_batch: int) -> dict[str, dict]:
        from gr00t_export.families.n1_6.partition import tokens_per_image

        per_view = tokens_per_image(self.ckpt.config, self.transforms)[0]
        own = len(self.interface.video_keys)
        profiles = {}
        for views in sorted({*spec.profiles["views"], own}):
            tokens = [per_view] * views
            base = self.tokenizer.encode([""], tokens)[0].shape[1]
            typical = self.tokenizer.encode([spec.profiles["typical_instruction"]], tokens)[0].shape[1]
            batch = {"min": 1, "opt": 1, "max": max_batch}
            profiles[f"views_{views}"] = {
                "batch": batch, "num_images": {k: v * views for k, v in batch.items()},
                "seq_len": {"min": int(base), "opt": int(typical),
                            "max": int(base + spec.profiles["max_instruction_tokens"])}}
        return profiles

    def check_artifacts(self, root: Path, spec: GraphSpec) -> None:
        from gr00t_export.families.n1_6.tokenizer_script import check_against_python

        rel = spec.stage("eagle2_tokenizer").file
        try:
            check_against_python(torch.jit.load(str(root / rel)), self.tokenizer)
        except ValidationFailure as err:
            raise ValidationFailure(f"{rel} failed its self-check: {err}; nothing was written") from None


class Gr00tN16Family:
    name = NAME
    model_types = (MODEL_TYPE,)
    presets = ("n1.6-tiny", "n1.6-3b")

    def graph_spec_path(self) -> Path:
        from gr00t_export.families.n1_6.partition import graph_spec_path

        return graph_spec_path()

    def open(self, model_path: Path, eagle_path: Path | None = None, *, embodiment_tag: str | None = None,
             modality_config: str | Path | None = None, denoising_steps: int | None = None) -> OpenedN16:
        if modality_config is not None:
            raise InputError("N1.6 checkpoints carry their modality configs (processor_config.json); leave out "
                             "--modality_config and pick the embodiment with --embodiment_tag")
        require_denoising_steps(denoising_steps)
        ckpt = open_checkpoint(model_path, eagle_path)
        if denoising_steps is not None:
            ckpt.config.action_head.num_inference_timesteps = denoising_steps
        processor = read_processor_config(ckpt.processor_config_path)
        statistics = read_statistics(ckpt.statistics_path)
        tags = sorted(processor.modality_configs)
        if embodiment_tag is None:
            if len(tags) != 1:
                raise InputError(f"processor_config.json has modality configs for {', '.join(tags)}; pass "
                                 "--embodiment_tag with the one to run")
            embodiment_tag = tags[0]
        processor.embodiment(embodiment_tag)  # one clear error for an unknown tag
        ids = read_embodiment_ids(ckpt.embodiment_id_path if ckpt.embodiment_id_path.is_file() else None)
        return OpenedN16(ckpt, processor, statistics, ids, embodiment_tag)

    def open_for_manifest(self, model_path: Path, eagle_path: Path | None, manifest: dict[str, Any]) -> OpenedN16:
        steps = manifest.get("model", {}).get("denoising_steps")
        return self.open(model_path, eagle_path, embodiment_tag=manifest["embodiment_tag"], denoising_steps=steps)

    def reader_for(self, iface: PolicyInterface) -> ObservationReader:
        bare = iface.short(iface.language_key) if iface.language_key else "task"
        return ObservationReader(iface, tuple(dict.fromkeys((iface.language_key, bare, f"language.{bare}"))))

    def reader(self, manifest: dict[str, Any]) -> ObservationReader:
        return self.reader_for(PolicyInterface.from_dict(manifest["interface"]))

    def data_config_names(self) -> list[str]:
        return [f"{NAME}:gr1"]

    def data_config(self, name_or_path: str | Path) -> PolicyInterface | None:
        """`gr00t_n1_6:gr1`: the keys of the GR1 embodiment of N1.6's release (for synthetic datasets and replays)."""
        if str(name_or_path) != f"{NAME}:gr1":
            return None
        from gr00t_export.families.n1_6.synthetic import GR1_STATE_DIMS, gr1_modalities, synthetic_statistics

        modalities = gr1_modalities()
        processor = ProcessorConfig(modality_configs={"gr1": modalities})
        statistics = {"gr1": synthetic_statistics(modalities, GR1_STATE_DIMS, seed=0)}
        return interface(processor, statistics, "gr1", (50, 128))

    def make_checkpoint(self, out: Path, preset: str, seed: int = 0, **options: Any) -> Path:
        from gr00t_export.families.n1_6.synthetic import make_checkpoint

        unsupported = [k for k in ("embodiment", "dataset_path") if options.get(k) is not None]
        if options.get("modality_config") not in (None, "fourier_gr1_arms_only"):
            unsupported.append("modality_config")
        if unsupported:
            raise InputError(f"{preset} checkpoints carry the GR1 processor files of the release; "
                             f"--{unsupported[0]} does not apply (leave it out)")
        return make_checkpoint(out, preset, seed, eagle_path=options.get("eagle_path"),
                               force=options.get("force", False), show_progress=options.get("show_progress", True))


FAMILY = Gr00tN16Family()
