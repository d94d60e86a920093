"""Generated N1.6 checkpoints in the exact release layout, since real weights cannot be downloaded here.

`config.json` (model_type `Gr00tN1d6`), `model.safetensors` (tiny) or `model-0000k-of-0000n.safetensors` +
`model.safetensors.index.json` (3B, HF's 5 GB shards: two files, as released), `processor_config.json`,
`statistics.json`, `embodiment_id.json`. Real checkpoints carry no backbone config or tokenizer; a generated one
adds an `eagle/` dir (an Eagle-Block2A-2B-v2 style config.json for the preset, and the tokenizer files: copied
from a real Eagle dir, or a tiny byte-level BPE trained on the spot with the real added-token layout), which
`open_checkpoint` uses when no `--eagle_path` is given. Weights are seeded per tensor and fan-in scaled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from gr00t_export.errors import InputError
from gr00t_export.families.n1_6.config import Gr00tN16Config, checkpoint_config_dict, eagle_config_dict, preset
from gr00t_export.families.n1_6.load import build_on_meta
from gr00t_export.families.n1_6.model import unused_key_shapes
from gr00t_export.families.n1_6.processor_files import (
    EMBODIMENT_ID_FILE,
    N16_EMBODIMENT_TABLE,
    PROCESSOR_CONFIG_FILE,
    STATISTICS_FILE,
    ActionConfig,
    EmbodimentModalities,
    EmbodimentStatistics,
    KeyStatistics,
    ModalityConfig,
    ProcessorConfig,
    processor_config_dict,
    read_processor_config,
    read_statistics,
    statistics_dict,
    write_json,
)
from gr00t_export.families.n1_6.tokenizer import EagleBlockTokenizer
from gr00t_export.text.tiny import EAGLE_FILES, train_tiny_tokenizer
from gr00t_export.util import atomic_output_dir
from gr00t_export.weights import init_tensor, write_weights

SHARD_BYTES = 5 * 10**9  # Hugging Face's default max_shard_size "5GB": the 3B release is 4.99 GB + 1.58 GB
GR1_VIDEO_KEY = "ego_view_bg_crop_pad_res256_freq20"
GR1_STATE_DIMS = {"left_arm": 7, "right_arm": 7, "left_hand": 6, "right_hand": 6, "waist": 3}
GR1_RELATIVE_KEYS = ("left_arm", "right_arm", "left_hand", "right_hand")
_CONNECTOR_NORM = "backbone.model.mlp1.0.weight"


def weight_shapes(cfg: Gr00tN16Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of a real checkpoint: the model's, plus the known-unused pooling head and tied lm_head."""
    model = build_on_meta(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()} | unused_key_shapes(cfg)


def init_n16_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """N1.5's seeded init; the connector's LayerNorm scale (`mlp1.0.weight`, no "norm" in its name) near one."""
    t = init_tensor(name, shape, seed)
    return 1.0 + 2.5 * t if name == _CONNECTOR_NORM else t  # init_tensor gave it 0.02 * noise


def gr1_modalities() -> EmbodimentModalities:
    """GR1 as in the 3B release: one 256 px ego view, five sin/cos state groups, 16-step actions with arms and
    hands relative to the state and the waist absolute."""
    keys = tuple(GR1_STATE_DIMS)
    relative = ActionConfig(rep="RELATIVE", type="NON_EEF", format="DEFAULT")
    action_configs = tuple(relative if k in GR1_RELATIVE_KEYS else ActionConfig() for k in keys)
    return EmbodimentModalities(
        video=ModalityConfig(delta_indices=(0,), modality_keys=(GR1_VIDEO_KEY,)),
        state=ModalityConfig(delta_indices=(0,), modality_keys=keys, sin_cos_embedding_keys=keys),
        action=ModalityConfig(delta_indices=tuple(range(16)), modality_keys=keys, action_configs=action_configs),
        language=ModalityConfig(delta_indices=(0,), modality_keys=("task",)),
    )


def _stats(rng: np.random.Generator, shape: tuple[int, ...], center: float, half: float) -> KeyStatistics:
    c = rng.uniform(-center, center, shape)
    h = rng.uniform(0.3 * half, half, shape)
    return KeyStatistics(min=c - h, max=c + h, mean=c, std=h / 2, q01=c - 0.95 * h, q99=c + 0.95 * h)


def synthetic_statistics(modalities: EmbodimentModalities, dims: dict[str, int], seed: int) -> EmbodimentStatistics:
    """Plausible joint statistics (radian-scale ranges); per-step relative statistics that widen with the step."""
    rng = np.random.default_rng(seed)
    horizon = modalities.action_horizon
    out = EmbodimentStatistics(
        state={k: _stats(rng, (dims[k],), 0.5, 1.5) for k in modalities.state.modality_keys},
        action={k: _stats(rng, (dims[k],), 0.5, 1.5) for k in modalities.action.modality_keys},
    )
    for key in modalities.action.modality_keys:
        if modalities.action_config(key).rep == "RELATIVE":
            growth = np.linspace(0.05, 1.0, horizon)[:, None]
            s = _stats(rng, (horizon, dims[key]), 0.05, 0.4)
            out.relative_action[key] = KeyStatistics(**{n: getattr(s, n) * growth for n in
                                                        ("min", "max", "mean", "std", "q01", "q99")})
    return out


