"""The flow-matching DiT and the VL self-attention stack of the N1.5 action head.

Both are stacks of the same diffusers-style block; names follow `action_head.model.*` and
`action_head.vl_self_attention.*` of the real checkpoint (`attn1.to_q`, `attn1.to_out.0`, `ff.net.0.proj`, …).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr00t_export.families.n1_5.config import TransformerConfig
from gr00t_export.families.n1_5.model.layers import linear_gelu_tanh, projected_attention


class Attention(nn.Module):
    """Self- or cross-attention with biased projections (diffusers `Attention` naming)."""

    def __init__(self, dim: int, heads: int, head_dim: int, kv_dim: int | None = None):
        super().__init__()
        inner, kv_dim = heads * head_dim, kv_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(kv_dim, inner)
        self.to_v = nn.Linear(kv_dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        return self.to_out[0](projected_attention(x, context, self.to_q, self.to_k, self.to_v, self.heads))


class GELUProj(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: Tensor) -> Tensor:
        return linear_gelu_tanh(x, self.proj)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # net.1 / net.3 are dropouts in the original: keep the indices so weight names line up
        self.net = nn.ModuleList([GELUProj(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: Tensor) -> Tensor:
        return self.net[2](self.net[0](x))


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
    """Pre-norm attention + feed-forward, no gating; AdaLN on the DiT, affine LN on the VL stack."""

    def __init__(self, dim: int, heads: int, head_dim: int, kv_dim: int | None, ada_norm: bool):
        super().__init__()
        self.ada_norm = ada_norm
        self.norm1 = AdaLayerNorm(dim) if ada_norm else nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, heads, head_dim, kv_dim)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=not ada_norm)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, context: Tensor | None = None, temb: Tensor | None = None) -> Tensor:
        h = self.norm1(x, temb) if self.ada_norm else self.norm1(x)
        x = x + self.attn1(h, context)
        return x + self.ff(self.norm3(x))


class SelfAttentionTransformer(nn.Module):
    """`vl_self_attention`: attends over all backbone tokens, padding included (no mask, as in N1.5)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.inner_dim
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(d, cfg.num_attention_heads, cfg.attention_head_dim, None, ada_norm=False)
            for _ in range(cfg.num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        for block in self.transformer_blocks:
            x = block(x)
        return x


def timestep_sinusoid(timesteps: Tensor, channels: int = 256) -> Tensor:
    """diffusers `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)`: [cos, sin]."""
    half = channels // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / (half - 1)
    args = timesteps.float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimestepEncoder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(256, dim)

    def forward(self, timesteps: Tensor) -> Tensor:
        # (B,) int -> (B, dim)
        proj = timestep_sinusoid(timesteps).to(self.timestep_embedder.linear_1.weight.dtype)
        return self.timestep_embedder(proj)


class DiT(nn.Module):
    """16 blocks: even ones cross-attend to the VL tokens, odd ones self-attend; AdaLN output layer."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.inner_dim
        self.dim = d
        self.interleave = cfg.interleave_self_attention
        self.timestep_encoder = TimestepEncoder(d)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(
                d, cfg.num_attention_heads, cfg.attention_head_dim,
                None if (self.interleave and i % 2 == 1) else cfg.cross_attention_dim, ada_norm=True,
            )
            for i in range(cfg.num_layers)
        )
        self.proj_out_1 = nn.Linear(d, 2 * d)
        self.proj_out_2 = nn.Linear(d, cfg.output_dim)

    def forward(self, sa_embs: Tensor, vl_embs: Tensor, timesteps: Tensor) -> Tensor:
        # sa_embs (B, 49, inner), vl_embs (B, L, backbone), timesteps (1,): the sampler's one timestep for the
        # whole batch -> (B, 49, output_dim)
        temb = self.timestep_encoder(timesteps)
        x = sa_embs
        for i, block in enumerate(self.transformer_blocks):
            context = None if (self.interleave and i % 2 == 1) else vl_embs
            x = block(x, context, temb)
        shift, scale = self.proj_out_1(F.silu(temb[0])).chunk(2)  # note: (shift, scale) here
        return self.proj_out_2(F.layer_norm(x, (self.dim,), 1 + scale, shift, 1e-6))
