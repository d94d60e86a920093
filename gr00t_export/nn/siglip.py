"""The SigLIP encoder both vision towers run after their own patch embedding (N1.5: a Conv2d, N1.6: a Linear on
flattened patches). Names follow transformers' `SiglipEncoder`: `layers.N.{layer_norm1,self_attn,layer_norm2,mlp}`."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from gr00t_export.nn.layers import Attention, GeluMLP


class EncoderConfig(Protocol):
    """What the encoder reads of either family's vision config."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    layer_norm_eps: float


class SiglipEncoderLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        d, heads = cfg.hidden_size, cfg.num_attention_heads
        self.layer_norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.self_attn = Attention(d, heads, d // heads)
        self.layer_norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.mlp = GeluMLP(d, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x
