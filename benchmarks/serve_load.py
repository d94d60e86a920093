"""Loopback load test of `gr00t-export serve`, in both dialects: N sequential requests, then K concurrent clients;
with --batching, the batching window (`serve --batch_window_ms`) against 1, 4 and 8 concurrent clients.

Default mode: starts a PolicyServer in a thread on 127.0.0.1 (a free port) around the reference policy of a
checkpoint (a fresh `tiny` one unless --model_path is given), sends observations from a synthetic dataset and
reports client round-trip throughput and p50/p99 latency, plus the server's own handling time. The N1.5 phases use
`Client` (flat observation); the current ones `PolicyClient` (nested observation, `(action, info)` back), at
batch 1 and at --batch environments per request. Every reply is checked against a direct `policy.get_action`
call for the same observation (a pool of distinct states), so lost or mismatched replies are counted, not just
timed. The "protocol only" phases serve constant actions, so their round trip is the protocol's own cost.
Bounded: fixed request counts and a --max_seconds deadline.

    python benchmarks/serve_load.py --requests 40 --clients 4 --per_client 10 --json out/serve_load.json

--batching: `gr00t-export serve` in its own process (an exported build, --artifacts; a checkpoint's reference,
--model_path; neither: a fresh tiny checkpoint, built), first one request at a time, then with
--batch_window_ms, each against --clients_list concurrent clients (threads, each its own REQ socket, all sending
--per_client requests back to back). Every client sends its own observations (seeded synthetic ones of the
build's shapes, one instruction) with its own seed, and every reply is checked against the answer the same
request got alone (a sequential pass first, by a server without --cuda_graphs): "off" counts replies further than
--atol from it, "mixed" replies closer to another request's answer than to their own, "lost" requests never
answered. The batched server is started afresh per client count, so its log gives that phase's policy calls by
requests merged.

    python benchmarks/serve_load.py --batching --json out/serve_batching.json                       # CPU, tiny
    python benchmarks/serve_load.py --batching --artifacts /root/gb/b3b_fp16_ortops --device cuda --cuda_graphs \
        --per_client 100 --warmup 20 --json $OUT/serve_batching.json                                          # H200, 3B
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import zmq
from rich.console import Console
from rich.table import Table

from gr00t_export.families import family_for_checkpoint, open_reference
from gr00t_export.families.base import synthetic_observation
from gr00t_export.manifest import Manifest
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

    def __init__(self, interface, actions: dict[str, np.ndarray]):
        self.interface, self.actions = interface, actions

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


# --- --batching: the batching window against 1, 4 and 8 concurrent clients -----------------------------------


def free_port() -> int:
    with zmq.Context() as context:
        sock = context.socket(zmq.REP)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        sock.close()
    return port


class ServeProcess:
    """`gr00t-export serve` in its own process on a free loopback port; its log goes to a file (a pipe nobody
    reads could fill up and stall it)."""

    def __init__(self, target: list[str], options: list[str], log_path: Path, start_timeout_s: float):
        self.port, self.log_path = free_port(), log_path
        self._log = log_path.open("w")
        cmd = [sys.executable, "-m", "gr00t_export", "serve", *target, "--port", str(self.port), *options]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + start_timeout_s
        with Client("127.0.0.1", self.port, timeout_ms=1000) as client:
            while not client.ping():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"serve did not start ({' '.join(cmd)}):\n{log_path.read_text()[-3000:]}")

    def stop(self) -> str:
        """SIGTERM, then its whole log (the last line has the policy calls by requests merged)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()
        return self.log_path.read_text()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def merged_calls(log: str) -> dict[int, int]:
    """`policy calls by requests merged: 1: 3, 4: 10` from a batching server's last log line -> {1: 3, 4: 10}."""
    found = re.findall(r"policy calls by requests merged: ([0-9:, ]+)", log)
    if not found:
        return {}
    return {int(size): int(count) for size, count in (pair.split(":") for pair in found[-1].split(","))}


def client_observations(iface, clients: int, distinct: int, envs: int) -> list[list[dict]]:
    """Per client, `distinct` seeded synthetic observations of the build's shapes (state float32, one instruction
    for all, so every request can merge), `envs` environments each (unbatched when 1)."""
    out = []
    for c in range(clients):
        mine = []
        for j in range(distinct):
            samples = [synthetic_observation(iface, seed=1000 * c + 10 * j + e) for e in range(envs)]
            samples = [{k: v.astype(np.float32) if k in iface.state_keys else v for k, v in s.items()}
                       for s in samples]
            mine.append(samples[0] if envs == 1 else {k: np.stack([s[k] for s in samples]) for k in samples[0]})
        out.append(mine)
    return out


def connect(protocol: str, port: int, timeout_ms: int = 120000) -> Client | PolicyClient:
    return (PolicyClient if protocol == CURRENT else Client)("127.0.0.1", port, timeout_ms=timeout_ms)


