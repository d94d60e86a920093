"""Isaac-GR00T's ZeroMQ inference protocol in both of its dialects (codec and observation checks), so
robots and simulators written for NVIDIA's N1.5 `RobotInferenceServer` (`gr00t/eval/service.py`) or for its
current `run_gr00t_server` (`gr00t/policy/server_client.py`: what IsaacLab's Isaac-Groot-* tasks and
`play_groot.py` connect to) drive a checkpoint, an exported artifact or a dataset replay without changing a line.

The wire protocol, common to both dialects (facts we implement, not code we copied):

- ZeroMQ REQ-REP (clients use REQ sockets); every message is one msgpack map. Request `{"endpoint": str,
  "data": map, "api_token": str}` (`endpoint` defaults to `get_action`); the reply is the endpoint's result or
  `{"error": str}`, on which both clients raise. With a server token, any other token is answered
  `{"error": "Unauthorized: Invalid API token"}`.
- numpy arrays travel as `{"__ndarray_class__": True, "as_npy": <np.save bytes, no pickles>}`.
- `ping` -> `{"status": "ok", "message": "Server is running"}`; `kill` stops the server.

N1.5 dialect (`gr00t/eval/service.py`, `RobotInferenceClient`):

- `get_action`: data is the observation itself, flat keys `video.<k>` uint8 (T, H, W, 3), `state.<k>` (T, d),
  `annotation.<k>` str, all optionally with a leading batch axis -> `{"action.<k>": (16, d)}` (or (B, 16, d)).
- `get_modality_config` -> `{modality: {"__ModalityConfig_class__": True, "as_json": "<JSON string>"}}`, read
  back with `json.loads`; fields `delta_indices` and `modality_keys` (full keys: `video.ego_view`).

Current dialect (Isaac-GR00T main: `server_client.py`, `gr00t_policy.py`, `replay_policy.py`, `data/types.py`):

- The server calls the endpoint's handler with `data`'s entries as keyword arguments.
- `get_action`: data `{"observation": obs, "options": map}` (`PolicyClient` puts its uuid4 `client_id` in the
  options) -> the tuple `(action, info)`, which msgpack carries as a 2-element array. `Gr00tPolicy` takes obs
  nested by modality, `{"video": {k: uint8 (B, T, H, W, 3)}, "state": {k: float32 (B, T, D)},
  "language": {k: [[str]] * B}}` (T = len(delta_indices), B = the simulated environments), and answers
  `{k: float32 (B, 16, D)}` with info `{}`. The sim wrapper (`Gr00tSimPolicyWrapper`, `run_gr00t_server
  --use_sim_policy_wrapper`) takes the flat form `{"video.<k>": ..., "state.<k>": ..., <language key>: [str] * B}`
  (a `task` key may arrive as `annotation.human.coarse_action`) and answers `{"action.<k>": (B, 16, D)}`.
- `reset`: data `{"options": {"client_id": ...}}` -> an info map.
- `get_modality_config` -> `{modality: {"__ModalityConfig_class__": True, "as_json": <map>}}`: the dataclass as a
  mapping (`delta_indices`, `modality_keys`, `sin_cos_embedding_keys`, `mean_std_embedding_keys`,
  `action_configs`; enums by name), read back with `ModalityConfig(**as_json)`, which refuses an empty
  `modality_keys`. Keys are bare (`ego_view`, `left_arm`); the language key is the annotation key itself.
- Replay (`run_gr00t_server --dataset_path`, `ReplayPolicy`): rows [step, step + 16) of each recorded action key
  as float32, padded with the episode's last row, tiled to (B, 16, D); info `{"current_step", "episode_length",
  "episode_index"}`; the step advances by the execution horizon per call; `reset` goes back to step 0 (or to
  the options' `episode_index` / `step_index`).

Decisions of this server (the protocols leave them open):

- Dialect. `get_action` is told apart per request: a data map with an `observation` entry is the current dialect
  (an N1.5 observation only has `video.`/`state.`/`annotation.` keys and `noise`/`seed`), and the reply follows
  the request. The two clients send byte-identical `get_modality_config` requests that need incompatible
  replies, so that one reply's dialect is the server's `modality_config_protocol` (default: current), unless
  the request's data names one (`{"protocol": "n1.5" | "current"}`: our clients send it, NVIDIA's servers
  ignore it).
- Noise. NVIDIA's policy draws fresh noise every call; here `get_action` is deterministic by default: the
  initial noise is seeded N(0, 1) with seed 0, exactly `policy.get_action(obs, seed=0)`. An N1.5 request may add
  two reserved keys to its observation map: `"seed"` (int) or `"noise"` (float array (16, 32) or
  (B, 16, 32)); they never collide with modality keys, which all carry a `video.`/`state.`/`annotation.` prefix.
- Size. A request over `max_message_bytes` is answered with an error. libzmq drops anything over twice
  that (ZMQ_MAXMSGSIZE) before it is buffered: the socket keeps serving everyone else, but the sender
  gets no reply and its client times out, so the cap bounds memory without ever wedging the server.
- Batching. An observation with a leading batch axis (video (B, T, H, W, 3), state (B, T, d)) is passed to
  the policy as one batch and answered with (B, 16, d) actions. Requests from different clients are served
  one at a time, in arrival order, unless the server has a batching window (`--batch_window_ms`): then
  get_action requests arriving within it run as one policy call where that gives each exactly the actions it
  gets alone (`batching`), and each client is answered with its own. The server's socket is a ROUTER, which
  answers REQ clients as a REP socket does, so clients see no difference.
- Validation. Keys, dtypes, shapes, batch sizes and finiteness are checked before the policy runs (the current
  dialect as strictly as NVIDIA's strict mode: state float32, language [[str]] * B, and the checkpoint's D);
  every problem, and every exception the policy raises, is answered with `{"error": ...}` and serving goes on.
"""

