"""Embodiment tags and modality configs: which keys a policy reads and writes, in which order, and how
each key is normalised.

The built-in configs mirror the N1.5 `DATA_CONFIG_MAP` entries we support. Any other robot is described
by a YAML file with this schema (every key other than the required ones may be left out):

    name: my_robot                          # optional, defaults to the file's stem
    embodiment_tag: new_embodiment          # required; one of EMBODIMENT_TAG_TO_INDEX
    video_keys: [video.front, video.wrist]  # concat order of camera views
    state_keys: [state.arm, state.gripper]  # concat order of the state vector
    action_keys: [action.arm, action.gripper]  # required, concat order of the action vector
    language_key: annotation.human.task_description   # or null: the default instruction is used
    state_modes:                            # per key; keys left out are "identity"
      state.arm: min_max
    action_modes:
      action.arm: min_max
      action.gripper: binary
    observation_indices: [0]                # default [0]
    action_indices: [0, 1, ..., 15]         # default range(16)
    joint_names:                            # optional element names per key (for logs and plots)
      action.gripper: [grip]
    default_instruction: Perform the default behavior.

Keys may be written short ("arm" under state_keys means "state.arm"). A mode is one of MODES;
`sin_cos` is only valid for state (it is not invertible for actions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gr00t_export.errors import InputError

# N1.5 projector indices (gr00t/data/embodiment_tags.py@4af2b62). N1.6 uses a different table.
EMBODIMENT_TAG_TO_INDEX: dict[str, int] = {
    "gr1": 24,
    "oxe_droid": 17,
    "agibot_genie1": 26,
    "new_embodiment": 31,
}

MODES: tuple[str, ...] = ("min_max", "q99", "mean_std", "binary", "sin_cos", "identity")
NORMALIZING_MODES: tuple[str, ...] = ("min_max", "q99", "mean_std")
DEFAULT_INSTRUCTION = "Perform the default behavior."

_YAML_FIELDS = (
    "name",
    "embodiment_tag",
    "video_keys",
    "state_keys",
    "action_keys",
    "language_key",
    "state_modes",
    "action_modes",
    "observation_indices",
    "action_indices",
    "joint_names",
    "default_instruction",
)


def embodiment_index(tag: str) -> int:
    """Projector index of an N1.5 embodiment tag (the `embodiment_id` fed to the action head)."""
    if tag not in EMBODIMENT_TAG_TO_INDEX:
        known = ", ".join(sorted(EMBODIMENT_TAG_TO_INDEX))
        raise InputError(
            f"unknown embodiment tag '{tag}'; use one of the N1.5 tags: {known} "
            "(fine-tuned robots without a pretrained head use new_embodiment)"
        )
    return EMBODIMENT_TAG_TO_INDEX[tag]


@dataclass(frozen=True)
class ModalityConfig:
    """What the policy consumes and produces for one embodiment; validated on construction."""

    name: str
    embodiment_tag: str
    video_keys: tuple[str, ...]
    state_keys: tuple[str, ...]
    action_keys: tuple[str, ...]
    language_key: str | None
    state_modes: dict[str, str]
    action_modes: dict[str, str]
    observation_indices: tuple[int, ...] = (0,)
    action_indices: tuple[int, ...] = tuple(range(16))
    joint_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    default_instruction: str = DEFAULT_INSTRUCTION

    def __post_init__(self) -> None:
        where = f"modality config '{self.name}'"
        embodiment_index(self.embodiment_tag)
        _check_keys(self.video_keys, "video", where)
        _check_keys(self.state_keys, "state", where)
        _check_keys(self.action_keys, "action", where)
        if not self.action_keys:
            raise InputError(f"{where} has no action keys; list at least one under action_keys")
        _check_modes(self.state_modes, self.state_keys, "state", where)
        _check_modes(self.action_modes, self.action_keys, "action", where)
        for key, mode in self.action_modes.items():
            if mode == "sin_cos":
                raise InputError(
                    f"{where}: action key '{key}' uses sin_cos, which cannot be inverted; "
                    "use min_max, q99, mean_std, binary or identity for actions"
                )
        for label, idx in (("observation_indices", self.observation_indices),
                           ("action_indices", self.action_indices)):
            if not idx or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
                raise InputError(f"{where}: {label} must be a non-empty list of integers; fix {label}")
        for key, names in self.joint_names.items():
            if key not in self.state_keys and key not in self.action_keys:
                raise InputError(
                    f"{where}: joint_names has '{key}', which is not a state or action key; "
                    "use a full key listed under state_keys or action_keys"
                )
            if not all(isinstance(n, str) for n in names):
                raise InputError(f"{where}: joint_names['{key}'] must be a list of strings; fix it")

    @property
    def action_horizon(self) -> int:
        return len(self.action_indices)

    @property
    def state_horizon(self) -> int:
        return len(self.observation_indices)

    @property
    def embodiment_id(self) -> int:
        return embodiment_index(self.embodiment_tag)

    @staticmethod
    def short(key: str) -> str:
        """'state.left_arm' -> 'left_arm' (the name used in metadata.json)."""
        return key.split(".", 1)[1] if "." in key else key

    def state_mode(self, key: str) -> str:
        return self.state_modes.get(key, "identity")

    def action_mode(self, key: str) -> str:
        return self.action_modes.get(key, "identity")


def _check_keys(keys: tuple[str, ...], modality: str, where: str) -> None:
    prefix = modality + "."
    for key in keys:
        if not isinstance(key, str) or not key.startswith(prefix) or len(key) == len(prefix):
            raise InputError(f"{where}: {modality} key {key!r} is malformed; write it as '{prefix}<name>'")
    if len(set(keys)) != len(keys):
        raise InputError(f"{where}: {modality} keys {list(keys)} repeat a key; list each key once")


def _check_modes(modes: dict[str, str], keys: tuple[str, ...], modality: str, where: str) -> None:
    for key, mode in modes.items():
        if key not in keys:
            raise InputError(
                f"{where}: {modality}_modes names '{key}', which is not in {modality}_keys; "
                f"use one of {list(keys)}"
            )
        if mode not in MODES:
            raise InputError(
                f"{where}: unknown mode '{mode}' for '{key}'; use one of {', '.join(MODES)}"
            )


def _arms(prefix: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return tuple(f"{prefix}.{k}" for k in ("left_arm", "right_arm", "left_hand", "right_hand", *extra))


def _gr1(name: str, extra: tuple[str, ...], language_key: str) -> ModalityConfig:
    state, action = _arms("state", extra), _arms("action", extra)
    return ModalityConfig(
        name=name,
        embodiment_tag="gr1",
        video_keys=("video.ego_view",),
        state_keys=state,
        action_keys=action,
        language_key=language_key,
        # The GR1 state is not normalised: sin/cos only. Actions are min_max.
        state_modes={k: "sin_cos" for k in state},
        action_modes={k: "min_max" for k in action},
    )


def _unitree_g1() -> ModalityConfig:
    state, action = _arms("state"), _arms("action")
    return ModalityConfig(
        name="unitree_g1",
        embodiment_tag="new_embodiment",
        video_keys=("video.rs_view",),
        state_keys=state,
        action_keys=action,
        language_key="annotation.human.task_description",
        state_modes={k: "min_max" for k in state},
        action_modes={k: "min_max" for k in action},
    )


DATA_CONFIGS: dict[str, ModalityConfig] = {
    "fourier_gr1_arms_only": _gr1(
        "fourier_gr1_arms_only", (), "annotation.human.action.task_description"
    ),
    "fourier_gr1_arms_waist": _gr1("fourier_gr1_arms_waist", ("waist",), "annotation.human.coarse_action"),
    "unitree_g1": _unitree_g1(),
}


def _full(key: Any, modality: str, where: str) -> str:
    if not isinstance(key, str) or not key:
        raise InputError(f"{where}: {modality} key {key!r} is not a string; write keys as '{modality}.<name>'")
    return key if key.startswith(modality + ".") else f"{modality}.{key}"


def _key_list(raw: Any, modality: str, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InputError(f"{where}: {modality}_keys must be a list; write it as [{modality}.<name>, ...]")
    return tuple(_full(k, modality, where) for k in raw)


def _mode_map(raw: Any, modality: str, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(f"{where}: {modality}_modes must be a mapping of key to mode; fix {modality}_modes")
    out: dict[str, str] = {}
    for key, mode in raw.items():
        if not isinstance(mode, str):
            raise InputError(f"{where}: mode for '{key}' must be a string; use one of {', '.join(MODES)}")
        out[_full(key, modality, where)] = mode
    return out


def _int_tuple(raw: Any, label: str, default: tuple[int, ...], where: str) -> tuple[int, ...]:
    if raw is None:
        return default
    if not isinstance(raw, list):
        raise InputError(f"{where}: {label} must be a list of integers; fix {label}")
    return tuple(raw)


def modality_config_from_dict(
    data: Any, default_name: str = "custom", where: str = "modality config"
) -> ModalityConfig:
    """Build and validate a config from the YAML schema in the module docstring."""
    if not isinstance(data, dict):
        raise InputError(f"{where} must be a YAML mapping; see the schema in gr00t_export/embodiments.py")
    unknown = sorted(set(data) - set(_YAML_FIELDS))
    if unknown:
        raise InputError(f"{where} has unknown field(s) {unknown}; allowed fields are {', '.join(_YAML_FIELDS)}")
    if "embodiment_tag" not in data:
        raise InputError(f"{where} has no embodiment_tag; add one of {', '.join(sorted(EMBODIMENT_TAG_TO_INDEX))}")
    if "action_keys" not in data:
        raise InputError(f"{where} has no action_keys; list the action keys in concat order")
    name = data.get("name") or default_name
    state_keys = _key_list(data.get("state_keys"), "state", where)
    action_keys = _key_list(data.get("action_keys"), "action", where)
    joint_raw = data.get("joint_names") or {}
    if not isinstance(joint_raw, dict):
        raise InputError(f"{where}: joint_names must map a key to a list of names; fix joint_names")
    joint_names: dict[str, tuple[str, ...]] = {}
    for key, names in joint_raw.items():
        if not isinstance(names, list):
            raise InputError(f"{where}: joint_names['{key}'] must be a list of strings; fix it")
        modality = "action" if str(key).startswith("action.") else "state"
        joint_names[_full(key, modality, where)] = tuple(names)
    language_key = data.get("language_key")
    if language_key is not None and not isinstance(language_key, str):
        raise InputError(f"{where}: language_key must be a string or null; fix language_key")
    instruction = data.get("default_instruction", DEFAULT_INSTRUCTION)
    if not isinstance(instruction, str):
        raise InputError(f"{where}: default_instruction must be a string; fix default_instruction")
    return ModalityConfig(
        name=str(name),
        embodiment_tag=str(data["embodiment_tag"]),
        video_keys=_key_list(data.get("video_keys"), "video", where),
        state_keys=state_keys,
        action_keys=action_keys,
        language_key=language_key,
        state_modes=_mode_map(data.get("state_modes"), "state", where),
        action_modes=_mode_map(data.get("action_modes"), "action", where),
        observation_indices=_int_tuple(data.get("observation_indices"), "observation_indices", (0,), where),
        action_indices=_int_tuple(data.get("action_indices"), "action_indices", tuple(range(16)), where),
        joint_names=joint_names,
        default_instruction=instruction,
    )


def modality_config_to_dict(cfg: ModalityConfig) -> dict[str, Any]:
    """Plain-data form (lists, full keys, every mode spelled out) that `modality_config_from_dict` reads."""
    return {
        "name": cfg.name,
        "embodiment_tag": cfg.embodiment_tag,
        "video_keys": list(cfg.video_keys),
        "state_keys": list(cfg.state_keys),
        "action_keys": list(cfg.action_keys),
        "language_key": cfg.language_key,
        "state_modes": {k: cfg.state_mode(k) for k in cfg.state_keys},
        "action_modes": {k: cfg.action_mode(k) for k in cfg.action_keys},
        "observation_indices": list(cfg.observation_indices),
        "action_indices": list(cfg.action_indices),
        "joint_names": {k: list(v) for k, v in cfg.joint_names.items()},
        "default_instruction": cfg.default_instruction,
    }


def save_modality_config(cfg: ModalityConfig, path: str | Path) -> Path:
    """Write a config as YAML so it can be reviewed, edited and loaded back with `load_modality_config`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(modality_config_to_dict(cfg), sort_keys=False))
    return path


