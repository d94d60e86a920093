"""The policy server: Isaac-GR00T's protocol (see `protocol`) on a ZeroMQ socket, with a latency log and signal
handling; requests that arrive together can run as one policy call (`batching`)."""

from __future__ import annotations

import hmac
import math
import signal
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import zmq

from gr00t_export.errors import InputError
from gr00t_export.families.base import PolicyInterface
from gr00t_export.serve.batching import ActionRequest, merge, plan, split
from gr00t_export.serve.protocol import (
    CURRENT,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PORT,
    ENDPOINTS,
    N15,
    PROTOCOLS,
    UNAUTHORIZED,
    ProtocolError,
    check_current_observation,
    check_observation,
    decode,
    describe,
    encode,
    is_current_get_action,
    modality_config_reply,
)

POLL_MS = 100  # how often the loop wakes up to notice stop() and signals


class Policy(Protocol):
    """What the server needs from a policy: ReferencePolicy, ExportedGr00tRunner and ReplayPolicy all fit.

    Optional: `get_action_with_info(obs, noise, seed) -> (actions, info)` for the current dialect's info, and
    `reset(options) -> info` for stateful policies (the replay); without them info is `{}` and reset is a no-op.
    """

    interface: PolicyInterface

    def get_action(self, obs: dict[str, np.ndarray], noise: np.ndarray | None = None,
                   seed: int = 0) -> dict[str, np.ndarray]: ...


