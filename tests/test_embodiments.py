"""Embodiment tags, modality configs (built-in and YAML) and the metadata.json model."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import compute_key_stats, save_modality_config

from gr00t_export.errors import InputError
from gr00t_export.families.n1_5.embodiments import (
    DATA_CONFIGS,
    EMBODIMENT_TAG_TO_INDEX,
    KeyLayout,
    ModalityConfig,
    embodiment_index,
    key_layout,
    load_modality_config,
    modality_config_from_dict,
    modality_config_to_dict,
)
from gr00t_export.families.n1_5.metadata import (
    EmbodimentMetadata,
    check_against,
    matching_data_configs,
    metadata_from_lerobot_stats,
    read_metadata,
    write_metadata,
)
from gr00t_export.families.n1_5.policy import select_data_config
from gr00t_export.families.n1_5.synthetic import synthetic_metadata


def test_n15_tag_table_and_lookup():
    assert EMBODIMENT_TAG_TO_INDEX == {"gr1": 24, "oxe_droid": 17, "agibot_genie1": 26, "new_embodiment": 31}
    assert embodiment_index("gr1") == 24
    with pytest.raises(InputError, match="unknown embodiment tag 'unitree_g1'.*agibot_genie1, gr1"):
        embodiment_index("unitree_g1")


def test_builtin_configs_match_n15_data_config():
    arms = DATA_CONFIGS["fourier_gr1_arms_only"]
    assert arms.state_keys == ("state.left_arm", "state.right_arm", "state.left_hand", "state.right_hand")
    assert arms.action_keys == tuple(k.replace("state.", "action.") for k in arms.state_keys)
    assert set(arms.state_modes.values()) == {"sin_cos"} and set(arms.action_modes.values()) == {"min_max"}
    assert arms.video_keys == ("video.ego_view",) and arms.embodiment_id == 24
    assert arms.language_key == "annotation.human.action.task_description"
    assert arms.action_horizon == 16 and arms.observation_indices == (0,)

    waist = DATA_CONFIGS["fourier_gr1_arms_waist"]
    assert waist.state_keys[-1] == "state.waist" and waist.action_keys[-1] == "action.waist"
    assert waist.language_key == "annotation.human.coarse_action"

    g1 = DATA_CONFIGS["unitree_g1"]
    assert g1.embodiment_tag == "new_embodiment" and g1.video_keys == ("video.rs_view",)
    assert [g1.short(k) for k in g1.state_keys] == ["left_arm", "right_arm", "left_hand", "right_hand"]
    assert set(g1.state_modes.values()) == {"min_max"} == set(g1.action_modes.values())
    assert g1.language_key == "annotation.human.task_description"


# NVIDIA's DATA_CONFIG_MAP @ n1.5-release (gr00t/experiment/data_config.py): name -> (tag, video, state, action,
# language, state modes, action modes, state target rotations, action target rotations), keys short, modes
# listed for normalised keys only ("*" = every key of that modality)
GR1 = ("left_arm", "right_arm", "left_hand", "right_hand")
PANDA = "annotation.human.action.task_description"
N15_DATA_CONFIG_MAP = {
    "fourier_gr1_arms_waist": ("gr1", ("ego_view",), (*GR1, "waist"), (*GR1, "waist"), "annotation.human.coarse_action",
                               {"*": "sin_cos"}, {"*": "min_max"}, {}, {}),
    "fourier_gr1_arms_only": ("gr1", ("ego_view",), GR1, GR1, PANDA, {"*": "sin_cos"}, {"*": "min_max"}, {}, {}),
    "fourier_gr1_full_upper_body": ("gr1", ("front_view",), (*GR1, "waist", "neck"), (*GR1, "waist", "neck"), PANDA,
                                    {"*": "min_max"}, {"*": "min_max"}, {}, {}),
    "bimanual_panda_gripper": (
        "new_embodiment", ("right_wrist_view", "left_wrist_view", "front_view"),
        ("right_arm_eef_pos", "right_arm_eef_quat", "right_gripper_qpos", "left_arm_eef_pos", "left_arm_eef_quat",
         "left_gripper_qpos"),
        ("right_arm_eef_pos", "right_arm_eef_rot", "right_gripper_close", "left_arm_eef_pos", "left_arm_eef_rot",
         "left_gripper_close"), PANDA,
        {"right_arm_eef_pos": "min_max", "right_gripper_qpos": "min_max", "left_arm_eef_pos": "min_max",
         "left_gripper_qpos": "min_max"},
        {"right_gripper_close": "binary", "left_gripper_close": "binary"},
        {"right_arm_eef_quat": "rotation_6d", "left_arm_eef_quat": "rotation_6d"}, {}),
    "bimanual_panda_hand": (
        "new_embodiment", ("right_wrist_view", "left_wrist_view", "ego_view"),
        ("right_arm_eef_pos", "right_arm_eef_quat", "right_hand", "left_arm_eef_pos", "left_arm_eef_quat", "left_hand"),
        ("right_arm_eef_pos", "right_arm_eef_rot", "right_hand", "left_arm_eef_pos", "left_arm_eef_rot", "left_hand"),
        PANDA, {"right_arm_eef_pos": "min_max", "right_hand": "min_max", "left_arm_eef_pos": "min_max",
                "left_hand": "min_max"}, {"right_hand": "min_max", "left_hand": "min_max"},
        {"right_arm_eef_quat": "rotation_6d", "left_arm_eef_quat": "rotation_6d"}, {}),
    "single_panda_gripper": (
        "new_embodiment", ("left_view", "right_view", "wrist_view"),
        ("end_effector_position_relative", "end_effector_rotation_relative", "gripper_qpos", "base_position",
         "base_rotation"),
        ("end_effector_position", "end_effector_rotation", "gripper_close", "base_motion", "control_mode"), PANDA,
        {"*": "min_max"}, {"end_effector_position": "min_max", "end_effector_rotation": "min_max",
                           "gripper_close": "binary", "base_motion": "min_max", "control_mode": "binary"},
        {"end_effector_rotation_relative": "rotation_6d", "base_rotation": "rotation_6d"}, {}),
    "so100": ("new_embodiment", ("webcam",), ("single_arm", "gripper"), ("single_arm", "gripper"),
              "annotation.human.task_description", {"*": "min_max"}, {"*": "min_max"}, {}, {}),
    "so100_dualcam": ("new_embodiment", ("front", "wrist"), ("single_arm", "gripper"), ("single_arm", "gripper"),
                      "annotation.human.task_description", {"*": "min_max"}, {"*": "min_max"}, {}, {}),
    "unitree_g1": ("new_embodiment", ("rs_view",), GR1, GR1, "annotation.human.task_description",
                   {"*": "min_max"}, {"*": "min_max"}, {}, {}),
    "unitree_g1_full_body": ("new_embodiment", ("rs_view",), ("left_leg", "right_leg", "waist", *GR1), GR1,
                             "annotation.human.task_description", {"*": "min_max"}, {"*": "min_max"}, {}, {}),
    "oxe_droid": ("oxe_droid", ("exterior_image_1", "exterior_image_2", "wrist_image"),
                  ("eef_position", "eef_rotation", "gripper_position"),
                  ("eef_position_delta", "eef_rotation_delta", "gripper_position"),
                  "annotation.language.language_instruction",
                  {"eef_position": "min_max", "gripper_position": "min_max"}, {"gripper_position": "binary"},
                  {"eef_rotation": "rotation_6d"}, {"eef_rotation_delta": "axis_angle"}),
    "agibot_genie1": ("agibot_genie1", ("top_head", "hand_left", "hand_right"),
                      ("left_arm_joint_position", "right_arm_joint_position", "left_effector_position",
                       "right_effector_position", "head_position", "waist_position"),
                      ("left_arm_joint_position", "right_arm_joint_position", "left_effector_position",
                       "right_effector_position", "head_position", "waist_position", "robot_velocity"),
                      "annotation.language.action_text", {"*": "min_max"}, {"*": "min_max"}, {}, {}),
}


def test_all_twelve_n15_data_configs_in_nvidia_order():
    assert list(DATA_CONFIGS) == list(N15_DATA_CONFIG_MAP)
    for name, (tag, video, state, action, language, smodes, amodes, srot, arot) in N15_DATA_CONFIG_MAP.items():
        cfg = DATA_CONFIGS[name]
        assert cfg.name == name and cfg.embodiment_tag == tag, name
        assert cfg.video_keys == tuple(f"video.{k}" for k in video), name
        assert cfg.state_keys == tuple(f"state.{k}" for k in state), name
        assert cfg.action_keys == tuple(f"action.{k}" for k in action), name
        assert cfg.language_key == language, name
        assert cfg.observation_indices == (0,) and cfg.action_indices == tuple(range(16)), name
        for modality, keys, given in (("state", state, smodes), ("action", action, amodes)):
            want = {f"{modality}.{k}": given.get("*", given.get(k, "identity")) for k in keys}
            assert (cfg.state_modes if modality == "state" else cfg.action_modes) == want, (name, modality)
        assert cfg.state_target_rotations == {f"state.{k}": v for k, v in srot.items()}, name
        assert cfg.action_target_rotations == {f"action.{k}": v for k, v in arot.items()}, name


def test_public_dataset_layouts_give_every_key_its_width():
    widths = {name: (sum(key_layout(cfg, k).dim for k in cfg.state_keys),
                     sum(key_layout(cfg, k).dim for k in cfg.action_keys)) for name, cfg in DATA_CONFIGS.items()}
    assert widths == {"fourier_gr1_arms_waist": (29, 29), "fourier_gr1_arms_only": (26, 26),
                      "fourier_gr1_full_upper_body": (32, 32), "bimanual_panda_gripper": (18, 14),
                      "bimanual_panda_hand": (26, 24), "single_panda_gripper": (16, 12), "so100": (6, 6),
                      "so100_dualcam": (6, 6), "unitree_g1": (28, 28), "unitree_g1_full_body": (43, 28),
                      "oxe_droid": (7, 7), "agibot_genie1": (20, 22)}
    assert key_layout(DATA_CONFIGS["so100"], "state.single_arm") == KeyLayout(5)
    assert key_layout(DATA_CONFIGS["single_panda_gripper"], "state.base_rotation") == KeyLayout(4, "quaternion")
    assert key_layout(DATA_CONFIGS["oxe_droid"], "action.eef_rotation_delta") == KeyLayout(3, "euler_angles_rpy",
                                                                                          False)
    assert not key_layout(DATA_CONFIGS["single_panda_gripper"], "action.control_mode").continuous
    # custom configs: a converted key is a quaternion, joint_names win over a guessed width
    custom = modality_config_from_dict({"embodiment_tag": "new_embodiment", "state_keys": ["q", "arm"],
                                        "action_keys": ["arm", "grip"], "action_modes": {"grip": "binary"},
                                        "state_target_rotations": {"q": "rotation_6d"},
                                        "joint_names": {"state.arm": ["a", "b"]}})
    assert key_layout(custom, "state.q") == KeyLayout(4, "quaternion")
    assert key_layout(custom, "state.arm").dim == 2 and key_layout(custom, "action.arm").dim == 7
    assert key_layout(custom, "action.grip") == KeyLayout(1, continuous=False)


def test_data_config_chosen_from_metadata_keys():
    for name, cfg in DATA_CONFIGS.items():
        assert matching_data_configs(synthetic_metadata(cfg, 0)) == [name], name
    # a dataset whose modality.json lists more keys than any one config (PickNPlace): every config it serves
    arms = DATA_CONFIGS["fourier_gr1_arms_waist"]
    superset = synthetic_metadata(replace(arms, state_keys=(*arms.state_keys, "state.neck", "state.left_leg")), 0)
    assert matching_data_configs(superset) == ["fourier_gr1_arms_waist", "fourier_gr1_arms_only"]
    several = r"fits several data configs \(fourier_gr1_arms_waist, fourier_gr1_arms_only\); pass --modality_config"
    with pytest.raises(InputError, match=several) as err:
        select_data_config(superset)
    assert "\n" not in str(err.value)
    unknown = synthetic_metadata(modality_config_from_dict({"embodiment_tag": "new_embodiment",
                                                            "video_keys": ["cam"], "state_keys": ["x"],
                                                            "action_keys": ["y"]}), 0)
    with pytest.raises(InputError, match=r"no built-in data config matches .*video: cam; state: x; action: y"):
        select_data_config(unknown)
    assert select_data_config(synthetic_metadata(DATA_CONFIGS["so100_dualcam"], 1)) == "so100_dualcam"


def test_load_builtin_by_name():
    assert load_modality_config("unitree_g1") is DATA_CONFIGS["unitree_g1"]


@pytest.mark.parametrize("name", sorted(DATA_CONFIGS))
def test_yaml_round_trip_builtin(tmp_path: Path, name: str):
    cfg = DATA_CONFIGS[name]
    back = load_modality_config(save_modality_config(cfg, tmp_path / f"{name}.yaml"))
    assert back == cfg


def test_yaml_round_trip_custom_with_short_keys(tmp_path: Path):
    path = tmp_path / "arm.yaml"
    path.write_text(
        "embodiment_tag: new_embodiment\n"
        "video_keys: [front]\n"
        "state_keys: [arm, gripper]\n"
        "action_keys: [action.arm, gripper]\n"
        "language_key: null\n"
        "state_modes: {arm: q99, state.gripper: mean_std}\n"
        "action_modes: {arm: min_max, gripper: binary}\n"
        "action_indices: [0, 1, 2, 3]\n"
        "joint_names: {action.gripper: [grip]}\n"
    )
    cfg = load_modality_config(path)
    assert cfg.name == "arm" and cfg.video_keys == ("video.front",)
    assert cfg.state_keys == ("state.arm", "state.gripper") and cfg.action_horizon == 4
    assert cfg.state_mode("state.gripper") == "mean_std" and cfg.action_mode("action.gripper") == "binary"
    assert cfg.language_key is None and cfg.default_instruction == "Perform the default behavior."
    assert load_modality_config(save_modality_config(cfg, tmp_path / "again.yaml")) == cfg
    # Modes left out mean identity, and the writer spells them out.
    partial = modality_config_from_dict({"embodiment_tag": "gr1", "state_keys": ["a"], "action_keys": ["b"]})
    assert modality_config_to_dict(partial)["state_modes"] == {"state.a": "identity"}


BASE = {"embodiment_tag": "new_embodiment", "state_keys": ["state.a"], "action_keys": ["action.a"]}


@pytest.mark.parametrize(
    "override, message",
    [
        ({"state_modes": {"state.a": "zscore"}}, "unknown mode 'zscore'"),
        ({"action_modes": {"action.a": "sin_cos"}}, "cannot be inverted"),
        ({"state_modes": {"state.b": "min_max"}}, "not in state_keys"),
        ({"embodiment_tag": "unitree_g1"}, "unknown embodiment tag"),
        ({"colour": "red"}, r"unknown field\(s\) \['colour'\]"),
        ({"action_keys": []}, "no action keys"),
        ({"state_keys": ["state.a", "a"]}, "repeat a key"),
        ({"state_keys": "state.a"}, "must be a list"),
        ({"action_indices": ["x"]}, "action_indices must be a non-empty list of integers"),
        ({"joint_names": {"state.zz": ["j"]}}, "not a state or action key"),
    ],
)
def test_yaml_errors(tmp_path: Path, override: dict, message: str):
    path = tmp_path / "bad.yaml"
    import yaml

    path.write_text(yaml.safe_dump({**BASE, **override}))
    with pytest.raises(InputError, match=message) as err:
        load_modality_config(path)
    assert "\n" not in str(err.value) and ";" in str(err.value)


def test_yaml_missing_required_and_unparsable(tmp_path: Path):
    for text, message in [
        ("action_keys: [a]\n", "no embodiment_tag"),
        ("embodiment_tag: gr1\n", "no action_keys"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("embodiment_tag: [gr1\n", "is not valid YAML"),
    ]:
        path = tmp_path / "c.yaml"
        path.write_text(text)
        with pytest.raises(InputError, match=message):
            load_modality_config(path)
    with pytest.raises(InputError, match="unknown data config 'nope'.*fourier_gr1_arms_only"):
        load_modality_config("nope")


def test_short_and_frozen():
    cfg = DATA_CONFIGS["fourier_gr1_arms_only"]
    assert ModalityConfig.short("state.left_arm") == "left_arm"
    with pytest.raises(AttributeError):
        cfg.name = "x"  # type: ignore[misc]


# --- metadata.json ---------------------------------------------------------------------------------


def _meta(tag: str = "new_embodiment") -> EmbodimentMetadata:
    rng = np.random.default_rng(0)
    stats = compute_key_stats(rng.normal(size=(100, 3)))
    return EmbodimentMetadata(
        tag=tag,
        state={"a": stats},
        action={"a": compute_key_stats(rng.normal(size=(50, 2)))},
        modalities={
            "video": {"front": {"resolution": [640, 480], "channels": 3, "fps": 30.0}},
            "state": {"a": {"absolute": True, "rotation_type": None, "shape": [3], "continuous": True}},
            "action": {"a": {"absolute": True, "rotation_type": None, "shape": [2], "continuous": True}},
        },
    )


def test_metadata_write_read_round_trip(tmp_path: Path):
    meta = _meta()
    path = write_metadata(tmp_path / "experiment_cfg" / "metadata.json", {"new_embodiment": meta})
    raw = json.loads(path.read_text())
    assert set(raw["new_embodiment"]) == {"statistics", "modalities", "embodiment_tag"}
    assert set(raw["new_embodiment"]["statistics"]["state"]["a"]) == {"max", "min", "mean", "std", "q01", "q99"}
    back = read_metadata(tmp_path, "new_embodiment")  # checkpoint dir works too
    assert back.modalities == meta.modalities and back.state_dim("a") == 3 and back.action_dim("a") == 2
    for name in ("min", "max", "mean", "std", "q01", "q99"):
        np.testing.assert_array_equal(getattr(back.state["a"], name), getattr(meta.state["a"], name))


def test_metadata_errors(tmp_path: Path):
    path = write_metadata(tmp_path / "metadata.json", {"new_embodiment": _meta()})
    with pytest.raises(InputError, match=r"No metadata found for embodiment tag: gr1 \(has: new_embodiment\)"):
        read_metadata(path, "gr1")
    with pytest.raises(InputError, match="metadata file not found"):
        read_metadata(tmp_path / "missing.json", "gr1")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="cannot parse"):
        read_metadata(bad, "gr1")
    bad.write_text(json.dumps({"gr1": {"modalities": {}}}))
    with pytest.raises(InputError, match="no statistics"):
        read_metadata(bad, "gr1")
    bad.write_text(json.dumps({"gr1": {"statistics": {"state": {"a": {"min": [0]}}, "action": {}}}}))
    with pytest.raises(InputError, match="lacks max, mean, std, q01, q99"):
        read_metadata(bad, "gr1")


def test_check_against_names_first_bad_key():
    modes = {"state_modes": {"state.a": "min_max"}, "action_modes": {"action.a": "q99"}}
    cfg = modality_config_from_dict({**BASE, **modes})
    check_against(_meta(), cfg)
    meta = _meta()
    del meta.action["a"]
    with pytest.raises(InputError, match="no statistics for action.a"):
        check_against(meta, cfg)
    meta = _meta()
    meta.modalities["state"]["a"]["shape"] = [4]
    with pytest.raises(InputError, match="state.a statistics have 3 dims but its shape is 4"):
        check_against(meta, cfg)
    with pytest.raises(InputError, match="no modalities.state.b.shape"):
        check_against(_meta(), replace(cfg, state_keys=("state.b",), state_modes={}))
    with pytest.raises(InputError, match="2 joint_names but 3 dims"):
        check_against(_meta(), replace(cfg, joint_names={"state.a": ("j1", "j2")}))


def test_metadata_from_lerobot_stats_pick_n_place(pick_n_place: Path, tmp_path: Path):
    cfg = DATA_CONFIGS["fourier_gr1_arms_only"]
    meta = metadata_from_lerobot_stats(pick_n_place, cfg)
    modality = json.loads((pick_n_place / "meta" / "modality.json").read_text())
    stats = json.loads((pick_n_place / "meta" / "stats.json").read_text())
    assert meta.tag == "gr1"
    for mod, source in (("state", "observation.state"), ("action", "action")):
        table = meta.state if mod == "state" else meta.action
        assert set(table) == set(modality[mod])
        for short, sl in modality[mod].items():
            d = sl["end"] - sl["start"]
            assert table[short].dim == d == meta.modalities[mod][short]["shape"][0]
            np.testing.assert_array_equal(table[short].q99, stats[source]["q99"][sl["start"] : sl["end"]])
            assert meta.modalities[mod][short] == {
                "absolute": True, "rotation_type": None, "shape": [d], "continuous": True
            }
    assert [meta.state_dim(cfg.short(k)) for k in cfg.state_keys] == [7, 7, 6, 6]
    assert meta.modalities["video"]["ego_view"] == {"resolution": [256, 256], "channels": 3, "fps": 20.0}
    back = read_metadata(write_metadata(tmp_path / "m.json", {"gr1": meta}), "gr1")
    assert back.modalities == meta.modalities
    np.testing.assert_array_equal(back.action["waist"].max, meta.action["waist"].max)