def load_modality_config(name_or_path: str | Path) -> ModalityConfig:
    """A built-in DATA_CONFIGS name, or a YAML file following the schema in the module docstring."""
    if isinstance(name_or_path, str) and name_or_path in DATA_CONFIGS:
        return DATA_CONFIGS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        known = ", ".join(DATA_CONFIGS)
        raise InputError(
            f"unknown data config '{name_or_path}' (not a built-in name and no such file); "
            f"use one of {known} or a path to a YAML modality config"
        )
    where = f"modality config {path}"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {where}: {err}; check the path and its permissions") from err
    except yaml.YAMLError as err:
        detail = " ".join(str(err).split())
        raise InputError(f"{where} is not valid YAML ({detail}); fix the syntax") from err
    return modality_config_from_dict(data, default_name=path.stem, where=where)


# Dimensions by key name when the config has no joint_names; per-config overrides first.
_DIMS_BY_CONFIG: dict[str, dict[str, int]] = {"unitree_g1": {"left_hand": 7, "right_hand": 7}}
_DIMS_BY_SUFFIX: tuple[tuple[str, int], ...] = (
    ("arm", 7),
    ("hand", 6),
    ("leg", 6),
    ("waist", 3),
    ("neck", 3),
    ("gripper", 1),
    ("pos", 3),
    ("rot", 3),
)


def key_dims(cfg: ModalityConfig, key: str) -> int:
    """Width of one state/action key: joint_names when given, else a per-embodiment guess by name."""
    if key in cfg.joint_names:
        return len(cfg.joint_names[key])
    short = key.split(".", 1)[1] if "." in key else key
    override = _DIMS_BY_CONFIG.get(cfg.name, {})
    if short in override:
        return override[short]
    for suffix, dims in _DIMS_BY_SUFFIX:
        if short.endswith(suffix):
            return dims
    return 6
