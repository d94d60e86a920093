"""`gr00t-export serve`: a policy behind Isaac-GR00T's ZeroMQ inference protocol, in both of its dialects.

`protocol` has the wire format and the observation checks (its docstring describes the protocol and this
server's decisions), `server` the `PolicyServer`, `batching` how requests that arrive together run as one policy
call, `client` the two dialects' clients, `replay` the dataset replay policy. Everything public is importable from
here.
"""

from gr00t_export.serve.client import Client, PolicyClient, modality_from_reply, to_current_observation
from gr00t_export.serve.protocol import (
    CURRENT,
    CURRENT_DEFAULT_LANGUAGE_KEY,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PORT,
    DEFAULT_TIMEOUT_MS,
    ENDPOINTS,
    N15,
    NESTED_SHAPES,
    PROTOCOLS,
    UNAUTHORIZED,
    ProtocolError,
    ServerError,
    WireModalityConfig,
    check_current_observation,
    check_observation,
    current_actions,
    current_language_key,
    decode,
    decode_hook,
    encode,
    encode_hook,
    is_current_get_action,
    modality_config_reply,
    npy_array,
    npy_bytes,
)
from gr00t_export.serve.server import POLL_MS, LatencyLog, Policy, PolicyServer

__all__ = [
    "CURRENT", "CURRENT_DEFAULT_LANGUAGE_KEY", "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_PORT", "DEFAULT_TIMEOUT_MS",
    "ENDPOINTS", "N15", "NESTED_SHAPES", "POLL_MS", "PROTOCOLS", "UNAUTHORIZED", "Client", "LatencyLog", "Policy",
    "PolicyClient", "PolicyServer", "ProtocolError", "ServerError", "WireModalityConfig", "check_current_observation",
    "check_observation", "current_actions", "current_language_key", "decode", "decode_hook", "encode",
    "encode_hook", "is_current_get_action", "modality_config_reply", "modality_from_reply", "npy_array", "npy_bytes",
    "to_current_observation",
]
