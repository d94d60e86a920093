"""Clients of Isaac-GR00T's protocol in both dialects (`Client`: N1.5's `RobotInferenceClient`; `PolicyClient`: the
current one), and the conversions a client needs (an N1.5-keyed observation in the current dialect, a server's
modality config as a `PolicyInterface`)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import zmq

from gr00t_export.errors import InputError
from gr00t_export.families.base import PolicyInterface, short_key
from gr00t_export.serve.protocol import (
    CURRENT,
    DEFAULT_PORT,
    DEFAULT_TIMEOUT_MS,
    N15,
    ProtocolError,
    ServerError,
    WireModalityConfig,
    decode,
    describe,
    encode,
)


class _Connection:
    """One REQ socket to a server. A timeout recreates the socket, since a REQ socket that lost its reply cannot
    send again."""

    protocol = N15

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
        try:
            self._socket.connect(f"tcp://{self.host}:{self.port}")
        except zmq.ZMQError as err:
            self.close()
            raise InputError(f"cannot connect to tcp://{self.host}:{self.port} ({err}); check the host and port"
                             ) from None

    def call(self, endpoint: str, data: Any = None) -> Any:
        """Send one request and return the decoded reply; raises ServerError on `{"error": ...}`."""
        request: dict[str, Any] = {"endpoint": endpoint}
        if data is not None:
            request["data"] = data
        if self.api_token:
            request["api_token"] = self.api_token
        payload = encode(request, self.protocol)
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

    def get_modality_config(self) -> dict[str, WireModalityConfig]:
        """The server's modality configs, asked for in this client's dialect (NVIDIA's servers ignore the ask)."""
        return self.call("get_modality_config", {"protocol": self.protocol})

    def kill(self) -> None:
        self.call("kill")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        self._context.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client(_Connection):
    """The N1.5 dialect, as `RobotInferenceClient`: flat observation in, `{"action.<k>": ...}` out. Works against
    NVIDIA's N1.5 server too."""

    def get_action(self, obs: dict[str, Any], noise: np.ndarray | None = None,
                   seed: int | None = None) -> dict[str, np.ndarray]:
        data = dict(obs)
        if noise is not None:
            data["noise"] = np.asarray(noise, dtype=np.float32)
        if seed is not None:
            data["seed"] = int(seed)
        return self.call("get_action", data)


class PolicyClient(_Connection):
    """The current dialect, as Isaac-GR00T's `PolicyClient`: `get_action(observation, options) -> (action, info)`,
    `reset(options) -> info`, `get_modality_config()`. Works against NVIDIA's `run_gr00t_server` too.

    Send the nested observation (`to_current_observation` makes one from a dataset step) for bare action keys,
    or the sim wrapper's flat one for `action.<k>` keys.
    """

    protocol = CURRENT

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, api_token: str | None = None,
                 timeout_ms: int = DEFAULT_TIMEOUT_MS):
        super().__init__(host, port, api_token, timeout_ms)
        self.client_id = str(uuid.uuid4())

    def _options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        return {"client_id": self.client_id, **(options or {})}

    def get_action(self, observation: dict[str, Any], options: dict[str, Any] | None = None
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        reply = self.call("get_action", {"observation": observation, "options": self._options(options)})
        if not isinstance(reply, list | tuple) or len(reply) != 2 or not all(isinstance(r, dict) for r in reply):
            raise ProtocolError(f"get_action answered {describe(reply)}, not (action, info); is the server an "
                                "N1.5 one? use Client there")
        return reply[0], reply[1]

    def reset(self, options: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.call("reset", {"options": self._options(options)})


def to_current_observation(obs: dict[str, Any], flat: bool = False) -> dict[str, Any]:
    """An N1.5-keyed observation (a dataset step, an --obs file; batched or not) in the current dialect: nested by
    modality (or the sim wrapper's flat keys), batch axis added when absent, state float32, one instruction per
    environment. Keys that are neither `video.`/`state.` arrays nor strings are dropped."""
    arrays = {k: np.asarray(v) for k, v in obs.items()}
    frames = [v for k, v in arrays.items() if k.startswith("video.")]
    states = [v for k, v in arrays.items() if k.startswith("state.")]
    batched = frames[0].ndim == 5 if frames else bool(states) and states[0].ndim == 3
    nested: dict[str, dict[str, Any]] = {"video": {}, "state": {}, "language": {}}
    flat_obs: dict[str, Any] = {}
    for key, value in arrays.items():
        group = key.split(".", 1)[0]
        if group in ("video", "state") and value.dtype.kind not in "USO":
            value = value if batched else value[None]
            value = np.ascontiguousarray(value, dtype=np.uint8 if group == "video" else np.float32)
            nested[group][short_key(key)] = value
            flat_obs[key] = value
        elif value.dtype.kind in "US" and value.size:
            texts = ([str(t) for t in value.reshape(value.shape[0], -1)[:, 0]] if batched
                     else [str(value.reshape(-1)[0])])  # one instruction per environment, as NVIDIA's policy reads
            nested["language"][key] = [[t] for t in texts]
            flat_obs[key] = texts
    return flat_obs if flat else nested


def modality_from_reply(reply: dict[str, Any]) -> PolicyInterface:
    """A server's `get_modality_config` (either dialect) as an interface with full keys, to read the dataset steps
    that match it. Widths and encodings are not part of the protocol, so they stay unknown (empty)."""
    def keys(group: str) -> list[str]:
        config = reply.get(group)
        names = config.modality_keys if isinstance(config, WireModalityConfig) else []
        return [k if k.startswith(f"{group}.") else f"{group}.{k}" for k in names]

    if not isinstance(reply, dict) or not isinstance(reply.get("action"), WireModalityConfig):
        raise InputError(f"the server's get_modality_config has no action config ({describe(reply)}); is it a "
                         "GR00T policy server?")
    observed = reply.get("video") or reply.get("state")
    language = reply.get("language")
    action_indices = tuple(reply["action"].delta_indices)
    return PolicyInterface(
        family="server", embodiment_tag="", name="server", video_keys=tuple(keys("video")),
        state_keys=tuple(keys("state")), action_keys=tuple(keys("action")),
        language_key=language.modality_keys[0] if isinstance(language, WireModalityConfig) and
        language.modality_keys else None,
        observation_indices=tuple(observed.delta_indices) if isinstance(observed, WireModalityConfig) else (0,),
        action_indices=action_indices, state_dims={}, action_dims={}, noise_shape=(len(action_indices), 0))
