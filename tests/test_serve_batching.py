"""`serve --batch_window_ms`: get_action requests of concurrent clients (threads, each its own REQ socket, real
ZeroMQ and msgpack) merged into one policy call of the real tiny model, exported (onnxruntime) and reference
(PyTorch); every client gets what the same request gets alone, only mergeable requests are merged, a bad request
fails only its sender, and a stateful replay is never merged.

The clients are released together by a barrier and the window is long (60 s): it closes as soon as `max_batch`
environments are waiting, so which requests share a call does not depend on timing.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from serving import ServerLog, serving

from gr00t_export.errors import InputError
from gr00t_export.serve import Client, PolicyClient, PolicyServer, ServerError, to_current_observation
from gr00t_export.serve.batching import ActionRequest, plan

WINDOW_MS = 60000.0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from gr00t_export.data.lerobot import LeRobotDataset
    from gr00t_export.data.synthetic import make_dataset
    from gr00t_export.families import open_reference
    from gr00t_export.families.n1_5.synthetic import make_checkpoint
    from gr00t_export.pipeline.build import BuildOptions, build
    from gr00t_export.runtime.runner import ExportedGr00tRunner

    root = tmp_path_factory.mktemp("serve_batching")
    ckpt = make_checkpoint(root / "ckpt", "tiny", seed=0, show_progress=False)
    build(BuildOptions(model_path=ckpt, output=root / "build"))
    reference = open_reference(ckpt)
    cfg = reference.transforms.modality
    dataset_path = make_dataset(root / "ds", cfg, num_episodes=2, episode_length=8, image_size=64, seed=0)
    dataset = LeRobotDataset(dataset_path)

    def obs(step: int, episode: int = 0) -> dict:
        """One unbatched N1.5 observation, state float32 (what the current dialect sends too)."""
        out = dataset.observation(episode, step, cfg)
        return {k: v.astype(np.float32) if k in cfg.state_keys else v for k, v in out.items()}

    def stacked(*steps: int) -> dict:
        single = [obs(s) for s in steps]
        return {k: np.stack([o[k] for o in single]) for k in single[0]}

    assert obs(0)[cfg.language_key][0] != obs(0, episode=1)[cfg.language_key][0]  # two tasks, two prompts
    return SimpleNamespace(root=root, ckpt=ckpt, build=root / "build", cfg=cfg, dataset_path=dataset_path,
                           obs=obs, stacked=stacked, policies={"exported": ExportedGr00tRunner(root / "build"),
                                                               "reference": reference})


def at_once(port: int, jobs: list[tuple[type, Callable[[Any], Any]]]) -> list[Any]:
    """Each job `(client class, send)` in its own thread with its own REQ socket; all connect, then all send
    together. Returns each job's result, or the exception it raised."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)

    def worker(i: int) -> None:
        connect, send = jobs[i]
        try:
            with connect("127.0.0.1", port, timeout_ms=120000) as client:
                assert client.ping()  # connected before anyone sends
                barrier.wait(timeout=60)
                results[i] = send(client)
        except BaseException as err:  # returned to the test, never lost in the thread
            results[i] = err

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    assert not any(t.is_alive() for t in threads)
    return results


