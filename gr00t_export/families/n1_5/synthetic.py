"""Generated checkpoints in the exact N1.5 layout, since real weights cannot be downloaded here.

`config.json`, safetensors (sharded with an index for the big preset), `experiment_cfg/metadata.json`
and an `eagle/` dir with a tokenizer: trained on the spot (tiny byte-level BPE with the real special-token
layout) or copied from a real Eagle dir. Weights are seeded per tensor, so a shard can be regenerated
alone, and scaled by fan-in so activations stay finite through every layer.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from gr00t_export.errors import InputError
from gr00t_export.families.n1_5.config import Gr00tConfig, checkpoint_config_dict, eagle_config_dict, preset
from gr00t_export.families.n1_5.embodiments import ModalityConfig, embodiment_index, key_layout, load_modality_config
from gr00t_export.families.n1_5.metadata import (
    EmbodimentMetadata,
    KeyStats,
    metadata_from_lerobot_stats,
    write_metadata,
)
from gr00t_export.families.n1_5.model import Gr00tN15
from gr00t_export.families.n1_5.preprocess.tokenizer import EagleTokenizer
from gr00t_export.text.tiny import EAGLE_FILES, train_tiny_tokenizer
from gr00t_export.util import atomic_output_dir, file_input
from gr00t_export.weights import write_weights

SHARD_BYTES = 2 << 30


def _vision_pooling_head(cfg: Gr00tConfig) -> dict[str, tuple[int, ...]]:
    """transformers 4.51 still builds SigLIP's MAP head; N1.5 never runs it but its weights ship."""
    d, ff = cfg.vision.hidden_size, cfg.vision.intermediate_size
    prefix = "backbone.eagle_model.vision_model.vision_model.head."
    shapes = {"probe": (1, 1, d), "attention.in_proj_weight": (3 * d, d), "attention.in_proj_bias": (3 * d,),
              "attention.out_proj.weight": (d, d), "attention.out_proj.bias": (d,), "layernorm.weight": (d,),
              "layernorm.bias": (d,), "mlp.fc1.weight": (ff, d), "mlp.fc1.bias": (ff,), "mlp.fc2.weight": (d, ff),
              "mlp.fc2.bias": (d,)}
    return {prefix + k: v for k, v in shapes.items()}


