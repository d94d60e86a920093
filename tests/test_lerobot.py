"""LeRobot v2 reader on the real PickNPlace data and on synthetic datasets, plus every InputError case."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from gr00t_export.data.lerobot import LeRobotDataset
from gr00t_export.data.synthetic import TASKS, make_dataset, render_frame, video_codec
from gr00t_export.errors import InputError
from gr00t_export.families.n1_5.embodiments import DATA_CONFIGS

ARMS_ONLY = DATA_CONFIGS["fourier_gr1_arms_only"]
ARMS_WAIST = DATA_CONFIGS["fourier_gr1_arms_waist"]
G1 = DATA_CONFIGS["unitree_g1"]
GR1_DIMS = {"left_arm": 7, "right_arm": 7, "left_hand": 6, "right_hand": 6, "waist": 3}

# Frame vs the decord-decoded golden. Measured: identical (max abs diff 0). Both use FFmpeg's bit-exact
# h264 decoder; only the yuv420p->rgb24 rounding could move between swscale builds, by a unit or two.
# A one-frame misalignment gives max diff ~220 on ~8% of pixels, far outside this bound.
FRAME_MAX_ABS_DIFF = 2
FRAME_MAX_DIFF_FRACTION = 0.01


def _frame_diff(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(d.max()), float((d > 0).mean())


def _one_line(err: pytest.ExceptionInfo[InputError]) -> None:
    msg = str(err.value)
    assert "\n" not in msg and ";" in msg, msg


@pytest.fixture(scope="module")
def real(pick_n_place: Path) -> LeRobotDataset:
    return LeRobotDataset(pick_n_place)


# ---------------------------------------------------------------------- real PickNPlace


def test_real_meta(real: LeRobotDataset) -> None:
    assert real.episode_lengths == {0: 416, 1: 470, 2: 470, 3: 412, 4: 328}
    assert real.fps == 20.0
    assert real.stats["observation.state"]["mean"].shape == (44,)


@pytest.mark.parametrize("cfg", [ARMS_ONLY, ARMS_WAIST], ids=lambda c: c.name)
def test_real_observation_matches_golden(real: LeRobotDataset, golden_vectors: dict, cfg) -> None:
    obs = real.observation(1, 5, cfg)
    assert set(obs) == {*cfg.video_keys, *cfg.state_keys, cfg.language_key}
    video = obs["video.ego_view"]
    assert video.dtype == np.uint8 and video.shape == (1, 256, 256, 3)
    for key in cfg.state_keys:
        assert obs[key].dtype == np.float64
        assert obs[key].shape == (1, GR1_DIMS[key.split(".", 1)[1]])
        if f"obs.{key}" in golden_vectors:
            np.testing.assert_array_equal(obs[key], golden_vectors[f"obs.{key}"])
    # arms_waist reads the same task column through the coarse_action alias (original_key).
    text = obs[cfg.language_key]
    assert text.shape == (1,)
    assert text.tolist() == golden_vectors["obs.annotation.human.action.task_description"].tolist()

    max_diff, frac = _frame_diff(video, golden_vectors["obs.video.ego_view"])
    assert max_diff <= FRAME_MAX_ABS_DIFF and frac <= FRAME_MAX_DIFF_FRACTION, (max_diff, frac)


def test_real_neighbour_frames_fail_the_bound(real: LeRobotDataset, golden_vectors: dict) -> None:
    """The bound is tight enough to catch an off-by-one frame choice."""
    for step in (4, 6):
        max_diff, frac = _frame_diff(real.observation(1, step, ARMS_ONLY)["video.ego_view"],
                                     golden_vectors["obs.video.ego_view"])
        assert max_diff > FRAME_MAX_ABS_DIFF and frac > FRAME_MAX_DIFF_FRACTION


def test_real_actions_and_clamping(real: LeRobotDataset) -> None:
    acts = real.actions(1, 5, ARMS_ONLY)
    assert set(acts) == set(ARMS_ONLY.action_keys)
    for key, value in acts.items():
        assert value.dtype == np.float64 and value.shape == (16, GR1_DIMS[key.split(".", 1)[1]])
    raw = np.asarray(pq.read_table(real.data_file(1)).column("action").to_pylist())
    np.testing.assert_array_equal(acts["action.left_arm"], raw[5:21, 0:7])
    end = real.actions(4, 320, ARMS_ONLY)["action.right_arm"]  # 328 steps: rows 8.. repeat the last one
    assert end.shape == (16, 7)
    np.testing.assert_array_equal(end[8:], np.repeat(end[7:8], 8, axis=0))


def test_real_history_is_clamped(real: LeRobotDataset) -> None:
    cfg = dataclasses.replace(ARMS_ONLY, observation_indices=(-2, -1, 0))
    obs = real.observation(0, 0, cfg)
    assert obs["video.ego_view"].shape == (3, 256, 256, 3)
    assert obs["state.left_arm"].shape == (3, 7) and obs["annotation.human.action.task_description"].shape == (3,)
    np.testing.assert_array_equal(obs["video.ego_view"][0], obs["video.ego_view"][2])


def test_iter_steps_spread_and_deterministic(real: LeRobotDataset) -> None:
    steps = list(real.iter_steps(ARMS_ONLY, 30, stride=10))
    assert steps == list(real.iter_steps(ARMS_ONLY, 30, stride=10))
    assert len(steps) == 30 and len(set(steps)) == 30
    assert {e for e, _ in steps} == set(real.episode_lengths)
    assert steps == sorted(steps)  # grouped by episode: each video is decoded once
    for episode, step in steps:
        assert 0 <= step and step + 15 < real.episode_lengths[episode]
    with pytest.raises(InputError) as err:
        real.iter_steps(ARMS_ONLY, 10_000, stride=10)
    _one_line(err)


# ---------------------------------------------------------------------- synthetic datasets


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synth") / "gr1", ARMS_ONLY)


@pytest.mark.parametrize("cfg", [ARMS_ONLY, G1], ids=lambda c: c.name)
def test_synthetic_round_trip(tmp_path: Path, cfg) -> None:
    size = 128 if cfg is G1 else 256
    path = make_dataset(tmp_path / "ds", cfg, num_episodes=2, episode_length=40, image_size=size)
    ds = LeRobotDataset(path)
    assert ds.episode_lengths == {0: 40, 1: 40}
    assert json.loads((path / "meta" / "info.json").read_text())["codebase_version"] == "v2.0"
    table = pq.read_table(ds.data_file(1))
    raw_state = np.asarray(table.column("observation.state").to_pylist())
    raw_action = np.asarray(table.column("action").to_pylist())
    (video_key,) = cfg.video_keys
    for step in (0, 17, 39):
        obs = ds.observation(1, step, cfg)
        state = np.concatenate([obs[k][0] for k in cfg.state_keys])
        np.testing.assert_array_equal(state, raw_state[step])
        assert obs[cfg.language_key].tolist()[0] in TASKS
        frame = obs[video_key]
        assert frame.dtype == np.uint8 and frame.shape == (1, size, size, 3)
        # The decoded frame shows this step's state, not a neighbour's (lossy codec: compare distances).
        own = np.abs(frame[0].astype(np.int16) - render_frame(state, size)).mean()
        other = np.abs(frame[0].astype(np.int16) - render_frame(raw_state[(step + 8) % 40], size)).mean()
        assert own < 3.0 and own < other, (own, other)
        acts = ds.actions(1, step, cfg)
        np.testing.assert_array_equal(np.concatenate([acts[k][0] for k in cfg.action_keys]), raw_action[step])
    with av.open(str(ds.video_file(0, f"observation.images.{video_key.split('.', 1)[1]}"))) as container:
        assert container.streams.video[0].codec_context.name == ("h264" if video_codec() == "libx264" else "mpeg4")
    # Synthetic actions lead the state by one step.
    np.testing.assert_allclose(raw_action[:-1], raw_state[1:])


def test_synthetic_is_deterministic(tmp_path: Path, synth: Path) -> None:
    again = make_dataset(tmp_path / "again", ARMS_ONLY)
    other = make_dataset(tmp_path / "other", ARMS_ONLY, seed=1)
    a, b, c = LeRobotDataset(synth), LeRobotDataset(again), LeRobotDataset(other)
    for episode in (0, 1):
        assert pq.read_table(a.data_file(episode)).equals(pq.read_table(b.data_file(episode)))
        assert not pq.read_table(a.data_file(episode)).equals(pq.read_table(c.data_file(episode)))
        for step in (0, 47):
            fa = a.observation(episode, step, ARMS_ONLY)["video.ego_view"]
            np.testing.assert_array_equal(fa, b.observation(episode, step, ARMS_ONLY)["video.ego_view"])
    for name in ("info.json", "modality.json", "stats.json", "episodes.jsonl", "tasks.jsonl"):
        assert (synth / "meta" / name).read_text() == (again / "meta" / name).read_text()
    stats = json.loads((synth / "meta" / "stats.json").read_text())
    assert set(stats["observation.state"]) == {"mean", "std", "min", "max", "q01", "q99"}
    assert len(stats["observation.state"]["q99"]) == 26
    assert video_codec() in ("libx264", "mpeg4")


def test_synthetic_mpeg4_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wheels without libx264 fall back to mpeg4; the dataset must still read back."""
    import gr00t_export.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "video_codec", lambda: "mpeg4")
    path = synthetic.make_dataset(tmp_path / "ds", ARMS_ONLY, num_episodes=1, episode_length=12, image_size=64)
    ds = LeRobotDataset(path)
    obs = ds.observation(0, 6, ARMS_ONLY)
    state = np.concatenate([obs[k][0] for k in ARMS_ONLY.state_keys])
    assert np.abs(obs["video.ego_view"][0].astype(np.int16) - render_frame(state, 64)).mean() < 4.0
    with av.open(str(ds.video_file(0, "observation.images.ego_view"))) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"


