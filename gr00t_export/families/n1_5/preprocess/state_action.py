"""State normalisation and action un-normalisation as TorchScript-able modules.

Formulas follow GR00T N1.5 `Normalizer` exactly, including its quirks:
- min_max: 2(x-min)/(max-min)-1; dims with min==max become 0. Inverse (x+1)/2*(max-min)+min.
- q99: 2(x-q01)/(q99-q01)-1 then clamp to [-1,1]; dims with q01==q99 pass x through, but the clamp
  still applies to them. Inverse (x+1)/2*(q99-q01)+q01.
- mean_std: (x-mean)/std; std==0 passes x through. Inverse x*std+mean.
- binary: x>0.5 both ways. sin_cos (state only): [sin x, cos x] per key. identity: x.
The reference inverse has no degenerate special case: a min==max (q01==q99, std==0) dim comes back
as min (q01, mean), the constant the data had; we do the same.

Rotations (N1.5 `StateActionTransform` with `target_rotations`): a key whose dataset representation differs
from the config's target is converted first (state: float64, `preprocess/rotation.py`) and then normalised;
actions are un-normalised and then converted back (float32, as the reference's `unapply`). See
`metadata.key_plans` for which modes each key may take. The model's state/action vector lays a converted key
out at its target width; N1.5's ConcatTransform slices actions by the metadata width instead, which only
differs when a conversion changes the width (e.g. quaternion -> axis_angle), where N1.5 mis-slices.

The reference builds its statistics with `torch.tensor(list)`, i.e. float32, and only then casts to the
data's dtype; the buffers here hold float32-rounded statistics for the same reason.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr00t_export.data.rotation import RotationConversion
from gr00t_export.errors import InputError
from gr00t_export.families.n1_5.embodiments import ModalityConfig
from gr00t_export.families.n1_5.metadata import EmbodimentMetadata, KeyPlan, KeyStats, key_plans


def _bounds(stats: KeyStats, mode: str) -> tuple[np.ndarray, np.ndarray]:
    if mode == "min_max":
        return stats.min, stats.max
    if mode == "q99":
        return stats.q01, stats.q99
    return stats.mean, stats.std


def _f32(values: np.ndarray) -> np.ndarray:
    """Round statistics to float32 like the reference's torch.tensor(list), then widen back."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def _stats_for(meta_table: dict[str, KeyStats], key: str, short: str, mode: str, tag: str) -> KeyStats:
    stats = meta_table.get(short)
    if stats is None:
        raise InputError(f"metadata for '{tag}' has no statistics for {key} (mode {mode}); use the matching checkpoint")
    return stats


class _Slice(nn.Module):
    """One key's columns, unchanged."""

    def __init__(self, start: int, end: int):
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x: Tensor) -> Tensor:
        return x[..., self.start : self.end]


class _Rotate(nn.Module):
    """One key's columns converted to another rotation representation (`back`: target -> dataset's)."""

    def __init__(self, start: int, end: int, conversion: tuple[str, str], back: bool):
        super().__init__()
        self.start, self.end, self.back = start, end, back
        self.rotation = RotationConversion(*conversion)

    def forward(self, x: Tensor) -> Tensor:
        part = x[..., self.start : self.end]
        return self.rotation.inverse(part) if self.back else self.rotation(part)


def _segments(plans: list[KeyPlan], back: bool) -> tuple[nn.ModuleList, bool]:
    """Per key, in order: its slice of the input (dataset widths, or model widths when `back`), converted or not."""
    parts, offset = [], 0
    for plan in plans:
        width = plan.model_dim if back else plan.raw_dim
        parts.append(_Rotate(offset, offset + width, plan.conversion, back) if plan.conversion
                     else _Slice(offset, offset + width))
        offset += width
    return nn.ModuleList(parts), any(p.conversion for p in plans)


