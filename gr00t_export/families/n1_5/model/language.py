"""Qwen3 decoder truncated to `select_layer` layers, and the Eagle 2.5 glue around it.

Module names follow `backbone.eagle_model.language_model.model.*` of the real checkpoint. The feature
N1.5 takes is `hidden_states[select_layer]` of transformers 4.51, which for the last kept layer is the
output *after* the final `norm`; so the forward here ends with `norm`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr00t_export.families.n1_5.config import Gr00tConfig, TextConfig
from gr00t_export.families.n1_5.model.layers import RMSNorm, apply_rope, attention
from gr00t_export.families.n1_5.model.vision import SiglipVisionModel


def rope_tables(head_dim: int, theta: float, positions: Tensor) -> tuple[Tensor, Tensor]:
    # positions (L,) -> cos, sin (L, head_dim / 2), in fp32; each frequency serves both halves of a head
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    return freqs.cos(), freqs.sin()


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
        # heads stay in (B, L, heads, head_dim) order, the layout fused attention kernels take
        b, length, _ = x.shape
        q = apply_rope(self.q_norm(self.q_proj(x).view(b, length, self.num_heads, -1)), cos, sin, self.num_heads)
        k = apply_rope(self.k_norm(self.k_proj(x).view(b, length, self.num_kv_heads, -1)), cos, sin,
                       self.num_kv_heads)
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

    Positions stay `arange(L)` even with left padding, as in N1.5. Fully masked rows (left padding)
    get a finite large negative, so they stay finite instead of NaN.
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

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor) -> Tensor:
        # (B, L, hidden), (B, L) -> (B, L, hidden), final norm applied
        length = inputs_embeds.shape[1]
        positions = torch.arange(length, device=inputs_embeds.device)
        # computed in fp32, cast once for every layer (as the reference casts them before multiplying)
        cos, sin = (t.to(inputs_embeds.dtype) for t in rope_tables(self.cfg.head_dim, self.cfg.rope_theta, positions))
        mask = causal_padding_mask(attention_mask, inputs_embeds.dtype)
        x = inputs_embeds
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x)


class Qwen3ForCausalLM(nn.Module):
    """Only `.model`: the tied `lm_head` would compute full-vocabulary logits nobody reads."""

    def __init__(self, cfg: TextConfig, num_layers: int):
        super().__init__()
        self.model = Qwen3Model(cfg, num_layers)


class EagleModel(nn.Module):
    """Eagle 2.5 VL: SigLIP -> mlp1 -> scatter into the token embeddings -> Qwen3 (select_layer layers)."""

    def __init__(self, cfg: Gr00tConfig):
        super().__init__()
        self.image_token_index = cfg.image_token_index
        self.vision_model = SiglipVisionModel(cfg.vision)
        self.mlp1 = nn.Sequential(nn.Linear(cfg.vision.hidden_size, cfg.text.hidden_size))
        self.language_model = Qwen3ForCausalLM(cfg.text, cfg.select_layer)

    def embed(self, input_ids: Tensor, vit_embeds: Tensor) -> Tensor:
        """Token embeddings with each image-token position replaced by a projected patch, in order."""
        # input_ids (B, L); vit_embeds (N_images, 256, vision_hidden) in (batch, image) order
        embeds = self.language_model.model.embed_tokens(input_ids)
        image_features = self.mlp1(vit_embeds).reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        is_image = (input_ids == self.image_token_index).reshape(-1)
        # k-th image-token position takes the k-th patch row: a gather, so it exports without masked assignment
        source_row = (torch.cumsum(is_image.long(), 0) - 1).clamp(min=0)
        scattered = image_features[source_row]
        flat = torch.where(is_image[:, None], scattered, embeds.reshape(-1, embeds.shape[-1]))
        return flat.reshape(embeds.shape)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, vit_embeds: Tensor) -> Tensor:
        return self.language_model.model(self.embed(input_ids, vit_embeds), attention_mask)


class EagleBackbone(nn.Module):
    def __init__(self, cfg: Gr00tConfig):
        super().__init__()
        self.eagle_model = EagleModel(cfg)
        if cfg.project_to_dim is None:
            self.eagle_linear = nn.Identity()
        else:
            self.eagle_linear = nn.Linear(cfg.text.hidden_size, cfg.project_to_dim)

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        # pixel_values (N_images, 3, 224, 224); input_ids/attention_mask (B, L) -> (B, L, 2048)
        vit_embeds = self.eagle_model.vision_model(pixel_values)
        return self.eagle_linear(self.eagle_model(input_ids, attention_mask, vit_embeds))
