"""Strict N1.6 checkpoint reader: config.json + Eagle config -> `Gr00tN16` built on the meta device, weights
memory-mapped from safetensors (one file, or shards + index) and assigned in place.

Shard-header reading, index checks and the key comparison are generic (`gr00t_export.weights`); only
what differs lives here: the N1.6 config, where the Eagle config comes from, and the known-unused keys (the vision
pooling head, the tied `lm_head`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gr00t_export.errors import InputError
from gr00t_export.families.n1_6.config import Gr00tN16Config, read_config
from gr00t_export.families.n1_6.model import UNUSED_KEY_PREFIXES, Gr00tN16
from gr00t_export.families.n1_6.processor_files import EMBODIMENT_ID_FILE, PROCESSOR_CONFIG_FILE, STATISTICS_FILE
from gr00t_export.weights import LoadReport, find_weights, fingerprint, load_strict

EAGLE_TOKENIZER_FILES = ("vocab.json", "merges.txt")
EAGLE_HINT = "pass --eagle_path: Isaac-GR00T's gr00t/model/modules/nvidia/Eagle-Block2A-2B-v2 dir"


@dataclass
class Checkpoint:
    """Where everything of one N1.6 checkpoint lives, checked for presence but not yet loaded."""

    path: Path
    eagle_dir: Path
    config: Gr00tN16Config
    weight_map: dict[str, Path]  # tensor name -> safetensors file

    @property
    def weight_files(self) -> list[Path]:
        return sorted(set(self.weight_map.values()))

    @property
    def processor_config_path(self) -> Path:
        return self.path / PROCESSOR_CONFIG_FILE

    @property
    def statistics_path(self) -> Path:
        return self.path / STATISTICS_FILE

    @property
    def embodiment_id_path(self) -> Path:
        return self.path / EMBODIMENT_ID_FILE

    def fingerprint(self) -> str:
        """sha256 over config.json, the processor files and every weight file: the exact source of an export."""
        extra = [p for p in (self.processor_config_path, self.statistics_path, self.embodiment_id_path) if p.is_file()]
        return fingerprint([self.path / "config.json", *extra, *self.weight_files])


def open_checkpoint(model_path: str | Path, eagle_path: str | Path | None = None) -> Checkpoint:
    """Finds config.json, the Eagle dir (`eagle_path`, else an `eagle/` dir a synthetic checkpoint carries) and the
    weight files; reads and validates the config."""
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise InputError(f"--model_path {path} is not a directory; point it at a GR00T N1.6 checkpoint dir")
    if not (path / "config.json").is_file():
        raise InputError(f"{path} has no config.json, so it is not a checkpoint; point --model_path at one")
    eagle_dir = Path(eagle_path).expanduser() if eagle_path else path / "eagle"
    if not (eagle_dir / "config.json").is_file():
        hint = EAGLE_HINT if not eagle_path else "check --eagle_path"
        raise InputError(f"no Eagle-Block2A-2B-v2 config.json in {eagle_dir} (N1.6 checkpoints carry none); {hint}")
    missing = [f for f in EAGLE_TOKENIZER_FILES if not (eagle_dir / f).is_file()]
    if missing:
        raise InputError(f"Eagle dir {eagle_dir} lacks tokenizer file(s) {', '.join(missing)}; use the full "
                         "Eagle-Block2A-2B-v2 dir")
    cfg = read_config(path / "config.json", eagle_dir / "config.json")
    return Checkpoint(path=path, eagle_dir=eagle_dir, config=cfg, weight_map=find_weights(path))


def build_on_meta(cfg: Gr00tN16Config) -> Gr00tN16:
    """The model with every parameter on the meta device: shapes and names, no memory."""
    with torch.device("meta"):
        return Gr00tN16(cfg)


def load_model(ckpt: Checkpoint, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
               ) -> tuple[Gr00tN16, LoadReport]:
    """Strictly checked load: one InputError naming missing / unexpected / mis-shaped keys or a bad shard; then the
    RoPE tables where the weights are."""
    model, report = load_strict(build_on_meta(ckpt.config), ckpt.path, ckpt.weight_map, dtype, device,
                                UNUSED_KEY_PREFIXES)
    model.setup_caches()
    return model, report