def assert_close(got: dict, want: dict, bare: bool = False) -> None:
    """`got` is what the server answered, `want` the policy's own answer to the same request alone."""
    assert sorted(got) == sorted(k.split(".", 1)[1] if bare else k for k in want)
    for key, value in want.items():
        reply = got[key.split(".", 1)[1] if bare else key]
        assert reply.dtype == np.float32 and reply.shape == value.shape, key
        np.testing.assert_allclose(reply, value, rtol=0, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("which", ["exported", "reference"])
def test_concurrent_clients_share_one_call_and_get_their_own_actions(env, which):
    policy = env.policies[which]
    noise = np.random.default_rng(5).standard_normal((2, 16, 32)).astype(np.float32)
    one, two, nested, flat = env.obs(0), env.stacked(1, 2), env.stacked(3, 4), env.stacked(5)
    # What each request gets alone: its seed (3), its explicit noise, or the default seed 0.
    alone = [policy.get_action(one, seed=3), policy.get_action(two, noise=noise), policy.get_action(nested, seed=0),
             policy.get_action(flat, seed=0)]
    rows = [a[env.cfg.action_keys[0]].reshape(-1, 16, 7) for a in alone]
    assert len({r.tobytes() for rs in rows for r in rs}) == 6, "six distinct answers, so a mix-up would show"

    log: list[str] = []
    with serving(policy, log, batch_window_ms=WINDOW_MS, max_batch=6) as (server, _):
        got = at_once(server.port, [
            (Client, lambda c: c.get_action(one, seed=3)),  # N1.5, unbatched
            (Client, lambda c: c.get_action(two, noise=noise)),  # N1.5, two environments, explicit noise
            (PolicyClient, lambda c: c.get_action(to_current_observation(nested))),  # current, nested, B = 2
            (PolicyClient, lambda c: c.get_action(to_current_observation(flat, flat=True))),  # sim wrapper, B = 1
        ])
        assert server.batching and any("batching: get_action requests arriving within 60000 ms" in s for s in log)
        stats = server.latency.stats()
    assert not [r for r in got if isinstance(r, BaseException)], got
    assert stats["policy_calls"] == {4: 1}  # the four requests (six environments) ran as one call
    assert got[0]["action.left_arm"].shape == (16, 7)  # the unbatched request is answered unbatched
    assert_close(got[0], alone[0])
    assert_close(got[1], alone[1])
    actions, info = got[2]
    assert info == {}
    assert_close(actions, alone[2], bare=True)
    assert_close(got[3][0], alone[3])


def test_window_merges_only_what_answers_as_alone(env):
    """Same instruction and shapes merge; another instruction (its prompt would be padded), another image size and
    another state dtype run alone; a malformed request is refused to its sender only; a ping is answered."""
    policy = env.policies["exported"]
    merged_a, merged_b, other_task = env.obs(0), env.obs(1), env.obs(0, episode=1)
    small = env.obs(2)
    small["video.ego_view"] = np.ascontiguousarray(small["video.ego_view"][:, :48, :40])
    float64 = {k: v.astype(np.float64) if k in env.cfg.state_keys else v for k, v in env.obs(3).items()}
    short_arm = env.obs(4)
    short_arm["state.left_arm"] = short_arm["state.left_arm"][:, :5]
    requests = [merged_a, merged_b, other_task, small, float64]
    alone = [policy.get_action(o, seed=0) for o in requests]

    with serving(policy, batch_window_ms=WINDOW_MS, max_batch=5) as (server, _):
        got = at_once(server.port, [*[(Client, lambda c, o=o: c.get_action(o)) for o in requests],
                                    (Client, lambda c: c.get_action(short_arm)), (Client, lambda c: c.ping())])
        stats = server.latency.stats()
    for i, want in enumerate(alone):
        assert not isinstance(got[i], BaseException), (i, got[i])
        assert_close(got[i], want)
    assert isinstance(got[5], ServerError) and "state.left_arm must be (1, 7)" in str(got[5])
    assert got[6] is True
    assert stats["policy_calls"] == {2: 1, 1: 3}
    assert stats["errors"] == 1


def test_a_failing_merged_call_is_retried_alone(env):
    """The policy raises on one request's state: the merged call fails, each request runs alone, and only that
    request's client gets the error."""
    runner, poison = env.policies["exported"], 123.0

    class RefusesPoison:
        interface = runner.interface

        def get_action(self, obs, noise=None, seed=0):
            if np.any(obs["state.left_arm"] == poison):
                raise RuntimeError("poisoned state")
            return runner.get_action(obs, noise=noise, seed=seed)

    good = [env.obs(0), env.obs(1)]
    bad = env.obs(2)
    bad["state.left_arm"][..., 0] = poison
    log: list[str] = []
    with serving(RefusesPoison(), log, batch_window_ms=WINDOW_MS, max_batch=3) as (server, _):
        got = at_once(server.port, [(Client, lambda c, o=o: c.get_action(o)) for o in (*good, bad)])
        stats = server.latency.stats()
    for i, obs in enumerate(good):
        assert_close(got[i], runner.get_action(obs, seed=0))
    assert isinstance(got[2], ServerError) and "internal error in get_action: RuntimeError: poisoned" in str(got[2])
    assert stats["policy_calls"] == {1: 2}
    assert any("a merged call of 3 requests failed" in line for line in log)


def test_replay_is_never_merged(env):
    """Each replay call advances its episode, so concurrent clients get consecutive chunks, one call each."""
    from gr00t_export.serve.replay import ReplayPolicy

    replay = ReplayPolicy(env.dataset_path, env.cfg, episode=0, execution_horizon=4)
    log: list[str] = []
    with serving(replay, log, batch_window_ms=WINDOW_MS, max_batch=8) as (server, _):
        got = at_once(server.port, [(PolicyClient, lambda c: c.get_action(to_current_observation(env.obs(0))))] * 2)
        stats = server.latency.stats()
    assert not server.batching and any("batching off: the policy is stateful" in line for line in log)
    assert sorted(info["current_step"] for _, info in got) == [0, 4]
    assert stats["policy_calls"] == {1: 2}


def test_plan_groups_in_arrival_order_up_to_max_batch(env):
    iface = env.policies["exported"].interface
    language = iface.language_key

    def request(obs: dict) -> ActionRequest:
        return ActionRequest.of(obs, iface, None, 0, "n1.5")

    a, b, c, d = request(env.obs(0)), request(env.stacked(1, 2)), request(env.obs(0, episode=1)), request(env.obs(3))
    assert (a.batch, a.batched, b.batch, b.batched) == (1, False, 2, True)
    assert plan([a, b, c, d], language, max_batch=8) == [[0, 1, 3], [2]]
    assert plan([a, b, c, d], language, max_batch=3) == [[0, 1], [2], [3]]  # d would make 4 environments
    assert plan([b, a], language, max_batch=1) == [[0], [1]]  # larger than max_batch: alone


def test_pinned_shapes_serve_each_batch_as_alone(env, tmp_path):
    """`serve --cuda_graphs` swaps the ONNX stages for pools of shape-pinned sessions (CUDA graphs on a GPU; on the
    CPU the same pinned sessions without graphs) and pads each batch to a power of two: a merged call of 3 requests
    runs at batch 4, a lone one at 1, so two shapes are made, and every client still gets what the unpinned runner
    answers it alone."""
    from gr00t_export.runtime.cuda_graphs import StaticCudaGraphOnnxRunner, graphed_stages
    from gr00t_export.runtime.runner import ExportedGr00tRunner

    pinned = ExportedGr00tRunner(env.build)
    pinned.stages = graphed_stages(pinned.graph, pinned.stages, env.build, "cpu", tmp_path / "pinned")
    pinned.pad_batches = True
    pools = {n: s.pool for n, s in pinned.stages.items() if isinstance(s, StaticCudaGraphOnnxRunner)}
    assert sorted(pools) == ["denoising_subgraph", "llm", "vit"]
    requests = [env.obs(0), env.obs(3), env.obs(5), env.obs(7)]
    with serving(pinned, batch_window_ms=WINDOW_MS, max_batch=3) as (server, _):
        got = at_once(server.port, [(Client, lambda c, o=o: c.get_action(o)) for o in requests[:3]])
    assert server.latency.policy_calls == {3: 1}
    with serving(pinned, batch_window_ms=WINDOW_MS, max_batch=1) as (server, _):  # full at once: no window wait
        got += [at_once(server.port, [(Client, lambda c: c.get_action(requests[3]))])[0]]
    assert server.latency.policy_calls == {1: 1}
    for obs, reply in zip(requests, got, strict=True):
        assert_close(reply, env.policies["exported"].get_action(obs, seed=0))
    assert {n: sorted(k[0][0] for k in p.entries) for n, p in pools.items()} == {
        "vit": [1, 4], "llm": [1, 4], "denoising_subgraph": [1, 4]}


def test_batching_options_are_checked(env):
    policy = env.policies["exported"]
    for kwargs, expected in (({"batch_window_ms": -1}, "--batch_window_ms must be"),
                             ({"max_batch": 0}, "--max_batch must be an integer >= 1")):
        with pytest.raises(InputError, match=expected):
            PolicyServer(policy, port=0, log=lambda line: None, **kwargs)


def test_cli_serve_batches_an_exported_build(env):
    cmd = [sys.executable, "-c", "from gr00t_export.cli import app; app()", "serve", str(env.build), "--port", "0",
           "--batch_window_ms", str(WINDOW_MS), "--max_batch", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = ServerLog(proc)
        port = log.port()
        assert port is not None, log.text(0)
        requests = [env.obs(0), env.obs(5)]
        got = at_once(port, [(Client, lambda c, o=o: c.get_action(o)) for o in requests])
        for obs, reply in zip(requests, got, strict=True):
            assert_close(reply, env.policies["exported"].get_action(obs, seed=0))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        err = log.text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "stopped after 4 requests (0 answered with an error); policy calls by requests merged: 2: 1" in err, err
