"""`gr00t-export serve`: a policy behind Isaac-GR00T's ZeroMQ inference protocol, so robots and simulators
that already talk to NVIDIA's `RobotInferenceServer` (N1.5 `gr00t/eval/service.py`) can drive a reference
checkpoint or an exported artifact without changing a line.

The wire protocol (a fact we implement, not code we copied):

- ZeroMQ REQ-REP; every message is one msgpack map. Request `{"endpoint": str, "data": map, "api_token": str}`
  (`endpoint` defaults to `get_action`); the reply is the endpoint's result map or `{"error": str}`.
- Endpoints: `ping`, `kill`, `get_action` (data = observation dict -> `{"action.<k>": (16, d)}`) and
  `get_modality_config` (-> `{"video"|"state"|"action"|"language": ModalityConfig}`).
- numpy arrays travel as `{"__ndarray_class__": True, "as_npy": <np.save bytes, no pickles>}`, a modality
  config as `{"__ModalityConfig_class__": True, "as_json": '{"delta_indices": [...], "modality_keys": [...]}'}`.

Decisions of this server (the protocol leaves them open):

- Noise. NVIDIA's policy draws fresh noise every call; here `get_action` is deterministic by default: the
  initial noise is seeded N(0, 1) with seed 0, exactly `policy.get_action(obs, seed=0)`. A request may add
  two reserved keys to its observation map: `"seed"` (int) or `"noise"` (float array (16, 32) or
  (B, 16, 32)); they never collide with modality keys, which all carry a `video.`/`state.`/`annotation.` prefix.
- Size. A request over `max_message_bytes` is answered with an error. libzmq drops anything over twice
  that (ZMQ_MAXMSGSIZE) before it is buffered: the REP socket keeps serving everyone else, but the sender
  gets no reply and its client times out, so the cap bounds memory without ever wedging the server.
- Batching. An observation with a leading batch axis (video (B, T, H, W, 3), state (B, T, d)) is passed to
  the policy as one batch and answered with (B, 16, d) actions. Requests from different clients are served
  one at a time, in arrival order; the server never merges them.
- Validation. Keys, dtypes, shapes, batch sizes and finiteness are checked before the policy runs; every
  problem, and every exception the policy raises, is answered with `{"error": ...}` and serving goes on.
"""

from __future__ import annotations

import hmac
import io
import json
import math
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import numpy as np
import zmq

from gr00t_export.embodiments import ModalityConfig
from gr00t_export.errors import InputError

DEFAULT_PORT = 5555
DEFAULT_TIMEOUT_MS = 15000
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
UNAUTHORIZED = "Unauthorized: Invalid API token"
ENDPOINTS = ("ping", "kill", "get_action", "get_modality_config")
RESERVED_KEYS = ("noise", "seed")
POLL_MS = 100  # how often the loop wakes up to notice stop() and signals


class ProtocolError(ValueError):
    """A message that is not a valid protocol message (bad msgpack, bad array payload, pickles)."""


class ServerError(RuntimeError):
    """The server answered `{"error": ...}`; `str(err)` is its message."""


class _Spec(Protocol):
    modality: ModalityConfig


class Policy(Protocol):
    """What the server needs from a policy: ReferencePolicy and ExportedGr00tRunner both fit."""

    spec: _Spec

    def get_action(self, obs: dict[str, np.ndarray], noise: np.ndarray | None = None,
                   seed: int = 0) -> dict[str, np.ndarray]: ...


# --- codec -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WireModalityConfig:
    """One modality's entry of `get_modality_config`, with the two fields NVIDIA's pydantic model carries."""

    delta_indices: list[int]
    modality_keys: list[str]

    def to_json(self) -> str:
        return json.dumps({"delta_indices": list(self.delta_indices), "modality_keys": list(self.modality_keys)})

    @classmethod
    def from_json(cls, text: str | bytes) -> WireModalityConfig:
        try:
            fields = json.loads(text)
            indices, keys = fields["delta_indices"], fields["modality_keys"]
        except (ValueError, TypeError, KeyError) as err:
            raise ProtocolError(f"ModalityConfig payload is not JSON with delta_indices and modality_keys ({err})"
                                ) from None
        if not all(isinstance(i, int) for i in indices) or not all(isinstance(k, str) for k in keys):
            raise ProtocolError("ModalityConfig payload must hold integer delta_indices and string modality_keys")
        return cls(list(indices), list(keys))


