"""The checkpoint's `experiment_cfg/metadata.json`: per-embodiment statistics and key shapes.

Schema (one entry per embodiment tag):
    {tag: {"statistics": {"state"|"action": {key: {max, min, mean, std, q01, q99}}},
           "modalities": {"video": {key: {resolution: [W, H], channels, fps}},
                          "state"|"action": {key: {absolute, rotation_type, shape: [d], continuous}}},
           "embodiment_tag": tag}}
Keys here are short ("left_arm"); modality configs use full keys ("state.left_arm").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gr00t_export.data.rotation import ROTATION_BOUNDS, ROTATION_TYPES, family, rotation_width
from gr00t_export.errors import InputError
from gr00t_export.families.n1_5.embodiments import DATA_CONFIGS, NORMALIZING_MODES, ModalityConfig

STAT_NAMES: tuple[str, ...] = ("max", "min", "mean", "std", "q01", "q99")


@dataclass
class KeyStats:
    """Statistics of one state/action key, each a float64 vector of the key's dimension."""

    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray

    def __post_init__(self) -> None:
        for name in STAT_NAMES:
            setattr(self, name, np.atleast_1d(np.asarray(getattr(self, name), dtype=np.float64)))
        dims = {getattr(self, n).shape for n in STAT_NAMES}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise InputError(f"statistics have mismatched shapes {sorted(dims)}; every stat must be a [d] list")

    @property
    def dim(self) -> int:
        return int(self.min.shape[0])

    def to_dict(self) -> dict[str, list[float]]:
        return {name: getattr(self, name).tolist() for name in STAT_NAMES}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> KeyStats:
        if not isinstance(data, dict):
            raise InputError(f"{where} is not a mapping of statistics; expected keys {', '.join(STAT_NAMES)}")
        missing = [n for n in STAT_NAMES if n not in data]
        if missing:
            raise InputError(f"{where} lacks {', '.join(missing)}; regenerate the statistics with all six")
        try:
            return cls(**{n: np.asarray(data[n], dtype=np.float64) for n in STAT_NAMES})
        except (TypeError, ValueError) as err:
            raise InputError(f"{where} holds non-numeric statistics ({err}); fix the metadata file") from err


@dataclass
class EmbodimentMetadata:
    """One embodiment's entry of metadata.json."""

    tag: str
    state: dict[str, KeyStats] = field(default_factory=dict)
    action: dict[str, KeyStats] = field(default_factory=dict)
    modalities: dict[str, Any] = field(default_factory=dict)

    def _dim(self, modality: str, short: str) -> int:
        entry = self.modalities.get(modality, {}).get(short)
        if not isinstance(entry, dict) or not entry.get("shape"):
            raise InputError(
                f"metadata for '{self.tag}' has no modalities.{modality}.{short}.shape; "
                f"use a checkpoint whose metadata describes {modality}.{short}, or a modality config without it"
            )
        return int(entry["shape"][0])

    def state_dim(self, short: str) -> int:
        return self._dim("state", short)

    def entry(self, modality: str, short: str) -> dict[str, Any]:
        """`modalities.<modality>.<short>` with N1.5's defaults filled in (absolute, continuous, no rotation)."""
        self._dim(modality, short)
        entry = self.modalities[modality][short]
        return {"absolute": bool(entry.get("absolute", True)), "rotation_type": entry.get("rotation_type"),
                "shape": list(entry["shape"]), "continuous": bool(entry.get("continuous", True))}

    def action_dim(self, short: str) -> int:
        return self._dim("action", short)

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistics": {
                "state": {k: v.to_dict() for k, v in self.state.items()},
                "action": {k: v.to_dict() for k, v in self.action.items()},
            },
            "modalities": self.modalities,
            "embodiment_tag": self.tag,
        }


def _metadata_file(path: Path) -> Path:
    """Accept the metadata.json itself or a checkpoint directory holding experiment_cfg/metadata.json."""
    if path.is_dir():
        for candidate in (path / "experiment_cfg" / "metadata.json", path / "metadata.json"):
            if candidate.is_file():
                return candidate
        return path / "experiment_cfg" / "metadata.json"
    return path


