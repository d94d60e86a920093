"""`gr00t-export serve` over loopback: the package client and a client written only from the protocol
description get the same actions as calling the policy directly; every malformed request is answered and
the server keeps serving; tokens, kill, signals and a bounded concurrent load.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
import zmq
from serving import ServerLog, serving

from gr00t_export.serve import (
    UNAUTHORIZED,
    Client,
    PolicyServer,
    ProtocolError,
    ServerError,
    WireModalityConfig,
    decode,
    encode,
)

MAX_BYTES = 256 * 1024  # small, so the oversize cases stay cheap


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from gr00t_export.data.lerobot import LeRobotDataset
    from gr00t_export.data.synthetic import make_dataset
    from gr00t_export.families import open_reference
    from gr00t_export.families.n1_5.synthetic import make_checkpoint

    root = tmp_path_factory.mktemp("serve")
    ckpt = make_checkpoint(root / "ckpt", preset_name="tiny", seed=0, show_progress=False)
    policy = open_reference(ckpt)
    cfg = policy.transforms.modality
    make_dataset(root / "ds", cfg, num_episodes=1, episode_length=8, image_size=64, seed=0)
    obs = LeRobotDataset(root / "ds").observation(0, 3, cfg)
    return SimpleNamespace(ckpt=ckpt, policy=policy, cfg=cfg, obs=obs)


@pytest.fixture(scope="module")
def server(env):
    # An N1.5 client's get_modality_config is byte-identical to a current one's: this server answers it in N1.5.
    with serving(env.policy, max_message_bytes=MAX_BYTES, modality_config_protocol="n1.5") as (srv, thread):
        yield SimpleNamespace(port=srv.port, server=srv, thread=thread)


# --- a client written from the protocol description alone ----------------------------------------------


def _raw_default(obj):
    if isinstance(obj, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, obj, allow_pickle=False)
        return {"__ndarray_class__": True, "as_npy": buf.getvalue()}
    raise TypeError(type(obj))


def _raw_hook(obj):
    if "__ModalityConfig_class__" in obj:
        return json.loads(obj["as_json"])
    if "__ndarray_class__" in obj:
        return np.load(io.BytesIO(obj["as_npy"]), allow_pickle=False)
    return obj


def raw_pack(obj) -> bytes:
    return msgpack.packb(obj, default=_raw_default)


def raw_exchange(port: int, payload: bytes, timeout_ms: int = 10000):
    """One REQ socket, one request, one reply (None on timeout)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    try:
        sock.send(payload)
        if not sock.poll(timeout_ms):
            return None
        return msgpack.unpackb(sock.recv(), object_hook=_raw_hook)
    finally:
        sock.close()


def assert_same_actions(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


# --- codec ----------------------------------------------------------------------------------------------


def test_codec_round_trip():
    values = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
        "big_endian": np.arange(5, dtype=">i4"),
        "u8": np.zeros((1, 4, 4, 3), np.uint8),
        "scalar": np.array(3.5),
        "empty": np.zeros((0, 7)),
        "text": np.array(["pick the cube"]),
        "config": WireModalityConfig([0], ["video.ego_view"]),
        "plain": [1, "a", {"b": 2.5}],
    }
    back = decode(encode(values))
    for key, value in values.items():
        if isinstance(value, np.ndarray):
            assert back[key].dtype == value.dtype and back[key].shape == value.shape
            np.testing.assert_array_equal(back[key], value)
        else:
            assert back[key] == value
    with pytest.raises(ProtocolError, match="object"):
        encode({"x": np.array([{"a": 1}], dtype=object)})


# --- parity ---------------------------------------------------------------------------------------------


