"""Small building blocks shared by the vision tower, the LLM and the action head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention on (B, heads, L, head_dim) tensors; `mask` is additive."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    # (B, L, heads*dim) -> (B, heads, L, dim)
    b, length, _ = x.shape
    return x.view(b, length, num_heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    # (B, heads, L, dim) -> (B, L, heads*dim)
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


class RMSNorm(nn.Module):
    """Qwen3's RMSNorm: computed in fp32, cast back, then scaled."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)