from __future__ import annotations

import functools
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from gr00t_export.errors import InputError
from gr00t_export.families.base import PolicyInterface, short_key

DEFAULT_PORT = 5555
DEFAULT_TIMEOUT_MS = 15000
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
UNAUTHORIZED = "Unauthorized: Invalid API token"
ENDPOINTS = ("ping", "kill", "get_action", "reset", "get_modality_config")
N15, CURRENT = "n1.5", "current"
PROTOCOLS = (N15, CURRENT)
CURRENT_DEFAULT_LANGUAGE_KEY = "task"  # what the current dialect names the instruction when a config has none


class ProtocolError(ValueError):
    """A message that is not a valid protocol message (bad msgpack, bad array payload, pickles)."""


class ServerError(RuntimeError):
    """The server answered `{"error": ...}`; `str(err)` is its message."""


# --- codec -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WireModalityConfig:
    """One modality's entry of `get_modality_config`: the fields of NVIDIA's ModalityConfig (N1.5 has the first two)."""

    delta_indices: list[int]
    modality_keys: list[str]
    sin_cos_embedding_keys: list[str] | None = None
    mean_std_embedding_keys: list[str] | None = None
    action_configs: list[dict[str, Any]] | None = None

    def to_json(self) -> str:
        """The N1.5 form: a JSON string of the two fields N1.5's pydantic model has."""
        return json.dumps({"delta_indices": list(self.delta_indices), "modality_keys": list(self.modality_keys)})

    def to_fields(self) -> dict[str, Any]:
        """The current form: every field as a mapping, as `ModalityConfig(**as_json)` takes it."""
        return {"delta_indices": list(self.delta_indices), "modality_keys": list(self.modality_keys),
                "sin_cos_embedding_keys": self.sin_cos_embedding_keys,
                "mean_std_embedding_keys": self.mean_std_embedding_keys, "action_configs": self.action_configs}

    @classmethod
    def from_json(cls, text: str | bytes) -> WireModalityConfig:
        try:
            fields = json.loads(text)
        except (ValueError, TypeError) as err:
            raise ProtocolError(f"ModalityConfig payload is not JSON with delta_indices and modality_keys ({err})"
                                ) from None
        return cls.from_fields(fields)

    @classmethod
    def from_fields(cls, fields: Any) -> WireModalityConfig:
        if not isinstance(fields, dict) or "delta_indices" not in fields or "modality_keys" not in fields:
            raise ProtocolError("ModalityConfig payload is not JSON with delta_indices and modality_keys")
        indices, keys = fields["delta_indices"], fields["modality_keys"]
        if not isinstance(indices, list) or not isinstance(keys, list) or not all(
                isinstance(i, int) for i in indices) or not all(isinstance(k, str) for k in keys):
            raise ProtocolError("ModalityConfig payload must hold integer delta_indices and string modality_keys")
        optional = {}
        for name in ("sin_cos_embedding_keys", "mean_std_embedding_keys", "action_configs"):
            value = fields.get(name)
            if value is not None and not isinstance(value, list):
                raise ProtocolError(f"ModalityConfig field {name} must be a list or null, got {type(value).__name__}")
            optional[name] = value
        return cls(list(indices), list(keys), **optional)


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


