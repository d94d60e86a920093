"""N1.6 state encoding and action decoding as TorchScript-able modules (NVIDIA's `StateActionProcessor`).

State, per group in `state.modality_keys` order, then concatenated and zero-padded to `max_state_dim`:
- sin/cos (`apply_sincos_state_encoding` and key in `sin_cos_embedding_keys`): [sin(x), cos(x)] of the raw values;
- mean/std (key in `mean_std_embedding_keys`): (x - mean) / std, std == 0 passes x through, no clipping;
- otherwise min/max: 2 (x - min) / (max - min) - 1 (q01/q99 with `use_percentiles`), dims with max ~= min
  (np.isclose) give 0, clipped to [-1, 1] with `clip_outliers`.
Actions: `action_pred[:, :horizon]` split per key, min/max keys clipped to [-1, 1] then (x + 1) / 2 * (max - min)
+ min (the `(x + 1) / 2` in float32, as NumPy does on the float32 prediction), mean/std keys x * std + mean; for
RELATIVE keys (with `use_relative_action`) the statistics are the per-step `relative_action` ones and the raw last
state of `state_key` (else the key itself) is added. Everything else runs in float64; outputs are float32.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr00t_export.errors import InputError
from gr00t_export.families.n1_6.processor_files import EmbodimentStatistics, KeyStatistics, ProcessorConfig


def _require(table: dict[str, KeyStatistics], key: str, what: str, tag: str) -> KeyStatistics:
    if key not in table:
        raise InputError(f"statistics.json has no {what} statistics for {tag}.{key}; use the checkpoint's "
                         "statistics.json (it must cover every key of processor_config.json)")
    return table[key]


class StateEncoder(nn.Module):
    """Raw state (B, T, D_raw), groups concatenated in modality order -> model state (B, T, max_state_dim) float32."""

    key_slices: list[tuple[str, int, int]]

    def __init__(self, processor: ProcessorConfig, statistics: EmbodimentStatistics, tag: str):
        super().__init__()
        modalities = processor.embodiment(tag)
        state_cfg = modalities.state
        sincos = set(state_cfg.sin_cos_embedding_keys or ()) if processor.apply_sincos_state_encoding else set()
        meanstd = set(state_cfg.mean_std_embedding_keys or ())
        src: list[int] = []
        sub: list[float] = []
        div: list[float] = []
        kinds: list[int] = []  # 0 min/max, 1 mean/std, 2 sin, 3 cos
        zero: list[bool] = []
        self.key_slices = []
        offset = 0
        for key in state_cfg.modality_keys:
            stats = _require(statistics.state, key, "state", tag)
            d = stats.dim
            cols = list(range(offset, offset + d))
            self.key_slices.append((key, offset, offset + d))
            offset += d
            if key in sincos:
                for kind in (2, 3):
                    src += cols
                    sub += [0.0] * d
                    div += [1.0] * d
                    kinds += [kind] * d
                    zero += [False] * d
            elif key in meanstd:
                ok = stats.std != 0
                src += cols
                sub += stats.mean.tolist()
                div += np.where(ok, stats.std, 1.0).tolist()
                kinds += [1] * d
                zero += [False] * d
                # std == 0 passes x through: (x - 0) / 1
                sub[-d:] = np.where(ok, stats.mean, 0.0).tolist()
            else:
                lo, hi = (stats.q01, stats.q99) if processor.use_percentiles else (stats.min, stats.max)
                degenerate = np.isclose(hi, lo)
                src += cols
                sub += lo.tolist()
                div += np.where(degenerate, 1.0, hi - lo).tolist()
                kinds += [0] * d
                zero += degenerate.tolist()
        if len(src) > processor.max_state_dim:
            raise InputError(f"embodiment {tag!r} encodes its state to {len(src)} values but max_state_dim is "
                             f"{processor.max_state_dim}; fix processor_config.json")
        self.raw_dim: int = offset
        self.encoded_dim: int = len(src)
        self.pad: int = processor.max_state_dim - len(src)
        self.clip: bool = processor.clip_outliers
        kind = torch.tensor(kinds, dtype=torch.long)
        self.register_buffer("src_index", torch.tensor(src, dtype=torch.long))
        self.register_buffer("sub", torch.tensor(sub, dtype=torch.float64))
        self.register_buffer("div", torch.tensor(div, dtype=torch.float64))
        self.register_buffer("is_minmax", kind == 0)
        self.register_buffer("is_sin", kind == 2)
        self.register_buffer("is_cos", kind == 3)
        self.register_buffer("is_zero", torch.tensor(zero, dtype=torch.bool))

    def forward(self, state: Tensor) -> Tensor:
        torch._assert(state.shape[-1] == self.raw_dim, "state's last dim must equal the summed raw key dims")
        x = torch.index_select(state.to(torch.float64), -1, self.src_index)
        scaled = (x - self.sub) / self.div
        minmax = 2.0 * scaled - 1.0
        if self.clip:
            minmax = torch.clamp(minmax, -1.0, 1.0)
        minmax = torch.where(self.is_zero, torch.zeros_like(minmax), minmax)
        y = torch.where(self.is_minmax, minmax, scaled)
        y = torch.where(self.is_sin, torch.sin(x), y)
        y = torch.where(self.is_cos, torch.cos(x), y)
        return F.pad(y, [0, self.pad]).to(torch.float32)

    def concat(self, state: dict[str, np.ndarray]) -> np.ndarray:
        """{key: (B, T, d)} -> (B, T, D_raw) float32 in modality order (plain Python)."""
        parts = []
        for key, start, end in self.key_slices:
            if key not in state:
                raise InputError(f"observation lacks state {key!r}; send every state key: "
                                 f"{[k for k, _, _ in self.key_slices]}")
            part = np.asarray(state[key])
            if part.ndim != 3 or part.shape[-1] != end - start or part.dtype.kind != "f":
                raise InputError(f"state {key!r} must be float (B, T, {end - start}), got {part.dtype} {part.shape}")
            if not np.isfinite(part).all():
                raise InputError(f"state {key!r} contains NaN or inf; fix the observation")
            parts.append(part.astype(np.float32))
        return np.concatenate(parts, axis=-1)


class ActionDecoder(nn.Module):
    """action_pred (B, >= horizon, >= D) float32 and raw state (B, T, D_raw) -> actions (B, horizon, D) float32,
    the action keys concatenated in modality order (`split` gives the per-key dict)."""

    key_slices: list[tuple[str, int, int]]

    def __init__(self, processor: ProcessorConfig, statistics: EmbodimentStatistics, tag: str,
                 state_slices: list[tuple[str, int, int]]):
        super().__init__()
        modalities = processor.embodiment(tag)
        horizon = modalities.action_horizon
        state_cols = {key: (start, end) for key, start, end in state_slices}
        meanstd = set(modalities.action.mean_std_embedding_keys or ())
        lo_cols, hi_cols, mean_cols, std_cols = [], [], [], []
        is_meanstd: list[bool] = []
        ref_index: list[int] = []
        relative: list[bool] = []
        self.key_slices = []
        offset = 0
        for key in modalities.action.modality_keys:
            cfg = modalities.action_config(key)
            is_relative = cfg.rep == "RELATIVE" and processor.use_relative_action
            absolute = _require(statistics.action, key, "action", tag)
            d = absolute.dim
            if is_relative:
                if cfg.type == "EEF":
                    raise InputError(f"action {tag}.{key} is a RELATIVE end-effector pose; composing poses is not "
                                     "implemented (only NON_EEF joints)")
                stats = _require(statistics.relative_action, key, "relative_action", tag)
                if stats.min.shape != (horizon, d):
                    raise InputError(f"relative_action statistics of {tag}.{key} have shape {stats.min.shape}, "
                                     f"expected ({horizon}, {d}); regenerate statistics.json")
                # NVIDIA replaces the key's parameters with the raw relative dict: min/max even with percentiles
                lo, hi = stats.min, stats.max
                reference = cfg.state_key or key
                if reference not in state_cols or state_cols[reference][1] - state_cols[reference][0] != d:
                    raise InputError(f"relative action {tag}.{key} needs a {d}-dim state {reference!r}; fix "
                                     "action_configs.state_key in processor_config.json")
                ref_index += list(range(*state_cols[reference]))
            else:
                stats = absolute
                lo, hi = (stats.q01, stats.q99) if processor.use_percentiles else (stats.min, stats.max)
                ref_index += [0] * d
            for cols, values in ((lo_cols, lo), (hi_cols, hi), (mean_cols, stats.mean), (std_cols, stats.std)):
                cols.append(np.broadcast_to(values, (horizon, d)))  # absolute stats: the same for every step
            is_meanstd += [key in meanstd] * d
            relative += [is_relative] * d
            self.key_slices.append((key, offset, offset + d))
            offset += d
        if offset > processor.max_action_dim:
            raise InputError(f"embodiment {tag!r} has {offset} action dims but max_action_dim is "
                             f"{processor.max_action_dim}; fix processor_config.json")
        self.horizon: int = horizon
        self.action_dim: int = offset
        f64 = torch.float64
        cat = lambda cols: torch.from_numpy(np.concatenate(cols, axis=1).astype(np.float64))  # noqa: E731
        self.register_buffer("lo", cat(lo_cols).to(f64))
        self.register_buffer("hi", cat(hi_cols).to(f64))
        self.register_buffer("mean", cat(mean_cols).to(f64))
        std = cat(std_cols).to(f64)
        self.register_buffer("std", std)
        self.register_buffer("std_zero", std == 0)
        self.register_buffer("is_meanstd", torch.tensor(is_meanstd, dtype=torch.bool))
        self.register_buffer("is_relative", torch.tensor(relative, dtype=torch.bool))
        self.register_buffer("ref_index", torch.tensor(ref_index, dtype=torch.long))

    def forward(self, action_pred: Tensor, raw_state: Tensor) -> Tensor:
        torch._assert(action_pred.shape[-1] >= self.action_dim, "action_pred has fewer dims than the action keys")
        torch._assert(action_pred.shape[-2] >= self.horizon, "action_pred has fewer steps than the action horizon")
        x = action_pred[..., : self.horizon, : self.action_dim].to(torch.float32)
        half = ((torch.clamp(x, -1.0, 1.0) + 1.0) / 2.0).to(torch.float64)
        minmax = half * (self.hi - self.lo) + self.lo
        x64 = x.to(torch.float64)
        meanstd = torch.where(self.std_zero, x64, x64 * self.std + self.mean)
        y = torch.where(self.is_meanstd, meanstd, minmax)
        reference = torch.index_select(raw_state[:, -1, :].to(torch.float64), -1, self.ref_index)[:, None, :]
        y = torch.where(self.is_relative, y + reference, y)
        return y.to(torch.float32)

    def split(self, actions: Tensor) -> dict[str, Tensor]:
        """{key: (B, horizon, d)} from forward's output (plain Python)."""
        return {key: actions[..., start:end] for key, start, end in self.key_slices}
