"""An N1.5 checkpoint dir (+ Eagle dir) opened and checked, then loaded strictly into `Gr00tN15`
(`gr00t_export.weights` does the family-independent safetensors work)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from gr00t_export.errors import InputError
from gr00t_export.families.base import require_denoising_steps
from gr00t_export.families.n1_5.config import Gr00tConfig, read_config
from gr00t_export.families.n1_5.model import UNUSED_KEY_PREFIXES, Gr00tN15
from gr00t_export.weights import LoadReport, find_weights, fingerprint, load_strict

EAGLE_TOKENIZER_FILES = ("vocab.json", "merges.txt")

@dataclass
class Checkpoint:
    """Where everything of one checkpoint lives, checked for presence but not yet loaded."""

    path: Path
    eagle_dir: Path
    config: Gr00tConfig
    weight_map: dict[str, Path]  # tensor name -> safetensors file

    @property
    def metadata_path(self) -> Path:
        return self.path / "experiment_cfg" / "metadata.json"

    @property
    def weight_files(self) -> list[Path]:
        return sorted(set(self.weight_map.values()))

    def fingerprint(self) -> str:
        return fingerprint([self.path / "config.json", *self.weight_files])


def with_denoising_steps(cfg: Gr00tConfig, steps: int | None) -> Gr00tConfig:
    """`cfg` with the action head unrolled for `steps` Euler steps (None: the checkpoint's own count)."""
    require_denoising_steps(steps)
    if steps is None:
        return cfg
    return dataclasses.replace(cfg, action_head=dataclasses.replace(cfg.action_head, num_inference_timesteps=steps))


def open_checkpoint(model_path: str | Path, eagle_path: str | Path | None = None,
                    denoising_steps: int | None = None) -> Checkpoint:
    """The checkpoint's files, checked; `denoising_steps` overrides config.json's num_inference_timesteps."""
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise InputError(f"--model_path {path} is not a directory; point it at a GR00T N1.5 checkpoint dir")
    if not (path / "config.json").is_file():
        raise InputError(f"{path} has no config.json, so it is not a checkpoint; point --model_path at one")
    eagle_dir = Path(eagle_path).expanduser() if eagle_path else path / "eagle"
    if not (eagle_dir / "config.json").is_file():
        hint = "pass --eagle_path (the eagle2_hg_model dir of Isaac-GR00T)" if not eagle_path else "check --eagle_path"
        raise InputError(f"no Eagle 2.5 config.json in {eagle_dir}; {hint}")
    missing = [f for f in EAGLE_TOKENIZER_FILES if not (eagle_dir / f).is_file()]
    if missing:
        raise InputError(f"Eagle dir {eagle_dir} lacks tokenizer file(s) {', '.join(missing)}; "
                         "use the full eagle2_hg_model dir")
    cfg = with_denoising_steps(read_config(path / "config.json", eagle_dir / "config.json"), denoising_steps)
    return Checkpoint(path=path, eagle_dir=eagle_dir, config=cfg, weight_map=find_weights(path))


def load_model(ckpt: Checkpoint, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
               ) -> tuple[Gr00tN15, LoadReport]:
    """Strictly checked load (one InputError naming every bad key), then the RoPE tables where the weights are."""
    with torch.device("meta"):
        model = Gr00tN15(ckpt.config)
    model, report = load_strict(model, ckpt.path, ckpt.weight_map, dtype, device, UNUSED_KEY_PREFIXES)
    model.setup_caches()
    return model, report
