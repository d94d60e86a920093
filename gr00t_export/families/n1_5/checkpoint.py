"""Stage 1 — load: a GR00T N1.5 checkpoint dir (+ Eagle dir) into a strictly checked `Gr00tN15`.

Weights are read from safetensors only (never unpickled), memory-mapped and assigned into a model
built on the meta device, so a 3B checkpoint loads without a second copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from gr00t_export.errors import InputError
from gr00t_export.families.n1_5.config import Gr00tConfig, read_config
from gr00t_export.families.n1_5.model import UNUSED_KEY_PREFIXES, Gr00tN15
from gr00t_export.util import sha256_file

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
EAGLE_TOKENIZER_FILES = ("vocab.json", "merges.txt")

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r}; use one of fp32, bf16, fp16")
    return DTYPES[name]


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
        """sha256 over config.json and every weight file: identifies the exact source of an export."""
        digest = hashlib.sha256()
        for f in [self.path / "config.json", *self.weight_files]:
            digest.update(f"{f.name}:{sha256_file(f)}".encode())
        return digest.hexdigest()


@dataclass
class LoadReport:
    ignored_unused: list[str] = field(default_factory=list)  # known-unused keys present in the file
    num_parameters: int = 0


def _shard_keys(path: Path) -> dict[str, tuple[list[int], str]]:
    """Reads a shard's header: name -> (shape, dtype). A truncated or corrupt file fails here."""
    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for key in f.keys():
                sl = f.get_slice(key)
                out[key] = (list(sl.get_shape()), sl.get_dtype())
            return out
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(
            f"weight file {path} is truncated or corrupt ({err}); re-copy the checkpoint's safetensors files"
        ) from None


def find_weights(path: Path) -> dict[str, Path]:
    index, single = path / INDEX_FILE, path / SINGLE_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise InputError(f"{index} is not a valid safetensors index ({err}); restore it") from None
        files = {name: path / fname for name, fname in weight_map.items()}
        missing = sorted({str(f.name) for f in files.values() if not f.is_file()})
        if missing:
            raise InputError(f"{index} names shard(s) that are missing: {', '.join(missing)}; copy them into {path}")
        return files
    if single.is_file():
        return {key: single for key in _shard_keys(single)}
    if list(path.glob("*.bin")) or list(path.glob("*.pt")):
        raise InputError(f"{path} holds pickled weights only; gr00t-export reads safetensors (convert them first)")
    raise InputError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}; point --model_path at a GR00T N1.5 checkpoint")


def require_denoising_steps(steps: int | None) -> None:
    """None (the checkpoint's count) or a whole number of Euler steps >= 1."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise InputError(f"--denoising_steps must be an integer >= 1 (Euler steps of the action head), got {steps!r}; "
                         "leave it out for the checkpoint's num_inference_timesteps")


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


def check_keys(model: torch.nn.Module, ckpt: Checkpoint,
               unused_prefixes: tuple[str, ...] = UNUSED_KEY_PREFIXES) -> LoadReport:
    """Strict comparison of checkpoint headers with the model; one error naming every offender.

    `ckpt` needs `path`, `weight_files` and `weight_map`; keys starting with `unused_prefixes` are known-unused
    (reported, skipped) rather than unexpected.
    """
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    found: dict[str, list[int]] = {}
    stored_in: dict[str, Path] = {}
    for shard in ckpt.weight_files:
        for key, (shape, _) in _shard_keys(shard).items():
            found[key] = shape
            stored_in[key] = shard
    # An index that disagrees with the shards would fail later as a KeyError / SafetensorError.
    misindexed = [f"{k} is in {stored_in[k].name} but the index says "
                  f"{ckpt.weight_map[k].name if k in ckpt.weight_map else 'nothing'}"
                  for k in sorted(set(found) & set(expected)) if ckpt.weight_map.get(k) != stored_in[k]]
    if misindexed:
        shown = "; ".join(misindexed[:4]) + (f" (+{len(misindexed) - 4} more)" if len(misindexed) > 4 else "")
        raise InputError(f"{ckpt.path / INDEX_FILE} does not match its shards: {shown}; restore the index file")
    report = LoadReport(num_parameters=sum(int(torch.Size(s).numel()) for s in expected.values()))
    unexpected = []
    for key in sorted(set(found) - set(expected)):
        (report.ignored_unused if key.startswith(unused_prefixes) else unexpected).append(key)
    missing = sorted(set(expected) - set(found))
    misshaped = [f"{k} {found[k]} != {expected[k]}" for k in sorted(set(found) & set(expected))
                 if found[k] != expected[k]]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            shown = "; ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
            problems.append(f"{len(keys)} {what} key(s): {shown}")
    if problems:
        raise InputError(
            f"checkpoint {ckpt.path} does not match its config.json: {' | '.join(problems)}; "
            "use the config.json and Eagle dir that were saved with these weights"
        )
    return report


def load_model(ckpt: Checkpoint, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
               ) -> tuple[Gr00tN15, LoadReport]:
    with torch.device("meta"):
        model = Gr00tN15(ckpt.config)
    report = check_keys(model, ckpt)
    return assign_weights(model, ckpt.weight_map, dtype, device), report


def assign_weights(model: torch.nn.Module, weight_map: dict[str, Path], dtype: torch.dtype,
                   device: str | torch.device) -> torch.nn.Module:
    """Reads every tensor of `model` (built on the meta device, keys already checked) from its shard and assigns
    it in place: no second copy of the weights. Returns the model in eval mode without gradients."""
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for key in model.state_dict():
        by_file.setdefault(weight_map[key], []).append(key)
    for shard, keys in by_file.items():
        with safe_open(str(shard), framework="pt", device="cpu") as f:
            for key in keys:
                state[key] = f.get_tensor(key).to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