# ---------------------------------------------------------------------- InputError cases


def _copy(synth: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synth, tmp_path / "copy"))


def test_error_not_a_lerobot_dir(tmp_path: Path) -> None:
    for bad in (tmp_path / "missing", tmp_path):
        with pytest.raises(InputError) as err:
            LeRobotDataset(bad)
        _one_line(err)


def test_error_wrong_version(synth: Path, tmp_path: Path) -> None:
    path = _copy(synth, tmp_path)
    info_file = path / "meta" / "info.json"
    info = json.loads(info_file.read_text())
    info_file.write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    with pytest.raises(InputError, match="v2") as err:
        LeRobotDataset(path)
    _one_line(err)


def test_error_missing_video_key(synth: Path) -> None:
    cfg = dataclasses.replace(ARMS_ONLY, video_keys=("video.wrist_view",))
    with pytest.raises(InputError, match="video.wrist_view") as err:
        LeRobotDataset(synth).observation(0, 0, cfg)
    _one_line(err)


def test_error_missing_video_file(synth: Path, tmp_path: Path) -> None:
    path = _copy(synth, tmp_path)
    ds = LeRobotDataset(path)
    ds.video_file(1, "observation.images.ego_view").unlink()
    with pytest.raises(InputError, match="missing") as err:
        ds.observation(0, 0, ARMS_ONLY)
    _one_line(err)


