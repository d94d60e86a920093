"""Embodiment tags and modality configs: which keys a policy reads and writes, in which order, and how
each key is normalised.

The built-in configs are the twelve entries of N1.5's `DATA_CONFIG_MAP` (gr00t/experiment/data_config.py
@ n1.5-release), under NVIDIA's names and in NVIDIA's order, with their keys, indices, normalisation modes
and target rotations. Any other robot is described by a YAML file with this schema (every key other than the
required ones may be left out):

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
    state_target_rotations:                 # per key: convert the dataset's rotation (metadata rotation_type)
      state.eef_quat: rotation_6d           #   to this representation before normalising
    action_target_rotations:                # the model predicts this representation; the postprocess stage
      action.eef_rot: axis_angle            #   converts it back to the dataset's
    observation_indices: [0]                # default [0]
    action_indices: [0, 1, ..., 15]         # default range(16)
    joint_names:                            # optional element names per key (for logs and plots)
      action.gripper: [grip]
    default_instruction: Perform the default behavior.

Keys may be written short ("arm" under state_keys means "state.arm"). A mode is one of MODES;
`sin_cos` is only valid for state (it is not invertible for actions). A target rotation is one of
ROTATION_TYPES; whether it may be normalised depends on the checkpoint's metadata (see
`metadata.key_plans`: a converted absolute rotation only min_max with fixed bounds, a converted relative one
not at all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gr00t_export.data.rotation import ROTATION_TYPES, rotation_width
from gr00t_export.errors import InputError
from gr00t_export.families.base import KeyLayout

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
    "state_target_rotations",
    "action_target_rotations",
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
    state_target_rotations: dict[str, str] = field(default_factory=dict)
    action_target_rotations: dict[str, str] = field(default_factory=dict)
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
        # every key spelled out (identity when left out), so a config equals its YAML round trip
        object.__setattr__(self, "state_modes", {k: self.state_modes.get(k, "identity") for k in self.state_keys})
        object.__setattr__(self, "action_modes", {k: self.action_modes.get(k, "identity") for k in self.action_keys})
        for key, mode in self.action_modes.items():
            if mode == "sin_cos":
                raise InputError(
                    f"{where}: action key '{key}' uses sin_cos, which cannot be inverted; "
                    "use min_max, q99, mean_std, binary or identity for actions"
                )
        _check_rotations(self.state_target_rotations, self.state_keys, "state", where)
        _check_rotations(self.action_target_rotations, self.action_keys, "action", where)
        for key in self.state_target_rotations:
            if self.state_mode(key) == "sin_cos":
                raise InputError(f"{where}: '{key}' has a target rotation and sin_cos; a rotation is converted and "
                                 "normalised min_max, so drop sin_cos for it")
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

    def key_layouts(self) -> dict[str, KeyLayout]:
        """How a dataset stores each state and action key (widths of the public dataset layouts)."""
        return {key: key_layout(self, key) for key in (*self.state_keys, *self.action_keys)}

    def state_mode(self, key: str) -> str:
        return self.state_modes.get(key, "identity")

    def action_mode(self, key: str) -> str:
        return self.action_modes.get(key, "identity")

    def target_rotation(self, key: str) -> str | None:
        """The representation the model sees for a state/action key, when the config converts it."""
        table = self.action_target_rotations if key.startswith("action.") else self.state_target_rotations
        return table.get(key)

    @property
    def views(self) -> int:
        return len(self.video_keys)


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


def _check_rotations(rotations: dict[str, str], keys: tuple[str, ...], modality: str, where: str) -> None:
    for key, target in rotations.items():
        if key not in keys:
            raise InputError(f"{where}: {modality}_target_rotations names '{key}', which is not in {modality}_keys; "
                             f"use one of {list(keys)}")
        if target not in ROTATION_TYPES:
            raise InputError(f"{where}: unknown target rotation '{target}' for '{key}'; use one of "
                             f"{', '.join(ROTATION_TYPES)}")


GR1_LIMBS = ("left_arm", "right_arm", "left_hand", "right_hand")
PANDA_TASK = "annotation.human.action.task_description"


def _config(name: str, tag: str, video: tuple[str, ...], state: tuple[str, ...], action: tuple[str, ...],
            language: str, state_modes: dict[str, str] | str, action_modes: dict[str, str] | str,
            state_rotations: dict[str, str] | None = None, action_rotations: dict[str, str] | None = None
            ) -> ModalityConfig:
    """A config from short key names; a mode given as one string applies to every key of that modality."""

    def modes(given: dict[str, str] | str, prefix: str, keys: tuple[str, ...]) -> dict[str, str]:
        table = dict.fromkeys(keys, given) if isinstance(given, str) else given
        return {f"{prefix}.{k}": m for k, m in table.items()}

    return ModalityConfig(
        name=name,
        embodiment_tag=tag,
        video_keys=tuple(f"video.{k}" for k in video),
        state_keys=tuple(f"state.{k}" for k in state),
        action_keys=tuple(f"action.{k}" for k in action),
        language_key=language,
        state_modes=modes(state_modes, "state", state),
        action_modes=modes(action_modes, "action", action),
        state_target_rotations={f"state.{k}": r for k, r in (state_rotations or {}).items()},
        action_target_rotations={f"action.{k}": r for k, r in (action_rotations or {}).items()},
    )


def _bimanual_panda(name: str, front: str, effector: str, state_effector: str, state_modes: dict[str, str],
                    action_modes: dict[str, str]) -> ModalityConfig:
    sides = ("right", "left")
    state = tuple(f"{s}_{k}" for s in sides for k in ("arm_eef_pos", "arm_eef_quat", state_effector))
    action = tuple(f"{s}_{k}" for s in sides for k in ("arm_eef_pos", "arm_eef_rot", effector))
    return _config(name, "new_embodiment", ("right_wrist_view", "left_wrist_view", front), state, action,
                   PANDA_TASK, state_modes, action_modes, {f"{s}_arm_eef_quat": "rotation_6d" for s in sides})


# N1.5 DATA_CONFIG_MAP, same names and order. Tags as NVIDIA fine-tunes them: only GR1, OXE DROID and AgiBot
# Genie-1 have pretrained N1.5 heads; every other robot is `new_embodiment`.
DATA_CONFIGS: dict[str, ModalityConfig] = {
    "fourier_gr1_arms_waist": _config(
        "fourier_gr1_arms_waist", "gr1", ("ego_view",), (*GR1_LIMBS, "waist"), (*GR1_LIMBS, "waist"),
        "annotation.human.coarse_action", "sin_cos", "min_max"),
    "fourier_gr1_arms_only": _config(
        "fourier_gr1_arms_only", "gr1", ("ego_view",), GR1_LIMBS, GR1_LIMBS, PANDA_TASK, "sin_cos", "min_max"),
    "fourier_gr1_full_upper_body": _config(
        "fourier_gr1_full_upper_body", "gr1", ("front_view",), (*GR1_LIMBS, "waist", "neck"),
        (*GR1_LIMBS, "waist", "neck"), PANDA_TASK, "min_max", "min_max"),
    "bimanual_panda_gripper": _bimanual_panda(
        "bimanual_panda_gripper", "front_view", "gripper_close", "gripper_qpos",
        {f"{s}_{k}": "min_max" for s in ("right", "left") for k in ("arm_eef_pos", "gripper_qpos")},
        {f"{s}_gripper_close": "binary" for s in ("right", "left")}),
    "bimanual_panda_hand": _bimanual_panda(
        "bimanual_panda_hand", "ego_view", "hand", "hand",
        {f"{s}_{k}": "min_max" for s in ("right", "left") for k in ("arm_eef_pos", "hand")},
        {f"{s}_hand": "min_max" for s in ("right", "left")}),
    "single_panda_gripper": _config(
        "single_panda_gripper", "new_embodiment", ("left_view", "right_view", "wrist_view"),
        ("end_effector_position_relative", "end_effector_rotation_relative", "gripper_qpos", "base_position",
         "base_rotation"),
        ("end_effector_position", "end_effector_rotation", "gripper_close", "base_motion", "control_mode"),
        PANDA_TASK, "min_max",
        {"end_effector_position": "min_max", "end_effector_rotation": "min_max", "gripper_close": "binary",
         "base_motion": "min_max", "control_mode": "binary"},
        {"end_effector_rotation_relative": "rotation_6d", "base_rotation": "rotation_6d"}),
    "so100": _config("so100", "new_embodiment", ("webcam",), ("single_arm", "gripper"), ("single_arm", "gripper"),
                     "annotation.human.task_description", "min_max", "min_max"),
    "so100_dualcam": _config("so100_dualcam", "new_embodiment", ("front", "wrist"), ("single_arm", "gripper"),
                             ("single_arm", "gripper"), "annotation.human.task_description", "min_max", "min_max"),
    "unitree_g1": _config("unitree_g1", "new_embodiment", ("rs_view",), GR1_LIMBS, GR1_LIMBS,
                          "annotation.human.task_description", "min_max", "min_max"),
    "unitree_g1_full_body": _config(
        "unitree_g1_full_body", "new_embodiment", ("rs_view",), ("left_leg", "right_leg", "waist", *GR1_LIMBS),
        GR1_LIMBS, "annotation.human.task_description", "min_max", "min_max"),
    "oxe_droid": _config(
        "oxe_droid", "oxe_droid", ("exterior_image_1", "exterior_image_2", "wrist_image"),
        ("eef_position", "eef_rotation", "gripper_position"),
        ("eef_position_delta", "eef_rotation_delta", "gripper_position"),
        "annotation.language.language_instruction", {"eef_position": "min_max", "gripper_position": "min_max"},
        {"gripper_position": "binary"}, {"eef_rotation": "rotation_6d"}, {"eef_rotation_delta": "axis_angle"}),
    "agibot_genie1": _config(
        "agibot_genie1", "agibot_genie1", ("top_head", "hand_left", "hand_right"),
        ("left_arm_joint_position", "right_arm_joint_position", "left_effector_position", "right_effector_position",
         "head_position", "waist_position"),
        ("left_arm_joint_position", "right_arm_joint_position", "left_effector_position", "right_effector_position",
         "head_position", "waist_position", "robot_velocity"),
        "annotation.language.action_text", "min_max", "min_max"),
}


def _layout(**keys: int | tuple) -> dict[str, KeyLayout]:
    """`state__left_arm=7` or `action__eef_rot=(3, "axis_angle", False)` -> {"state.left_arm": KeyLayout(7)}."""
    return {k.replace("__", ".", 1): KeyLayout(*(v if isinstance(v, tuple) else (v,))) for k, v in keys.items()}


def _mirror(**keys: int | tuple) -> dict[str, int | tuple]:
    """The same widths under state__ and action__."""
    return {f"{m}__{k}": v for k, v in keys.items() for m in ("state", "action")}


_GR1 = _mirror(left_arm=7, right_arm=7, left_hand=6, right_hand=6, waist=3, neck=3)
_G1 = _mirror(left_arm=7, right_arm=7, left_hand=7, right_hand=7, left_leg=6, right_leg=6, waist=3)
_QUAT = (4, "quaternion")
_PANDA = {f"{m}__{s}_arm_eef_pos": 3 for m in ("state", "action") for s in ("right", "left")} | {
    f"state__{s}_arm_eef_quat": _QUAT for s in ("right", "left")} | {
    f"action__{s}_arm_eef_rot": (3, "axis_angle") for s in ("right", "left")}
# Widths of the public example datasets (demo_data/robot_sim.PickNPlace, examples/SO100 and UnitreeG1 modality.json,
# RoboCasa / DexMimicGen and OXE LeRobot conversions); the checkpoint's metadata.json is what a build uses.
DATASET_LAYOUTS: dict[str, dict[str, KeyLayout]] = {
    "fourier_gr1_arms_waist": _layout(**_GR1),
    "fourier_gr1_arms_only": _layout(**_GR1),
    "fourier_gr1_full_upper_body": _layout(**_GR1),
    "bimanual_panda_gripper": _layout(**_PANDA, state__right_gripper_qpos=2, state__left_gripper_qpos=2,
                                      action__right_gripper_close=(1, None, True, False),
                                      action__left_gripper_close=(1, None, True, False)),
    "bimanual_panda_hand": _layout(**_PANDA, **_mirror(right_hand=6, left_hand=6)),
    "single_panda_gripper": _layout(
        state__end_effector_position_relative=3, state__end_effector_rotation_relative=_QUAT, state__gripper_qpos=2,
        state__base_position=3, state__base_rotation=_QUAT, action__end_effector_position=(3, None, False),
        action__end_effector_rotation=(3, "axis_angle", False), action__gripper_close=(1, None, True, False),
        action__base_motion=(4, None, False), action__control_mode=(1, None, True, False)),
    "so100": _layout(**_mirror(single_arm=5, gripper=1)),
    "so100_dualcam": _layout(**_mirror(single_arm=5, gripper=1)),
    "unitree_g1": _layout(**_G1),
    "unitree_g1_full_body": _layout(**_G1),
    "oxe_droid": _layout(
        state__eef_position=3, state__eef_rotation=(3, "euler_angles_rpy"), state__gripper_position=1,
        action__eef_position_delta=(3, None, False), action__eef_rotation_delta=(3, "euler_angles_rpy", False),
        action__gripper_position=(1, None, True, False)),
    "agibot_genie1": _layout(**_mirror(left_arm_joint_position=7, right_arm_joint_position=7,
                                       left_effector_position=1, right_effector_position=1, head_position=2,
                                       waist_position=2), action__robot_velocity=2),
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


def _mode_map(raw: Any, modality: str, where: str, label: str = "modes", choices: tuple[str, ...] = MODES
              ) -> dict[str, str]:
    """`{modality}_{label}`: a mapping of key (short or full) to one of `choices` (checked by ModalityConfig)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(f"{where}: {modality}_{label} must be a mapping of key to name; fix {modality}_{label}")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise InputError(f"{where}: {modality}_{label} for '{key}' must be a string; use one of "
                             f"{', '.join(choices)}")
        out[_full(key, modality, where)] = value
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
        raise InputError(f"{where} must be a YAML mapping; see the schema in gr00t_export/families/n1_5/embodiments.py")
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
        state_target_rotations=_mode_map(data.get("state_target_rotations"), "state", where, "target_rotations",
                                         ROTATION_TYPES),
        action_target_rotations=_mode_map(data.get("action_target_rotations"), "action", where, "target_rotations",
                                          ROTATION_TYPES),
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
        "state_target_rotations": dict(cfg.state_target_rotations),
        "action_target_rotations": dict(cfg.action_target_rotations),
        "observation_indices": list(cfg.observation_indices),
        "action_indices": list(cfg.action_indices),
        "joint_names": {k: list(v) for k, v in cfg.joint_names.items()},
        "default_instruction": cfg.default_instruction,
    }


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


# Widths guessed by key name for custom configs without joint_names.
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


def key_layout(cfg: ModalityConfig, key: str) -> KeyLayout:
    """How a synthetic dataset/checkpoint lays out one key: the built-in config's public layout, else joint_names
    (width), a quaternion for a key the config converts, or a width guessed from the key's name."""
    known = DATASET_LAYOUTS.get(cfg.name, {}).get(key)
    names = cfg.joint_names.get(key)
    if known is not None and (names is None or len(names) == known.dim):
        return known
    binary = (cfg.action_mode(key) if key.startswith("action.") else cfg.state_mode(key)) == "binary"
    if cfg.target_rotation(key) is not None:
        rotation = "quaternion" if names is None else next(
            (r for r in ROTATION_TYPES if rotation_width(r) == len(names)), None)
        if rotation is not None:
            return KeyLayout(rotation_width(rotation), rotation)
    if names is not None:
        return KeyLayout(len(names), continuous=not binary)
    short = key.split(".", 1)[1] if "." in key else key
    dim = next((d for suffix, d in _DIMS_BY_SUFFIX if short.endswith(suffix)), 6)
    return KeyLayout(1 if binary else dim, continuous=not binary)
