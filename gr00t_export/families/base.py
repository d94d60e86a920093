"""What a model family supplies, and the small typed objects the generic stages exchange with it.

The compiler's stages (pipeline/, runtime/, serve/, tools/) never import a family's modules: they get a
`ModelFamily` from the registry (`gr00t_export.families.family_for_checkpoint` / `family_named`), open a
checkpoint through it (`OpenedPolicy`) and work with what it returns: a `PolicyInterface` (the keys a robot sends
and gets back), `RawInputs` (one observation as the graph's external inputs), a `Partition` (the stages as
PyTorch modules) and a reference policy to validate against.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from gr00t_export.errors import InputError
from gr00t_export.spec import GraphSpec, Partition

Observation = dict[str, Any]


def short_key(key: str) -> str:
    """'state.left_arm' -> 'left_arm' (datasets and NVIDIA's current protocol name keys without the modality)."""
    return key.split(".", 1)[1] if "." in key else key


@dataclass(frozen=True)
class KeyLayout:
    """How a dataset stores one state/action key: what `meta/modality.json` says about it."""

    dim: int
    rotation_type: str | None = None
    absolute: bool = True
    continuous: bool = True


class ObservationKeys(Protocol):
    """The keys and step offsets of an observation and its action chunk: what a dataset reader needs
    (`PolicyInterface` has them, and so has N1.5's data config)."""

    video_keys: tuple[str, ...]
    state_keys: tuple[str, ...]
    action_keys: tuple[str, ...]
    language_key: str | None
    observation_indices: tuple[int, ...]
    action_indices: tuple[int, ...]


@dataclass(frozen=True)
class PolicyInterface:
    """The observation a policy reads and the actions it returns, whatever the family: full keys
    (`video.<k>`, `state.<k>`, `action.<k>`), their widths, horizons and encodings.

    Serving, validation, the IGG config, datasets and replays need nothing else about a policy.
    """

    family: str
    embodiment_tag: str
    name: str  # the data config / embodiment config the policy was built for
    video_keys: tuple[str, ...]
    state_keys: tuple[str, ...]
    action_keys: tuple[str, ...]
    language_key: str | None
    observation_indices: tuple[int, ...]
    action_indices: tuple[int, ...]
    state_dims: dict[str, int]  # full key -> width of the raw value
    action_dims: dict[str, int]
    noise_shape: tuple[int, int]  # (model horizon, model action width) of the sampler's initial noise
    video_resolutions: dict[str, tuple[int, int]] = field(default_factory=dict)  # (W, H) as recorded
    state_encodings: dict[str, str] = field(default_factory=dict)  # full key -> sin_cos, min_max, mean_std, ...
    joint_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    action_spans: dict[str, tuple[float, ...]] = field(default_factory=dict)  # per joint, what "1.0 of range" is
    default_instruction: str = "Perform the default behavior."

    short = staticmethod(short_key)

    @property
    def state_horizon(self) -> int:
        return len(self.observation_indices)

    @property
    def action_horizon(self) -> int:
        return len(self.action_indices)

    def key_layouts(self) -> dict[str, Any]:
        """Each state/action key as a dataset stores it (plain vectors of the interface's widths)."""
        return {k: KeyLayout(d) for k, d in (*self.state_dims.items(), *self.action_dims.items())}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyInterface:
        try:
            tuples = ("video_keys", "state_keys", "action_keys", "observation_indices", "action_indices",
                      "noise_shape")
            fields = {k: tuple(v) if k in tuples else v for k, v in data.items()}
            fields["video_resolutions"] = {k: tuple(v) for k, v in data.get("video_resolutions", {}).items()}
            fields["joint_names"] = {k: tuple(v) for k, v in data.get("joint_names", {}).items()}
            fields["action_spans"] = {k: tuple(v) for k, v in data.get("action_spans", {}).items()}
            return cls(**fields)
        except TypeError as err:
            raise InputError(f"the manifest's policy interface is incomplete ({err}); re-run the build") from None


def synthetic_observation(iface: PolicyInterface, seed: int = 0) -> Observation:
    """A seeded observation of the interface's shapes (recorded camera sizes, else 256 x 256), for timing a drop
    without a dataset: the values mean nothing, the shapes and dtypes are real."""
    rng = np.random.default_rng(seed)
    obs: Observation = {}
    for key in iface.video_keys:
        w, h = iface.video_resolutions.get(key, (256, 256))
        obs[key] = rng.integers(0, 256, (iface.state_horizon, h, w, 3), dtype=np.uint8)
    for key in iface.state_keys:
        obs[key] = rng.standard_normal((iface.state_horizon, iface.state_dims[key]))
    if iface.language_key:
        obs[iface.language_key] = np.array(["pick up the object and place it on the plate"])
    return obs


@dataclass
class RawInputs:
    """One observation after checks, before any transform: the graph's external inputs (every one but the noise),
    by their graph-spec names, e.g. frames_<i>, raw_state, instructions."""

    external: dict[str, Any]  # numpy arrays, or a list of B strings for instructions
    batch: int
    batched: bool  # False: the caller passed one unbatched observation


def require_denoising_steps(steps: int | None) -> None:
    """None (the checkpoint's count) or a whole number of Euler steps >= 1."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise InputError(f"--denoising_steps must be an integer >= 1 (Euler steps of the action head), got {steps!r}; "
                         "leave it out for the checkpoint's num_inference_timesteps")


def make_noise(shape: tuple[int, ...], noise: np.ndarray | None, seed: int) -> torch.Tensor:
    """The sampler's initial actions (B, H, D): `noise` given as (H, D) or (B, H, D), else seeded N(0, 1)."""
    if noise is None:
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    arr = np.asarray(noise, dtype=np.float32)
    if arr.shape == shape[1:]:  # one (H, D) noise for every sample; other shapes fail below
        arr = np.broadcast_to(arr, shape)
    if arr.shape != shape:
        raise InputError(f"noise has shape {arr.shape}, expected {shape[1:]} or {shape}; regenerate it")
    return torch.from_numpy(arr.copy())


class ObservationReader(Protocol):
    """Checks an observation (flat `video.<k>`/`state.<k>`/language keys, batched or not) against the interface and
    flattens it into the graph's external inputs."""

    def __call__(self, obs: Observation) -> RawInputs: ...


class Policy(Protocol):
    """What serving, validation and benchmarks drive: the reference, the exported runner and the replay all fit."""

    interface: PolicyInterface

    def get_action(self, obs: Observation, noise: np.ndarray | None = None, seed: int = 0
                   ) -> dict[str, np.ndarray]: ...


class OpenedPolicy(Protocol):
    """A checkpoint opened for one embodiment: config and interface read and checked, no weights loaded yet."""

    family: ModelFamily
    path: Path
    interface: PolicyInterface
    denoising_steps: int

    def fingerprint(self) -> str: ...

    def manifest_entries(self) -> dict[str, Any]:
        """What an exported drop needs to run without the checkpoint (statistics, key layout, model config)."""
        ...

    def load(self, dtype: torch.dtype, device: str | torch.device = "cpu") -> torch.nn.Module: ...

    def reference(self, model: torch.nn.Module, device: str | torch.device = "cpu") -> Policy: ...

    def reader(self) -> ObservationReader: ...

    def partition(self, model: torch.nn.Module, precision: str) -> Partition: ...

    def example_observation(self, dataset_path: Path | None) -> Observation: ...

    def with_views(self, views: int) -> OpenedPolicy:
        """The same policy reading `views` cameras (its own first, then made-up keys): the per-camera stages of
        another camera count, for timing the view-independent model stages at any count (`bench --grid`)."""
        ...

    def profiles(self, spec: GraphSpec, max_batch: int) -> dict[str, dict]:
        """TensorRT optimisation profiles (min/opt/max of every varying dim) per view count."""
        ...

    def spec_dims(self) -> dict[str, int]:
        """The graph spec's named model widths (backbone_dim, action_horizon, ...) for this checkpoint."""
        ...

    def check_artifacts(self, root: Path, spec: GraphSpec) -> None:
        """Family-specific checks of written artifacts beyond the per-stage export check (e.g. the tokenizer)."""
        ...


class ModelFamily(Protocol):
    name: str  # "gr00t_n1_5": recorded in every manifest
    model_types: tuple[str, ...]  # config.json `model_type` values it reads
    presets: tuple[str, ...]  # make-checkpoint presets

    def graph_spec_path(self) -> Path: ...

    def open(self, model_path: Path, eagle_path: Path | None = None, *, embodiment_tag: str | None = None,
             modality_config: str | Path | None = None, denoising_steps: int | None = None) -> OpenedPolicy: ...

    def open_for_manifest(self, model_path: Path, eagle_path: Path | None, manifest: dict[str, Any]) -> OpenedPolicy:
        """The checkpoint opened as the build recorded in `manifest` opened it (embodiment, config, Euler steps):
        validation's and the benchmark's reference for that build."""
        ...

    def reader(self, manifest: dict[str, Any]) -> ObservationReader:
        """The observation reader of an exported drop, from what `manifest_entries` wrote."""
        ...

    def make_checkpoint(self, out: Path, preset: str, seed: int = 0, **options: Any) -> Path:
        """A checkpoint with random weights in the family's exact layout. Options every family takes: embodiment,
        modality_config, dataset_path (statistics), eagle_path (tokenizer files), force, show_progress."""
        ...

    def data_config_names(self) -> list[str]: ...

    def data_config(self, name_or_path: str | Path) -> Any | None:
        """The family's named observation layout (keys, widths, joint names: what datasets and replays need), or
        None when the name is not one of this family's."""
        ...