def npy_bytes(array: np.ndarray) -> bytes:
    """`np.save` bytes without pickles: object arrays are refused here, before they reach the wire."""
    out = io.BytesIO()
    try:
        np.save(out, array, allow_pickle=False)
    except ValueError as err:
        raise ProtocolError(f"cannot send a {array.dtype} array ({err}); send numeric, uint8 or str arrays") from None
    return out.getvalue()


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def npy_array(payload: bytes) -> np.ndarray:
    """Decode `as_npy` bytes; the header is checked against the payload first, so a forged shape cannot make
    numpy allocate more than was sent, and object (pickle) dtypes are refused."""
    if not isinstance(payload, bytes | bytearray):
        raise ProtocolError(f"as_npy must be bytes, got {type(payload).__name__}")
    buf = io.BytesIO(payload)
    try:
        version = np.lib.format.read_magic(buf)
        if version not in _NPY_HEADER_READERS:
            raise ProtocolError(f".npy version {version} is not supported; write arrays with np.save")
        shape, fortran, dtype = _NPY_HEADER_READERS[version](buf)
    except ProtocolError:
        raise
    except Exception as err:  # numpy raises ValueError, EOFError or SyntaxError for broken headers
        raise ProtocolError(f"as_npy is not .npy data ({err})") from None
    if dtype.hasobject:
        raise ProtocolError(f"refused an array of dtype {dtype}: object arrays need pickles, which this server "
                            "never loads; send numeric, uint8 or str arrays")
    if any(d < 0 for d in shape):
        raise ProtocolError(f"as_npy header has a negative dimension: {shape}")
    expected = math.prod(shape) * dtype.itemsize
    if len(payload) - buf.tell() != expected:
        raise ProtocolError(f"as_npy header says {shape} {dtype} ({expected} bytes) but "
                            f"{len(payload) - buf.tell()} bytes follow")
    try:
        array = np.frombuffer(payload, dtype=dtype, count=math.prod(shape), offset=buf.tell())
        return array.reshape(shape, order="F" if fortran else "C").copy()
    except ValueError as err:
        raise ProtocolError(f"as_npy could not be read as {shape} {dtype} ({err})") from None


def encode_hook(obj: Any) -> Any:
    """msgpack `default=`: numpy arrays and modality configs to their tagged maps."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray_class__": True, "as_npy": npy_bytes(obj)}
    if isinstance(obj, WireModalityConfig):
        return {"__ModalityConfig_class__": True, "as_json": obj.to_json()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}; send dicts, lists, str, numbers and numpy arrays")


def decode_hook(obj: dict[str, Any]) -> Any:
    """msgpack `object_hook=`: tagged maps back to numpy arrays and modality configs."""
    if "__ModalityConfig_class__" in obj:
        return WireModalityConfig.from_json(obj.get("as_json", ""))
    if "__ndarray_class__" in obj:
        return npy_array(obj.get("as_npy"))
    return obj


def encode(obj: Any) -> bytes:
    return msgpack.packb(obj, default=encode_hook, use_bin_type=True)


def decode(payload: bytes) -> Any:
    """One msgpack message -> Python; anything wrong with it is a ProtocolError with the reason."""
    try:
        return msgpack.unpackb(payload, object_hook=decode_hook, raw=False, strict_map_key=True)
    except ProtocolError:
        raise
    except Exception as err:  # msgpack raises ExtraData, FormatError, StackError, ValueError, UnicodeError ...
        name = type(err).__name__
        detail = str(err) or {"FormatError": "invalid msgpack bytes", "StackError": "nested too deeply"}.get(name, "")
        raise ProtocolError(f"not a msgpack message ({name}: {detail})") from None


# --- observation checks ---------------------------------------------------------------------------------


def modality_config_reply(modality: ModalityConfig) -> dict[str, WireModalityConfig]:
    """What `get_modality_config` answers: NVIDIA's four modalities (language only when the config has one)."""
    out = {
        "video": WireModalityConfig(list(modality.observation_indices), list(modality.video_keys)),
        "state": WireModalityConfig(list(modality.observation_indices), list(modality.state_keys)),
        "action": WireModalityConfig(list(modality.action_indices), list(modality.action_keys)),
    }
    if modality.language_key is not None:
        out["language"] = WireModalityConfig([0], [modality.language_key])
    return out


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array {value.shape}"
    return type(value).__name__


