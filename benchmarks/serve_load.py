"""Loopback load test of `gr00t-export serve`, in both dialects: N sequential requests, then K concurrent clients.

Starts a PolicyServer in a thread on 127.0.0.1 (a free port) around the reference policy of a checkpoint
(a fresh `tiny` one unless --model_path is given), sends observations from a synthetic dataset and reports
client round-trip throughput and p50/p99 latency, plus the server's own handling time. The N1.5 phases use
`Client` (flat observation); the current ones `PolicyClient` (nested observation, `(action, info)` back), at
batch 1 and at --batch environments per request. Every reply is checked against a direct `policy.get_action`
call for the same observation (a pool of distinct states), so lost or mismatched replies are counted, not just
timed. The "protocol only" phases serve constant actions, so their round trip is the protocol's own cost.
Bounded: fixed request counts and a --max_seconds deadline.

    python benchmarks/serve_load.py --requests 40 --clients 4 --per_client 10 --json out/serve_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from gr00t_export.data.lerobot import LeRobotDataset
from gr00t_export.data.synthetic import make_dataset
from gr00t_export.families import open_reference
from gr00t_export.families.n1_5.synthetic import make_checkpoint
from gr00t_export.serve import CURRENT, N15, Client, PolicyClient, PolicyServer, current_actions, to_current_observation

POOL = 8  # distinct observations; request i sends observation i % POOL


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"count": 0}
    ms = np.asarray(seconds) * 1e3
    return {"count": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "max_ms": float(ms.max())}


class ConstantPolicy:
    """Answers every observation with the same actions at once: what is left of a round trip is the protocol
    (msgpack + npy + ZeroMQ over loopback + validation), not the model."""

    def __init__(self, spec, actions: dict[str, np.ndarray]):
        self.spec, self.actions = spec, actions

    def get_action(self, obs, noise=None, seed=0) -> dict[str, np.ndarray]:
        return self.actions


def same(got: dict, want: dict) -> bool:
    return sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)


def run_phase(port: int, clients: int, per_client: int, pool: list[dict], expected: list[dict],
              deadline: float, protocol: str = N15) -> dict:
    """`clients` threads, each with its own REQ socket, each sending `per_client` requests (until the deadline)."""
    connect = PolicyClient if protocol == CURRENT else Client
    latencies: list[list[float]] = [[] for _ in range(clients)]
    bad = [0] * clients
    failures: list[str] = []

    def worker(c: int) -> None:
        try:
            with connect("127.0.0.1", port, timeout_ms=30000) as client:
                for j in range(per_client):
                    if time.monotonic() > deadline:
                        return
                    i = (c * per_client + j) % len(pool)
                    start = time.perf_counter()
                    got = client.get_action(pool[i])
                    latencies[c].append(time.perf_counter() - start)
                    got = got[0] if protocol == CURRENT else got  # (action, info)
                    bad[c] += not same(got, expected[i])
        except Exception as err:  # counted as a failure, never lost in the thread
            failures.append(f"client {c}: {type(err).__name__}: {err}")

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic() + 35))
    wall = time.perf_counter() - start
    flat = [x for per in latencies for x in per]
    return {"protocol": protocol, "clients": clients, "sent": clients * per_client, "answered": len(flat),
            "mismatched": sum(bad),
            "failures": failures, "wall_s": wall, "throughput_rps": len(flat) / wall if wall else 0.0,
            "latency": percentiles(flat)}


def _as_n15(current: dict, cfg) -> dict:
    """A nested current observation back in the N1.5 keys the policy takes (batched, language (B, 1))."""
    obs = {f"video.{k}": v for k, v in current["video"].items()}
    obs.update({f"state.{k}": v for k, v in current["state"].items()})
    obs.update({k: np.asarray(v, dtype=str) for k, v in current["language"].items()})
    return obs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="sequential requests (one client)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients, each its own REQ socket")
    parser.add_argument("--per_client", type=int, default=10, help="requests per concurrent client")
    parser.add_argument("--batch", type=int, default=4, help="environments per request of the current batch phase")
    parser.add_argument("--image_size", type=int, default=256, help="camera frame size of the synthetic dataset")
    parser.add_argument("--model_path", type=Path, help="checkpoint to serve [default: a fresh tiny one]")
    parser.add_argument("--max_seconds", type=float, default=300, help="stop sending after this long")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)  # the table stays readable in logs
    deadline = time.monotonic() + args.max_seconds

    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        ckpt = args.model_path or make_checkpoint(Path(tmp) / "ckpt", "tiny", seed=0, show_progress=False)
        policy = open_reference(ckpt)
        cfg = policy.transforms.modality
        make_dataset(Path(tmp) / "ds", cfg, num_episodes=1, episode_length=POOL + args.batch,
                     image_size=args.image_size)
        dataset = LeRobotDataset(Path(tmp) / "ds")
        pool = [dataset.observation(0, i, cfg) for i in range(POOL)]
        expected = [policy.get_action(obs, seed=0) for obs in pool]
        # The current dialect sends float32 state, so its expected answers are computed from exactly that.
        current_pool = [to_current_observation(obs) for obs in pool]
        current_expected = [current_actions(policy.get_action(_as_n15(obs, cfg), seed=0), flat=False)
                            for obs in current_pool]
        batches = [{k: np.stack([dataset.observation(0, i + b, cfg)[k] for b in range(args.batch)])
                    for k in pool[0]} for i in range(POOL)]
        batch_pool = [to_current_observation(obs) for obs in batches]
        batch_expected = [current_actions(policy.get_action(_as_n15(obs, cfg), seed=0), flat=False)
                          for obs in batch_pool]

        servers = {name: PolicyServer(p, port=0, log=lambda line: None) for name, p in
                   (("model", policy), ("protocol", ConstantPolicy(policy.spec, expected[0])))}
        threads = [threading.Thread(target=srv.run, kwargs={"max_seconds": args.max_seconds + 60}, daemon=True)
                   for srv in servers.values()]
        for t in threads:
            t.start()
        try:
            port = servers["model"].port
            with Client("127.0.0.1", port, timeout_ms=30000) as client:
                for obs in pool[:2]:  # warm-up, not timed
                    client.get_action(obs)
            sequential = run_phase(port, 1, args.requests, pool, expected, deadline)
            concurrent = run_phase(port, args.clients, args.per_client, pool, expected, deadline)
            protocol = run_phase(servers["protocol"].port, 1, args.requests, pool, [expected[0]] * POOL, deadline)
            current = run_phase(port, 1, args.requests, current_pool, current_expected, deadline, CURRENT)
            current_concurrent = run_phase(port, args.clients, args.per_client, current_pool, current_expected,
                                           deadline, CURRENT)
            current_batch = run_phase(port, 1, args.requests, batch_pool, batch_expected, deadline, CURRENT)
            current_protocol = run_phase(servers["protocol"].port, 1, args.requests, current_pool,
                                         [current_actions(expected[0], flat=False)] * POOL, deadline, CURRENT)
        finally:
            for srv in servers.values():
                srv.stop()
            for t in threads:
                t.join(timeout=10)
        server_side = servers["model"].latency.summary("get_action")  # read once its thread has stopped

    load = os.getloadavg()[0]
    table = Table(title=f"gr00t-export serve, loopback, {cfg.name}, {args.image_size}px frames, "
                        f"{'tiny' if args.model_path is None else args.model_path}; {os.cpu_count()} CPUs, "
                        f"load average {load:.1f}", title_justify="left")
    for col in ("phase", "clients", "answered/sent", "bad", "wall s", "req/s", "p50 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    phases = (("n1.5 sequential", sequential), ("n1.5 concurrent", concurrent), ("n1.5 protocol only", protocol),
              ("current sequential", current), ("current concurrent", current_concurrent),
              (f"current batch {args.batch}", current_batch), ("current protocol only", current_protocol))
    for name, r in phases:
        lat = r["latency"]
        bad = r["mismatched"] + len(r["failures"])
        table.add_row(name, str(r["clients"]), f"{r['answered']}/{r['sent']}", str(bad), f"{r['wall_s']:.2f}",
                      f"{r['throughput_rps']:.2f}", f"{lat.get('p50_ms', 0):.1f}", f"{lat.get('p99_ms', 0):.1f}",
                      f"{lat.get('max_ms', 0):.1f}")
    table.add_row("server get_action (both)", "", str(server_side.get("count", 0)), "", "", "",
                  f"{server_side.get('p50_ms', 0):.1f}", f"{server_side.get('p99_ms', 0):.1f}",
                  f"{server_side.get('max_ms', 0):.1f}")
    console.print(table)
    for failure in [f for _, r in phases for f in r["failures"]]:
        console.print(f"[red]failure:[/] {failure}")

    report = {"sequential": sequential, "concurrent": concurrent, "server_get_action": server_side,
              "protocol_only": protocol, "current_sequential": current, "current_concurrent": current_concurrent,
              "current_batch": current_batch, "current_protocol_only": current_protocol, "batch": args.batch,
              "load_average_1min": load, "cpus": os.cpu_count(),
              "image_size": args.image_size, "modality_config": cfg.name,
              "model": "tiny" if args.model_path is None else str(args.model_path),
              "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
                          "python": platform.python_version(), "torch": torch.__version__}}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {args.json}")
    ok = all(r["answered"] == r["sent"] and not r["mismatched"] and not r["failures"] for _, r in phases)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
