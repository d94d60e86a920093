"""The `--onnx_ops onnxruntime` dialect: attention, RoPE and bias + tanh-GELU as onnxruntime's fused contrib ops.

The model's forwards are plain PyTorch. While an export runs inside `onnxruntime_contrib_ops(module)`, every shared
block of `gr00t_export.nn` that has a fused spelling is swapped, by type, for an export twin that borrows its
submodules (same weights, same scope names) and routes the same math through `torch.autograd.Function`s whose ONNX
`symbolic` is one `com.microsoft` node (module swapping for export, as BetterTransformer-style tools do):

- `Attention` -> MultiHeadAttention with the three projection biases packed into its `bias` input (added inside the
  kernel), and an additive key mask (N1.6's cross-attention) as `attention_bias`, expanded to (B, 1, Lq, Lk)
  because the kernel does not broadcast the query axis;
- `Qwen3Attention` -> RotaryEmbedding on q and k (non-interleaved = rotate-half, half-width cos/sin caches, position
  offset 0) and MultiHeadAttention with the causal + padding mask as `attention_bias`;
- `GeluMLP` -> FastGelu on the first projection (its bias added inside the kernel).

Eager and traced PyTorch compute the same thing either way. The originals are put back on exit, whatever happens.
The residual add + LayerNorm fusion of this dialect is a graph pass: `optimize.fuse_residual_norms`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr00t_export.nn.layers import Attention, GeluMLP, apply_rope, attention
from gr00t_export.nn.qwen3 import Qwen3Attention


def _omitted(g):
    """An omitted optional ONNX input (an empty name), as the TorchScript exporter spells it."""
    node = g.op("prim::Constant")
    node.setType(torch._C.OptionalType.ofTensor())
    return node


def _given(g, value):
    return _omitted(g) if value is None or value.node().mustBeNone() else value


class MultiHeadAttentionOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, qkv_bias: Tensor | None, attention_bias: Tensor | None,
                num_heads: int) -> Tensor:
        if qkv_bias is not None:
            bq, bk, bv = qkv_bias.split([q.shape[-1], k.shape[-1], v.shape[-1]])
            q, k, v = q + bq, k + bk, v + bv
        return attention(q, k, v, num_heads, attention_bias)

    @staticmethod
    def symbolic(g, q, k, v, qkv_bias, attention_bias, num_heads: int):
        # inputs: query, key, value, bias (packed q/k/v projection bias), key_padding_mask, attention_bias
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, _given(g, qkv_bias), _omitted(g),
                   _given(g, attention_bias), num_heads_i=num_heads)
        return out.setType(q.type())


class RotaryEmbeddingOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, offset: Tensor, cos_cache: Tensor, sin_cache: Tensor, num_heads: int) -> Tensor:
        # x (B, L, heads*head_dim); offset (1,): position of the first token (onnxruntime's 1-D position_ids)
        b, length, width = x.shape
        positions = offset + torch.arange(length, device=x.device)
        tables = (F.embedding(positions, t) for t in (cos_cache, sin_cache))
        return apply_rope(x.view(b, length, num_heads, width // num_heads), *tables).flatten(2)

    @staticmethod
    def symbolic(g, x, offset, cos_cache, sin_cache, num_heads: int):
        return g.op("com.microsoft::RotaryEmbedding", x, offset, cos_cache, sin_cache, interleaved_i=0,
                    num_heads_i=num_heads).setType(x.type())


class FastGeluOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor) -> Tensor:
        return F.gelu(x + bias, approximate="tanh")

    @staticmethod
    def symbolic(g, x, bias):
        return g.op("com.microsoft::FastGelu", x, bias).setType(x.type())


class FusedAttention(nn.Module):
    """Export twin of `nn.layers.Attention`."""

    def __init__(self, base: Attention):
        super().__init__()
        self.heads = base.heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = base.q_proj, base.k_proj, base.v_proj, base.out_proj

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        if mask is not None:
            mask = mask.expand(-1, -1, x.shape[1], -1)
        qkv_bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        out = MultiHeadAttentionOp.apply(F.linear(x, self.q_proj.weight), F.linear(context, self.k_proj.weight),
                                         F.linear(context, self.v_proj.weight), qkv_bias, mask, self.heads)
        return self.out_proj(out)


class FusedQwen3Attention(nn.Module):
    """Export twin of `nn.qwen3.Qwen3Attention`."""

    def __init__(self, base: Qwen3Attention):
        super().__init__()
        self.num_heads, self.num_kv_heads = base.num_heads, base.num_kv_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = base.q_proj, base.k_proj, base.v_proj, base.o_proj
        self.q_norm, self.k_norm = base.q_norm, base.k_norm

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> Tensor:
        b, length, _ = x.shape
        offset = torch.zeros(1, dtype=torch.long, device=x.device)  # positions are arange(L), as in GR00T
        q = self.q_norm(self.q_proj(x).view(b, length, self.num_heads, -1)).flatten(2)
        k = self.k_norm(self.k_proj(x).view(b, length, self.num_kv_heads, -1)).flatten(2)
        q = RotaryEmbeddingOp.apply(q, offset, cos, sin, self.num_heads)
        k = RotaryEmbeddingOp.apply(k, offset, cos, sin, self.num_kv_heads)
        groups = self.num_heads // self.num_kv_heads
        k, v = (t.view(b, length, self.num_kv_heads, -1).repeat_interleave(groups, dim=2).flatten(2)
                for t in (k, self.v_proj(x)))
        return self.o_proj(MultiHeadAttentionOp.apply(q, k, v, None, mask, self.num_heads))


class FusedGeluMLP(nn.Module):
    """Export twin of `nn.layers.GeluMLP`."""

    def __init__(self, base: GeluMLP):
        super().__init__()
        self.fc1, self.fc2 = base.fc1, base.fc2

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(FastGeluOp.apply(F.linear(x, self.fc1.weight), self.fc1.bias))


# exact types: a subclass may compute something else
EXPORT_TWINS: dict[type[nn.Module], type[nn.Module]] = {
    Attention: FusedAttention, Qwen3Attention: FusedQwen3Attention, GeluMLP: FusedGeluMLP,
}


@contextlib.contextmanager
def onnxruntime_contrib_ops(module: nn.Module) -> Iterator[int]:
    """Swaps every shared block under `module` for its export twin while the block runs; yields how many."""
    swapped = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
               if type(child) in EXPORT_TWINS]
    try:
        for parent, name, child in swapped:
            setattr(parent, name, EXPORT_TWINS[type(child)](child))
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
