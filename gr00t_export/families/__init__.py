"""Model families: each subpackage supplies config, checkpoint reader, model, pre/postprocessing, graph spec and stage
partition for one GR00T generation. The registry picks a family from a checkpoint's `config.json` `model_type`, a
preset name, or a build's manifest; nothing outside a family imports its modules."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from gr00t_export.errors import InputError
from gr00t_export.families.base import ModelFamily, Policy

FAMILY_MODULES = ("gr00t_export.families.n1_5", "gr00t_export.families.n1_6")


def families() -> list[ModelFamily]:
    return [importlib.import_module(m).FAMILY for m in FAMILY_MODULES]


def family_named(name: str) -> ModelFamily:
    for family in families():
        if family.name == name:
            return family
    raise InputError(f"unknown model family {name!r}; this gr00t-export knows {', '.join(f.name for f in families())}")


def family_for_preset(preset: str) -> ModelFamily:
    for family in families():
        if preset in family.presets:
            return family
    known = ", ".join(p for f in families() for p in f.presets)
    raise InputError(f"unknown preset {preset!r}; choose one of: {known}")


def family_for_checkpoint(model_path: str | Path) -> ModelFamily:
    """The family whose `model_type` the checkpoint's config.json names (one clear error otherwise)."""
    path = Path(model_path).expanduser()
    config = path / "config.json"
    if not path.is_dir():
        raise InputError(f"--model_path {path} is not a directory; point it at a GR00T checkpoint dir")
    if not config.is_file():
        raise InputError(f"{path} has no config.json, so it is not a checkpoint; point --model_path at one")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise InputError(f"config.json at {config} is not valid JSON ({err}); restore the file from the "
                         "checkpoint") from None
    for family in families():
        if model_type in family.model_types:
            return family
    known = " or ".join(repr(t) for f in families() for t in f.model_types)
    raise InputError(f"{config} has model_type {model_type!r}, not {known}; gr00t-export reads GR00T N1.5 and N1.6 "
                     "checkpoints (N1 differs in architecture)")


def data_config(name_or_path: str | Path):
    """A named observation layout (N1.5's DATA_CONFIG_MAP names, YAML files; N1.6's embodiment configs): the keys a
    dataset or replay serves, from the first family that knows it."""
    for family in families():
        found = family.data_config(name_or_path)
        if found is not None:
            return found
    known = ", ".join(n for f in families() for n in f.data_config_names())
    raise InputError(f"unknown data config '{name_or_path}' (not a built-in name and no such file); use one of "
                     f"{known} or a path to a YAML modality config")


def match_data_config(dataset_path: Path, embodiment_tag: str | None = None) -> str:
    """The one built-in data config a LeRobot dataset's meta/modality.json fits (InputError listing the candidates
    when none or several do)."""
    return family_named("gr00t_n1_5").match_data_config(dataset_path, embodiment_tag)


def open_reference(model_path: Path, eagle_path: Path | None = None, *, embodiment_tag: str | None = None,
                   modality_config: str | Path | None = None, dtype: str = "fp32", device: str = "cpu",
                   denoising_steps: int | None = None) -> Policy:
    """The PyTorch reference policy of a checkpoint, whatever its family."""
    from gr00t_export.weights import torch_dtype

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda asked for but no CUDA GPU is visible; use --device cpu")
    opened = family_for_checkpoint(model_path).open(model_path, eagle_path, embodiment_tag=embodiment_tag,
                                                   modality_config=modality_config, denoising_steps=denoising_steps)
    return opened.reference(opened.load(torch_dtype(dtype), device), device)