def _eagle_dir(out: Path, eagle_path: Path | None, seed: int) -> EagleBlockTokenizer:
    """Tokenizer files into `out`: copied from a real Eagle dir, else a tiny trained BPE (real added-token layout)."""
    out.mkdir()
    if eagle_path is None:
        train_tiny_tokenizer(out, vocab_size=1024, seed=seed)
    else:
        missing = [f for f in ("vocab.json", "merges.txt") if not (eagle_path / f).is_file()]
        if missing:
            raise InputError(f"--eagle_path {eagle_path} lacks {', '.join(missing)}; use the Eagle-Block2A-2B-v2 dir")
        for f in EAGLE_FILES:
            if (eagle_path / f).is_file():
                shutil.copy2(eagle_path / f, out / f)
    return EagleBlockTokenizer.from_dir(out)


def make_checkpoint(out: str | Path, preset_name: str = "n1.6-tiny", seed: int = 0,
                    eagle_path: str | Path | None = None, processor_dir: str | Path | None = None,
                    dtype: torch.dtype = torch.bfloat16, force: bool = False,
                    show_progress: bool = True, shard_bytes: int | None = None) -> Path:
    """A random-weight checkpoint of `preset_name` in the release layout.

    `processor_dir` holds processor_config.json / statistics.json (/ embodiment_id.json) to ship instead of the
    built-in GR1 entry with synthetic statistics. `shard_bytes` overrides the preset's sharding (tiny: one file;
    n1.6-3b: 5 GB shards + index).
    """
    cfg = preset(preset_name)
    if shard_bytes is not None and shard_bytes < 1:
        raise InputError(f"shard_bytes={shard_bytes} must be >= 1 (or None for the preset default)")
    with atomic_output_dir(out, force=force) as tmp:
        tokenizer = _eagle_dir(tmp / "eagle", Path(eagle_path) if eagle_path else None, seed)
        if preset_name == "n1.6-tiny":
            cfg.text.vocab_size = tokenizer.vocab_size
        elif tokenizer.vocab_size > cfg.text.vocab_size:
            raise InputError(f"tokenizer has {tokenizer.vocab_size} ids but the {preset_name} LLM only "
                             f"{cfg.text.vocab_size}; use the Eagle-Block2A-2B-v2 tokenizer")
        cfg.image_token_index = tokenizer.image_token_id
        cfg.validate()
        (tmp / "eagle" / "config.json").write_text(json.dumps(eagle_config_dict(cfg), indent=2))
        (tmp / "config.json").write_text(json.dumps(checkpoint_config_dict(cfg), indent=2))
        if shard_bytes is None:
            shard_bytes = None if preset_name == "n1.6-tiny" else SHARD_BYTES
        write_weights(tmp, weight_shapes(cfg), seed, dtype, shard_bytes, show_progress, init=init_n16_tensor)
        _processor_files(tmp, cfg, Path(processor_dir) if processor_dir else None, seed)
    return Path(out)


def _processor_files(out: Path, cfg: Gr00tN16Config, processor_dir: Path | None, seed: int) -> None:
    if processor_dir is not None:
        read_processor_config(processor_dir / PROCESSOR_CONFIG_FILE)  # validate before copying
        read_statistics(processor_dir / STATISTICS_FILE)
        for name in (PROCESSOR_CONFIG_FILE, STATISTICS_FILE, EMBODIMENT_ID_FILE):
            if (processor_dir / name).is_file():
                shutil.copy2(processor_dir / name, out / name)
        if not (out / EMBODIMENT_ID_FILE).is_file():
            write_json(out / EMBODIMENT_ID_FILE, N16_EMBODIMENT_TABLE)
        return
    ah = cfg.action_head
    modalities = gr1_modalities()
    processor = ProcessorConfig(modality_configs={"gr1": modalities}, max_state_dim=ah.max_state_dim,
                                max_action_dim=ah.max_action_dim, max_action_horizon=ah.action_horizon,
                                apply_sincos_state_encoding=True, use_relative_action=True)
    write_json(out / PROCESSOR_CONFIG_FILE, processor_config_dict(processor))
    write_json(out / STATISTICS_FILE, statistics_dict({"gr1": synthetic_statistics(modalities, GR1_STATE_DIMS, seed)}))
    write_json(out / EMBODIMENT_ID_FILE, N16_EMBODIMENT_TABLE)