def ask(client, protocol: str, obs: dict, seed: int) -> dict[str, np.ndarray]:
    """One get_action in `protocol`'s dialect; the current one has no seed (the server's default, 0)."""
    if protocol == CURRENT:
        return client.get_action(to_current_observation(obs))[0]
    return client.get_action(obs, seed=seed)


def distance(got: dict, want: dict) -> float:
    if sorted(got) != sorted(want) or any(got[k].shape != want[k].shape for k in want):
        return math.inf
    return max(float(np.abs(got[k].astype(np.float64) - want[k]).max()) for k in want)


def batching_phase(port: int, protocol: str, observations: list[list[dict]], expected: list[list[dict]],
                   clients: int, per_client: int, atol: float, deadline: float) -> dict:
    """`clients` threads, each its own REQ socket, released together, each sending `per_client` requests back to
    back; replies are kept and checked against the answers alone after the timing."""
    replies: list[list[tuple[int, dict]]] = [[] for _ in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def worker(c: int) -> None:
        try:
            with connect(protocol, port) as client:
                client.ping()
                barrier.wait(timeout=120)
                for j in range(per_client):
                    if time.monotonic() > deadline:
                        return
                    i = j % len(observations[c])
                    start = time.perf_counter()
                    got = ask(client, protocol, observations[c][i], seed=c + 1)
                    latencies[c].append(time.perf_counter() - start)
                    replies[c].append((i, got))
        except Exception as err:  # counted as a failure, never lost in the thread
            failures.append(f"client {c}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait(timeout=120)
    start = time.perf_counter()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic() + 90))
    wall = time.perf_counter() - start
    answers = [(c, i, want) for c in range(clients) for i, want in enumerate(expected[c])]
    off = mixed = 0
    worst = 0.0
    for c in range(clients):
        for i, got in replies[c]:
            own = distance(got, expected[c][i])
            worst = max(worst, own)
            off += own > atol
            mixed += any(distance(got, want) < own for o, k, want in answers if (o, k) != (c, i))
    answered = sum(len(r) for r in replies)
    return {"clients": clients, "sent": clients * per_client, "answered": answered,
            "lost": clients * per_client - answered, "off": off, "mixed": mixed, "max_abs_diff": worst,
            "failures": failures, "wall_s": wall, "throughput_rps": answered / wall if wall else 0.0,
            "latency": percentiles([x for per in latencies for x in per])}


