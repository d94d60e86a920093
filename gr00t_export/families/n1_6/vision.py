"""The SigLIP2-style vision tower of Eagle-Block2A-2B-v2 (`backbone.model.vision_model.vision_model.*` in checkpoints).

Differences from N1.5's SigLIP: the patch embedding is a Linear on flattened 14 x 14 patches (not a Conv2d), and
the learned 16 x 16 position table is resized bilinearly (antialiased, in fp32) to each image's patch grid, so
any image whose sides are multiples of 28 works. RoPE and windowed attention are off in the release, so every
layer is full attention over one image; NVIDIA packs the images of a batch into one sequence with per-image
`cu_seqlens`, which equals running each image as its own batch element, as done here. The encoder layers are the
shared SigLIP ones (same names and maths as N1.5's).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from gr00t_export.families.n1_6.config import Siglip2VisionConfig
from gr00t_export.nn.siglip import SiglipEncoder

# Keys of the vision tower the checkpoint carries but N1.6 never runs: the attention-pooling head.
POOLING_HEAD_PREFIX = "head."


def patchify(pixel_values: Tensor, patch_size: int) -> Tensor:
    """(N, C, H, W) -> (N, H/p * W/p, p*p*C): patches row-major, each flattened (pixel-row, pixel-col, channel)."""
    n, c, height, width = pixel_values.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    x = pixel_values.reshape(n, c, grid_h, patch_size, grid_w, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, grid_h * grid_w, patch_size * patch_size * c)


class Siglip2Embeddings(nn.Module):
    def __init__(self, cfg: Siglip2VisionConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.grid = cfg.position_grid
        self.patch_embedding = nn.Linear(cfg.patch_dim, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.num_patches, cfg.hidden_size)

    def position_table(self, grid_h: int, grid_w: int) -> Tensor:
        """(grid_h * grid_w, hidden): the 16 x 16 table resized to the image's patch grid. It depends on the
        weights and the image size only, so an exported graph of fixed size holds it as a constant."""
        table = self.position_embedding.weight.reshape(self.grid, self.grid, -1).permute(2, 0, 1)[None].float()
        resized = F.interpolate(table, size=(grid_h, grid_w), mode="bilinear", align_corners=False, antialias=True)
        return resized[0].flatten(1).transpose(0, 1)

    def patch_embeds(self, pixel_values: Tensor) -> Tensor:
        # (N, 3, H, W) -> (N, H/14 * W/14, hidden), before the position table is added
        return self.patch_embedding(patchify(pixel_values.to(self.patch_embedding.weight.dtype), self.patch_size))

    def forward(self, pixel_values: Tensor) -> Tensor:
        # (N, 3, H, W) -> (N, H/14 * W/14, hidden)
        grid_h, grid_w = pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size
        x = self.patch_embeds(pixel_values)
        return x + self.position_table(grid_h, grid_w).to(x.dtype)


class Siglip2VisionModel(nn.Module):
    """Patch embedding, the shared SigLIP encoder (LN, biased attention, LN, tanh-GELU MLP), `post_layernorm`."""

    def __init__(self, cfg: Siglip2VisionConfig):
        super().__init__()
        self.embeddings = Siglip2Embeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values: Tensor) -> Tensor:
        # (N, 3, H, W) -> (N, H/14 * W/14, hidden): last_hidden_state after post_layernorm
        return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))


def pooling_head_shapes(cfg: Siglip2VisionConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the unused multihead-attention pooling head (`vision_model.head.*`) a checkpoint carries."""
    d, ff = cfg.hidden_size, cfg.intermediate_size
    return {
        "probe": (1, 1, d), "attention.in_proj_weight": (3 * d, d), "attention.in_proj_bias": (3 * d,),
        "attention.out_proj.weight": (d, d), "attention.out_proj.bias": (d,), "layernorm.weight": (d,),
        "layernorm.bias": (d,), "mlp.fc1.weight": (ff, d), "mlp.fc1.bias": (ff,), "mlp.fc2.weight": (d, ff),
        "mlp.fc2.bias": (d,),
    }


