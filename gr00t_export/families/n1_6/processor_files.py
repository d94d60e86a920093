"""The three processor files of an N1.6 checkpoint, read into typed objects.

- `processor_config.json`: `{"processor_class": "Gr00tN1d6Processor", "processor_kwargs": {...}}` with the
  per-embodiment modality configs (keys, delta indices, sin/cos and mean/std keys, action representations) and
  the image / state settings.
- `statistics.json`: `{tag: {"state"|"action": {key: S}, "relative_action": {key: S}}}`, S = min/max/mean/std/
  q01/q99; state/action stats are [D] lists, relative_action stats are per chunk step, [horizon, D].
- `embodiment_id.json`: tag -> row of every category-specific layer. N1.6's table, not N1.5's (gr1 is 20 here,
  24 in N1.5); tags missing from the file are filled from NVIDIA's `EMBODIMENT_TAG_TO_PROJECTOR_INDEX`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gr00t_export.errors import InputError
from gr00t_export.families.n1_6.config import read_json

PROCESSOR_CONFIG_FILE = "processor_config.json"
STATISTICS_FILE = "statistics.json"
EMBODIMENT_ID_FILE = "embodiment_id.json"
PROCESSOR_CLASS = "Gr00tN1d6Processor"

# NVIDIA's EMBODIMENT_TAG_TO_PROJECTOR_INDEX for N1.6 (gr00t/data/embodiment_tags.py of the N1.6 release).
N16_EMBODIMENT_TABLE: dict[str, int] = {
    "oxe_google": 0,
    "oxe_widowx": 1,
    "libero_panda": 2,
    "unitree_g1": 8,
    "new_embodiment": 10,
    "robocasa_panda_omron": 13,
    "oxe_droid": 16,
    "gr1": 20,
    "behavior_r1_pro": 24,
}

REPRESENTATIONS = ("RELATIVE", "DELTA", "ABSOLUTE")
ACTION_TYPES = ("EEF", "NON_EEF")
ACTION_FORMATS = ("DEFAULT", "XYZ_ROT6D", "XYZ_ROTVEC")
STAT_NAMES = ("min", "max", "mean", "std", "q01", "q99")


@dataclass(frozen=True)
class ActionConfig:
    """How one action key is represented; `state_key` names the reference state of a RELATIVE key."""

    rep: str = "ABSOLUTE"
    type: str = "NON_EEF"
    format: str = "DEFAULT"
    state_key: str | None = None


@dataclass(frozen=True)
class ModalityConfig:
    delta_indices: tuple[int, ...]
    modality_keys: tuple[str, ...]
    sin_cos_embedding_keys: tuple[str, ...] | None = None
    mean_std_embedding_keys: tuple[str, ...] | None = None
    action_configs: tuple[ActionConfig, ...] | None = None


@dataclass(frozen=True)
class EmbodimentModalities:
    video: ModalityConfig
    state: ModalityConfig
    action: ModalityConfig
    language: ModalityConfig | None = None

    @property
    def action_horizon(self) -> int:
        return len(self.action.delta_indices)

    def action_config(self, key: str) -> ActionConfig:
        if self.action.action_configs is None:
            return ActionConfig()
        return self.action.action_configs[self.action.modality_keys.index(key)]


@dataclass(frozen=True)
class ProcessorConfig:
    """`processor_kwargs` of processor_config.json: what eval-mode preprocessing and decoding need."""

    modality_configs: dict[str, EmbodimentModalities]
    shortest_image_edge: int = 256
    crop_fraction: float = 0.95
    image_target_size: tuple[int, int] | None = None
    image_crop_size: tuple[int, int] | None = None
    use_albumentations: bool = True
    formalize_language: bool = True
    model_name: str = "nvidia/Eagle-Block2A-2B-v2"
    max_state_dim: int = 128
    max_action_dim: int = 128
    max_action_horizon: int = 50
    use_percentiles: bool = False
    clip_outliers: bool = True
    apply_sincos_state_encoding: bool = True
    use_relative_action: bool = True

    def embodiment(self, tag: str) -> EmbodimentModalities:
        if tag not in self.modality_configs:
            raise InputError(f"processor_config.json has no modality config for embodiment {tag!r} (it has "
                             f"{', '.join(sorted(self.modality_configs)) or 'none'}); pick one of those tags")
        return self.modality_configs[tag]


@dataclass
class KeyStatistics:
    """Statistics of one key: [D] for state/action, [horizon, D] for relative actions (float64)."""

    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.min.shape[-1])


@dataclass
class EmbodimentStatistics:
    state: dict[str, KeyStatistics] = field(default_factory=dict)
    action: dict[str, KeyStatistics] = field(default_factory=dict)
    relative_action: dict[str, KeyStatistics] = field(default_factory=dict)


# --- processor_config.json -------------------------------------------------------------------------

def _str_tuple(raw: Any, where: str, nullable: bool = False) -> tuple[str, ...] | None:
    if raw is None and nullable:
        return None
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise InputError(f"{where} must be a list of strings, got {raw!r}; fix processor_config.json")
    return tuple(raw)


def _action_config(raw: Any, where: str) -> ActionConfig:
    if not isinstance(raw, dict):
        raise InputError(f"{where} must be a mapping with rep/type/format/state_key; fix processor_config.json")
    # NVIDIA stores the enum names; accept the lower-case values too
    rep, kind, fmt = (str(raw.get(k, d)).upper() for k, d in (("rep", "ABSOLUTE"), ("type", "NON_EEF"),
                                                                ("format", "DEFAULT")))
    for value, allowed, name in ((rep, REPRESENTATIONS, "rep"), (kind, ACTION_TYPES, "type"),
                                 (fmt, ACTION_FORMATS, "format")):
        if value not in allowed:
            raise InputError(f"{where}.{name} is {value!r}; use one of {', '.join(allowed)}")
    state_key = raw.get("state_key")
    if state_key is not None and not isinstance(state_key, str):
        raise InputError(f"{where}.state_key must be a string or null, got {state_key!r}")
    return ActionConfig(rep=rep, type=kind, format=fmt, state_key=state_key)


def _modality(raw: Any, where: str) -> ModalityConfig:
    if not isinstance(raw, dict):
        raise InputError(f"{where} must be a mapping; fix processor_config.json")
    indices = raw.get("delta_indices")
    if not isinstance(indices, list) or not indices or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise InputError(f"{where}.delta_indices must be a non-empty list of ints, got {indices!r}")
    keys = _str_tuple(raw.get("modality_keys"), f"{where}.modality_keys")
    configs = raw.get("action_configs")
    actions = None
    if configs is not None:
        if not isinstance(configs, list) or len(configs) != len(keys):
            raise InputError(f"{where}.action_configs must list one entry per modality key ({len(keys)}); "
                             "fix processor_config.json")
        actions = tuple(_action_config(c, f"{where}.action_configs[{i}]") for i, c in enumerate(configs))
    return ModalityConfig(
        delta_indices=tuple(indices), modality_keys=keys,
        sin_cos_embedding_keys=_str_tuple(raw.get("sin_cos_embedding_keys"), f"{where}.sin_cos_embedding_keys", True),
        mean_std_embedding_keys=_str_tuple(raw.get("mean_std_embedding_keys"), f"{where}.mean_std_embedding_keys",
                                           True),
        action_configs=actions,
    )


def _embodiment_modalities(tag: str, raw: Any, where: str) -> EmbodimentModalities:
    if not isinstance(raw, dict):
        raise InputError(f"{where}.modality_configs.{tag} must be a mapping of modalities")
    missing = [m for m in ("video", "state", "action") if m not in raw]
    if missing:
        raise InputError(f"{where}: embodiment {tag!r} lacks the {', '.join(missing)} modality config(s)")
    mods = {m: _modality(raw[m], f"{where}.modality_configs.{tag}.{m}") for m in ("video", "state", "action")}
    language = _modality(raw["language"], f"{where}.modality_configs.{tag}.language") if "language" in raw else None
    return EmbodimentModalities(language=language, **mods)


def _size_pair(raw: Any, key: str, where: str) -> tuple[int, int] | None:
    if raw is None:
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        return (raw, raw)
    if isinstance(raw, list) and len(raw) == 2 and all(isinstance(x, int) for x in raw):
        return (raw[0], raw[1])
    raise InputError(f"{where}: {key} must be null, an int or [height, width], got {raw!r}")


def read_processor_config(path: str | Path) -> ProcessorConfig:
    path = Path(path)
    top = read_json(path, "processor_config.json", "copy it from the N1.6 checkpoint")
    where = str(path)
    if not isinstance(top, dict) or top.get("processor_class") != PROCESSOR_CLASS:
        found = top.get("processor_class") if isinstance(top, dict) else type(top).__name__
        raise InputError(f"{where} has processor_class {found!r}, not {PROCESSOR_CLASS!r}; use an N1.6 checkpoint's "
                         "processor_config.json")
    kwargs = top.get("processor_kwargs")
    if not isinstance(kwargs, dict) or not isinstance(kwargs.get("modality_configs"), dict):
        raise InputError(f"{where} lacks processor_kwargs.modality_configs; restore the checkpoint's file")
    if kwargs.get("model_type", "eagle") != "eagle":
        raise InputError(f"{where}: model_type {kwargs.get('model_type')!r} is not 'eagle'")
    if kwargs.get("use_albumentations", True) is not True:
        raise InputError(f"{where} sets use_albumentations false (the torchvision image path); only the released "
                         "albumentations path (letterbox, INTER_AREA resizes) is implemented")
    modalities = {tag: _embodiment_modalities(tag, raw, where) for tag, raw in kwargs["modality_configs"].items()}

    def flag(key: str, default: bool) -> bool:
        value = kwargs.get(key, default)
        if not isinstance(value, bool):
            raise InputError(f"{where}: {key} must be true or false, got {value!r}")
        return value

    def integer(key: str, default: int) -> int:
        value = kwargs.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InputError(f"{where}: {key} must be a positive int, got {value!r}")
        return value

    crop = kwargs.get("crop_fraction", 0.95)
    edge = kwargs.get("shortest_image_edge", 256)
    target = _size_pair(kwargs.get("image_target_size"), "image_target_size", where)
    crop_size = _size_pair(kwargs.get("image_crop_size"), "image_crop_size", where)
    if crop is None:  # NVIDIA derives the fraction from the two sizes then
        if target is None or crop_size is None:
            raise InputError(f"{where}: crop_fraction is null but image_crop_size/image_target_size are not set")
        crop = crop_size[0] / target[0]
    if edge is None:
        if target is None:
            raise InputError(f"{where}: shortest_image_edge and image_target_size are both null")
        edge = target[0]
    if not isinstance(crop, int | float) or not 0.0 < float(crop) <= 1.0:
        raise InputError(f"{where}: crop_fraction must be in (0, 1], got {crop!r}")
    if not isinstance(edge, int) or edge <= 0:
        raise InputError(f"{where}: shortest_image_edge must be a positive int, got {edge!r}")
    return ProcessorConfig(
        modality_configs=modalities, shortest_image_edge=edge, crop_fraction=float(crop),
        image_target_size=target, image_crop_size=crop_size,
        use_albumentations=True, formalize_language=flag("formalize_language", True),
        model_name=str(kwargs.get("model_name", "nvidia/Eagle-Block2A-2B-v2")),
        max_state_dim=integer("max_state_dim", 128), max_action_dim=integer("max_action_dim", 128),
        max_action_horizon=integer("max_action_horizon", 50), use_percentiles=flag("use_percentiles", False),
        clip_outliers=flag("clip_outliers", True),
        apply_sincos_state_encoding=flag("apply_sincos_state_encoding", False),
        use_relative_action=flag("use_relative_action", False),
    )


def _modality_dict(m: ModalityConfig) -> dict[str, Any]:
    return {
        "delta_indices": list(m.delta_indices),
        "modality_keys": list(m.modality_keys),
        "sin_cos_embedding_keys": list(m.sin_cos_embedding_keys) if m.sin_cos_embedding_keys is not None else None,
        "mean_std_embedding_keys": list(m.mean_std_embedding_keys) if m.mean_std_embedding_keys is not None else None,
        "action_configs": [
            {"rep": a.rep, "type": a.type, "format": a.format, "state_key": a.state_key} for a in m.action_configs
        ] if m.action_configs is not None else None,
    }


def processor_config_dict(cfg: ProcessorConfig) -> dict[str, Any]:
    """processor_config.json as `Gr00tN1d6Processor.save_pretrained` writes it."""
    modalities = {}
    for tag, em in cfg.modality_configs.items():
        modalities[tag] = {"video": _modality_dict(em.video), "state": _modality_dict(em.state),
                           "action": _modality_dict(em.action)}
        if em.language is not None:
            modalities[tag]["language"] = _modality_dict(em.language)
    size = lambda s: list(s) if s is not None else None  # noqa: E731
    return {
        "processor_class": PROCESSOR_CLASS,
        "processor_kwargs": {
            "modality_configs": modalities,
            "image_crop_size": size(cfg.image_crop_size),
            "image_target_size": size(cfg.image_target_size),
            "use_albumentations": cfg.use_albumentations,
            "random_rotation_angle": None,
            "color_jitter_params": {"brightness": 0.3, "contrast": 0.4, "saturation": 0.5, "hue": 0.08},
            "shortest_image_edge": cfg.shortest_image_edge,
            "crop_fraction": cfg.crop_fraction,
            "model_name": cfg.model_name,
            "model_type": "eagle",
            "formalize_language": cfg.formalize_language,
            "max_state_dim": cfg.max_state_dim,
            "max_action_dim": cfg.max_action_dim,
            "max_action_horizon": cfg.max_action_horizon,
            "use_percentiles": cfg.use_percentiles,
            "clip_outliers": cfg.clip_outliers,
            "apply_sincos_state_encoding": cfg.apply_sincos_state_encoding,
            "use_relative_action": cfg.use_relative_action,
        },
    }


# --- statistics.json -------------------------------------------------------------------------------

def _key_statistics(raw: Any, where: str, ndim: int) -> KeyStatistics:
    if not isinstance(raw, dict):
        raise InputError(f"{where} must be a mapping of {', '.join(STAT_NAMES)}; fix statistics.json")
    missing = [n for n in STAT_NAMES if n not in raw]
    if missing:
        raise InputError(f"{where} lacks {', '.join(missing)}; regenerate statistics.json with all six")
    try:
        arrays = {n: np.asarray(raw[n], dtype=np.float64) for n in STAT_NAMES}
    except (TypeError, ValueError) as err:
        raise InputError(f"{where} holds non-numeric statistics ({err}); fix statistics.json") from None
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != ndim:
        raise InputError(f"{where}: statistics must all be {'[D]' if ndim == 1 else '[horizon, D]'} arrays, "
                         f"got shapes {sorted(shapes)}; fix statistics.json")
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise InputError(f"{where} holds NaN or inf; regenerate statistics.json")
    return KeyStatistics(**arrays)


def read_statistics(path: str | Path) -> dict[str, EmbodimentStatistics]:
    path = Path(path)
    top = read_json(path, "statistics.json", "copy it from the N1.6 checkpoint")
    if not isinstance(top, dict):
        raise InputError(f"{path} must map embodiment tags to statistics; restore the checkpoint's file")
    out = {}
    for tag, groups in top.items():
        if not isinstance(groups, dict):
            raise InputError(f"{path}: {tag} must map state/action/relative_action to key statistics")
        stats = EmbodimentStatistics()
        for group, ndim in (("state", 1), ("action", 1), ("relative_action", 2)):
            raw = groups.get(group, {})
            if not isinstance(raw, dict):
                raise InputError(f"{path}: {tag}.{group} must map keys to statistics")
            setattr(stats, group, {k: _key_statistics(v, f"{path}: {tag}.{group}.{k}", ndim) for k, v in raw.items()})
        out[tag] = stats
    return out


def statistics_dict(stats: dict[str, EmbodimentStatistics]) -> dict[str, Any]:
    return {tag: {group: {k: {n: getattr(s, n).tolist() for n in STAT_NAMES} for k, s in getattr(e, group).items()}
                  for group in ("state", "action", "relative_action") if getattr(e, group)}
            for tag, e in stats.items()}


# --- embodiment_id.json ----------------------------------------------------------------------------

def read_embodiment_ids(path: str | Path | None) -> dict[str, int]:
    """tag -> projector row. A missing file means NVIDIA's table; missing tags are filled from it."""
    table = dict(N16_EMBODIMENT_TABLE)
    if path is None or not Path(path).is_file():
        return table
    raw = read_json(Path(path), "embodiment_id.json", "copy it from the N1.6 checkpoint")
    if not isinstance(raw, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                            for v in raw.values()):
        raise InputError(f"{path} must map embodiment tags to non-negative ints; restore the checkpoint's file")
    return raw | {k: v for k, v in table.items() if k not in raw}


def embodiment_id(table: dict[str, int], tag: str, num_rows: int) -> int:
    if tag not in table:
        raise InputError(f"unknown N1.6 embodiment tag {tag!r}; use one of {', '.join(sorted(table))} "
                         "(a fine-tune without its own row uses new_embodiment)")
    row = table[tag]
    if row >= num_rows:
        raise InputError(f"embodiment {tag!r} maps to projector row {row} but the model has {num_rows} rows "
                         "(max_num_embodiments); fix embodiment_id.json")
    return row


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