def batching_load(args: argparse.Namespace) -> int:
    console = Console(width=None if sys.stdout.isatty() else 170)
    counts = [int(n) for n in args.clients_list.split(",")]
    deadline = time.monotonic() + args.max_seconds
    with tempfile.TemporaryDirectory(prefix="serve_batching_") as tmp:
        tmp = Path(tmp)
        if args.artifacts is not None:
            target, what = [str(args.artifacts)], str(args.artifacts)
            iface = Manifest.read(args.artifacts).interface
        elif args.model_path is not None:
            target, what = ["--model_path", str(args.model_path)], f"{args.model_path} (reference)"
            iface = family_for_checkpoint(args.model_path).open(args.model_path).interface
        else:
            from gr00t_export.families.n1_5.synthetic import make_checkpoint
            from gr00t_export.pipeline.build import BuildOptions, build

            console.print("building a tiny checkpoint (CPU) ...")
            ckpt = make_checkpoint(tmp / "ckpt", "tiny", seed=0, show_progress=False)
            build(BuildOptions(model_path=ckpt, output=tmp / "build"))
            target, what = [str(tmp / "build")], "tiny build"
            iface = Manifest.read(tmp / "build").interface
        plain = ["--device", args.device] + (["--backend", args.backend] if args.backend else [])
        device = plain + (["--cuda_graphs"] if args.cuda_graphs else [])
        observations = client_observations(iface, max(counts), args.distinct, args.envs)
        atol = args.atol if args.atol is not None else (1e-5 if args.device == "cpu" else 1e-2)
        phases = []
        # each request alone (one at a time, nothing else running), by a server without CUDA graphs: what every
        # reply must equal (a graphed server's own answers would hide a replay that writes elsewhere)
        with ServeProcess(target, plain, tmp / "serve_alone.log", args.start_timeout) as server:
            with connect(args.protocol, server.port) as client:
                expected = [[ask(client, args.protocol, obs, seed=c + 1) for obs in mine]
                            for c, mine in enumerate(observations)]
        with ServeProcess(target, device, tmp / "serve_off.log", args.start_timeout) as server:
            for n in counts:
                phase = batching_phase(server.port, args.protocol, observations, expected, n, args.per_client,
                                       atol, deadline)
                phases.append({"mode": "one at a time", **phase, "policy_calls": {1: phase["answered"]}})
        for n in counts:
            options = [*device, "--batch_window_ms", str(args.batch_window_ms), "--max_batch", str(args.max_batch)]
            with ServeProcess(target, options, tmp / f"serve_on_{n}.log", args.start_timeout) as server:
                # untimed: the runtime meets the merged batch sizes once before the clock runs
                batching_phase(server.port, args.protocol, observations, expected, n, args.warmup, atol, deadline)
                phase = batching_phase(server.port, args.protocol, observations, expected, n, args.per_client,
                                       atol, deadline)
                log = server.stop()
            phases.append({"mode": f"window {args.batch_window_ms:g} ms", **phase, "policy_calls": merged_calls(log)})

    table = Table(title=f"gr00t-export serve --batch_window_ms {args.batch_window_ms:g} --max_batch {args.max_batch}"
                        f"{' --cuda_graphs' if args.cuda_graphs else ''}, "
                        f"{what}, {args.device}, {args.protocol} dialect, {args.envs} env(s) per request, "
                        f"{args.per_client} requests per client; {os.cpu_count()} CPUs, load average "
                        f"{os.getloadavg()[0]:.1f}", title_justify="left")
    for col in ("mode", "clients", "answered/sent", "lost", "off", "mixed", "max |diff|", "req/s", "p50 ms",
                "p99 ms", "max ms", "policy calls by requests merged"):
        table.add_column(col, justify="left" if col in ("mode", "policy calls by requests merged") else "right")
    for r in phases:
        lat = r["latency"]
        calls = ", ".join(f"{size}: {count}" for size, count in sorted(r["policy_calls"].items()))
        table.add_row(r["mode"], str(r["clients"]), f"{r['answered']}/{r['sent']}", str(r["lost"]), str(r["off"]),
                      str(r["mixed"]), f"{r['max_abs_diff']:.1e}", f"{r['throughput_rps']:.2f}",
                      f"{lat.get('p50_ms', 0):.1f}", f"{lat.get('p99_ms', 0):.1f}", f"{lat.get('max_ms', 0):.1f}",
                      calls)
    console.print(table)
    console.print(f"off: replies further than {atol:g} from the same request answered alone; mixed: closer to "
                  "another request's answer than to their own. Batched policy calls include the "
                  f"{args.warmup} untimed warm-up requests per client.")
    for failure in [f for r in phases for f in r["failures"]]:
        console.print(f"[red]failure:[/] {failure}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "phases": phases, "target": what, "device": args.device, "protocol": args.protocol, "envs": args.envs,
            "batch_window_ms": args.batch_window_ms, "max_batch": args.max_batch, "cuda_graphs": args.cuda_graphs,
            "atol": atol,
            "per_client": args.per_client, "warmup": args.warmup, "cpus": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0], "python": platform.python_version(),
            "torch": torch.__version__}, indent=2))
        console.print(f"wrote {args.json}")
    ok = all(not r["lost"] and not r["off"] and not r["mixed"] and not r["failures"] for r in phases)
    return 0 if ok else 1


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
    batching = parser.add_argument_group("--batching: serve --batch_window_ms against concurrent clients")
    batching.add_argument("--batching", action="store_true", help="run this mode instead of the protocol phases")
    batching.add_argument("--artifacts", type=Path, help="exported build to serve [default: --model_path, else a "
                          "fresh tiny checkpoint, built]")
    batching.add_argument("--device", default="cpu", help="serve --device (cuda on the GPU machine)")
    batching.add_argument("--cuda_graphs", action="store_true", help="serve --cuda_graphs (a build on cuda)")
    batching.add_argument("--backend", help="serve --backend [default: ort for a build, torch for a checkpoint]")
    batching.add_argument("--clients_list", default="1,4,8", help="concurrent clients of each phase")
    batching.add_argument("--batch_window_ms", type=float, default=2.0)
    batching.add_argument("--max_batch", type=int, default=8, help="environments per policy call")
    batching.add_argument("--envs", type=int, default=1, help="environments per request (1: unbatched N1.5)")
    batching.add_argument("--protocol", default=N15, choices=(N15, CURRENT),
                          help="dialect of the clients (n1.5 sends a seed per client)")
    batching.add_argument("--distinct", type=int, default=4, help="distinct observations per client")
    batching.add_argument("--warmup", type=int, default=4, help="untimed requests per client before a batched phase")
    batching.add_argument("--atol", type=float, help="a reply further than this from its answer alone is 'off' "
                          "[default: 1e-5 on cpu, 1e-2 on cuda]")
    batching.add_argument("--start_timeout", type=float, default=600, help="seconds a server may take to start")
    args = parser.parse_args(argv)
    return batching_load(args) if args.batching else protocol_load(args)


def protocol_load(args: argparse.Namespace) -> int:
    """The default mode: both dialects' phases against an in-process server (see the module docstring)."""
    from gr00t_export.data.lerobot import LeRobotDataset  # PyAV: only this mode reads a dataset
    from gr00t_export.data.synthetic import make_dataset
    from gr00t_export.families.n1_5.synthetic import make_checkpoint

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
                   (("model", policy), ("protocol", ConstantPolicy(policy.interface, expected[0])))}
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
