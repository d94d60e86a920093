"""The diffusers-style transformer blocks of both action heads (DiT and N1.5's VL self-attention) and the DiT's
timestep encoder.

Checkpoints keep diffusers' names, which encode its module structure (`attn1.to_out.0`, `ff.net.0.proj`, ...);
`DIFFUSERS_NAMES` maps them onto the plain modules here when a checkpoint is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr00t_export.nn.layers import Attention, GeluMLP

# (checkpoint, module) name fragments of a diffusers block: `to_out` and `net` are ModuleLists whose other entries
# are dropouts, `net.0` is a GELU module holding the projection, and `timestep_embedder` is a wrapper level.
DIFFUSERS_NAMES = (
    ("attn1.to_q", "attn1.q_proj"), ("attn1.to_k", "attn1.k_proj"), ("attn1.to_v", "attn1.v_proj"),
    ("attn1.to_out.0", "attn1.out_proj"), ("ff.net.0.proj", "ff.fc1"), ("ff.net.2", "ff.fc2"),
    ("timestep_encoder.timestep_embedder", "timestep_encoder"),
)


@dataclass
class TransformerConfig:
    """A diffusers-style transformer stack: N1.5's DiT and its VL self-attention share this shape."""

    num_attention_heads: int
    attention_head_dim: int
    num_layers: int
    output_dim: int = 1024
    cross_attention_dim: int | None = None
    interleave_self_attention: bool = False

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


class AdaLayerNorm(nn.Module):
    """LN modulated by the timestep embedding: chunk order (scale, shift).

    `LN(x) * (1 + scale) + shift` is written as the LN's own affine. With one timestep for the whole batch
    (1, dim) that is exactly a LayerNormalization whose weight and bias are constants once the exporter folds
    the timestep path, so no multiply/add kernels follow the norm.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.linear = nn.Linear(dim, dim * 2)
        self.dim, self.eps = dim, eps

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        # x (B, T, dim), temb (1, dim): one timestep for every sample
        scale, shift = self.linear(F.silu(temb[0])).chunk(2)
        return F.layer_norm(x, (self.dim,), 1 + scale, shift, self.eps)


class TransformerBlock(nn.Module):
    """Pre-norm attention + feed-forward, no gating; AdaLN on the DiT, affine LN on the VL stack. Cross-attention
    blocks (`kv_dim`) attend to `context`, under an additive key `mask` (B, 1, 1, L) where one is given."""

    def __init__(self, dim: int, heads: int, head_dim: int, kv_dim: int | None, ada_norm: bool):
        super().__init__()
        self.ada_norm = ada_norm
        self.norm1 = AdaLayerNorm(dim) if ada_norm else nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, heads, head_dim, kv_dim)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=not ada_norm)
        self.ff = GeluMLP(dim, 4 * dim)

    def forward(self, x: Tensor, context: Tensor | None = None, temb: Tensor | None = None,
                mask: Tensor | None = None, kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """`kv`: the cross-attention's keys and values, projected once for every call on the same context."""
        h = self.norm1(x, temb) if self.ada_norm else self.norm1(x)
        x = x + self.attn1(h, context, mask, kv)
        return x + self.ff(self.norm3(x))


def timestep_sinusoid(timesteps: Tensor, channels: int = 256) -> Tensor:
    """diffusers `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)`: [cos, sin]."""
    half = channels // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / (half - 1)
    args = timesteps.float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEncoder(nn.Module):
    def __init__(self, dim: int, channels: int = 256):
        super().__init__()
        self.channels = channels
        self.linear_1 = nn.Linear(channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, timesteps: Tensor) -> Tensor:
        # (B,) int -> (B, dim)
        proj = timestep_sinusoid(timesteps, self.channels).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(proj)))


def dit_conditioning(timestep_encoder: TimestepEncoder, blocks: nn.ModuleList, proj_out_1: nn.Linear,
                     timesteps: Tensor) -> Tensor:
    """(num_blocks + 1, 2, inner) for one timestep (1,) shared by the batch: each AdaLN block's (scale, shift), then
    the output layer's (shift, scale) (the reverse order, as `proj_out_1` chunks it). They depend on the weights and
    the timestep only, so an export computes them once per Euler step and stores them as a constant table."""
    temb = F.silu(timestep_encoder(timesteps)[0])
    rows = [block.norm1.linear(temb).view(2, -1) for block in blocks]
    return torch.stack([*rows, proj_out_1(temb).view(2, -1)])


def modulated_block(block: TransformerBlock, x: Tensor, scale: Tensor, shift: Tensor, context: Tensor | None = None,
                    mask: Tensor | None = None, kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """An AdaLN `block` with its (scale, shift) given rather than computed from the timestep embedding: the same
    maths as `block(x, context, temb, mask, kv)`, LN(x) * (1 + scale) + shift before the attention."""
    h = F.layer_norm(x, (block.norm1.dim,), 1 + scale, shift, block.norm1.eps)
    x = x + block.attn1(h, context, mask, kv)
    return x + block.ff(block.norm3(x))
