"""`gr00t-export serve` in Isaac-GR00T's current dialect, over loopback ZeroMQ with real msgpack.

The client here is written only from the documented shapes (server_client.py, gr00t_policy.py, types.py of
Isaac-GR00T main), not from the package: `{"observation": ..., "options": ...}` in, `[action, info]` out,
ModalityConfig rebuilt as `ModalityConfig(**as_json)`. A two-camera tiny model and a replay of recorded actions
answer batch 1 and 4 environments, nested and flat; the N1.5 client keeps working on the same server; every
malformed request is answered with an error and counted, and the server keeps serving.
"""

from __future__ import annotations

import dataclasses
import io
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import msgpack
import numpy as np
import pyarrow.parquet as pq
import pytest
import zmq
from serving import ServerLog, serving

from gr00t_export.serve import UNAUTHORIZED, Client, PolicyClient, ServerError, WireModalityConfig

LANGUAGE = "annotation.human.action.task_description"


# --- a client written from the documented shapes -------------------------------------------------------


@dataclass
class DocumentedModalityConfig:
    """The fields of Isaac-GR00T's `gr00t.data.types.ModalityConfig`; it refuses empty modality_keys."""

    delta_indices: list
    modality_keys: list
    sin_cos_embedding_keys: list | None = None
    mean_std_embedding_keys: list | None = None
    action_configs: list | None = None

    def __post_init__(self):
        if not isinstance(self.delta_indices, list) or not isinstance(self.modality_keys, list) or not (
                self.modality_keys):
            raise ValueError(f"bad ModalityConfig {self}")


def _pack_default(obj):
    if isinstance(obj, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, obj, allow_pickle=False)
        return {"__ndarray_class__": True, "as_npy": buf.getvalue()}
    raise TypeError(type(obj))


def _unpack_hook(obj):
    if "__ModalityConfig_class__" in obj:
        return DocumentedModalityConfig(**obj["as_json"])  # a JSON string here fails, as in NVIDIA's client
    if "__ndarray_class__" in obj:
        return np.load(io.BytesIO(obj["as_npy"]), allow_pickle=False)
    return obj