class LatencyLog:
    """Per-endpoint handling times of the most recent requests, for p50/p99 without unbounded memory, and how many
    requests each policy call answered (1 unless batching merged several)."""

    def __init__(self, keep: int = 10000):
        self.samples: dict[str, deque[float]] = {}
        self.counts: dict[str, int] = {}
        self.errors = 0
        self.keep = keep
        self.policy_calls: Counter[int] = Counter()  # requests answered by one call -> number of such calls

    def add(self, endpoint: str, seconds: float, error: bool) -> None:
        self.samples.setdefault(endpoint, deque(maxlen=self.keep)).append(seconds)
        self.counts[endpoint] = self.counts.get(endpoint, 0) + 1
        self.errors += error

    def add_call(self, requests: int) -> None:
        self.policy_calls[requests] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self, endpoint: str, last: int | None = None) -> dict[str, float]:
        times = list(self.samples.get(endpoint, ()))[-last:] if last else list(self.samples.get(endpoint, ()))
        if not times:
            return {"count": 0}
        ms = np.asarray(times) * 1e3
        return {"count": len(times), "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}

    def batches(self) -> str:
        """`requests per call: calls` pairs, e.g. `1: 3, 4: 10` (what `serve_load.py` reads from the log)."""
        return ", ".join(f"{size}: {count}" for size, count in sorted(self.policy_calls.items())) or "none"

    def stats(self) -> dict[str, Any]:
        return {"requests": self.total, "errors": self.errors,
                "endpoints": {name: self.summary(name) for name in self.samples},
                "policy_calls": dict(sorted(self.policy_calls.items()))}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """A ROUTER socket's message -> (routing envelope to send the reply back with, request body). A REQ client's
    request arrives as [identity, b"", body]: the envelope ends at the empty delimiter frame."""
    for i, frame in enumerate(frames):
        if not frame:
            return frames[:i + 1], frames[i + 1:]
    return frames[:1], frames[1:]


@dataclass
class _Waiting:
    """A get_action received and checked, waiting for its policy call."""

    envelope: list[bytes]
    received: float  # perf_counter() at arrival: the latency log measures from here
    request: ActionRequest


def why_not_batchable(policy: Policy) -> str | None:
    """None when `policy` can run merged requests; else why not."""
    if hasattr(policy, "reset") or hasattr(policy, "get_action_with_info"):
        return "the policy is stateful (each call advances it), so requests run one at a time"
    if not all(policy.interface.noise_shape):
        return "the policy takes no initial noise, so requests run one at a time"
    return None


class PolicyServer:
    """A policy on a ZeroMQ socket speaking Isaac-GR00T's protocol; see `protocol`'s docstring.

    The socket is a ROUTER, which talks to REQ clients as a REP socket does (identity + empty delimiter
    envelope) but can hold several clients' requests at once: with `batch_window_ms > 0`, get_action requests that
    arrive within that window of the first one run as one policy call of up to `max_batch` environments when
    they can be merged (`batching`), each client answered with its own actions; otherwise, and by default, one
    request at a time in arrival order.

    The socket is bound on construction (port 0 picks a free one: read `.port`), so callers can connect
    before `run()`. `run()` blocks until `kill`, `stop()`, SIGINT/SIGTERM (when run on the main thread) or
    `max_seconds`; it wakes every POLL_MS to notice them.
    """

    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = DEFAULT_PORT, api_token: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, log_every: int = 0, default_seed: int = 0,
                 log: Callable[[str], None] = _stderr, modality_config_protocol: str = CURRENT,
                 batch_window_ms: float = 0.0, max_batch: int = 8):
        if max_message_bytes < 1:
            raise InputError(f"max_message_bytes must be positive, got {max_message_bytes}")
        if modality_config_protocol not in PROTOCOLS:
            raise InputError(f"unknown modality config protocol {modality_config_protocol!r}; use current "
                             "(Isaac-GR00T's PolicyClient, IsaacLab) or n1.5 (RobotInferenceClient)")
        if log_every < 0:
            raise InputError(f"--log_every must be 0 (off) or a positive count, got {log_every}")
        if not 0 <= batch_window_ms < math.inf:
            raise InputError(f"--batch_window_ms must be 0 (off) or a positive number of ms, got {batch_window_ms}; "
                             "a few ms gathers concurrent clients")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise InputError(f"--max_batch must be an integer >= 1 (environments per policy call), got {max_batch!r}")
        self.policy, self.api_token, self.log_every, self.default_seed, self.log = (
            policy, api_token or None, log_every, default_seed, log)
        self.modality_config_protocol = modality_config_protocol
        self.max_message_bytes = max_message_bytes
        self.modality = policy.interface
        self.state_dims = dict(self.modality.state_dims)
        self.noise_shape = tuple(self.modality.noise_shape) if all(self.modality.noise_shape) else None
        self.batch_window_s, self.max_batch = batch_window_ms / 1e3, max_batch
        self.unbatchable = why_not_batchable(policy) if batch_window_ms > 0 else None
        self.batching = batch_window_ms > 0 and self.unbatchable is None
        self._closed = False
        self.latency = LatencyLog()
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a client that is gone raises, and is logged
        self._socket.setsockopt(zmq.MAXMSGSIZE, 2 * max_message_bytes)
        self._socket.setsockopt(zmq.RCVTIMEO, POLL_MS)
        self._socket.setsockopt(zmq.SNDTIMEO, 1000)
        self._socket.setsockopt(zmq.LINGER, 1000)  # lets the kill reply leave before the socket closes
        try:
            if port == 0:
                self.port = self._socket.bind_to_random_port(f"tcp://{host}")
            else:
                self._socket.bind(f"tcp://{host}:{port}")
                self.port = port
        except zmq.ZMQError as err:
            self.close()
            raise InputError(f"cannot listen on tcp://{host}:{port} ({err}); pick another --port or stop the "
                             "server already using it") from None
        self.host = host
        self.endpoint = f"tcp://{host}:{self.port}"

    def stop(self) -> None:
        """Ask `run()` to return; safe from other threads and from signal handlers."""
        self._stop.set()

    def close(self) -> None:
        if self._closed:
            return
        self._socket.close()
        self._context.term()
        self._closed = True

    def run(self, max_seconds: float | None = None) -> None:
        """Serve until stopped; always closes the socket on the way out."""
        if self._closed:
            raise RuntimeError("this PolicyServer was closed; create a new one to serve again")
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: self.stop())
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        token = "required" if self.api_token else "none"
        self.log(f"listening on {self.endpoint} (api token: {token}; max request "
                 f"{self.max_message_bytes / 2**20:.1f} MiB; endpoints: {', '.join(ENDPOINTS)}; get_action in both "
                 f"dialects; get_modality_config in the {self.modality_config_protocol} one)")
        if self.batching:
            self.log(f"batching: get_action requests arriving within {self.batch_window_s * 1e3:g} ms of each other "
                     f"run as one policy call of up to {self.max_batch} environments")
        elif self.unbatchable:
            self.log(f"batching off: {self.unbatchable}")
        try:
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() > deadline:
                    self.log(f"stopping: ran for max_seconds={max_seconds}")
                    break
                try:
                    frames = self._socket.recv_multipart()
                except zmq.Again:
                    continue
                waiting = self._receive(frames)
                if waiting is not None:
                    self._act_on([waiting, *self._gather(waiting)] if self.batching else [waiting])
        finally:
            for sig, handler in previous.items():
                if handler is not None:
                    signal.signal(sig, handler)
            self.close()
        self.log(f"stopped after {self.latency.total} requests ({self.latency.errors} answered with an error)"
                 + (f"; policy calls by requests merged: {self.latency.batches()}" if self.batching else ""))

    def _gather(self, first: _Waiting) -> list[_Waiting]:
        """The get_action requests arriving within the window opened by `first`, until `max_batch` environments
        are waiting; anything else that arrives meanwhile is answered at once."""
        more: list[_Waiting] = []
        environments = first.request.batch
        closes = first.received + self.batch_window_s
        while environments < self.max_batch and not self._stop.is_set():
            left_ms = (closes - time.perf_counter()) * 1e3
            if left_ms <= 0 or not self._socket.poll(math.ceil(left_ms)):
                break
            try:
                waiting = self._receive(self._socket.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                continue
            if waiting is not None:
                more.append(waiting)
                environments += waiting.request.batch
        return more

    def _log_latency(self) -> None:
        s = self.latency.summary("get_action", last=self.log_every)
        batches = f"; policy calls by requests merged: {self.latency.batches()}" if self.batching else ""
        if s["count"]:
            self.log(f"{self.latency.total} requests ({self.latency.errors} errors); get_action over the last "
                     f"{s['count']}: p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms{batches}")
        else:
            self.log(f"{self.latency.total} requests ({self.latency.errors} errors); no get_action yet")

    def _receive(self, frames: list[bytes]) -> _Waiting | None:
        """One message off the socket: a checked get_action is returned to wait for its policy call; anything else
        (other endpoints, every refused request) is answered here."""
        received = time.perf_counter()
        envelope, body = split_envelope(frames)
        if len(body) != 1:
            endpoint, outcome, protocol = "malformed", {"error": f"malformed request: expected one message frame, "
                                                                 f"got {len(body)}"}, N15
        else:
            endpoint, outcome, protocol = self._prepare(body[0])
        if isinstance(outcome, ActionRequest):
            return _Waiting(envelope, received, outcome)
        self._answer(envelope, received, endpoint, outcome, protocol)
        return None

    def _answer(self, envelope: list[bytes], received: float, endpoint: str, reply: Any, protocol: str) -> None:
        self._send(envelope, reply, protocol)
        self.latency.add(endpoint, time.perf_counter() - received, isinstance(reply, dict) and "error" in reply)
        if self.log_every and self.latency.total % self.log_every == 0:
            self._log_latency()

    def _send(self, envelope: list[bytes], reply: Any, protocol: str) -> None:
        try:
            payload = encode(reply, protocol)
        except Exception as err:
            payload = encode({"error": f"internal error: the reply could not be encoded ({err})"})
        try:
            self._socket.send_multipart([*envelope, payload])
        except zmq.ZMQError as err:  # EHOSTUNREACH: the client is gone; EAGAIN: it stopped reading for 1 s
            self.log(f"warning: a reply could not be sent ({err}; client gone?)")

    def _act_on(self, waiting: list[_Waiting]) -> None:
        """Runs the policy for a window's get_action requests (merged where they can be) and answers each."""
        for call in plan([w.request for w in waiting], self.modality.language_key, self.max_batch):
            requests = [waiting[i].request for i in call]
            replies = [self._call_alone(requests[0])] if len(call) == 1 else self._call_merged(requests)
            for i, reply in zip(call, replies, strict=True):
                w = waiting[i]
                self._answer(w.envelope, w.received, "get_action", reply, w.request.protocol)

    def _call_alone(self, request: ActionRequest) -> Any:
        """The policy on one request, as it has always run: its reply, or an error reply."""
        try:
            with_info = getattr(self.policy, "get_action_with_info", None)
            if with_info is not None:
                actions, info = with_info(request.obs, noise=request.noise, seed=request.seed)
            else:
                actions, info = self.policy.get_action(request.obs, noise=request.noise, seed=request.seed), {}
            reply = request.reply(actions, info)
        except InputError as err:
            return {"error": str(err)}
        except Exception as err:  # a policy bug must not take the robot's server down
            self.log(f"error in get_action:\n{traceback.format_exc()}")
            return {"error": f"internal error in get_action: {type(err).__name__}: {err}"}
        self.latency.add_call(1)
        return reply

    def _call_merged(self, requests: list[ActionRequest]) -> list[Any]:
        """One policy call for several requests, each answered with its share; if the call fails, each request is
        run alone so that only the request at fault gets an error."""
        try:
            obs, noise = merge(requests, self.noise_shape)
            actions = self.policy.get_action(obs, noise=noise, seed=self.default_seed)
            replies = [request.reply(part, {}) for request, part in zip(requests, split(actions, requests),
                                                                          strict=True)]
        except Exception as err:
            self.log(f"a merged call of {len(requests)} requests failed ({type(err).__name__}: {err}); running each "
                     "alone")
            return [self._call_alone(request) for request in requests]
        self.latency.add_call(len(requests))
        return replies

    def _prepare(self, message: bytes) -> tuple[str, Any, str]:
        """One request message -> (endpoint name for the latency log, reply or checked ActionRequest, dialect of the
        reply). Never raises."""
        if len(message) > self.max_message_bytes:
            return "oversized", {"error": f"request is {len(message)} bytes, over this server's limit of "
                                          f"{self.max_message_bytes} bytes; send smaller or fewer frames per "
                                          "request, or restart the server with a larger limit"}, N15
        try:
            request = decode(message)
        except ProtocolError as err:
            return "malformed", {"error": f"malformed request: {err}"}, N15
        if not isinstance(request, dict):
            return "malformed", {"error": f"malformed request: expected a msgpack map with 'endpoint' and 'data', "
                                          f"got {describe(request)}"}, N15
        if self.api_token is not None:
            token = request.get("api_token")
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self.api_token.encode()):
                return "unauthorized", {"error": UNAUTHORIZED}, N15
        endpoint = request.get("endpoint", "get_action")
        if endpoint not in ENDPOINTS:
            return "unknown", {"error": f"Unknown endpoint: {repr(endpoint)[:80]}; use one of {', '.join(ENDPOINTS)}"
                               }, N15
        try:
            outcome, protocol = self._dispatch(endpoint, request.get("data"))
            return endpoint, outcome, protocol
        except InputError as err:
            return endpoint, {"error": str(err)}, N15
        except Exception as err:  # a policy bug must not take the robot's server down
            self.log(f"error in {endpoint}:\n{traceback.format_exc()}")
            return endpoint, {"error": f"internal error in {endpoint}: {type(err).__name__}: {err}"}, N15

    def _dispatch(self, endpoint: str, data: Any) -> tuple[Any, str]:
        if endpoint == "ping":
            return {"status": "ok", "message": "Server is running"}, N15
        if endpoint == "kill":
            self.stop()
            return {"status": "ok", "message": "Server is shutting down"}, N15
        if endpoint == "get_modality_config":
            protocol = self._asked_protocol(data)
            return modality_config_reply(self.modality, protocol), protocol
        if endpoint == "reset":
            return self._reset(data), CURRENT
        if is_current_get_action(data):
            return self._current_get_action(data), CURRENT
        obs, noise, seed = check_observation(data, self.modality, self.state_dims, self.noise_shape)
        seed = self.default_seed if seed is None else seed
        return ActionRequest.of(obs, self.modality, noise, seed, N15), N15

    def _asked_protocol(self, data: Any) -> str:
        """get_modality_config's dialect: the request's `{"protocol": ...}` when it names one, else the server's."""
        asked = data.get("protocol") if isinstance(data, dict) else None
        if asked is None:
            return self.modality_config_protocol
        if asked not in PROTOCOLS:
            raise InputError(f"unknown protocol {repr(asked)[:40]} in get_modality_config data; use "
                             f"{' or '.join(PROTOCOLS)}")
        return asked

    def _current_get_action(self, data: dict[str, Any]) -> ActionRequest:
        unexpected = sorted(str(k) for k in data if k not in ("observation", "options"))
        if unexpected:
            raise InputError(f"get_action data has unexpected entries {', '.join(unexpected)}; send "
                             '{"observation": ..., "options": {...}}')
        options = data.get("options")
        if options is not None and not isinstance(options, dict):
            raise InputError(f"get_action options must be a map, got {describe(options)}")
        obs, flat = check_current_observation(data["observation"], self.modality, self.state_dims)
        return ActionRequest.of(obs, self.modality, None, self.default_seed, CURRENT, flat)

    def _reset(self, data: Any) -> dict[str, Any]:
        if data is None:
            data = {}
        if not isinstance(data, dict) or any(k != "options" for k in data):
            got = f"entries {', '.join(sorted(map(str, data)))}" if isinstance(data, dict) else describe(data)
            raise InputError(f'reset data must be {{"options": {{...}}}}, got {got}')
        options = data.get("options")
        if options is not None and not isinstance(options, dict):
            raise InputError(f"reset options must be a map, got {describe(options)}")
        reset = getattr(self.policy, "reset", None)
        return reset(options or {}) if reset is not None else {}
