"""The Qwen3 decoder both families' backbones cut to `select_layer` layers.

Module names are transformers' `Qwen3Model` ones (`embed_tokens`, `layers.N.self_attn.q_proj`, `norm`). The feature
GR00T takes is `hidden_states[select_layer]` of transformers 4.51, which for the last kept layer is the output
*after* the final `norm`; so the forward ends with `norm`. Positions are `arange(L)` even with left padding, as in
GR00T; their RoPE tables are computed once, by `setup_caches`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr00t_export.errors import InputError
from gr00t_export.nn.layers import RMSNorm, apply_rope, attention, rope_tables


@dataclass
class TextConfig:
    """Qwen3 decoder (Qwen3-1.7B in both releases), before truncation to `select_layer` layers."""

    vocab_size: int = 151680
    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = True
    rope_cache_len: int = 4096  # positions with precomputed RoPE tables: the longest prompt a model accepts


class Qwen3Attention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.num_heads * hd, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> Tensor:
        # x (B, L, hidden); cos/sin (L, head_dim / 2) in x's dtype; mask additive (B, 1, L, L)
        b, length, _ = x.shape
        q = apply_rope(self.q_norm(self.q_proj(x).view(b, length, self.num_heads, -1)), cos, sin).flatten(2)
        k = apply_rope(self.k_norm(self.k_proj(x).view(b, length, self.num_kv_heads, -1)), cos, sin).flatten(2)
        groups = self.num_heads // self.num_kv_heads  # GQA: each k/v head serves `groups` query heads
        k, v = (t.view(b, length, self.num_kv_heads, -1).repeat_interleave(groups, dim=2).flatten(2)
                for t in (k, self.v_proj(x)))
        return self.o_proj(attention(q, k, v, self.num_heads, mask))


class Qwen3MLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen3DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Qwen3Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = Qwen3MLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


def causal_padding_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, L) 0/1 padding mask -> additive (B, 1, L, L) causal mask.

    Fully masked rows (left padding) get a finite large negative, so they stay finite instead of NaN.
    """
    length = attention_mask.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
    neg = torch.finfo(dtype).min
    return torch.zeros((), dtype=dtype, device=attention_mask.device).masked_fill(~allowed, neg)


class Qwen3Model(nn.Module):
    def __init__(self, cfg: TextConfig, num_layers: int):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(cfg) for _ in range(num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.setup_caches()

    def setup_caches(self) -> None:
        """The RoPE tables of positions 0 .. rope_cache_len - 1, in fp32 where the weights are. They are not part of
        the state dict, so a model built on the meta device needs this again once its weights are assigned."""
        positions = torch.arange(self.cfg.rope_cache_len, device=self.embed_tokens.weight.device)
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.rope_theta, positions)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def rope_and_mask(self, inputs_embeds: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """cos, sin (L, head_dim / 2) and the additive (B, 1, L, L) mask every layer uses, in the embeddings' dtype."""
        length, dtype = inputs_embeds.shape[1], inputs_embeds.dtype
        if length > self.rope_cos.shape[0]:
            raise InputError(f"a prompt of {length} tokens is longer than the {self.rope_cos.shape[0]} positions "
                             "with RoPE tables; shorten the instruction or raise the text config's rope_cache_len")
        # cast once for every layer (the reference casts the fp32 tables before multiplying)
        cos, sin = self.rope_cos.to(dtype)[:length], self.rope_sin.to(dtype)[:length]
        return cos, sin, causal_padding_mask(attention_mask, dtype)

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor) -> Tensor:
        # (B, L, hidden), (B, L) -> (B, L, hidden), final norm applied
        cos, sin, mask = self.rope_and_mask(inputs_embeds, attention_mask)
        x = inputs_embeds
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x)