def encode_hook(obj: Any, protocol: str = N15) -> Any:
    """msgpack `default=`: numpy arrays and modality configs to their tagged maps, configs in `protocol`'s form."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray_class__": True, "as_npy": npy_bytes(obj)}
    if isinstance(obj, WireModalityConfig):
        return {"__ModalityConfig_class__": True, "as_json": obj.to_json() if protocol == N15 else obj.to_fields()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}; send dicts, lists, str, numbers and numpy arrays")


def decode_hook(obj: dict[str, Any]) -> Any:
    """msgpack `object_hook=`: tagged maps back to numpy arrays and modality configs (either dialect's form)."""
    if "__ModalityConfig_class__" in obj:
        fields = obj.get("as_json", "")
        return WireModalityConfig.from_fields(fields) if isinstance(fields, dict) else WireModalityConfig.from_json(
            fields)
    if "__ndarray_class__" in obj:
        return npy_array(obj.get("as_npy"))
    return obj


def encode(obj: Any, protocol: str = N15) -> bytes:
    """Python -> one msgpack message; `protocol` picks how modality configs are written (arrays are the same)."""
    return msgpack.packb(obj, default=functools.partial(encode_hook, protocol=protocol), use_bin_type=True)


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


def modality_config_reply(modality: PolicyInterface, protocol: str = N15) -> dict[str, WireModalityConfig]:
    """What `get_modality_config` answers: NVIDIA's four modalities, with keys as `protocol` names them.

    N1.5: full keys, language only when the config has one. Current: bare keys, the state normalisation lists,
    no modality without keys (NVIDIA's dataclass refuses them), and always a language key (NVIDIA's policies
    require one; a config without one has the instruction `task`, which its policy does not read).
    """
    if protocol == N15:
        out = {
            "video": WireModalityConfig(list(modality.observation_indices), list(modality.video_keys)),
            "state": WireModalityConfig(list(modality.observation_indices), list(modality.state_keys)),
            "action": WireModalityConfig(list(modality.action_indices), list(modality.action_keys)),
        }
        if modality.language_key is not None:
            out["language"] = WireModalityConfig([0], [modality.language_key])
        return out
    short = short_key
    state_in = {mode: [short(k) for k in modality.state_keys if modality.state_encodings.get(k) == mode] or None
                for mode in ("sin_cos", "mean_std")}
    current = {
        "video": WireModalityConfig(list(modality.observation_indices), [short(k) for k in modality.video_keys]),
        "state": WireModalityConfig(list(modality.observation_indices), [short(k) for k in modality.state_keys],
                                    sin_cos_embedding_keys=state_in["sin_cos"],
                                    mean_std_embedding_keys=state_in["mean_std"]),
        "action": WireModalityConfig(list(modality.action_indices), [short(k) for k in modality.action_keys]),
        "language": WireModalityConfig([0], [current_language_key(modality)]),
    }
    return {name: config for name, config in current.items() if config.modality_keys}


def current_language_key(modality: PolicyInterface) -> str:
    return modality.language_key or CURRENT_DEFAULT_LANGUAGE_KEY


def describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array {value.shape}"
    if isinstance(value, list | tuple):
        text = repr(value)
        return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"
    return type(value).__name__


def _language(value: Any, batched: bool, batch: int, key: str) -> np.ndarray:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = np.asarray(value, dtype=str)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "US":
        raise InputError(f"{key} must be a str array (or a str / list of str), got {describe(value)}")
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


def check_observation(data: Any, modality: PolicyInterface, state_dims: dict[str, int] | None = None,
                      noise_shape: tuple[int, int] | None = None
                      ) -> tuple[dict[str, np.ndarray], np.ndarray | None, int | None]:
    """Validate a `get_action` data map before the policy sees it; returns (observation, noise, seed).

    Keys the modality config does not name are dropped (clients often send more than a policy reads).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"get_action data must be a map of observation arrays, got {describe(data)}")
    state_dims = state_dims or {}
    horizon = len(modality.observation_indices)
    missing = [k for k in (*modality.video_keys, *modality.state_keys) if k not in data]
    if missing:
        have = ", ".join(sorted(str(k) for k in data)) or "nothing"
        raise InputError(f"observation lacks {', '.join(missing)} (has: {have}); send every video and state key "
                         "of get_modality_config")
    for key in (*modality.video_keys, *modality.state_keys):
        if not isinstance(data[key], np.ndarray):
            raise InputError(f"{key} must be a numpy array (an __ndarray_class__ map), got {describe(data[key])}")
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
            raise InputError(f"noise must be a float array ({h}, {d}) or ({batch}, {h}, {d}), got {describe(noise)}")
        if not np.isfinite(noise).all():
            raise InputError("noise contains NaN or inf; send finite values")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise InputError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return obs, noise, seed


def is_current_get_action(data: Any) -> bool:
    """The dialect of a get_action: a data map with an `observation` entry is the current one (an N1.5 observation
    has only `video.`/`state.`/`annotation.` keys and `noise`/`seed`)."""
    return isinstance(data, dict) and "observation" in data


NESTED_SHAPES = ('{"video": {camera: uint8 (B, T, H, W, 3)}, "state": {key: float32 (B, T, D)}, '
                 '"language": {key: [[str]] * B}}')
_ABSENT = object()


def check_current_observation(observation: Any, modality: PolicyInterface, state_dims: dict[str, int] | None = None
                              ) -> tuple[dict[str, np.ndarray], bool]:
    """Validate a current-dialect observation, nested or flat (the sim wrapper's); returns it as the batched,
    N1.5-keyed observation the policy takes, and whether it came flat.

    Every message names the entry as the client wrote it (`observation["state"]["left_arm"]`). Keys the modality
    config does not name are dropped, as NVIDIA's policy does.
    """
    if not isinstance(observation, dict):
        raise InputError(f"observation must be a map, got {describe(observation)}; send {NESTED_SHAPES}")
    flat = any(isinstance(k, str) and k.startswith(("video.", "state.")) for k in observation)
    short = short_key
    language = current_language_key(modality)
    if flat and language == CURRENT_DEFAULT_LANGUAGE_KEY and "annotation.human.coarse_action" in observation:
        language = "annotation.human.coarse_action"  # the sim wrapper's alias for `task`
    groups = [g for g, keys in (("video", modality.video_keys), ("state", modality.state_keys)) if keys]
    if not flat:
        absent = [g for g in (*groups, "language") if g not in observation]
        if absent:
            have = ", ".join(sorted(str(k) for k in observation)) or "nothing"
            raise InputError(f"observation lacks {', '.join(repr(g) for g in absent)} (has: {have}); send "
                             f"{NESTED_SHAPES}, or the sim wrapper's flat video.<camera>/state.<key> entries")
        for group in (*groups, "language"):
            if not isinstance(observation[group], dict):
                raise InputError(f'observation["{group}"] must be a map by key, got {describe(observation[group])}')

    def path(group: str, name: str) -> str:
        if flat:
            return f'observation["{name if group == "language" else f"{group}.{name}"}"]'
        return f'observation["{group}"]["{name}"]'

    def lookup(group: str, name: str) -> Any:
        if flat:
            return observation.get(name if group == "language" else f"{group}.{name}", _ABSENT)
        return observation[group].get(name, _ABSENT)

    wanted = [("video", k) for k in modality.video_keys] + [("state", k) for k in modality.state_keys]
    wanted.append(("language", language))
    names = {key: (group, key if group == "language" else short(key)) for group, key in wanted}
    missing = [path(*names[key]) for _, key in wanted if lookup(*names[key]) is _ABSENT]
    if missing:
        raise InputError(f"observation lacks {', '.join(missing)}; send every key of get_modality_config")

    horizon = len(modality.observation_indices)
    state_dims = state_dims or {}
    batch: int | None = None
    first = ""
    out: dict[str, np.ndarray] = {}

    def same_batch(value_batch: int, where: str) -> None:
        nonlocal batch, first
        if batch is None:
            batch, first = value_batch, where
        elif value_batch != batch:
            raise InputError(f"{where} has {value_batch} environments but {first} has {batch}; send the same B "
                             "for every key")

    for key in modality.video_keys:
        where, v = path(*names[key]), lookup(*names[key])
        if not isinstance(v, np.ndarray):
            raise InputError(f"{where} must be a numpy array (an __ndarray_class__ map), got {describe(v)}")
        if v.dtype != np.uint8:
            raise InputError(f"{where} must be uint8 frames, got {v.dtype}; convert with .astype(np.uint8)")
        if v.ndim != 5 or v.shape[1] != horizon or v.shape[-1] != 3 or min(v.shape[1:]) == 0:
            raise InputError(f"{where} must be uint8 (B, {horizon}, H, W, 3) RGB frames, got shape {v.shape}")
        same_batch(v.shape[0], where)
        out[key] = v
    for key in modality.state_keys:
        where, s = path(*names[key]), lookup(*names[key])
        if not isinstance(s, np.ndarray):
            raise InputError(f"{where} must be a numpy array (an __ndarray_class__ map), got {describe(s)}")
        dim = state_dims.get(key)
        want = f"float32 (B, {horizon}, {dim if dim is not None else 'D'})"
        if s.dtype != np.float32:
            fix = "; convert with .astype(np.float32)" if s.dtype.kind in "fiu" else ""
            raise InputError(f"{where} must be {want}, got {s.dtype}{fix}")
        if s.ndim != 3 or s.shape[1] != horizon or (dim is not None and s.shape[2] != dim):
            raise InputError(f"{where} must be {want}, got shape {s.shape}")
        if not np.isfinite(s).all():
            raise InputError(f"{where} contains NaN or inf; send finite joint values")
        same_batch(s.shape[0], where)
        out[key] = s
    where, texts = path(*names[language]), lookup(*names[language])
    if flat:
        if isinstance(texts, tuple):
            texts = list(texts)
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise InputError(f"{where} must be a list of one instruction per environment ([str] * B), got "
                             f"{describe(texts)}")
        instructions = texts
    else:
        if not isinstance(texts, list) or not all(
                isinstance(t, list) and len(t) == 1 and isinstance(t[0], str) for t in texts):
            raise InputError(f"{where} must be a list of one [instruction] per environment ([[str]] * B), got "
                             f"{describe(texts)}")
        instructions = [t[0] for t in texts]
    same_batch(len(instructions), where)
    if batch == 0:
        raise InputError("observation has 0 environments; send at least one (B >= 1)")
    if modality.language_key is not None:
        out[modality.language_key] = np.asarray(instructions, dtype=str)[:, None]  # (B, T=1)
    return out, flat


def current_actions(actions: dict[str, np.ndarray], flat: bool) -> dict[str, np.ndarray]:
    """The policy's `action.<k>` arrays in the current dialect: bare keys (nested) or `action.<k>` (flat), float32."""
    return {(key if flat else short_key(key)): np.ascontiguousarray(value, dtype=np.float32)
            for key, value in actions.items()}

