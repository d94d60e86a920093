"""Rotation conversions against scipy's independent `Rotation`, near-singular cases, round trips, TorchScript,
and the rotation steps of the state/action stages against N1.5's rules.

Run with `-s` to see the measured worst errors (they are asserted, not just printed).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from gr00t_export.data.rotation import ROTATION_TYPES, RotationConversion, convert, rotation_width
from gr00t_export.errors import InputError
from gr00t_export.families.n1_5.embodiments import DATA_CONFIGS, modality_config_from_dict
from gr00t_export.families.n1_5.metadata import EmbodimentMetadata, KeyStats, check_against, key_plans
from gr00t_export.families.n1_5.preprocess.state_action import ActionPostprocessor, StatePreprocessor

# N1.5's letters -> scipy's intrinsic (upper-case) axis sequences
EULER = {"rpy": "XYZ", "ryp": "XZY", "pry": "YXZ", "pyr": "YZX", "yrp": "ZXY", "ypr": "ZYX"}
WORST: dict[str, float] = {}


def _record(what: str, error: float) -> float:
    WORST[what] = max(WORST.get(what, 0.0), error)
    return error


def scipy_as(rot: Rotation, rep: str) -> np.ndarray:
    """The independent oracle: scipy's value of `rot` in one of N1.5's representations."""
    if rep == "quaternion":
        return rot.as_quat(canonical=True, scalar_first=True)  # w >= 0, like pytorch3d's standardised output
    if rep == "axis_angle":
        return rot.as_rotvec()
    if rep == "matrix":
        return rot.as_matrix().reshape(-1, 9)
    if rep == "rotation_6d":
        return rot.as_matrix()[:, :2, :].reshape(-1, 6)  # first two rows
    return rot.as_euler(EULER[rep.rsplit("_", 1)[1]])


def scipy_from(values: np.ndarray, rep: str) -> Rotation:
    if rep == "quaternion":
        return Rotation.from_quat(values, scalar_first=True)
    if rep == "axis_angle":
        return Rotation.from_rotvec(values)
    if rep == "matrix":
        return Rotation.from_matrix(values.reshape(-1, 3, 3))
    if rep == "rotation_6d":
        rows = values.reshape(-1, 2, 3)
        return Rotation.from_matrix(np.concatenate([rows, np.cross(rows[:, :1], rows[:, 1:2])], axis=1))
    return Rotation.from_euler(EULER[rep.rsplit("_", 1)[1]], values)


def _matrix(values: np.ndarray, rep: str) -> np.ndarray:
    return convert(values, rep, "matrix").reshape(-1, 3, 3)


RANDOM = Rotation.random(2000, random_state=7)


@pytest.mark.parametrize("source, target", list(itertools.permutations(ROTATION_TYPES, 2)))
def test_every_conversion_equals_scipy(source: str, target: str):
    got = convert(scipy_as(RANDOM, source), source, target)
    want = scipy_as(RANDOM, target)
    assert got.shape == want.shape == (len(RANDOM), rotation_width(target))
    error = _record(f"{source} -> {target}", float(np.abs(got - want).max()))
    assert error < 1e-11, error


@pytest.mark.parametrize("rep", ROTATION_TYPES)
def test_round_trip_through_every_other_representation(rep: str):
    start = scipy_as(RANDOM, rep)
    for other in ROTATION_TYPES:
        if other == rep:
            continue
        back = convert(convert(start, rep, other), other, rep)
        # compare rotations, not numbers: a quaternion and its negative are one rotation
        error = _record("round trips (matrix entries)", float(np.abs(_matrix(back, rep) - _matrix(start, rep)).max()))
        assert error < 1e-12, (rep, other, error)


@pytest.mark.parametrize("letters", list(EULER))
def test_euler_at_and_near_gimbal_lock(letters: str):
    rep = f"euler_angles_{letters}"
    rng = np.random.default_rng(3)
    for offset in (0.0, 1e-12, 1e-9, 1e-8, 1e-7, 1e-5):
        angles = rng.uniform(-np.pi, np.pi, (500, 3))
        angles[:, 1] = rng.choice([-1.0, 1.0], 500) * (np.pi / 2 - offset)
        rot = Rotation.from_euler(EULER[letters], angles)
        ours = convert(rot.as_matrix().reshape(-1, 9), "matrix", rep)
        assert np.all(np.abs(ours[:, 1]) <= np.pi / 2 + 1e-12) and np.all(np.abs(ours) <= np.pi + 1e-12)
        rebuilt = scipy_from(ours, rep).as_matrix()  # scipy rebuilds the matrix from our angles
        error = _record("euler at/near gimbal lock (matrix entries)", float(np.abs(rebuilt - rot.as_matrix()).max()))
        assert error < 5e-8, (offset, error)  # the branch at cos < 1.5e-8 bounds it by ~3e-8


def test_half_turns_and_tiny_angles():
    rng = np.random.default_rng(4)
    axes = rng.normal(size=(600, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.concatenate([np.pi - np.logspace(-12, -2, 200), np.full(200, np.pi), np.logspace(-12, -4, 200)])
    rot = Rotation.from_rotvec(axes * angles[:, None])
    for rep in ("quaternion", "axis_angle", "rotation_6d", "euler_angles_rpy"):
        ours = convert(rot.as_matrix().reshape(-1, 9), "matrix", rep)
        error = _record("half turns and tiny angles (matrix entries)",
                        float(np.abs(_matrix(ours, rep) - rot.as_matrix()).max()))
        assert error < 1e-10, (rep, error)
    vec = convert(rot.as_matrix().reshape(-1, 9), "matrix", "axis_angle")
    assert np.all(np.linalg.norm(vec, axis=1) <= np.pi + 1e-12)  # the angle stays in [0, pi]
    quat = convert(rot.as_matrix().reshape(-1, 9), "matrix", "quaternion")
    assert np.all(quat[:, 0] >= 0) and np.allclose(np.linalg.norm(quat, axis=1), 1.0, atol=1e-12)


def test_non_unit_quaternion_and_skewed_6d_still_give_rotations():
    quats = RANDOM.as_quat(scalar_first=True) * np.linspace(0.5, 3.0, len(RANDOM))[:, None]
    np.testing.assert_allclose(_matrix(quats, "quaternion"), RANDOM.as_matrix(), atol=1e-12)
    skewed = RANDOM.as_matrix()[:, :2, :].copy()
    skewed[:, 1] += 0.3 * skewed[:, 0]  # second row no longer orthogonal to the first, then scaled
    skewed *= 2.0
    m = _matrix(skewed.reshape(-1, 6), "rotation_6d")
    np.testing.assert_allclose(m @ m.transpose(0, 2, 1), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    np.testing.assert_allclose(m[:, 0], RANDOM.as_matrix()[:, 0], atol=1e-12)  # Gram-Schmidt keeps row 0
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-12)


def test_torchscript_equals_eager_and_float32_is_close():
    x = torch.from_numpy(scipy_as(RANDOM, "euler_angles_ypr"))
    eager = RotationConversion("euler_angles_ypr", "rotation_6d")
    scripted = torch.jit.script(eager)
    assert torch.equal(scripted(x), eager(x))
    assert torch.equal(scripted.inverse(scripted(x)), eager.inverse(eager(x)))
    y32 = scripted(x.float())
    assert y32.dtype == torch.float32
    error = _record("float32 euler_ypr -> rotation_6d", float((y32.double() - eager(x)).abs().max()))
    assert error < 1e-5
    with pytest.raises(ValueError, match="unknown rotation type 'euler_angles_xyz'"):
        RotationConversion("euler_angles_xyz", "quaternion")


# --- the state/action stages ---------------------------------------------------------------------------------


def _meta(state: dict[str, dict], action: dict[str, dict], tag: str = "new_embodiment") -> EmbodimentMetadata:
    def stats(d: int) -> KeyStats:
        return KeyStats(min=-np.ones(d), max=np.ones(d), mean=np.zeros(d), std=np.ones(d), q01=-np.ones(d),
                        q99=np.ones(d))

    def entry(e: dict) -> dict:
        return {"absolute": True, "rotation_type": None, "continuous": True, **e}

    return EmbodimentMetadata(
        tag=tag, state={k: stats(e["shape"][0]) for k, e in state.items()},
        action={k: stats(e["shape"][0]) for k, e in action.items()},
        modalities={"video": {}, "state": {k: entry(e) for k, e in state.items()},
                    "action": {k: entry(e) for k, e in action.items()}})


def test_droid_state_and_action_rotations_match_scipy():
    """oxe_droid: euler state -> rotation_6d (no normalisation), predicted axis-angle -> euler again."""
    cfg = DATA_CONFIGS["oxe_droid"]
    meta = _meta({"eef_position": {"shape": [3]}, "eef_rotation": {"shape": [3], "rotation_type": "euler_angles_rpy"},
                  "gripper_position": {"shape": [1]}},
                 {"eef_position_delta": {"shape": [3], "absolute": False},
                  "eef_rotation_delta": {"shape": [3], "rotation_type": "euler_angles_rpy", "absolute": False},
                  "gripper_position": {"shape": [1], "continuous": False}}, tag="oxe_droid")
    rot = RANDOM[:50]
    raw = np.concatenate([np.zeros((50, 3)), rot.as_euler("XYZ"), np.zeros((50, 1))], axis=1)[:, None]
    state, _ = torch.jit.script(StatePreprocessor(cfg, meta))(torch.from_numpy(raw))
    want_6d = rot.as_matrix()[:, :2, :].reshape(-1, 6)
    _record("droid state euler -> 6d (float64 stage, float32 out)",
            float(np.abs(state[:, 0, 3:9].numpy() - want_6d).max()))
    np.testing.assert_allclose(state[:, 0, 3:9].numpy(), want_6d, rtol=0, atol=1e-7)  # float32 output
    assert state.shape == (50, 1, 64) and torch.all(state[:, 0, 10:] == 0)  # 3 + 6 + 1 model dims

    post = ActionPostprocessor(cfg, meta)
    assert post.action_dim == 7 and post.out_dim == 7
    pred = torch.zeros(50, 16, 32)
    small = Rotation.from_rotvec(0.3 * RANDOM[50:100].as_rotvec() / np.pi)  # delta rotations
    pred[:, :, 3:6] = torch.from_numpy(small.as_rotvec()).float()[:, None]
    pred[:, :, 6] = torch.linspace(0, 1, 16)
    out = post.split(torch.jit.script(post)(pred))
    got = out["action.eef_rotation_delta"].double().numpy()
    error = _record("droid action axis_angle -> euler (float32)",
                    float(np.abs(got - small.as_euler("XYZ")[:, None]).max()))
    assert error < 1e-6
    np.testing.assert_array_equal(out["action.gripper_position"][0, :, 0].numpy(), (torch.linspace(0, 1, 16) > 0.5))


def test_converted_absolute_rotation_uses_fixed_bounds_not_statistics():
    """min_max of a converted absolute rotation: N1.5's fixed bounds (+-1 for 6D, +-float32(pi) for axis-angle)."""
    yaml_cfg = {"embodiment_tag": "new_embodiment", "state_keys": ["quat", "rot"], "action_keys": ["a"],
                "state_modes": {"quat": "min_max", "rot": "min_max"},
                "state_target_rotations": {"quat": "rotation_6d", "rot": "axis_angle"}}
    cfg = modality_config_from_dict(yaml_cfg)
    meta = _meta({"quat": {"shape": [4], "rotation_type": "quaternion"},
                  "rot": {"shape": [9], "rotation_type": "matrix"}}, {"a": {"shape": [2]}})
    meta.state["quat"] = KeyStats(min=np.full(4, -0.1), max=np.full(4, 0.2), mean=np.zeros(4), std=np.ones(4),
                                  q01=np.zeros(4), q99=np.ones(4))  # statistics that must not be used
    rot = RANDOM[:40]
    raw = np.concatenate([rot.as_quat(scalar_first=True), rot.as_matrix().reshape(-1, 9)], axis=1)[:, None]
    state, _ = StatePreprocessor(cfg, meta)(torch.from_numpy(raw))
    np.testing.assert_allclose(state[:, 0, :6].numpy(), rot.as_matrix()[:, :2, :].reshape(-1, 6), atol=1e-7)
    pi32 = float(np.float32(np.pi))
    np.testing.assert_allclose(state[:, 0, 6:9].numpy(), rot.as_rotvec() / pi32, atol=1e-7)
    assert [p.fixed_bound for p in key_plans(meta, cfg, "state")] == [1.0, pi32]


