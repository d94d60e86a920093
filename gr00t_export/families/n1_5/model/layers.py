"""Small building blocks shared by the vision tower, the LLM and the action head.

Attention, rotary embeddings and the tanh-GELU of a biased projection each have two ONNX spellings. By
default they export as standard ops (MatMul, Softmax, Tanh, ...), which TensorRT fuses into its own kernels.
Inside `onnxruntime_kernels()` they export as onnxruntime's fused contrib ops instead (`com.microsoft`
MultiHeadAttention, RotaryEmbedding and FastGelu: flash/memory-efficient attention, one RoPE kernel and one
bias+GELU kernel on CUDA), which only onnxruntime runs. Eager and traced PyTorch compute the same thing
either way. (The residual add + LayerNorm fusion of that dialect is a graph pass: `optimize.fuse_residual_norms`.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ORT_KERNELS = False


@contextlib.contextmanager
def onnxruntime_kernels() -> Iterator[None]:
    """Export attention, RoPE and bias+GELU as onnxruntime contrib ops while the block runs."""
    global _ORT_KERNELS
    previous, _ORT_KERNELS = _ORT_KERNELS, True
    try:
        yield
    finally:
        _ORT_KERNELS = previous


def _use_ort_kernels() -> bool:
    return _ORT_KERNELS and torch.onnx.is_in_onnx_export()


def _missing_input(g):
    """An omitted optional ONNX input (an empty name), as the TorchScript exporter spells it."""
    node = g.op("prim::Constant")
    node.setType(torch._C.OptionalType.ofTensor())
    return node


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    # (B, L, heads*dim) -> (B, heads, L, dim)
    b, length, _ = x.shape
    return x.view(b, length, num_heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    # (B, heads, L, dim) -> (B, L, heads*dim)
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, num_heads: int, mask: Tensor | None) -> Tensor:
    out = F.scaled_dot_product_attention(split_heads(q, num_heads), split_heads(k, num_heads),
                                         split_heads(v, num_heads), attn_mask=mask)
    return merge_heads(out)


def _given(g, value):
    return _missing_input(g) if value is None or value.node().mustBeNone() else value


class _MultiHeadAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, qkv_bias: Tensor | None,
                num_heads: int) -> Tensor:
        if qkv_bias is not None:
            bq, bk, bv = qkv_bias.split([q.shape[-1], k.shape[-1], v.shape[-1]])
            q, k, v = q + bq, k + bk, v + bv
        return _sdpa(q, k, v, num_heads, mask)

    @staticmethod
    def symbolic(g, q, k, v, mask, qkv_bias, num_heads: int):
        # inputs: query, key, value, bias (packed q/k/v projection bias), key_padding_mask, attention_bias
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, _given(g, qkv_bias), _missing_input(g),
                   _given(g, mask), num_heads_i=num_heads)
        return out.setType(q.type())


def attention(q: Tensor, k: Tensor, v: Tensor, num_heads: int, mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention on (B, L, heads*dim) tensors; `mask` is additive, (B|1, 1, Lq, Lk)."""
    if _use_ort_kernels():
        return _MultiHeadAttention.apply(q, k, v, mask, None, num_heads)
    return _sdpa(q, k, v, num_heads, mask)


def projected_attention(x: Tensor, context: Tensor, to_q: nn.Linear, to_k: nn.Linear, to_v: nn.Linear,
                        num_heads: int) -> Tensor:
    """attention(to_q(x), to_k(context), to_v(context)). Under `onnxruntime_kernels()` the three projection biases
    become MultiHeadAttention's packed `bias` input, added inside the fused kernel instead of by three Add nodes."""
    if _use_ort_kernels() and to_q.bias is not None:
        qkv_bias = torch.cat([to_q.bias, to_k.bias, to_v.bias])
        return _MultiHeadAttention.apply(F.linear(x, to_q.weight), F.linear(context, to_k.weight),
                                         F.linear(context, to_v.weight), None, qkv_bias, num_heads)
    return attention(to_q(x), to_k(context), to_v(context), num_heads)


def _rotate_half_rope(x: Tensor, cos_half: Tensor, sin_half: Tensor) -> Tensor:
    # x (B, L, heads, head_dim); cos_half/sin_half (L, head_dim / 2); the rotate-half convention of Qwen/Llama
    cos = torch.cat([cos_half, cos_half], dim=-1)[:, None]
    sin = torch.cat([sin_half, sin_half], dim=-1)[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos) + (rotated * sin)


class _RotaryEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, offset: Tensor, cos_half: Tensor, sin_half: Tensor, num_heads: int) -> Tensor:
        # x (B, L, heads*head_dim); offset (1,): position of the first token (onnxruntime's 1-D position_ids)
        b, length, width = x.shape
        positions = offset + torch.arange(length, device=x.device)
        tables = (F.embedding(positions, t) for t in (cos_half, sin_half))
        return _rotate_half_rope(x.view(b, length, num_heads, width // num_heads), *tables).flatten(2)

    @staticmethod
    def symbolic(g, x, offset, cos_half, sin_half, num_heads: int):
        return g.op("com.microsoft::RotaryEmbedding", x, offset, cos_half, sin_half, interleaved_i=0,
                    num_heads_i=num_heads).setType(x.type())


def apply_rope(x: Tensor, cos_half: Tensor, sin_half: Tensor, num_heads: int) -> Tensor:
    """RoPE on (B, L, num_heads, head_dim) with (L, head_dim / 2) tables in x's dtype -> (B, L, num_heads*head_dim).

    Under `onnxruntime_kernels()` it is one RotaryEmbedding node (non-interleaved = rotate-half) instead of
    ~7 slice/negate/concat/multiply/add nodes per call. `num_heads` is passed, not read from `x.shape`, so the
    exporter sees a constant attribute rather than a traced size.
    """
    if _use_ort_kernels():
        offset = torch.zeros(1, dtype=torch.long, device=x.device)  # positions are arange(L), as in N1.5
        return _RotaryEmbedding.apply(x.flatten(2), offset, cos_half, sin_half, num_heads)
    return _rotate_half_rope(x, cos_half, sin_half).flatten(2)


class _BiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor) -> Tensor:
        return F.gelu(x + bias, approximate="tanh")

    @staticmethod
    def symbolic(g, x, bias):
        return g.op("com.microsoft::FastGelu", x, bias).setType(x.type())


def linear_gelu_tanh(x: Tensor, proj: nn.Linear) -> Tensor:
    """tanh-GELU(proj(x)); under `onnxruntime_kernels()` the bias add and GELU are one FastGelu node."""
    if _use_ort_kernels() and proj.bias is not None:
        return _BiasGelu.apply(F.linear(x, proj.weight), proj.bias)
    return F.gelu(proj(x), approximate="tanh")


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