def _state_dims(policy: Policy) -> dict[str, int]:
    """Per-key state widths from the policy's metadata, when its spec carries metadata (both of ours do)."""
    metadata = getattr(policy.spec, "metadata", None)
    dims: dict[str, int] = {}
    if metadata is None:
        return dims
    for key in policy.spec.modality.state_keys:
        try:
            dims[key] = int(metadata.state_dim(ModalityConfig.short(key)))
        except Exception:  # the policy itself will complain if it cannot size the key
            continue
    return dims


def _language(value: Any, batched: bool, batch: int, key: str) -> np.ndarray:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = np.asarray(value, dtype=str)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "US":
        raise InputError(f"{key} must be a str array (or a str / list of str), got {_describe(value)}")
    if value.dtype.kind == "S":
        try:
            value = np.char.decode(value, "utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{key} holds bytes that are not UTF-8; send str") from None
    if value.size == 0:
        raise InputError(f"{key} is empty; send the task instruction")
    if batched and (value.ndim == 0 or value.shape[0] != batch):
        raise InputError(f"{key} must have one instruction per sample ({batch}), got shape {value.shape}")
    if not batched and value.ndim > 1:
        raise InputError(f"{key} must be (T,) strings for an unbatched observation, got shape {value.shape}")
    return value