def test_actions_match_direct_call(env, server):
    want = env.policy.get_action(env.obs, seed=0)
    with Client("127.0.0.1", server.port, timeout_ms=30000) as client:
        assert client.ping()
        assert_same_actions(client.get_action(env.obs), want)
        # Optional per-request seed and explicit noise reach the policy unchanged.
        assert_same_actions(client.get_action(env.obs, seed=7), env.policy.get_action(env.obs, seed=7))
        noise = np.random.default_rng(1).standard_normal((16, 32)).astype(np.float32)
        assert_same_actions(client.get_action(env.obs, noise=noise), env.policy.get_action(env.obs, noise=noise))
        # A batch of two goes through as one batch and comes back (2, 16, d).
        batch = {k: np.stack([v, v]) for k, v in env.obs.items()}
        batch[env.cfg.state_keys[0]] = batch[env.cfg.state_keys[0]] + np.array([0.0, 0.1])[:, None, None]
        got = client.get_action(batch)
        assert all(v.shape[0] == 2 and v.shape[1] == 16 for v in got.values())
        assert_same_actions(got, env.policy.get_action(batch, seed=0))

    raw = raw_exchange(server.port, raw_pack({"endpoint": "get_action", "data": env.obs}), timeout_ms=30000)
    assert_same_actions(raw, want)
    # `endpoint` defaults to get_action.
    assert_same_actions(raw_exchange(server.port, raw_pack({"data": env.obs}), timeout_ms=30000), want)


def test_modality_config(env, server):
    with Client("127.0.0.1", server.port) as client:
        got = client.get_modality_config()
    cfg = env.cfg
    assert got == {
        "video": WireModalityConfig(list(cfg.observation_indices), list(cfg.video_keys)),
        "state": WireModalityConfig(list(cfg.observation_indices), list(cfg.state_keys)),
        "action": WireModalityConfig(list(cfg.action_indices), list(cfg.action_keys)),
        "language": WireModalityConfig([0], [cfg.language_key]),
    }
    raw = raw_exchange(server.port, raw_pack({"endpoint": "get_modality_config"}))
    assert raw["action"] == {"delta_indices": list(range(16)), "modality_keys": list(cfg.action_keys)}
    assert raw["video"]["modality_keys"] == ["video.ego_view"]


# --- malformed input ------------------------------------------------------------------------------------