def _read_metadata_file(path: str | Path) -> tuple[Path, dict[str, Any]]:
    file = _metadata_file(Path(path))
    if not file.is_file():
        raise InputError(
            f"metadata file not found: {file}; pass the checkpoint directory or its experiment_cfg/metadata.json"
        )
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot parse {file} ({err}); restore the checkpoint's metadata.json") from err
    if not isinstance(data, dict):
        raise InputError(f"{file} is not a mapping of embodiment tags; restore the checkpoint's metadata.json")
    return file, data


def metadata_tags(path: str | Path) -> list[str]:
    """The embodiment tags metadata.json has entries for, in file order."""
    return list(_read_metadata_file(path)[1])


def read_metadata(path: str | Path, tag: str) -> EmbodimentMetadata:
    """Load the entry for `tag` from metadata.json (or from a checkpoint directory)."""
    file, data = _read_metadata_file(path)
    if tag not in data:
        raise InputError(
            f"No metadata found for embodiment tag: {tag} (has: {', '.join(sorted(data)) or 'none'}); "
            "pass one of those tags"
        )
    entry = data[tag]
    stats = entry.get("statistics") if isinstance(entry, dict) else None
    if not (isinstance(stats, dict) and isinstance(stats.get("state"), dict) and isinstance(stats.get("action"), dict)):
        raise InputError(f"{file}: entry '{tag}' has no statistics.state/statistics.action; regenerate metadata.json")
    modalities = entry.get("modalities", {})
    if not isinstance(modalities, dict):
        raise InputError(f"{file}: entry '{tag}' has a malformed modalities block; regenerate metadata.json")
    return EmbodimentMetadata(
        tag=tag,
        state={k: KeyStats.from_dict(v, f"{file}: statistics.state.{k}") for k, v in stats["state"].items()},
        action={k: KeyStats.from_dict(v, f"{file}: statistics.action.{k}") for k, v in stats["action"].items()},
        modalities=modalities,
    )


@dataclass(frozen=True)
class KeyPlan:
    """What the pre/post-processing does to one state/action key, settled from the config and the metadata.

    `raw_dim` is the key's width in observations, datasets and returned actions; `model_dim` its width in the
    model's state/action vector (after a rotation conversion, before sin_cos doubles a state key).
    """

    key: str
    raw_dim: int
    mode: str
    conversion: tuple[str, str] | None = None  # (dataset rotation_type, target) when the representation changes
    fixed_bound: float | None = None  # min_max bound of a converted absolute rotation (N1.5's fixed statistics)

    @property
    def model_dim(self) -> int:
        return rotation_width(self.conversion[1]) if self.conversion else self.raw_dim