def exchange(port: int, request, timeout_ms: int = 30000, hook=_unpack_hook, raw: bytes | None = None):
    """One REQ socket, one request, one reply (None on timeout)."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    try:
        sock.send(raw if raw is not None else msgpack.packb(request, default=_pack_default))
        if not sock.poll(timeout_ms):
            return None
        return msgpack.unpackb(sock.recv(), object_hook=hook)
    finally:
        sock.close()


def get_action(port: int, observation, options=None):
    reply = exchange(port, {"endpoint": "get_action",
                            "data": {"observation": observation, "options": options or {"client_id": "test-env"}}})
    assert isinstance(reply, list) and len(reply) == 2, reply  # the (action, info) tuple travels as an array
    return reply[0], reply[1]


def nested(n15: dict, cfg) -> dict:
    """A batched N1.5-keyed observation in the documented nested form."""
    short = lambda key: key.split(".", 1)[1]
    return {"video": {short(k): n15[k] for k in cfg.video_keys},
            "state": {short(k): n15[k].astype(np.float32) for k in cfg.state_keys},
            "language": {LANGUAGE: [[str(row[0])] for row in n15[LANGUAGE]]}}


def flat(n15: dict, cfg) -> dict:
    """The same observation as the sim wrapper sends it: flat keys, language one string per environment."""
    obs = {k: n15[k] for k in cfg.video_keys}
    obs.update({k: n15[k].astype(np.float32) for k in cfg.state_keys})
    obs[LANGUAGE] = [str(row[0]) for row in n15[LANGUAGE]]
    return obs


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from helpers import save_modality_config

    from gr00t_export.data.lerobot import LeRobotDataset
    from gr00t_export.data.synthetic import make_dataset
    from gr00t_export.families import open_reference
    from gr00t_export.families.n1_5.embodiments import DATA_CONFIGS
    from gr00t_export.families.n1_5.synthetic import make_checkpoint

    root = tmp_path_factory.mktemp("serve_current")
    two = dataclasses.replace(DATA_CONFIGS["fourier_gr1_arms_only"], name="gr1_two_cameras",
                              video_keys=("video.ego_view", "video.wrist_view"))
    yaml_path = save_modality_config(two, root / "two_cameras.yaml")
    ckpt = make_checkpoint(root / "ckpt", "tiny", seed=0, modality_config=yaml_path, show_progress=False)
    policy = open_reference(ckpt, modality_config=yaml_path)
    cfg = policy.transforms.modality
    dataset_path = make_dataset(root / "ds", cfg, num_episodes=2, episode_length=24, image_size=48, seed=0)
    dataset = LeRobotDataset(dataset_path)

    def batch(steps: list[int], episode: int = 0) -> dict:
        """N1.5-keyed observation of B = len(steps) environments, state float32 as the current dialect sends."""
        obs = [dataset.observation(episode, s, cfg) for s in steps]
        out = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
        out.update({k: out[k].astype(np.float32) for k in cfg.state_keys})
        return out

    return SimpleNamespace(root=root, ckpt=ckpt, yaml=yaml_path, policy=policy, cfg=cfg, dataset_path=dataset_path,
                           dataset=dataset, batch=batch)


@pytest.fixture(scope="module")
def model_server(env):
    with serving(env.policy) as (srv, thread):
        yield SimpleNamespace(port=srv.port, server=srv, thread=thread)


@pytest.fixture(scope="module")
def replay(env):
    from gr00t_export.serve.replay import ReplayPolicy

    policy = ReplayPolicy(env.dataset_path, env.cfg, episode=1)
    with serving(policy) as (srv, thread):
        yield SimpleNamespace(port=srv.port, server=srv, thread=thread, policy=policy)


def recorded_actions(dataset_path: Path, episode: int, cfg) -> dict[str, np.ndarray]:
    """Every recorded action of an episode per key, read straight from its parquet and meta/modality.json."""
    layout = json.loads((dataset_path / "meta" / "modality.json").read_text())["action"]
    parquet = next((dataset_path / "data").glob(f"chunk-*/episode_{episode:06d}.parquet"))
    rows = np.asarray(pq.read_table(parquet).column("action").to_pylist(), dtype=np.float64)
    return {key: rows[:, layout[key.split(".", 1)[1]]["start"]:layout[key.split(".", 1)[1]]["end"]]
            for key in cfg.action_keys}


def expected_chunk(recorded: np.ndarray, step: int, horizon: int = 16) -> np.ndarray:
    """Rows [step, step + horizon), padded with the last recorded row past the end, as float32."""
    index = np.minimum(np.arange(step, step + horizon), len(recorded) - 1)
    return recorded[index].astype(np.float32)


# --- get_modality_config --------------------------------------------------------------------------------


def test_modality_config_in_both_dialects(env, model_server):
    cfg = env.cfg
    got = exchange(model_server.port, {"endpoint": "get_modality_config"})  # what NVIDIA's PolicyClient sends
    assert set(got) == {"video", "state", "action", "language"}
    assert got["video"] == DocumentedModalityConfig([0], ["ego_view", "wrist_view"])
    state = ["left_arm", "right_arm", "left_hand", "right_hand"]
    assert got["state"] == DocumentedModalityConfig([0], state, sin_cos_embedding_keys=state)  # GR1 state: sin/cos
    assert got["action"] == DocumentedModalityConfig(list(range(16)), state)
    assert got["language"] == DocumentedModalityConfig([0], [LANGUAGE])
    # The request may name the N1.5 dialect: as_json is then a JSON string of two fields.
    raw = exchange(model_server.port, {"endpoint": "get_modality_config", "data": {"protocol": "n1.5"}}, hook=None)
    assert json.loads(raw["video"]["as_json"]) == {"delta_indices": [0], "modality_keys": list(cfg.video_keys)}
    with PolicyClient("127.0.0.1", model_server.port) as client:
        assert client.get_modality_config()["state"] == WireModalityConfig([0], state, sin_cos_embedding_keys=state)
    with Client("127.0.0.1", model_server.port) as client:
        assert client.get_modality_config()["action"] == WireModalityConfig(list(range(16)), list(cfg.action_keys))


# --- model policy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [[3], [0, 5, 10, 15]], ids=["batch1", "batch4"])
def test_model_nested_and_flat_two_cameras(env, model_server, steps):
    n15 = env.batch(steps)
    assert not np.array_equal(n15["video.ego_view"], n15["video.wrist_view"])  # two real, different cameras
    want = env.policy.get_action(n15, seed=0)
    actions, info = get_action(model_server.port, nested(n15, env.cfg))
    assert info == {}
    assert sorted(actions) == sorted(k.split(".", 1)[1] for k in env.cfg.action_keys)
    for key, value in want.items():
        got = actions[key.split(".", 1)[1]]
        assert got.dtype == np.float32 and got.shape == (len(steps), 16, value.shape[-1]), key
        np.testing.assert_array_equal(got, value, err_msg=key)
    if len(steps) > 1:  # environments are answered separately, not broadcast from the first
        assert not np.array_equal(want[env.cfg.action_keys[0]][0], want[env.cfg.action_keys[0]][1])
    actions, info = get_action(model_server.port, flat(n15, env.cfg))
    assert info == {} and sorted(actions) == sorted(env.cfg.action_keys)  # the sim wrapper's action.<k> keys
    for key, value in want.items():
        np.testing.assert_array_equal(actions[key], value, err_msg=key)
    reset = exchange(model_server.port, {"endpoint": "reset", "data": {"options": {"client_id": "test-env"}}})
    assert reset == {}


def test_n15_client_on_the_same_server(env, model_server):
    obs = env.dataset.observation(0, 3, env.cfg)  # unbatched, float64 state: the N1.5 form
    want = env.policy.get_action(obs, seed=0)
    with Client("127.0.0.1", model_server.port, timeout_ms=30000) as client:
        got = client.get_action(obs)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].shape == (16, want[key].shape[-1])
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    raw = exchange(model_server.port, {"endpoint": "get_action", "data": obs}, hook=_unpack_hook)
    assert isinstance(raw, dict) and sorted(raw) == sorted(want)  # a map, not (action, info)


def test_package_policy_client(env, model_server):
    from gr00t_export.serve import modality_from_reply, to_current_observation

    n15 = env.batch([0, 5])
    want = env.policy.get_action(n15, seed=0)
    with PolicyClient("127.0.0.1", model_server.port, timeout_ms=30000) as client:
        modality = modality_from_reply(client.get_modality_config())
        assert modality.video_keys == env.cfg.video_keys and modality.state_keys == env.cfg.state_keys
        assert modality.action_keys == env.cfg.action_keys and modality.language_key == LANGUAGE
        actions, info = client.get_action(to_current_observation(n15))
        assert info == {} and client.reset() == {}
        flat_actions, _ = client.get_action(to_current_observation(n15, flat=True))
        unbatched, _ = client.get_action(to_current_observation(env.dataset.observation(0, 5, env.cfg)))
    for key, value in want.items():
        np.testing.assert_array_equal(actions[key.split(".", 1)[1]], value)
        np.testing.assert_array_equal(flat_actions[key], value)
        assert unbatched[key.split(".", 1)[1]].shape == (1, 16, value.shape[-1])


def test_api_token_in_the_current_dialect(env):
    with serving(env.policy, api_token="s3cret") as (srv, _):
        with PolicyClient("127.0.0.1", srv.port, api_token="wrong") as client, pytest.raises(ServerError) as err:
            client.reset()
        assert str(err.value) == UNAUTHORIZED
        with PolicyClient("127.0.0.1", srv.port, api_token="s3cret") as client:
            assert client.reset() == {} and client.ping()


# --- replay policy --------------------------------------------------------------------------------------


def test_replay_batch_1_and_4_nested_flat_and_reset(env, replay):
    recorded = recorded_actions(env.dataset_path, 1, env.cfg)
    length = env.dataset.episode_lengths[1]
    assert length == 24
    n15 = env.batch([0, 1, 2, 3], episode=0)  # the replay answers the same whatever the robot sees
    assert exchange(replay.port, {"endpoint": "reset", "data": {"options": {"client_id": "c"}}}) == {
        "current_step": 0, "episode_length": length, "episode_index": 1}
    for call, (obs, keys) in enumerate([(nested(n15, env.cfg), "bare"), (flat(n15, env.cfg), "flat"),
                                        (nested(env.batch([7]), env.cfg), "bare")]):
        actions, info = get_action(replay.port, obs)
        step = 16 * call
        assert info == {"current_step": step, "episode_length": length, "episode_index": 1}
        batch = len(next(iter(obs["video"].values()))) if keys == "bare" else len(obs["video.ego_view"])
        for key in env.cfg.action_keys:
            got = actions[key.split(".", 1)[1] if keys == "bare" else key]
            want = expected_chunk(recorded[key], step)  # call 1 is past the end at rows 24..31: the last row
            assert got.dtype == np.float32 and got.shape == (batch, 16, want.shape[-1])
            np.testing.assert_array_equal(got, np.broadcast_to(want, got.shape), err_msg=f"{key} call {call}")
    info = exchange(replay.port, {"endpoint": "reset", "data": {"options": {"episode_index": 0, "step_index": 5}}})
    assert info == {"current_step": 5, "episode_length": env.dataset.episode_lengths[0], "episode_index": 0}
    actions, _ = get_action(replay.port, nested(n15, env.cfg))
    key = env.cfg.action_keys[2]
    np.testing.assert_array_equal(actions[key.split(".", 1)[1]][3],
                                  expected_chunk(recorded_actions(env.dataset_path, 0, env.cfg)[key], 5))
    # The N1.5 client gets the next chunk, unbatched, from the same replay.
    with Client("127.0.0.1", replay.port) as client:
        got = client.get_action(env.dataset.observation(0, 0, env.cfg))
    np.testing.assert_array_equal(got[key], expected_chunk(recorded_actions(env.dataset_path, 0, env.cfg)[key], 21))
    exchange(replay.port, {"endpoint": "reset", "data": {"options": {"episode_index": 1}}})


def test_replay_of_a_real_dataset_episode(pick_n_place):
    """PickNPlace episode 1, walked to its end and past it: every chunk is the recorded parquet rows."""

    from gr00t_export.families.n1_5.embodiments import DATA_CONFIGS
    from gr00t_export.serve.replay import ReplayPolicy

    cfg = DATA_CONFIGS["fourier_gr1_arms_only"]
    policy = ReplayPolicy(pick_n_place, cfg, episode=1)
    recorded = recorded_actions(pick_n_place, 1, cfg)
    length = len(recorded[cfg.action_keys[0]])
    assert length == policy.episode_length == 470
    frames = np.zeros((2, 1, 16, 16, 3), np.uint8)  # what the cameras see does not steer a replay
    obs = {"video": {"ego_view": frames},
           "state": {"left_arm": np.zeros((2, 1, 7), np.float32), "right_arm": np.zeros((2, 1, 7), np.float32),
                     "left_hand": np.zeros((2, 1, 6), np.float32), "right_hand": np.zeros((2, 1, 6), np.float32)},
           "language": {LANGUAGE: [["pick the pear"], ["pick the pear"]]}}
    with serving(policy) as (srv, _):
        calls = 0
        for step in range(0, length + 16, 16):
            actions, info = get_action(srv.port, obs)
            assert info == {"current_step": step, "episode_length": length, "episode_index": 1}
            for key in cfg.action_keys:
                got, want = actions[key.split(".", 1)[1]], expected_chunk(recorded[key], step)
                np.testing.assert_array_equal(got[0], want, err_msg=f"{key} step {step}")
                np.testing.assert_array_equal(got[1], want)
                np.testing.assert_allclose(got[0], recorded[key][np.minimum(np.arange(step, step + 16), length - 1)],
                                           rtol=1e-6, atol=1e-6)  # the float32 reply vs the float64 parquet
            calls += 1
        assert calls == 31  # 30 chunks cover 470 steps; the 31st is all the last recorded row
        last = recorded["action.left_arm"][-1].astype(np.float32)
        assert np.all(actions["left_arm"] == last)


# --- malformed input ------------------------------------------------------------------------------------


def _bad_requests(env) -> dict[str, tuple[dict | bytes, str]]:
    good = nested(env.batch([0, 1]), env.cfg)
    good_flat = flat(env.batch([0, 1]), env.cfg)
    video = good["video"]["ego_view"]

    def with_(group: str, key: str, value) -> dict:
        obs = {g: dict(v) for g, v in good.items()}
        if value is None:
            obs[group].pop(key)
        else:
            obs[group][key] = value
        return {"endpoint": "get_action", "data": {"observation": obs, "options": {}}}

    def flat_with(key: str, value) -> dict:
        obs = dict(good_flat)
        if value is None:
            obs.pop(key)
        else:
            obs[key] = value
        return {"endpoint": "get_action", "data": {"observation": obs}}

    def without(group: str) -> dict:
        return {"endpoint": "get_action", "data": {"observation": {g: v for g, v in good.items() if g != group}}}

    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    state = good["state"]["left_arm"]
    return {
        "observation not a map": ({"data": {"observation": [1, 2]}}, "observation must be a map"),
        "no language": (without("language"), "observation lacks 'language'"),
        "video not a map": ({"data": {"observation": {**good, "video": [video]}}}, 'observation["video"] must be'),
        "missing camera": (with_("video", "wrist_view", None), 'observation["video"]["wrist_view"]'),
        "video float": (with_("video", "ego_view", video.astype(np.float32)), "must be uint8 frames"),
        "video no B": (with_("video", "ego_view", video[0]), "(B, 1, H, W, 3)"),
        "video T=2": (with_("video", "ego_view", np.concatenate([video] * 2, axis=1)), "(B, 1, H, W, 3)"),
        "video 4 channels": (with_("video", "ego_view", np.zeros((2, 1, 8, 8, 4), np.uint8)), "RGB frames"),
        "video list": (with_("video", "ego_view", video.tolist()), "must be a numpy array"),
        "state float64": (with_("state", "left_arm", state.astype(np.float64)), "convert with .astype(np.float32)"),
        "state wrong D": (with_("state", "left_arm", np.zeros((2, 1, 5), np.float32)), "float32 (B, 1, 7)"),
        "state no T": (with_("state", "left_arm", state[:, 0]), "float32 (B, 1, 7)"),
        "state NaN": (with_("state", "left_arm", np.full((2, 1, 7), np.nan, np.float32)), "NaN"),
        "state strings": (with_("state", "left_arm", np.array([[["a"] * 7]] * 2)), "must be float32"),
        "language flat list": (with_("language", LANGUAGE, ["pick", "pick"]), "[[str]] * B"),
        "language array": (with_("language", LANGUAGE, np.array([["pick"], ["pick"]])), "[[str]] * B"),
        "language T=2": (with_("language", LANGUAGE, [["a", "b"], ["a", "b"]]), "[[str]] * B"),
        "video batch": (with_("video", "wrist_view", video[:1]), "has 1 environments but"),
        "state batch": (with_("state", "right_hand", np.zeros((3, 1, 6), np.float32)), "has 3 environments"),
        "language batch": (with_("language", LANGUAGE, [["pick"]]), "has 1 environments"),
        "zero environments": ({"data": {"observation": {
            "video": {k: v[:0] for k, v in good["video"].items()},
            "state": {k: v[:0] for k, v in good["state"].items()}, "language": {LANGUAGE: []}}}}, "0 environments"),
        "options not a map": ({"data": {"observation": good, "options": "fast"}}, "options must be a map"),
        "unexpected entry": ({"data": {"observation": good, "initial_noise": np.zeros((2, 16, 32), np.float32)}},
                             "unexpected entries initial_noise"),
        "flat no language": (flat_with(LANGUAGE, None), f'lacks observation["{LANGUAGE}"]'),
        "flat nested language": (flat_with(LANGUAGE, [["pick"], ["pick"]]), "[str] * B"),
        "flat state float64": (flat_with("state.left_arm", state.astype(np.float64)), "float32"),
        "pickled frames": (with_("video", "ego_view", {"__ndarray_class__": True, "as_npy": pickled.getvalue()}),
                           "pickles"),
        "reset data not a map": ({"endpoint": "reset", "data": [1]}, "reset data must be"),
        "reset extra entries": ({"endpoint": "reset", "data": {"options": {}, "hard": True}}, "entries hard"),
        "reset options not a map": ({"endpoint": "reset", "data": {"options": 3}}, "reset options must be a map"),
        "config protocol": ({"endpoint": "get_modality_config", "data": {"protocol": "n2"}}, "unknown protocol"),
        "not msgpack": (b"\xc1 not msgpack", "malformed request"),
    }


def _send_bad(port: int, cases: dict, server) -> None:
    errors_before = server.latency.errors
    with PolicyClient("127.0.0.1", port) as client:
        for name, (request, expected) in cases.items():
            raw = request if isinstance(request, bytes) else msgpack.packb(request, default=_pack_default)
            reply = exchange(port, None, raw=raw, hook=None)
            assert isinstance(reply, dict) and "error" in reply, (name, reply)
            assert expected in reply["error"], (name, reply["error"])
            assert client.ping(), f"server stopped answering after {name!r}"
    assert server.latency.errors - errors_before == len(cases)  # every malformed request counted once


def test_malformed_current_requests_are_answered(env, model_server):
    cases = _bad_requests(env)
    assert len(cases) == 32
    _send_bad(model_server.port, cases, model_server.server)
    assert model_server.thread.is_alive()
    actions, _ = get_action(model_server.port, nested(env.batch([1]), env.cfg))  # and still answers correctly
    want = env.policy.get_action(env.batch([1]), seed=0)
    np.testing.assert_array_equal(actions["left_arm"], want["action.left_arm"])


def test_malformed_replay_requests_are_answered(env, replay):
    cases = dict(list(_bad_requests(env).items())[:6])
    cases.update({
        "unknown episode": ({"endpoint": "reset", "data": {"options": {"episode_index": 9}}}, "not an episode"),
        "negative step": ({"endpoint": "reset", "data": {"options": {"step_index": -1}}}, "step_index must be"),
        "step not int": ({"endpoint": "reset", "data": {"options": {"step_index": "0"}}}, "step_index must be"),
    })
    before = replay.policy.info()
    _send_bad(replay.port, cases, replay.server)
    assert replay.policy.info() == before  # refused requests neither advance nor reset the replay
    assert replay.thread.is_alive()


# --- the commands ---------------------------------------------------------------------------------------


def test_cli_serve_replay_and_client(env, tmp_path):
    """`serve --dataset_path` (no model) in its own process, driven by `gr00t-export client` in both dialects."""
    from typer.testing import CliRunner

    from gr00t_export.cli import app

    cmd = [sys.executable, "-c", "from gr00t_export.cli import app; app()", "serve", "--dataset_path",
           str(env.dataset_path), "--episode", "1", "--modality_config", str(env.yaml), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = ServerLog(proc)
        port = log.port()
        assert port is not None, log.text(0)
        runner = CliRunner()
        out = tmp_path / "actions.npz"
        result = runner.invoke(app, ["client", "--port", str(port), "--dataset_path", str(env.dataset_path),
                                     "--episode", "0", "--step", "2", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "action.left_arm" in result.output and "(1, 16, 7)" in result.output
        assert "'current_step': 0" in result.output
        recorded = recorded_actions(env.dataset_path, 1, env.cfg)
        with np.load(out) as got:
            np.testing.assert_array_equal(got["action.left_arm"][0], expected_chunk(recorded["action.left_arm"], 0))
        obs_file = tmp_path / "obs.npz"
        np.savez(obs_file, **env.dataset.observation(0, 4, env.cfg))
        result = runner.invoke(app, ["client", "--port", str(port), "--protocol", "n1.5", "--obs", str(obs_file),
                                     "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "action.left_arm" in result.output and "(16, 7)" in result.output
        with np.load(out) as got:
            np.testing.assert_array_equal(got["action.left_arm"], expected_chunk(recorded["action.left_arm"], 16))
        bad = runner.invoke(app, ["client", "--port", str(port), "--protocol", "n2", "--obs", str(obs_file)])
        assert bad.exit_code == 2 and "unknown --protocol" in bad.output
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        err = log.text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "stopped after" in err


def test_cli_client_errors_are_one_line(env, tmp_path):
    from typer.testing import CliRunner

    from gr00t_export.cli import app

    runner = CliRunner()
    with zmq.Context() as ctx:  # a port nobody answers on
        sock = ctx.socket(zmq.REP)
        free = sock.bind_to_random_port("tcp://127.0.0.1")
        sock.close()
    cases = [
        (["--port", str(free), "--timeout_ms", "300", "--obs", "x.npz"], "no reply from"),
        (["--host", "not a host", "--obs", "x.npz"], "cannot connect to tcp://not a host:5555"),
        (["serve", "--dataset_path", str(env.dataset_path), "--model_path", str(env.ckpt)], "exactly one policy"),
        (["serve", "--dataset_path", str(env.dataset_path), "--episode", "7", "--modality_config", str(env.yaml)],
         "--episode 7 is not an episode"),
        (["serve", "--dataset_path", str(env.dataset_path), "--execution_horizon", "17", "--modality_config",
          str(env.yaml)], "--execution_horizon 17"),
        (["serve", "--model_path", str(env.ckpt), "--modality_config_protocol", "n2"], "unknown --modality_config"),
    ]
    for args, expected in cases:
        result = runner.invoke(app, args if args[0] == "serve" else ["client", *args])
        assert result.exit_code == 2, (args, result.output)
        output = result.output.replace("\n", " ")
        assert expected in output and "Traceback" not in output, (args, output)
    obs = env.dataset.observation(0, 0, env.cfg)
    obs["state.left_arm"] = obs["state.left_arm"][:, :5]
    np.savez(tmp_path / "short_arm.npz", **obs)
    with serving(env.policy) as (srv, _):
        for protocol in ("n1.5", "current"):  # a refused observation: the server's reason, one line
            result = runner.invoke(app, ["client", "--port", str(srv.port), "--protocol", protocol, "--obs",
                                         str(tmp_path / "short_arm.npz")])
            output = result.output.replace("\n", " ")
            assert result.exit_code == 2 and "the server answered:" in output and "left_arm" in output, output
            assert "Traceback" not in output
        result = runner.invoke(app, ["client", "--port", str(srv.port), "--dataset_path", str(env.dataset_path),
                                     "--step", "99"])
        assert result.exit_code == 2 and "step 99 is out of range" in result.output.replace("\n", " ")