class StatePreprocessor(nn.Module):
    """Raw concatenated state (..., T, D_raw) -> model state (..., T, max_state_dim) float32 plus mask.

    Every per-key mode is resolved at construction into per-column buffers, so forward is a fixed
    sequence of tensor ops (rotation conversions, gather, affine, masked selects, pad) that scripts and
    runs on any device.
    """

    def __init__(self, cfg: ModalityConfig, metadata: EmbodimentMetadata, max_state_dim: int = 64):
        super().__init__()
        plans = key_plans(metadata, cfg, "state")
        src: list[int] = []
        sub: list[float] = []
        div: list[float] = []
        mul: list[float] = []
        add: list[float] = []
        flags: dict[str, list[bool]] = {n: [] for n in ("zero", "pass", "clamp", "binary", "sin", "cos")}
        slices: list[tuple[str, int, int]] = []  # raw input slices, in concat order

        def push(cols: list[int], s: np.ndarray, dv: np.ndarray, m: float, a: float, **on: list[bool]) -> None:
            src.extend(cols)
            sub.extend(s.tolist())
            div.extend(dv.tolist())
            mul.extend([m] * len(cols))
            add.extend([a] * len(cols))
            for name, col in flags.items():
                col.extend(on.get(name, [False] * len(cols)))

        raw_offset = offset = 0  # offset: columns of the converted vector the gather reads
        for plan in plans:
            key, mode = plan.key, plan.mode
            short = cfg.short(key)
            slices.append((key, raw_offset, raw_offset + plan.raw_dim))
            raw_offset += plan.raw_dim
            d = plan.model_dim
            cols = list(range(offset, offset + d))
            offset += d
            zeros, ones, no, yes = np.zeros(d), np.ones(d), [False] * d, [True] * d
            if mode in ("identity", "binary"):
                push(cols, zeros, ones, 1.0, 0.0, binary=yes if mode == "binary" else no)
            elif mode == "sin_cos":
                push(cols, zeros, ones, 1.0, 0.0, sin=yes)
                push(cols, zeros, ones, 1.0, 0.0, cos=yes)
            else:
                if plan.fixed_bound is not None:  # a converted absolute rotation: min_max over fixed bounds
                    lo, hi = np.full(d, -plan.fixed_bound), np.full(d, plan.fixed_bound)
                else:
                    stats = _stats_for(metadata.state, key, short, mode, metadata.tag)
                    lo, hi = (_f32(v) for v in _bounds(stats, mode))
                if mode == "mean_std":
                    ok = hi != 0
                    push(cols, lo, np.where(ok, hi, 1.0), 1.0, 0.0, **{"pass": (~ok).tolist()})
                else:
                    ok = lo != hi
                    bad = (~ok).tolist()
                    on = {"zero": bad} if mode == "min_max" else {"pass": bad, "clamp": yes}
                    push(cols, lo, np.where(ok, hi - lo, 1.0), 2.0, -1.0, **on)

        self.key_slices = slices
        self.plans = plans
        self.segments, self.rotates = _segments(plans, back=False)
        self.raw_dim: int = raw_offset
        self.converted_dim: int = offset
        self.out_dim: int = len(src)
        self.max_state_dim: int = max_state_dim
        self.keep: int = min(self.out_dim, max_state_dim)
        self.pad: int = max_state_dim - self.keep
        f64 = torch.float64
        self.register_buffer("src_index", torch.tensor(src, dtype=torch.long))
        self.register_buffer("sub", torch.tensor(sub, dtype=f64))
        self.register_buffer("div", torch.tensor(div, dtype=f64))
        self.register_buffer("mul", torch.tensor(mul, dtype=f64))
        self.register_buffer("add", torch.tensor(add, dtype=f64))
        for name, col in flags.items():
            self.register_buffer(f"{name}_mask", torch.tensor(col, dtype=torch.bool))
        mask_row = torch.zeros(max_state_dim, dtype=torch.bool)
        mask_row[: self.keep] = True
        self.register_buffer("mask_row", mask_row)

    def forward(self, state: Tensor) -> tuple[Tensor, Tensor]:
        torch._assert(state.shape[-1] == self.raw_dim, "state's last dim must equal the summed raw key dims")
        x = state.to(torch.float64)
        if self.rotates:
            x = torch.cat([segment(x) for segment in self.segments], dim=-1)
        x = torch.index_select(x, -1, self.src_index)
        y = ((x - self.sub) / self.div) * self.mul + self.add
        y = torch.where(self.zero_mask, torch.zeros_like(y), y)
        y = torch.where(self.pass_mask, x, y)
        y = torch.where(self.clamp_mask, torch.clamp(y, -1.0, 1.0), y)
        y = torch.where(self.binary_mask, (x > 0.5).to(torch.float64), y)
        y = torch.where(self.sin_mask, torch.sin(x), y)
        y = torch.where(self.cos_mask, torch.cos(x), y)
        y = F.pad(y[..., : self.keep], [0, self.pad]).to(torch.float32)
        mask = self.mask_row.expand(y.shape)
        return y, mask

    def concat(self, state: dict[str, np.ndarray | Tensor]) -> Tensor:
        """Build the raw (..., T, D_raw) float64 input from {"state.<key>": (..., T, d)} (plain Python)."""
        parts = []
        for key, start, end in self.key_slices:
            if key not in state:
                wanted = [k for k, _, _ in self.key_slices]
                raise InputError(f"observation lacks '{key}'; provide every state key: {wanted}")
            part = torch.as_tensor(np.asarray(state[key]), dtype=torch.float64)
            if part.shape[-1] != end - start:
                raise InputError(f"'{key}' has {part.shape[-1]} dims, metadata says {end - start}; send the right key")
            parts.append(part)
        return torch.cat(parts, dim=-1)