def weight_shapes(cfg: Gr00tConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Gr00tN15(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return shapes | _vision_pooling_head(cfg)


def _write_weights(out: Path, cfg: Gr00tConfig, seed: int, dtype: torch.dtype, shard_bytes: int | None,
                   show_progress: bool) -> int:
    return write_weights(out, weight_shapes(cfg), seed, dtype, shard_bytes, show_progress)


def synthetic_metadata(cfg: ModalityConfig, seed: int, resolutions: dict[str, tuple[int, int]] | None = None
                       ) -> EmbodimentMetadata:
    """Plausible statistics when no dataset is given to measure them: radians-scale joint ranges, [-1, 1] for
    quaternion/6D rotations, [0, 1] for binary keys; `modalities` from the config's public dataset layout.
    `resolutions` gives a camera's (width, height) (default 256 x 256)."""
    rng = np.random.default_rng(seed)
    layouts = {k: key_layout(cfg, k) for k in (*cfg.state_keys, *cfg.action_keys)}

    def stats(key: str) -> KeyStats:
        layout = layouts[key]
        d = layout.dim
        if not layout.continuous:
            zero, one = np.zeros(d), np.ones(d)
            return KeyStats(min=zero, max=one, mean=0.5 * one, std=0.5 * one, q01=zero, q99=one)
        if layout.rotation_type in ("quaternion", "rotation_6d", "matrix"):
            return KeyStats(min=-np.ones(d), max=np.ones(d), mean=np.zeros(d), std=0.5 * np.ones(d),
                            q01=-0.98 * np.ones(d), q99=0.98 * np.ones(d))
        center = rng.uniform(-0.5, 0.5, d)
        half = rng.uniform(0.3, 1.5, d)
        return KeyStats(min=center - half, max=center + half, mean=center, std=half / 2,
                        q01=center - 0.95 * half, q99=center + 0.95 * half)

    def entry(key: str) -> dict:
        layout = layouts[key]
        return {"absolute": layout.absolute, "rotation_type": layout.rotation_type, "shape": [layout.dim],
                "continuous": layout.continuous}

    resolutions = resolutions or {}
    modalities = {
        "video": {ModalityConfig.short(k): {"resolution": list(resolutions.get(k, (256, 256))), "channels": 3,
                                            "fps": 20.0} for k in cfg.video_keys},
        "state": {ModalityConfig.short(k): entry(k) for k in cfg.state_keys},
        "action": {ModalityConfig.short(k): entry(k) for k in cfg.action_keys},
    }
    return EmbodimentMetadata(tag=cfg.embodiment_tag, state={ModalityConfig.short(k): stats(k) for k in cfg.state_keys},
                              action={ModalityConfig.short(k): stats(k) for k in cfg.action_keys},
                              modalities=modalities)


def _eagle_dir(out: Path, eagle_path: Path | None, seed: int) -> tuple[int, int]:
    """Fills `out` with tokenizer/processor files; returns (vocab size, image token id)."""
    if eagle_path is None:
        ids, total = train_tiny_tokenizer(out, vocab_size=1024, seed=seed)
        return total, ids["<IMG_CONTEXT>"]
    missing = [f for f in ("vocab.json", "merges.txt") if not (eagle_path / f).is_file()]
    if missing:
        raise InputError(f"--eagle_path {eagle_path} lacks {', '.join(missing)}; use the eagle2_hg_model dir")
    for f in EAGLE_FILES:
        if (eagle_path / f).is_file():
            shutil.copy2(eagle_path / f, out / f)
    tok = EagleTokenizer.from_dir(out)
    return tok.vocab_size, tok.image_token_id


def make_checkpoint(out: str | Path, preset_name: str = "tiny", seed: int = 0, embodiment: str | None = None,
                    modality_config: str | Path = "fourier_gr1_arms_only", dataset_path: str | Path | None = None,
                    eagle_path: str | Path | None = None, force: bool = False, show_progress: bool = True,
                    shard_bytes: int | None = None) -> Path:
    """`shard_bytes` overrides the preset's sharding (tiny: one model.safetensors; n1.5-3b: 2 GiB shards);
    `embodiment` defaults to the data config's tag."""
    cfg = preset(preset_name)
    if shard_bytes is not None and shard_bytes < 1:
        raise InputError(f"shard_bytes={shard_bytes} must be >= 1 (or None for the preset default)")
    modality = load_modality_config(modality_config)
    embodiment = embodiment or modality.embodiment_tag
    embodiment_index(embodiment)
    if modality.embodiment_tag != embodiment:
        modality = dataclasses.replace(modality, embodiment_tag=embodiment)
    inputs = {"--dataset_path": dataset_path, "--eagle_path": eagle_path,
              "--modality_config": file_input(modality_config)}
    with atomic_output_dir(out, force=force, inputs=inputs, kind="checkpoint") as tmp:
        eagle = tmp / "eagle"
        eagle.mkdir()
        vocab_size, image_token = _eagle_dir(eagle, Path(eagle_path) if eagle_path else None, seed)
        if preset_name == "tiny":
            cfg.text.vocab_size = vocab_size
        elif vocab_size > cfg.text.vocab_size:
            raise InputError(f"tokenizer has {vocab_size} ids but the {preset_name} LLM only {cfg.text.vocab_size}")
        cfg.image_token_index = image_token
        cfg.validate()
        (eagle / "config.json").write_text(json.dumps(eagle_config_dict(cfg), indent=2))
        (tmp / "config.json").write_text(json.dumps(checkpoint_config_dict(cfg), indent=2))
        dtype = torch.float32 if preset_name == "tiny" else torch.bfloat16
        if shard_bytes is None:
            shard_bytes = None if preset_name == "tiny" else SHARD_BYTES
        _write_weights(tmp, cfg, seed, dtype, shard_bytes, show_progress)
        if dataset_path is not None:
            meta = metadata_from_lerobot_stats(dataset_path, modality, embodiment)
        else:
            meta = synthetic_metadata(modality, seed)
        (tmp / "experiment_cfg").mkdir()
        write_metadata(tmp / "experiment_cfg" / "metadata.json", {embodiment: meta})
    return Path(out)
