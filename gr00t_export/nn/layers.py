"""Attention, rotary embeddings, RMSNorm and the tanh-GELU MLP: the pieces every tower of both families is made of.

Tensors stay (B, L, heads * head_dim) between modules; heads are split only around the attention product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    # (B, L, heads*dim) -> (B, heads, L, dim)
    b, length, _ = x.shape
    return x.view(b, length, num_heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    # (B, heads, L, dim) -> (B, L, heads*dim)
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


def attention(q: Tensor, k: Tensor, v: Tensor, num_heads: int, mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention on (B, L, heads*dim) tensors; `mask` is additive, (B|1, 1, Lq|1, Lk)."""
    out = F.scaled_dot_product_attention(split_heads(q, num_heads), split_heads(k, num_heads),
                                         split_heads(v, num_heads), attn_mask=mask)
    return merge_heads(out)


def rope_tables(head_dim: int, theta: float, positions: Tensor) -> tuple[Tensor, Tensor]:
    """positions (L,) -> cos, sin (L, head_dim / 2) in fp32: one frequency serves both halves of a head."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    return freqs.cos(), freqs.sin()


def apply_rope(x: Tensor, cos_half: Tensor, sin_half: Tensor) -> Tensor:
    """Rotate-half RoPE (the Qwen/Llama convention): x (B, L, heads, head_dim), tables (L, head_dim / 2)."""
    cos = torch.cat([cos_half, cos_half], dim=-1)[:, None]
    sin = torch.cat([sin_half, sin_half], dim=-1)[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos) + (rotated * sin)


class RMSNorm(nn.Module):
    """Qwen3's RMSNorm: computed in fp32, cast back, then scaled."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


class Attention(nn.Module):
    """Multi-head attention with biased q/k/v/out projections: SigLIP's self-attention and the DiT blocks' self- or
    cross-attention (keys and values from `context`, `kv_dim` wide), optionally under an additive key mask."""

    def __init__(self, dim: int, heads: int, head_dim: int, kv_dim: int | None = None):
        super().__init__()
        inner, kv_dim = heads * head_dim, kv_dim or dim
        self.heads = heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(kv_dim, inner)
        self.v_proj = nn.Linear(kv_dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of a context that several calls attend to (the DiT's VL tokens, every Euler step)."""
        return self.k_proj(context), self.v_proj(context)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None,
                kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """`kv`: keys and values already projected (`kv(context)`), instead of `context`."""
        k, v = kv if kv is not None else self.kv(x if context is None else context)
        return self.out_proj(attention(self.q_proj(x), k, v, self.heads, mask))


class GeluMLP(nn.Module):
    """Linear -> tanh-GELU -> Linear: SigLIP's MLP and the DiT blocks' feed-forward."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))
