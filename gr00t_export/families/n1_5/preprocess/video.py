"""GR00T N1.5 eval-mode video preprocessing as one TorchScript-able module.

It fuses the policy's video transforms (VideoToTensor, CenterCrop 0.95, bilinear antialiased resize,
uint8 truncation) with the Eagle image processor (rescale 1/255, normalise mean 0.5 std 0.5), so an
exported graph can take raw camera frames and give the vision tower its `pixel_values`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gr00t_export.errors import InputError


def center_crop_box(height: int, width: int, crop_scale: float) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) exactly as GR00T's VideoCrop + torchvision's CenterCrop compute them.

    The size truncates `H*scale`; the offset is `round((H - h) / 2)` with Python's half-to-even rounding,
    done here in integers so eager and TorchScript agree bit for bit.
    """
    crop_h = int(height * crop_scale)
    crop_w = int(width * crop_scale)
    return _half_even_half(height - crop_h), _half_even_half(width - crop_w), crop_h, crop_w


def _half_even_half(d: int) -> int:
    """round(d / 2) with half-to-even, for d >= 0, without floats."""
    half = d // 2
    if d % 2 == 1 and half % 2 == 1:
        half += 1
    return half


class VideoPreprocessor(nn.Module):
    """uint8 frames (N,H,W,C RGB) -> float32 pixel values (N,3,S,S) in [-1, 1], as NVIDIA's eval pipeline.

    Steps: /255 and channels first; CenterCrop to (int(H*s), int(W*s)); bilinear antialiased resize to S
    (the kernel torchvision uses); `(x*255).to(uint8)` which truncates; then the Eagle processor's
    rescale 1/255 and normalise (x-0.5)/0.5. Only shapes drive control flow, so it scripts and runs on
    any device.
    """

    def __init__(self, image_size: int = 224, crop_scale: float = 0.95) -> None:
        super().__init__()
        if image_size <= 0:
            raise InputError(f"image_size must be positive, got {image_size}; pass e.g. 224")
        if not 0.0 < crop_scale <= 1.0:
            raise InputError(f"crop_scale must be in (0, 1], got {crop_scale}; pass e.g. 0.95")
        self.image_size = int(image_size)
        self.crop_scale = float(crop_scale)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 4 or frames.size(3) != 3:
            raise ValueError("frames must be (N, H, W, 3) RGB; pass channels-last uint8 frames")
        if frames.dtype != torch.uint8:
            raise ValueError("frames must be uint8; pass raw camera frames (0..255), not floats")
        height = frames.size(1)
        width = frames.size(2)
        top, left, crop_h, crop_w = center_crop_box(height, width, self.crop_scale)
        x = frames.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        x = x[:, :, top : top + crop_h, left : left + crop_w]
        x = F.interpolate(
            x, size=[self.image_size, self.image_size], mode="bilinear", align_corners=False, antialias=True
        )
        # GR00T's VideoToNumpy: truncation, not rounding (values lie in [0, 255] so no wrap-around).
        x = (x * 255.0).to(torch.uint8)
        # Eagle's fast image processor fuses rescale and normalise into (x - 127.5) / 127.5.
        return (x.to(torch.float32) - 127.5) / 127.5


class MultiViewVideo(nn.Module):
    """One (B, T, H_i, W_i, 3) uint8 tensor per camera -> (B*T*V, 3, S, S), ordered sample, then time, then view
    as Eagle lays the image blocks out. Each camera is cropped and resized at its own resolution, so cameras need
    not share one (Isaac-GR00T #541)."""

    def __init__(self, image_size: int = 224, crop_scale: float = 0.95) -> None:
        super().__init__()
        self.video = VideoPreprocessor(image_size, crop_scale)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        per_view: list[torch.Tensor] = []
        for frames in views:
            if frames.dim() != 5:
                raise ValueError("each camera's frames must be (B, T, H, W, 3); add the batch and time axes")
            per_view.append(self.video(frames.reshape(-1, frames.size(2), frames.size(3), frames.size(4))))
        return torch.stack(per_view, dim=1).flatten(0, 1)