def _plan_error(state_entry: dict, mode: str, target: str | None, message: str) -> None:
    raw = {"embodiment_tag": "new_embodiment", "state_keys": ["r"], "action_keys": ["a"], "state_modes": {"r": mode}}
    if target:
        raw["state_target_rotations"] = {"r": target}
    cfg = modality_config_from_dict(raw)
    with pytest.raises(InputError, match=message) as err:
        check_against(_meta({"r": state_entry}, {"a": {"shape": [2]}}), cfg)
    assert "\n" not in str(err.value) and ";" in str(err.value)


@pytest.mark.parametrize("entry, mode, target, message", [
    ({"shape": [4], "rotation_type": "quaternion", "absolute": False}, "min_max", "rotation_6d",
     "relative rotation converted to rotation_6d, which N1.5 cannot normalise"),
    ({"shape": [4], "rotation_type": "quaternion"}, "q99", "rotation_6d", "only min_max with fixed bounds"),
    ({"shape": [4], "rotation_type": "quaternion"}, "binary", "axis_angle", "only min_max with fixed bounds"),
    ({"shape": [4], "rotation_type": "quaternion"}, "min_max", "matrix", "a target among rotation_6d"),
    ({"shape": [4]}, "identity", "rotation_6d", "has no rotation_type, but config 'custom' converts it"),
    ({"shape": [3], "rotation_type": "quaternion"}, "identity", "rotation_6d", "quaternion of 4 values but has 3"),
    ({"shape": [2], "continuous": False}, "min_max", None, "not continuous, so N1.5 allows only the binary mode"),
    ({"shape": [3], "rotation_type": "euler_xyz"}, "identity", None, "rotation_type 'euler_xyz'"),
])
def test_n15_rotation_and_binary_rules(entry: dict, mode: str, target: str | None, message: str):
    _plan_error(entry, mode, target, message)