def key_plans(metadata: EmbodimentMetadata, cfg: ModalityConfig, modality: str) -> list[KeyPlan]:
    """One plan per key of `modality` ("state" or "action"), in concat order; InputError on the first key that
    N1.5's StateActionTransform would refuse, naming the fix.

    N1.5's rules: a target rotation needs the metadata's `rotation_type`, and converts only when the two differ;
    a converted absolute rotation may only be normalised min_max, with fixed bounds (not statistics); a converted
    relative rotation may not be normalised; a non-continuous key may only be `binary`; any other normalised key
    needs statistics of its width.
    """
    keys = cfg.state_keys if modality == "state" else cfg.action_keys
    table = metadata.state if modality == "state" else metadata.action
    plans = []
    for key in keys:
        short = cfg.short(key)
        entry = metadata.entry(modality, short)
        dim, mode = int(entry["shape"][0]), cfg.state_mode(key) if modality == "state" else cfg.action_mode(key)
        where = f"metadata for '{metadata.tag}': {key}"
        source, target = entry["rotation_type"], cfg.target_rotation(key)
        if source is not None and source not in ROTATION_TYPES:
            raise InputError(f"{where} has rotation_type {source!r}; use one of {', '.join(ROTATION_TYPES)} "
                             "in meta/modality.json")
        conversion = None
        if target is not None:
            if source is None:
                raise InputError(f"{where} has no rotation_type, but config '{cfg.name}' converts it to {target}; "
                                 "set its rotation_type in meta/modality.json (e.g. quaternion) and regenerate "
                                 "the metadata")
            if dim != rotation_width(source):
                raise InputError(f"{where} is a {source} of {rotation_width(source)} values but has {dim}; fix its "
                                 "start/end or rotation_type in meta/modality.json")
            conversion = (source, target) if source != target else None
        bound = None
        if mode in (*NORMALIZING_MODES, "binary"):
            if conversion is not None:
                if not entry["absolute"]:
                    raise InputError(f"{where} is a relative rotation converted to {target}, which N1.5 cannot "
                                     f"normalise; set its {modality} mode to identity in config '{cfg.name}'")
                if mode != "min_max" or family(target) not in ROTATION_BOUNDS:
                    raise InputError(f"{where} is an absolute rotation converted to {target}, which N1.5 normalises "
                                     "only min_max with fixed bounds; use min_max and a target among "
                                     f"{', '.join(ROTATION_BOUNDS)} (or mode identity)")
                bound = ROTATION_BOUNDS[family(target)]
            elif not entry["continuous"] and mode != "binary":
                raise InputError(f"{where} is not continuous, so N1.5 allows only the binary mode; set its "
                                 f"{modality} mode to binary in config '{cfg.name}'")
            elif mode != "binary":
                stats = table.get(short)
                if stats is None:
                    raise InputError(
                        f"metadata for '{metadata.tag}' has no statistics for {key} (mode {mode}); "
                        f"use the data config the checkpoint was trained with (has: {', '.join(sorted(table))})"
                    )
                if stats.dim != dim:
                    raise InputError(f"{where} statistics have {stats.dim} dims but its shape is {dim}; "
                                     "regenerate metadata.json")
        elif mode == "sin_cos" and conversion is not None:
            raise InputError(f"{where} is converted to {target} and cannot also be sin_cos; drop one of them")
        stats = table.get(short)
        if stats is not None and stats.dim != dim:
            raise InputError(f"{where} statistics have {stats.dim} dims but its shape is {dim}; regenerate "
                             "metadata.json")
        names = cfg.joint_names.get(key)
        if names is not None and len(names) != dim:
            raise InputError(f"{key} has {len(names)} joint_names but {dim} dims in metadata; list one name per dim")
        plans.append(KeyPlan(key, dim, mode, conversion, bound))
    return plans


def check_against(metadata: EmbodimentMetadata, cfg: ModalityConfig) -> None:
    """Fail on the first config key the metadata cannot serve (see `key_plans`)."""
    key_plans(metadata, cfg, "state")
    key_plans(metadata, cfg, "action")


def serves(metadata: EmbodimentMetadata, cfg: ModalityConfig) -> bool:
    """Whether the metadata has every video, state and action key of `cfg` and passes `check_against`."""
    videos = metadata.modalities.get("video", {})
    if any(cfg.short(k) not in videos for k in cfg.video_keys):
        return False
    try:
        check_against(metadata, cfg)
    except InputError:
        return False
    return True


def _key_sets(video: object, state: object, action: object) -> tuple[frozenset, frozenset, frozenset]:
    return frozenset(video), frozenset(state), frozenset(action)  # type: ignore[arg-type]


def matching_data_configs(metadata: EmbodimentMetadata) -> list[str]:
    """Built-in data configs this metadata was made for: those whose video/state/action keys are exactly the
    metadata's; failing any, those whose keys it serves (a dataset's modality.json may list more keys than the
    config reads). Either way the config must pass `check_against`."""
    mods = metadata.modalities
    have = _key_sets(mods.get("video", {}), mods.get("state", {}), mods.get("action", {}))
    served = [name for name, cfg in DATA_CONFIGS.items() if serves(metadata, cfg)]
    exact = [name for name in served if _key_sets(
        *((ModalityConfig.short(k) for k in keys) for keys in (DATA_CONFIGS[name].video_keys,
                                                                 DATA_CONFIGS[name].state_keys,
                                                                 DATA_CONFIGS[name].action_keys))) == have]
    return exact or served


