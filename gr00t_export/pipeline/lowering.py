"""The `--onnx_ops onnxruntime` dialect: attention, RoPE and bias + tanh-GELU as onnxruntime's fused contrib ops.

The model's forwards are plain PyTorch. While an export runs inside `onnxruntime_contrib_ops(module)`, every shared
block of `gr00t_export.nn` that has a fused spelling is swapped, by type, for an export twin that borrows its
submodules (same weights, same scope names) and routes the same math through `torch.autograd.Function`s whose ONNX
`symbolic` is one `com.microsoft` node (module swapping for export, as BetterTransformer-style tools do):

- `Attention` used as unmasked self-attention -> Attention: q/k/v projected by one GEMM over the three weights
  packed side by side, biases added and heads split inside the kernel (onnxruntime's CPU MultiHeadAttention
  refuses packed q/k/v, its Attention op does not);
- other `Attention` calls (cross-attention, masked) -> MultiHeadAttention with the three projection biases packed
  into its `bias` input (added inside the kernel), and an additive key mask (N1.6's cross-attention) as
  `attention_bias`, expanded to (B, 1, Lq, Lk) because the kernel does not broadcast the query axis; keys and
  values projected once for several calls (`kv`) are handed over already split into heads, (B, heads, Lk, dim);
- `Qwen3Attention` -> one GEMM for q, k and v (weights stacked), RotaryEmbedding on q and k (non-interleaved =
  rotate-half, half-width cos/sin caches, position offset 0) and MultiHeadAttention with the causal + padding mask
  as `attention_bias`;
- `Qwen3Model` -> each residual add fused into the RMSNorm that follows it (SkipSimplifiedLayerNormalization, which
  also returns the sum the next residual add reads);
- `GeluMLP` -> FastGelu on the first projection (its bias added inside the kernel).

Eager and traced PyTorch compute the same thing either way. The originals are put back on exit, whatever happens.
The residual add + LayerNorm fusion of the other towers is a graph pass: `optimize.fuse_residual_norms`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr00t_export.nn.layers import Attention, GeluMLP, apply_rope, attention, merge_heads, rms_norm, split_heads
from gr00t_export.nn.qwen3 import Qwen3Attention, Qwen3Model


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
        # k and v: (B, Lk, heads*dim), or (B, heads, Lk, dim) already split (then their biases must be zero)
        k, v = (merge_heads(t) if t.dim() == 4 else t for t in (k, v))
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


class PackedSelfAttentionOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, num_heads: int) -> Tensor:
        # weight (dim, 3 * inner): the q, k and v projections side by side, as onnxruntime's Attention takes them
        q, k, v = (x @ weight + bias).chunk(3, dim=-1)
        return attention(q, k, v, num_heads)

    @staticmethod
    def symbolic(g, x, weight, bias, num_heads: int):
        out = g.op("com.microsoft::Attention", x, weight, bias, num_heads_i=num_heads)
        return out.setType(x.type())  # the twin packs only where the projections keep the width


class SkipRMSNormOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        total = residual + x
        return rms_norm(total, weight, eps), total

    @staticmethod
    def symbolic(g, x, residual, weight, eps: float):
        # outputs: normalised, mean and inverse std (not wanted: `optimize` unnames them), the sum
        out, _, _, total = g.op("com.microsoft::SkipSimplifiedLayerNormalization", x, residual, weight,
                                epsilon_f=eps, outputs=4)
        return out.setType(x.type()), total.setType(x.type())


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
        projections = (self.q_proj, self.k_proj, self.v_proj)
        self.register_buffer("qkv_bias", torch.cat([p.bias for p in projections]))  # each inner-wide
        # the same with zeros for k and v, whose biases `kv` adds: stacked here, since a concat in the forward would
        # be constant-folded by the exporter across devices (its zeros on the host, the weights on the GPU)
        inner = self.q_proj.out_features
        self.register_buffer("q_bias", torch.cat([self.qkv_bias[:inner], self.qkv_bias.new_zeros(2 * inner)]))
        self.packable = len({(p.in_features, p.out_features) for p in projections}) == 1
        if self.packable:  # one (dim, 3 * inner) weight: stored once however many calls (Euler steps) use it
            self.register_buffer("qkv_weight", torch.cat([p.weight for p in projections]).t().contiguous())

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None,
                kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if self.packable and context is None and mask is None and kv is None:
            return self.out_proj(PackedSelfAttentionOp.apply(x, self.qkv_weight, self.qkv_bias, self.heads))
        if mask is not None:
            mask = mask.expand(-1, -1, x.shape[1], -1)
        if kv is not None:  # keys and values projected (biases included) and split into heads once for several
            # calls (`kv`); q's bias is added by the kernel, which reads the (B, heads, Lk, dim) keys as they are
            return self.out_proj(MultiHeadAttentionOp.apply(F.linear(x, self.q_proj.weight), *kv, self.q_bias, mask,
                                                            self.heads))
        context = x if context is None else context
        out = MultiHeadAttentionOp.apply(F.linear(x, self.q_proj.weight), F.linear(context, self.k_proj.weight),
                                         F.linear(context, self.v_proj.weight), self.qkv_bias, mask, self.heads)
        return self.out_proj(out)

    def kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        # (B, heads, Lk, dim): given keys in that layout, MultiHeadAttention neither transposes nor adds their
        # biases again on every call (two kernels per call, per Euler step)
        return split_heads(self.k_proj(context), self.heads), split_heads(self.v_proj(context), self.heads)


class FusedQwen3Attention(nn.Module):
    """Export twin of `nn.qwen3.Qwen3Attention`."""

    def __init__(self, base: Qwen3Attention):
        super().__init__()
        self.num_heads, self.num_kv_heads = base.num_heads, base.num_kv_heads
        self.o_proj, self.q_norm, self.k_norm = base.o_proj, base.q_norm, base.k_norm
        projections = (base.q_proj, base.k_proj, base.v_proj)
        self.widths = [p.out_features for p in projections]
        self.register_buffer("qkv_weight", torch.cat([p.weight for p in projections]))  # one GEMM for the three

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> Tensor:
        b, length, _ = x.shape
        offset = torch.zeros(1, dtype=torch.long, device=x.device)  # positions are arange(L), as in GR00T
        q, k, v = F.linear(x, self.qkv_weight).split(self.widths, dim=-1)
        q = self.q_norm(q.view(b, length, self.num_heads, -1)).flatten(2)
        k = self.k_norm(k.reshape(b, length, self.num_kv_heads, -1)).flatten(2)
        q = RotaryEmbeddingOp.apply(q, offset, cos, sin, self.num_heads)
        k = RotaryEmbeddingOp.apply(k, offset, cos, sin, self.num_kv_heads)
        groups = self.num_heads // self.num_kv_heads
        k, v = (t.reshape(b, length, self.num_kv_heads, -1).repeat_interleave(groups, dim=2).flatten(2)
                for t in (k, v))
        return self.o_proj(MultiHeadAttentionOp.apply(q, k, v, None, mask, self.num_heads))


class FusedQwen3Model(nn.Module):
    """Export twin of `nn.qwen3.Qwen3Model`: the same layers, each residual add handed to the RMSNorm after it."""

    def __init__(self, base: Qwen3Model):
        super().__init__()
        self.embed_tokens, self.layers, self.norm = base.embed_tokens, base.layers, base.norm
        self.rope_and_mask = base.rope_and_mask  # a method, not a module: the RoPE tables stay base's

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor) -> Tensor:
        cos, sin, mask = self.rope_and_mask(inputs_embeds, attention_mask)
        residual, update = inputs_embeds, None
        for layer in self.layers:
            norm = layer.input_layernorm
            if update is None:  # the first layer: nothing to add yet
                h = norm(residual)
            else:
                h, residual = SkipRMSNormOp.apply(update, residual, norm.weight, norm.eps)
            norm = layer.post_attention_layernorm
            h, residual = SkipRMSNormOp.apply(layer.self_attn(h, cos, sin, mask), residual, norm.weight, norm.eps)
            update = layer.mlp(h)
        if update is None:
            return self.norm(residual)
        return SkipRMSNormOp.apply(update, residual, self.norm.weight, self.norm.eps)[0]


class FusedGeluMLP(nn.Module):
    """Export twin of `nn.layers.GeluMLP`."""

    def __init__(self, base: GeluMLP):
        super().__init__()
        self.fc1, self.fc2 = base.fc1, base.fc2

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(FastGeluOp.apply(F.linear(x, self.fc1.weight), self.fc1.bias))


# exact types: a subclass may compute something else
EXPORT_TWINS: dict[type[nn.Module], type[nn.Module]] = {
    Attention: FusedAttention, Qwen3Attention: FusedQwen3Attention, Qwen3Model: FusedQwen3Model,
    GeluMLP: FusedGeluMLP,
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
