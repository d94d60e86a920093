"""Safetensors checkpoints, whatever the model family: find the weight files, compare their headers strictly with a
model built on the meta device (one error naming every offender), assign the tensors in place, and write seeded
checkpoints in the same layout (one file, or shards with an index). A family whose module names differ from its
checkpoint's attaches `CheckpointNames` to its model, so all of this sees checkpoint names.

Weights are read from safetensors only (never unpickled) and memory-mapped, so a 3B checkpoint loads without a
second copy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gr00t_export.errors import InputError
from gr00t_export.util import progress_bar, sha256_file

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
EMBEDDINGS = ("embed_tokens.weight", "position_embedding.weight", "future_tokens.weight", ".probe")


@dataclass(frozen=True)
class CheckpointNames:
    """How a family's checkpoint names differ from its module names, as (checkpoint, module) pairs of dotted name
    fragments: `("ff.net.2", "ff.fc2")` renames that fragment wherever it stands as whole name components.

    `attach(model)` absorbs the difference at the model's state-dict boundary (as gpt-fast's load hook absorbs
    wq/wk/wv): `state_dict()` returns checkpoint names and `load_state_dict()` takes them. So the strict key check,
    its errors, the in-place assignment and the synthetic-checkpoint writers all speak the names a user's
    safetensors files hold, while the modules are named for what they are.
    """

    renames: tuple[tuple[str, str], ...]

    @staticmethod
    def _rename(key: str, pairs: Iterable[tuple[str, str]]) -> str:
        for old, new in pairs:
            key = re.sub(rf"(?:^|(?<=\.)){re.escape(old)}(?=\.)", lambda _, new=new: new, key)
        return key

    def to_module(self, key: str) -> str:
        return self._rename(key, self.renames)

    def to_checkpoint(self, key: str) -> str:
        return self._rename(key, ((new, old) for old, new in reversed(self.renames)))

    def attach(self, model: torch.nn.Module) -> None:
        model.register_state_dict_post_hook(functools.partial(_rename_keys, self.to_checkpoint))
        model.register_load_state_dict_pre_hook(functools.partial(_rename_keys, self.to_module))


def _rename_keys(rename: Callable[[str], str], module: torch.nn.Module, state: dict, prefix: str, *_) -> None:
    """A state-dict hook: renames the keys under `prefix` in place, keeping their order (writers iterate it)."""
    items = list(state.items())
    state.clear()
    for key, value in items:
        state[prefix + rename(key[len(prefix):]) if key.startswith(prefix) else key] = value


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r}; use one of fp32, bf16, fp16")
    return DTYPES[name]


@dataclass
class LoadReport:
    ignored_unused: list[str] = field(default_factory=list)  # known-unused keys present in the file
    num_parameters: int = 0


def shard_header(path: Path) -> dict[str, tuple[list[int], str]]:
    """A shard's header: name -> (shape, dtype). A truncated or corrupt file fails here."""
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
    """Tensor name -> the safetensors file holding it, from the index (sharded) or the single file."""
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
        return {key: single for key in shard_header(single)}
    if list(path.glob("*.bin")) or list(path.glob("*.pt")):
        raise InputError(f"{path} holds pickled weights only; gr00t-export reads safetensors (convert them first)")
    raise InputError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}; point --model_path at a GR00T checkpoint")