def check_observation(data: Any, modality: ModalityConfig, state_dims: dict[str, int] | None = None,
                      noise_shape: tuple[int, int] | None = None
                      ) -> tuple[dict[str, np.ndarray], np.ndarray | None, int | None]:
    """Validate a `get_action` data map before the policy sees it; returns (observation, noise, seed).

    Keys the modality config does not name are dropped (clients often send more than a policy reads).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"get_action data must be a map of observation arrays, got {_describe(data)}")
    state_dims = state_dims or {}
    horizon = len(modality.observation_indices)
    missing = [k for k in (*modality.video_keys, *modality.state_keys) if k not in data]
    if missing:
        have = ", ".join(sorted(str(k) for k in data)) or "nothing"
        raise InputError(f"observation lacks {', '.join(missing)} (has: {have}); send every video and state key "
                         "of get_modality_config")
    for key in (*modality.video_keys, *modality.state_keys):
        if not isinstance(data[key], np.ndarray):
            raise InputError(f"{key} must be a numpy array (an __ndarray_class__ map), got {_describe(data[key])}")
    first = data[modality.video_keys[0]] if modality.video_keys else data[modality.state_keys[0]]
    batched = first.ndim == (5 if modality.video_keys else 3)
    t_axis = int(batched)  # where T sits: after the batch axis when there is one
    batch = first.shape[0] if batched else 1
    lead = f"(B, {horizon}," if batched else f"({horizon},"
    obs: dict[str, np.ndarray] = {}
    for key in modality.video_keys:
        v = data[key]
        if v.dtype != np.uint8:
            raise InputError(f"{key} must be uint8 frames, got {v.dtype}; convert with .astype(np.uint8)")
        if v.ndim != 4 + batched or v.shape[-1] != 3 or v.shape[t_axis] != horizon or min(v.shape) == 0:
            mixed = v.ndim in (4, 5) and v.ndim != 4 + batched
            raise InputError(f"{key} must be {lead} H, W, 3) uint8 RGB frames, got shape {v.shape}"
                             + (" (batch every key or none)" if mixed else ""))
        if batched and v.shape[0] != batch:
            raise InputError(f"{key} has batch {v.shape[0]} but {modality.video_keys[0]} has {batch}")
        obs[key] = v
    for key in modality.state_keys:
        s = data[key]
        if s.dtype.kind not in "fiu":
            raise InputError(f"{key} must be a float or integer array, got {s.dtype}")
        dim = state_dims.get(key)
        want = f"{lead} {dim if dim is not None else 'd'})"
        if s.ndim != 2 + batched or s.shape[t_axis] != horizon or (dim is not None and s.shape[-1] != dim):
            raise InputError(f"{key} must be {want}, got shape {s.shape}")
        if batched and s.shape[0] != batch:
            raise InputError(f"{key} has batch {s.shape[0]} but the video has {batch}")
        if s.dtype.kind == "f" and not np.isfinite(s).all():
            raise InputError(f"{key} contains NaN or inf; send finite joint values")
        obs[key] = s
    if batch == 0:
        raise InputError("observation has batch size 0; send at least one sample")
    if modality.language_key is not None and modality.language_key in data:
        obs[modality.language_key] = _language(data[modality.language_key], batched, batch, modality.language_key)
    noise = data.get("noise")
    if noise is not None:
        h, d = noise_shape or ("16", "32")
        if not isinstance(noise, np.ndarray) or noise.dtype.kind not in "fiu" or noise.ndim not in (2, 3) or (
                noise_shape is not None and noise.shape[-2:] != noise_shape) or (
                noise.ndim == 3 and noise.shape[0] != batch):
            raise InputError(f"noise must be a float array ({h}, {d}) or ({batch}, {h}, {d}), got {_describe(noise)}")
        if not np.isfinite(noise).all():
            raise InputError("noise contains NaN or inf; send finite values")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise InputError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return obs, noise, seed


# --- server ---------------------------------------------------------------------------------------------


class LatencyLog:
    """Per-endpoint handling times of the most recent requests, for p50/p99 without unbounded memory."""

    def __init__(self, keep: int = 10000):
        self.samples: dict[str, deque[float]] = {}
        self.counts: dict[str, int] = {}
        self.errors = 0
        self.keep = keep

    def add(self, endpoint: str, seconds: float, error: bool) -> None:
        self.samples.setdefault(endpoint, deque(maxlen=self.keep)).append(seconds)
        self.counts[endpoint] = self.counts.get(endpoint, 0) + 1
        self.errors += error

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

    def stats(self) -> dict[str, Any]:
        return {"requests": self.total, "errors": self.errors,
                "endpoints": {name: self.summary(name) for name in self.samples}}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class PolicyServer:
    """A policy on a ZeroMQ REP socket speaking Isaac-GR00T's protocol; see the module docstring.

    The socket is bound on construction (port 0 picks a free one: read `.port`), so callers can connect
    before `run()`. `run()` blocks until `kill`, `stop()`, SIGINT/SIGTERM (when run on the main thread) or
    `max_seconds`; it wakes every POLL_MS to notice them.
    """

    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = DEFAULT_PORT, api_token: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, log_every: int = 0, default_seed: int = 0,
                 log: Callable[[str], None] = _stderr):
        if max_message_bytes < 1:
            raise InputError(f"max_message_bytes must be positive, got {max_message_bytes}")
        if log_every < 0:
            raise InputError(f"--log_every must be 0 (off) or a positive count, got {log_every}")
        self.policy, self.api_token, self.log_every, self.default_seed, self.log = (
            policy, api_token or None, log_every, default_seed, log)
        self.max_message_bytes = max_message_bytes
        self.modality = policy.spec.modality
        self.state_dims = _state_dims(policy)
        horizon, dim = getattr(policy.spec, "action_horizon", None), getattr(policy.spec, "action_dim", None)
        self.noise_shape = (int(horizon), int(dim)) if horizon and dim else None
        self._closed = False
        self.latency = LatencyLog()
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.REP)
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
                 f"{self.max_message_bytes / 2**20:.1f} MiB; endpoints: {', '.join(ENDPOINTS)})")
        try:
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() > deadline:
                    self.log(f"stopping: ran for max_seconds={max_seconds}")
                    break
                try:
                    message = self._socket.recv()
                except zmq.Again:
                    continue
                start = time.perf_counter()
                endpoint, reply = self.handle(message)
                self._send(reply)
                self.latency.add(endpoint, time.perf_counter() - start, "error" in reply)
                if self.log_every and self.latency.total % self.log_every == 0:
                    self._log_latency()
        finally:
            for sig, handler in previous.items():
                if handler is not None:
                    signal.signal(sig, handler)
            self.close()
        self.log(f"stopped after {self.latency.total} requests ({self.latency.errors} answered with an error)")

    def _log_latency(self) -> None:
        s = self.latency.summary("get_action", last=self.log_every)
        if s["count"]:
            self.log(f"{self.latency.total} requests ({self.latency.errors} errors); get_action over the last "
                     f"{s['count']}: p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms")
        else:
            self.log(f"{self.latency.total} requests ({self.latency.errors} errors); no get_action yet")

    def _send(self, reply: dict[str, Any]) -> None:
        try:
            payload = encode(reply)
        except Exception as err:
            payload = encode({"error": f"internal error: the reply could not be encoded ({err})"})
        try:
            self._socket.send(payload)
        except zmq.Again:
            self.log("warning: a reply could not be sent within 1 s (client gone?)")

    def handle(self, message: bytes) -> tuple[str, dict[str, Any]]:
        """One request message -> (endpoint name for the latency log, reply map). Never raises."""
        if len(message) > self.max_message_bytes:
            return "oversized", {"error": f"request is {len(message)} bytes, over this server's limit of "
                                          f"{self.max_message_bytes} bytes; send smaller or fewer frames per "
                                          "request, or restart the server with a larger limit"}
        try:
            request = decode(message)
        except ProtocolError as err:
            return "malformed", {"error": f"malformed request: {err}"}
        if not isinstance(request, dict):
            return "malformed", {"error": f"malformed request: expected a msgpack map with 'endpoint' and 'data', "
                                          f"got {_describe(request)}"}
        if self.api_token is not None:
            token = request.get("api_token")
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self.api_token.encode()):
                return "unauthorized", {"error": UNAUTHORIZED}
        endpoint = request.get("endpoint", "get_action")
        if endpoint not in ENDPOINTS:
            return "unknown", {"error": f"Unknown endpoint: {repr(endpoint)[:80]}; use one of {', '.join(ENDPOINTS)}"}
        try:
            return endpoint, self._dispatch(endpoint, request.get("data"))
        except InputError as err:
            return endpoint, {"error": str(err)}
        except Exception as err:  # a policy bug must not take the robot's server down
            self.log(f"error in {endpoint}:\n{traceback.format_exc()}")
            return endpoint, {"error": f"internal error in {endpoint}: {type(err).__name__}: {err}"}

    def _dispatch(self, endpoint: str, data: Any) -> dict[str, Any]:
        if endpoint == "ping":
            return {"status": "ok", "message": "Server is running"}
        if endpoint == "kill":
            self.stop()
            return {"status": "ok", "message": "Server is shutting down"}
        if endpoint == "get_modality_config":
            return modality_config_reply(self.modality)
        obs, noise, seed = check_observation(data, self.modality, self.state_dims, self.noise_shape)
        actions = self.policy.get_action(obs, noise=noise, seed=self.default_seed if seed is None else seed)
        return {key: np.ascontiguousarray(value) for key, value in actions.items()}


# --- client ---------------------------------------------------------------------------------------------


class Client:
    """A REQ client of the protocol (works against NVIDIA's server too). A timeout recreates the socket, since a
    REQ socket that lost its reply cannot send again."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, api_token: str | None = None,
                 timeout_ms: int = DEFAULT_TIMEOUT_MS):
        self.host, self.port, self.api_token, self.timeout_ms = host, port, api_token, timeout_ms
        self._context = zmq.Context()
        self._socket: zmq.Socket | None = None
        self._connect()

    def _connect(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
        self._socket = self._context.socket(zmq.REQ)
        self._socket.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
        self._socket.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(f"tcp://{self.host}:{self.port}")

    def call(self, endpoint: str, data: Any = None) -> Any:
        """Send one request and return the decoded reply; raises ServerError on `{"error": ...}`."""
        request: dict[str, Any] = {"endpoint": endpoint}
        if data is not None:
            request["data"] = data
        if self.api_token:
            request["api_token"] = self.api_token
        payload = encode(request)
        try:
            self._socket.send(payload)
            reply = decode(self._socket.recv())
        except zmq.Again:
            self._connect()
            raise TimeoutError(f"no reply from tcp://{self.host}:{self.port} to {endpoint} within "
                               f"{self.timeout_ms} ms; is the server running? (a request over twice the server's "
                               "size limit is dropped without a reply)") from None
        if isinstance(reply, dict) and "error" in reply:
            raise ServerError(str(reply["error"]))
        return reply

    def ping(self) -> bool:
        """True when the server answers; False on timeout (an auth error still raises ServerError)."""
        try:
            self.call("ping")
        except TimeoutError:
            return False
        return True

    def get_action(self, obs: dict[str, Any], noise: np.ndarray | None = None,
                   seed: int | None = None) -> dict[str, np.ndarray]:
        data = dict(obs)
        if noise is not None:
            data["noise"] = np.asarray(noise, dtype=np.float32)
        if seed is not None:
            data["seed"] = int(seed)
        return self.call("get_action", data)

    def get_modality_config(self) -> dict[str, WireModalityConfig]:
        return self.call("get_modality_config")

    def kill(self) -> None:
        self.call("kill")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        self._context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