class ActionPostprocessor(nn.Module):
    """Model output (..., H, max_action_dim) -> un-normalised actions (..., H, D_action) float32.

    Computed in float32 like the reference policy, which calls `.float()` on action_pred before unapply; a key
    predicted in a target rotation is converted back to the dataset's representation, so `D_action` is the sum of
    the metadata widths.
    """

    def __init__(self, cfg: ModalityConfig, metadata: EmbodimentMetadata, max_action_dim: int = 32):
        super().__init__()
        plans = key_plans(metadata, cfg, "action")
        plus: list[float] = []
        over: list[float] = []
        hi: list[float] = []
        lo: list[float] = []
        shift: list[float] = []
        binary: list[bool] = []
        slices: list[tuple[str, int, int]] = []
        offset = raw_offset = 0
        for plan in plans:
            key, mode, d = plan.key, plan.mode, plan.model_dim
            short = cfg.short(key)
            slices.append((key, raw_offset, raw_offset + plan.raw_dim))
            raw_offset += plan.raw_dim
            offset += d
            binary.extend([mode == "binary"] * d)
            if mode in ("identity", "binary"):
                # ((x + 0) / 1) * (1 - 0) + 0 == x exactly.
                plus += [0.0] * d
                over += [1.0] * d
                hi += [1.0] * d
                lo += [0.0] * d
                shift += [0.0] * d
                continue
            if plan.fixed_bound is not None:
                a, b = np.full(d, -plan.fixed_bound), np.full(d, plan.fixed_bound)
            else:
                stats = _stats_for(metadata.action, key, short, mode, metadata.tag)
                a, b = (_f32(v) for v in _bounds(stats, mode))
            if mode == "mean_std":  # x * std + mean
                plus += [0.0] * d
                over += [1.0] * d
                hi += b.tolist()
                lo += [0.0] * d
                shift += a.tolist()
            else:  # (x + 1) / 2 * (hi - lo) + lo
                plus += [1.0] * d
                over += [2.0] * d
                hi += b.tolist()
                lo += a.tolist()
                shift += a.tolist()
        if offset > max_action_dim:
            raise InputError(
                f"config '{cfg.name}' needs {offset} action dims but the model emits {max_action_dim}; "
                "drop action keys or use a model with a larger max_action_dim"
            )
        self.key_slices = slices
        self.plans = plans
        self.segments, self.rotates = _segments(plans, back=True)
        self.action_dim: int = offset  # model space
        self.out_dim: int = raw_offset
        f32 = torch.float32
        self.register_buffer("plus", torch.tensor(plus, dtype=f32))
        self.register_buffer("over", torch.tensor(over, dtype=f32))
        self.register_buffer("hi", torch.tensor(hi, dtype=f32))
        self.register_buffer("lo", torch.tensor(lo, dtype=f32))
        self.register_buffer("shift", torch.tensor(shift, dtype=f32))
        self.register_buffer("binary_mask", torch.tensor(binary, dtype=torch.bool))

    def forward(self, action_pred: Tensor) -> Tensor:
        torch._assert(action_pred.shape[-1] >= self.action_dim, "action_pred has fewer dims than the action keys")
        x = action_pred[..., : self.action_dim].to(torch.float32)
        y = ((x + self.plus) / self.over) * (self.hi - self.lo) + self.shift
        y = torch.where(self.binary_mask, (x > 0.5).to(torch.float32), y)
        if self.rotates:
            y = torch.cat([segment(y) for segment in self.segments], dim=-1)
        return y

    def split(self, actions: Tensor) -> dict[str, Tensor]:
        """{"action.<key>": (..., H, d)} from forward's output (plain Python, not scripted)."""
        return {key: actions[..., start:end] for key, start, end in self.key_slices}