def test_allowed_cases_of_the_rules():
    # same representation: no conversion, so any mode with the dataset statistics
    cfg = modality_config_from_dict({"embodiment_tag": "new_embodiment", "state_keys": ["r"], "action_keys": ["a"],
                                     "state_modes": {"r": "q99"}, "state_target_rotations": {"r": "quaternion"}})
    meta = _meta({"r": {"shape": [4], "rotation_type": "quaternion"}}, {"a": {"shape": [2]}})
    assert key_plans(meta, cfg, "state")[0].conversion is None
    # a relative rotation converted but not normalised, and a binary non-continuous key
    cfg = modality_config_from_dict({"embodiment_tag": "new_embodiment", "state_keys": ["r", "g"],
                                     "action_keys": ["a"], "state_modes": {"g": "binary"},
                                     "state_target_rotations": {"r": "rotation_6d"}})
    meta = _meta({"r": {"shape": [3], "rotation_type": "axis_angle", "absolute": False},
                  "g": {"shape": [1], "continuous": False}}, {"a": {"shape": [2]}})
    plans = key_plans(meta, cfg, "state")
    assert [(p.raw_dim, p.model_dim, p.conversion) for p in plans] == [(3, 6, ("axis_angle", "rotation_6d")),
                                                                        (1, 1, None)]