def _npy(array, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _bad_requests(env) -> dict[str, tuple[bytes, str]]:
    cfg, obs = env.cfg, env.obs
    video, state = cfg.video_keys[0], cfg.state_keys[0]

    def obs_with(**changes):
        data = dict(obs)
        for key, value in changes.items():
            key = key.replace("__", ".")
            if value is None:
                data.pop(key)
            else:
                data[key] = value
        return raw_pack({"endpoint": "get_action", "data": data})

    pickled = {"__ndarray_class__": True, "as_npy": _npy(np.array([{"a": 1}], dtype=object), allow_pickle=True)}
    truncated = {"__ndarray_class__": True, "as_npy": _npy(np.zeros((1, 7)))[:-8]}
    batched_video = np.stack([obs[video], obs[video]])
    return {
        "not msgpack": (b"\xc1\xc1 not msgpack", "malformed request"),
        "trailing bytes": (raw_pack({"endpoint": "ping"}) + b"x", "malformed request"),
        "too deep": (b"\x91" * 5000 + b"\xc0", "malformed request"),
        "non-map request": (raw_pack([1, 2, 3]), "expected a msgpack map"),
        "integer map keys": (msgpack.packb({1: 2}), "malformed request"),
        "unknown endpoint": (raw_pack({"endpoint": "fly"}), "Unknown endpoint: 'fly'"),
        "endpoint not str": (raw_pack({"endpoint": 5}), "Unknown endpoint"),
        "data not a map": (raw_pack({"endpoint": "get_action", "data": [1]}), "must be a map"),
        "no data": (raw_pack({"endpoint": "get_action"}), "observation lacks"),
        "missing video": (obs_with(**{video.replace(".", "__"): None}), f"lacks {video}"),
        "video float": (obs_with(**{video.replace(".", "__"): obs[video].astype(np.float32)}), "uint8"),
        "video no T": (obs_with(**{video.replace(".", "__"): obs[video][0]}), "H, W, 3"),
        "video T=2": (obs_with(**{video.replace(".", "__"): np.concatenate([obs[video]] * 2)}), "H, W, 3"),
        "video list": (obs_with(**{video.replace(".", "__"): obs[video].tolist()}), "must be a numpy array"),
        "state wrong dim": (obs_with(**{state.replace(".", "__"): np.zeros((1, 5))}), f"{state} must be (1, 7)"),
        "state NaN": (obs_with(**{state.replace(".", "__"): np.full((1, 7), np.nan)}), "NaN"),
        "state strings": (obs_with(**{state.replace(".", "__"): np.array([["a"] * 7])}), "float or integer"),
        "batch mix": (obs_with(**{video.replace(".", "__"): batched_video}), "(B, 1, 7)"),
        "batch sizes": (obs_with(**{video.replace(".", "__"): batched_video,
                                   **{k.replace(".", "__"): np.stack([obs[k]] * 3) for k in cfg.state_keys}}),
                        "batch 3"),
        "pickled array": (raw_pack({"endpoint": "get_action", "data": {video: pickled}}), "pickles"),
        "truncated npy": (raw_pack({"endpoint": "get_action", "data": {video: truncated}}), "bytes follow"),
        "as_npy not bytes": (raw_pack({"data": {video: {"__ndarray_class__": True, "as_npy": "x"}}}), "bytes"),
        "bad modality json": (raw_pack({"data": {"__ModalityConfig_class__": True, "as_json": "{"}}), "JSON"),
        "noise shape": (obs_with(noise=np.zeros((16, 5), np.float32)), "noise must be"),
        "noise NaN": (obs_with(noise=np.full((16, 32), np.nan, np.float32)), "noise contains NaN"),
        "seed negative": (obs_with(seed=-1), "seed must be"),
        "seed str": (obs_with(seed="0"), "seed must be"),
        "language int": (obs_with(**{cfg.language_key.replace(".", "__"): np.array([3])}), "str array"),
        "oversize": (b"\x00" * (MAX_BYTES + 1000), "over this server's limit"),
    }


def test_malformed_requests_are_answered(env, server):
    with Client("127.0.0.1", server.port) as client:
        for name, (payload, expected) in _bad_requests(env).items():
            reply = raw_exchange(server.port, payload)
            assert isinstance(reply, dict) and "error" in reply, (name, reply)
            assert expected in reply["error"], (name, reply["error"])
            assert client.ping(), f"server stopped answering after {name!r}"
    assert server.thread.is_alive()


def test_oversize_beyond_transport_cap_times_out_and_server_survives(server):
    with Client("127.0.0.1", server.port, timeout_ms=1500) as client:
        with pytest.raises(TimeoutError, match="size limit"):
            client.call("get_action", {"pad": np.zeros(2 * MAX_BYTES + 10, np.uint8)})
        assert client.ping()  # the same client recovers (fresh REQ socket), and so does the server
    assert server.thread.is_alive()


def test_policy_exception_is_an_error_reply(env):
    class Broken:
        interface = env.policy.interface  # the bare Policy protocol: an interface and get_action

        def get_action(self, obs, noise=None, seed=0):
            raise RuntimeError("boom")

    with serving(Broken()) as (srv, _), Client("127.0.0.1", srv.port) as client:
        with pytest.raises(ServerError, match="internal error in get_action: RuntimeError: boom"):
            client.get_action(env.obs)
        assert client.ping()


# --- token, kill, signals -------------------------------------------------------------------------------


def test_api_token(env):
    with serving(env.policy, api_token="s3cret") as (srv, _):
        for token in (None, "wrong"):
            with Client("127.0.0.1", srv.port, api_token=token) as client, pytest.raises(ServerError) as err:
                client.ping()
            assert str(err.value) == UNAUTHORIZED
        assert raw_exchange(srv.port, raw_pack({"endpoint": "ping", "api_token": 123})) == {"error": UNAUTHORIZED}
        with Client("127.0.0.1", srv.port, api_token="s3cret") as client:
            assert client.ping()
            assert set(client.get_modality_config()) == {"video", "state", "action", "language"}
    # Without a server token, a token sent anyway is ignored (as NVIDIA's server does).
    with serving(env.policy) as (srv, _), Client("127.0.0.1", srv.port, api_token="anything") as client:
        assert client.ping()


def test_kill_stops_the_server(env):
    with serving(env.policy) as (srv, thread), Client("127.0.0.1", srv.port, timeout_ms=500) as client:
        client.kill()
        thread.join(timeout=5)
        assert not thread.is_alive()
        assert not client.ping()  # nobody answers any more
        again = PolicyServer(env.policy, port=srv.port, log=lambda line: None)  # and the port was released
        again.close()


def test_sigint_stops_run_on_the_main_thread(env):
    server = PolicyServer(env.policy, port=0, log=lambda line: None)
    before = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    start = time.monotonic()
    server.run(max_seconds=30)  # returns on SIGINT, without KeyboardInterrupt
    timer.join()
    assert time.monotonic() - start < 10
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back


def test_cli_serve_answers_and_stops_on_sigterm(env):
    cmd = [sys.executable, "-c", "from gr00t_export.cli import app; app()", "serve", "--model_path", str(env.ckpt),
           "--port", "0", "--log_every", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = ServerLog(proc)
        port = log.port()
        assert port is not None, log.text(0)
        with Client("127.0.0.1", port, timeout_ms=30000) as client:
            want = env.policy.get_action(env.obs, seed=0)
            for _ in range(2):
                got = client.get_action(env.obs)
                for key in want:  # another process: allow for a different CPU thread count
                    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        err = log.text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "get_action over the last 2: p50" in err and "stopped after 2 requests" in err


def test_cli_serve_errors_are_one_line(env, tmp_path):
    import importlib.util

    from typer.testing import CliRunner

    from gr00t_export.cli import app

    runner = CliRunner()
    cases = [
        ([], "give exactly one policy"),
        ([str(tmp_path), "--model_path", str(env.ckpt)], "give exactly one policy"),
        (["--model_path", str(env.ckpt), "--backend", "ort"], "--backend ort applies to ARTIFACT_DIR"),
        (["--model_path", str(env.ckpt), "--backend", "tvm"], "unknown --backend"),
        ([str(tmp_path / "missing")], "missing"),  # the runner's own error, or "cannot load the exported runner"
        ([str(tmp_path), "--cuda_graphs"], "--cuda_graphs replays an exported build's onnxruntime stages on the GPU"),
        (["--model_path", str(env.ckpt), "--cuda_graphs", "--device", "cuda"], "--cuda_graphs replays"),
    ]
    if importlib.util.find_spec("tensorrt") is None:
        cases.append(([str(tmp_path), "--backend", "trt"], "--backend trt needs TensorRT"))
    for args, expected in cases:
        result = runner.invoke(app, ["serve", *args])
        assert result.exit_code == 2, (args, result.output)
        output = result.output.replace("\n", " ")
        assert expected in output or "exported runner" in output, (args, output)
        assert "Traceback" not in output, (args, output)


# --- bounded load ---------------------------------------------------------------------------------------


def test_sequential_and_concurrent_load(env, server):
    sequential, clients, per_client = 6, 4, 3
    key = env.cfg.state_keys[0]

    def obs_for(i: int) -> dict:
        obs = dict(env.obs)
        obs[key] = obs[key] + 0.05 * (i + 1)  # a distinct state per request, so replies can be matched
        return obs

    total = sequential + clients * per_client
    want = [env.policy.get_action(obs_for(i), seed=0) for i in range(total)]
    firsts = {want[i][env.cfg.action_keys[0]].tobytes() for i in range(total)}
    assert len(firsts) == total, "distinct states must give distinct actions for the matching to mean anything"

    with Client("127.0.0.1", server.port, timeout_ms=30000) as client:
        for i in range(sequential):
            assert_same_actions(client.get_action(obs_for(i)), want[i])

    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def worker(c: int) -> None:
        try:
            with Client("127.0.0.1", server.port, timeout_ms=30000) as own:
                for j in range(per_client):
                    i = sequential + c * per_client + j
                    results[i] = own.get_action(obs_for(i))
        except BaseException as err:  # reported below, never lost in the thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert sorted(results) == list(range(sequential, total))
    for i, got in results.items():
        assert_same_actions(got, want[i])
    stats = server.server.latency.stats()
    assert stats["endpoints"]["get_action"]["count"] >= total