def test_error_frames_of_unexpected_size(synth: Path, tmp_path: Path) -> None:
    path = _copy(synth, tmp_path)
    info_file = path / "meta" / "info.json"
    info = json.loads(info_file.read_text())
    info["features"]["observation.images.ego_view"]["shape"] = [224, 224, 3]
    info_file.write_text(json.dumps(info))
    with pytest.raises(InputError, match="224") as err:
        LeRobotDataset(path).observation(0, 0, ARMS_ONLY)
    _one_line(err)


def test_error_state_key_absent(synth: Path) -> None:
    cfg = dataclasses.replace(ARMS_ONLY, state_keys=("state.tail",), state_modes={})
    with pytest.raises(InputError, match="state.tail") as err:
        LeRobotDataset(synth).observation(0, 0, cfg)
    _one_line(err)


def test_error_language_key_absent(synth: Path) -> None:
    cfg = dataclasses.replace(ARMS_ONLY, language_key="annotation.human.validity")
    with pytest.raises(InputError, match="annotation.human.validity") as err:
        LeRobotDataset(synth).observation(0, 0, cfg)
    _one_line(err)


@pytest.mark.parametrize("episode, step", [(2, 0), (-1, 0), (0, 48), (0, -1)])
def test_error_out_of_range(synth: Path, episode: int, step: int) -> None:
    ds = LeRobotDataset(synth)
    for read in (ds.observation, ds.actions):
        with pytest.raises(InputError, match="out of range|not in") as err:
            read(episode, step, ARMS_ONLY)
        _one_line(err)


def test_error_make_dataset_over_existing(synth: Path) -> None:
    with pytest.raises(InputError, match="already exists") as err:
        make_dataset(synth, ARMS_ONLY)
    _one_line(err)