def test_config_level_rotation_errors():
    base = {"embodiment_tag": "new_embodiment", "state_keys": ["r"], "action_keys": ["a"]}
    with pytest.raises(InputError, match="unknown target rotation 'euler'"):
        modality_config_from_dict({**base, "state_target_rotations": {"r": "euler"}})
    with pytest.raises(InputError, match="names 'state.x', which is not in state_keys"):
        modality_config_from_dict({**base, "state_target_rotations": {"x": "rotation_6d"}})
    with pytest.raises(InputError, match="has a target rotation and sin_cos"):
        modality_config_from_dict({**base, "state_modes": {"r": "sin_cos"}, "state_target_rotations": {"r": "matrix"}})


def test_report_worst_errors():
    """Not a bound by itself (each test asserts its own); the worst errors measured, printed with `pytest -s`."""
    conversions = max((v for k, v in WORST.items() if "->" in k and "droid" not in k and "float32" not in k),
                      default=None)
    if conversions is not None:
        print(f"\nscipy vs ours, all {len(ROTATION_TYPES) * (len(ROTATION_TYPES) - 1)} conversions: "
              f"max |diff| = {conversions:.2e}")
    for key, value in sorted(WORST.items()):
        if "->" not in key or "droid" in key or "float32" in key:
            print(f"{key}: max |diff| = {value:.2e}")
    assert all(np.isfinite(v) for v in WORST.values())