def write_metadata(path: str | Path, entries: dict[str, EmbodimentMetadata]) -> Path:
    """Write metadata.json in the checkpoint's schema."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({tag: meta.to_dict() for tag, meta in entries.items()}, indent=4))
    return path


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"{path} not found; pass a GR00T LeRobot dataset directory (with meta/{path.name})")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot parse {path} ({err}); fix or regenerate it") from err


def _video_entry(info: dict[str, Any], original_key: str, where: str) -> dict[str, Any]:
    feat = info.get("features", {}).get(original_key)
    if not isinstance(feat, dict) or "shape" not in feat or "names" not in feat:
        raise InputError(f"{where}: meta/info.json has no feature '{original_key}'; fix modality.json's original_key")
    names, shape = list(feat["names"]), list(feat["shape"])
    channel_name = "channel" if "channel" in names else "channels"
    if "height" not in names or "width" not in names or channel_name not in names:
        raise InputError(f"{where}: feature '{original_key}' names {names} lack height/width/channel; fix info.json")
    fps = (feat.get("video_info") or feat.get("info") or {}).get("video.fps", info.get("fps"))
    return {
        "resolution": [shape[names.index("width")], shape[names.index("height")]],
        "channels": shape[names.index(channel_name)],
        "fps": fps,
    }


def metadata_from_lerobot_stats(
    dataset_dir: str | Path, cfg: ModalityConfig | None, tag: str | None = None
) -> EmbodimentMetadata:
    """Metadata for a GR00T-flavoured LeRobot dataset: meta/stats.json sliced by meta/modality.json, checked against
    `cfg` when one is given (without one, `matching_data_configs` can find the configs it serves).

    Like GR00T's own loader, every state/action key of modality.json is included, not just the config's.
    """
    root = Path(dataset_dir)
    meta = root / "meta"
    modality = _read_json(meta / "modality.json")
    stats = _read_json(meta / "stats.json")
    info = _read_json(meta / "info.json")
    tag = tag or (cfg.embodiment_tag if cfg is not None else "new_embodiment")
    where = str(root)

    modalities: dict[str, Any] = {"video": {}, "state": {}, "action": {}}
    for short, entry in (modality.get("video") or {}).items():
        original = (entry or {}).get("original_key") or f"observation.images.{short}"
        modalities["video"][short] = _video_entry(info, original, where)

    result = EmbodimentMetadata(tag=tag, modalities=modalities)
    for mod, default_source in (("state", "observation.state"), ("action", "action")):
        table = result.state if mod == "state" else result.action
        for short, entry in (modality.get(mod) or {}).items():
            if not isinstance(entry, dict) or "start" not in entry or "end" not in entry:
                raise InputError(f"{where}: modality.json {mod}.{short} lacks start/end; add the slice bounds")
            start, end = int(entry["start"]), int(entry["end"])
            source = entry.get("original_key") or default_source
            if source not in stats:
                raise InputError(f"{where}: meta/stats.json has no '{source}'; regenerate the dataset statistics")
            sliced = {}
            for name in STAT_NAMES:
                values = np.asarray(stats[source].get(name, []), dtype=np.float64)
                if values.ndim != 1 or values.shape[0] < end:
                    raise InputError(
                        f"{where}: stats.json '{source}.{name}' has {values.shape} values, too few for "
                        f"{mod}.{short} [{start}:{end}]; regenerate the dataset statistics"
                    )
                sliced[name] = values[start:end]
            table[short] = KeyStats(**sliced)
            modalities[mod][short] = {
                "absolute": bool(entry.get("absolute", True)),
                "rotation_type": entry.get("rotation_type"),
                "shape": [end - start],
                # N1.5's modality.json gives a dtype (default float64); an integer key is not continuous
                "continuous": bool(entry.get("continuous", str(entry.get("dtype", "float64")).startswith("float"))),
            }
    if cfg is not None:
        check_against(result, cfg)
    return result