def fingerprint(files: Iterable[Path]) -> str:
    """sha256 over the files (config.json and every weight file): identifies the exact source of an export."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}:{sha256_file(f)}".encode())
    return digest.hexdigest()


def _shown(keys: list[str]) -> str:
    return "; ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")


def check_keys(model: torch.nn.Module, path: Path, weight_map: dict[str, Path],
               unused_prefixes: tuple[str, ...] = ()) -> LoadReport:
    """Strict comparison of the checkpoint's headers with `model`'s state dict; one error naming every offender.

    Keys starting with `unused_prefixes` are known-unused (reported, skipped) rather than unexpected.
    """
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    found: dict[str, list[int]] = {}
    stored_in: dict[str, Path] = {}
    for shard in sorted(set(weight_map.values())):
        for key, (shape, _) in shard_header(shard).items():
            found[key] = shape
            stored_in[key] = shard
    # An index that disagrees with the shards would fail later as a KeyError / SafetensorError.
    misindexed = [f"{k} is in {stored_in[k].name} but the index says "
                  f"{weight_map[k].name if k in weight_map else 'nothing'}"
                  for k in sorted(set(found) & set(expected)) if weight_map.get(k) != stored_in[k]]
    if misindexed:
        raise InputError(f"{path / INDEX_FILE} does not match its shards: {_shown(misindexed)}; restore the index file")
    report = LoadReport(num_parameters=sum(int(torch.Size(s).numel()) for s in expected.values()))
    unexpected = []
    for key in sorted(set(found) - set(expected)):
        (report.ignored_unused if key.startswith(unused_prefixes) else unexpected).append(key)
    missing = sorted(set(expected) - set(found))
    misshaped = [f"{k} {found[k]} != {expected[k]}" for k in sorted(set(found) & set(expected))
                 if found[k] != expected[k]]
    problems = [f"{len(keys)} {what} key(s): {_shown(keys)}"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
    if problems:
        raise InputError(
            f"checkpoint {path} does not match its config.json: {' | '.join(problems)}; "
            "use the config.json and Eagle dir that were saved with these weights"
        )
    return report


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


def load_strict(model: torch.nn.Module, path: Path, weight_map: dict[str, Path], dtype: torch.dtype,
                device: str | torch.device, unused_prefixes: tuple[str, ...] = ()
                ) -> tuple[torch.nn.Module, LoadReport]:
    """`check_keys`, then `assign_weights`: a model built on the meta device, filled from the checkpoint."""
    report = check_keys(model, path, weight_map, unused_prefixes)
    return assign_weights(model, weight_map, dtype, device), report


# --- writing seeded checkpoints ------------------------------------------------------------------------------


def init_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Deterministic per (seed, name): fan-in scaled weights, near-one norm scales, small biases."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    noise = torch.randn(shape, generator=gen)
    is_norm = len(shape) == 1 and any(t in name for t in ("norm", "vlln.weight")) and name.endswith("weight")
    if is_norm:
        return 1.0 + 0.05 * noise
    if len(shape) == 1 or name.endswith(".b") or "bias" in name:
        return 0.02 * noise
    if name.endswith(EMBEDDINGS):
        return 0.02 * noise
    # Linear (out, in) / conv (out, in, k, k): fan-in = prod(shape[1:]); category W (cat, in, out): shape[1]
    fan_in = shape[1] if name.endswith(".W") else int(np.prod(shape[1:]))
    return noise / fan_in**0.5


def _plan_shards(shapes: dict[str, tuple[int, ...]], itemsize: int, limit: int) -> list[list[str]]:
    shards, current, size = [], [], 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * itemsize
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    return shards + [current] if current else shards


def write_weights(out: Path, shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype,
                  shard_bytes: int | None, show_progress: bool,
                  init: Callable[[str, tuple[int, ...], int], torch.Tensor] | None = None) -> int:
    """Seeded tensors of `shapes` (`init`, default `init_tensor`) as model.safetensors, or as shards of at most
    `shard_bytes` with model.safetensors.index.json; returns the parameter count."""
    init = init or init_tensor
    itemsize = torch.tensor([], dtype=dtype).element_size()
    shards = _plan_shards(shapes, itemsize, shard_bytes) if shard_bytes else [list(shapes)]
    total = sum(int(np.prod(s)) for s in shapes.values())
    weight_map: dict[str, str] = {}
    with progress_bar("generating weights", total=total, enabled=show_progress) as advance:
        for i, names in enumerate(shards):
            fname = SINGLE_FILE if len(shards) == 1 and not shard_bytes else \
                f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            tensors = {}
            for name in names:
                tensors[name] = init(name, shapes[name], seed).to(dtype)
                advance(int(np.prod(shapes[name])))
            try:
                save_file(tensors, str(out / fname), metadata={"format": "pt"})
            except SafetensorError as err:  # the Rust writer reports a full disk as "... (os error 28)"
                code = re.search(r"os error (\d+)", str(err))
                if code is None:
                    raise
                raise OSError(int(code[1]), os.strerror(int(code[1])), str(out / fname)) from None
            weight_map |= dict.fromkeys(names, fname)
            del tensors
    if shard_bytes:
        index = {"metadata": {"total_size": total * itemsize}, "weight_map": weight_map}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return total
