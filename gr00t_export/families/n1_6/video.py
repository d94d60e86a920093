"""N1.6 eval-mode image preprocessing as TorchScript-able modules, resampling bit for bit where it can.

NVIDIA's eval chain for one camera frame (uint8 H x W x 3):
1. `GroOTImageTransform` (albumentations path): letterbox to a square (black, centred, top/left = pad // 2);
   `SmallestMaxSize(256, cv2.INTER_AREA)`; centre crop int(side * 0.95) at offset (side - crop) // 2;
   `SmallestMaxSize(256, INTER_AREA)` again -> 256 x 256 uint8.
2. Eagle-Block2A-2B-v2 `fetch_image`: `smart_resize` to multiples of 28 (256 -> 252), PIL `resize` (bicubic),
   then the image processor rescales by 1/255 and normalises with mean = std = 0.5 -> [-1, 1].

Both resamplers are separable and integer-valued, so they are written as integer maths here:
- PIL's bicubic (a = -0.5, support scaled by the downscale factor) with its 22-bit fixed-point coefficients,
  horizontal pass first, rounded and clipped to uint8 in between, as `ImagingResample` does.
- OpenCV's INTER_AREA: a box filter weighted by overlap when shrinking; when enlarging, its linear code path with
  area coefficients in 11-bit fixed point and the SIMD vertical rounding ((b * (D >> 4)) >> 16, then (+2) >> 2).
Sums of integers are exact in float64, so the matrix products reproduce the integer arithmetic exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr00t_export.errors import InputError

# Fixed-point scales, literal in the code below because TorchScript cannot read module globals:
# Pillow's PRECISION_BITS = 32 - 8 - 2 = 22 (2^22 = 4194304, half = 2097152); OpenCV's INTER_RESIZE_COEF_BITS = 11
# (2^11 = 2048).


def _round_div_half_even(numerator: int, denominator: int) -> int:
    """Python's round(numerator / denominator) for non-negative ints, without floats."""
    quotient, remainder = numerator // denominator, numerator % denominator
    if 2 * remainder > denominator or (2 * remainder == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 4 * 28 * 28,
                 max_pixels: int = 4096 * 28 * 28) -> tuple[int, int]:
    """Eagle's (Qwen2-VL's) target size: sides rounded to multiples of `factor`, area kept within bounds."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError("image aspect ratio above 200; crop the camera frame")
    h_bar = max(factor, _round_div_half_even(height, factor) * factor)
    w_bar = max(factor, _round_div_half_even(width, factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = int(math.floor(height / beta / factor)) * factor
        w_bar = int(math.floor(width / beta / factor)) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = int(math.ceil(height * beta / factor)) * factor
        w_bar = int(math.ceil(width * beta / factor)) * factor
    return h_bar, w_bar


def pil_bicubic_weights(in_size: int, out_size: int) -> Tensor:
    """(out, in) float64 matrix of Pillow's 8-bit bicubic coefficients, scaled by 2^22 and rounded as Pillow does."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    out_idx = torch.arange(out_size, dtype=torch.float64)
    center = (out_idx + 0.5) * scale
    xmin = torch.clamp(torch.trunc(center - support + 0.5), min=0.0)
    xmax = torch.clamp(torch.trunc(center + support + 0.5), max=float(in_size))
    src = torch.arange(in_size, dtype=torch.float64)
    x = torch.abs((src[None, :] - center[:, None] + 0.5) / filterscale)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    w = torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))
    inside = (src[None, :] >= xmin[:, None]) & (src[None, :] < xmax[:, None])
    w = torch.where(inside, w, torch.zeros_like(w))
    total = w.sum(dim=1, keepdim=True)
    w = torch.where(total != 0.0, w / torch.where(total != 0.0, total, torch.ones_like(total)), w)
    scaled = w * 4194304.0
    return torch.where(scaled < 0.0, torch.trunc(scaled - 0.5), torch.trunc(scaled + 0.5))


def _pil_pass(x: Tensor, weights: Tensor) -> Tensor:
    # x (..., in) integer-valued float64, weights (out, in) -> uint8-valued float64 (..., out)
    acc = torch.matmul(x, weights.transpose(0, 1)) + 2097152.0
    return torch.clamp(torch.floor(acc / 4194304.0), 0.0, 255.0)


def pil_bicubic_resize(images: Tensor, out_h: int, out_w: int) -> Tensor:
    """(N, C, H, W) uint8-valued float64 -> (N, C, out_h, out_w), as PIL's `Image.resize(size, BICUBIC)`."""
    in_h, in_w = images.shape[-2], images.shape[-1]
    x = images
    if out_w != in_w:
        x = _pil_pass(x, pil_bicubic_weights(in_w, out_w).to(images.device))
    if out_h != in_h:
        x = _pil_pass(x.transpose(-1, -2), pil_bicubic_weights(in_h, out_h).to(images.device)).transpose(-1, -2)
    return x


def pil_bicubic_resize_square(images: Tensor, weights: Tensor) -> Tensor:
    """`pil_bicubic_resize` of square images to a square, with the weights (`pil_bicubic_weights(in, out)`, on the
    images' device) given: both passes use the same matrix."""
    return _pil_pass(_pil_pass(images, weights).transpose(-1, -2), weights).transpose(-1, -2)


def cv_area_shrink_weights(in_size: int, out_size: int) -> Tensor:
    """(out, in) weights of OpenCV's INTER_AREA when shrinking (`computeResizeAreaTab`): overlap / cell width,
    edge overlaps of at most 1e-3 dropped, weights rounded to float32 as OpenCV stores them."""
    scale = in_size / out_size
    start = torch.arange(out_size, dtype=torch.float64)[:, None] * scale
    end = start + scale
    cell = torch.clamp(float(in_size) - start, max=scale)
    first = torch.ceil(start)
    last = torch.clamp(torch.floor(end), max=float(in_size - 1))
    first = torch.minimum(first, last)
    src = torch.arange(in_size, dtype=torch.float64)[None, :]
    full = ((src >= first) & (src < last)).to(torch.float64)
    head = ((src == first - 1.0) & (first - start > 1e-3)).to(torch.float64) * (first - start)
    tail_width = torch.minimum(torch.clamp(end - last, max=1.0), cell)
    tail = ((src == last) & (end - last > 1e-3)).to(torch.float64) * tail_width
    return ((full + head + tail) / cell).to(torch.float32).to(torch.float64)


def cv_area_enlarge_taps(in_size: int, out_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """OpenCV's INTER_AREA coefficients when enlarging: per output index the two source indices and their 11-bit
    fixed-point weights (sx = floor(dx * in/out); fx = fractional overlap with sx + 1)."""
    scale = in_size / out_size
    inv_scale = out_size / in_size
    dx = torch.arange(out_size, dtype=torch.float64)
    sx = torch.floor(dx * scale)
    fx = ((dx + 1.0) - (sx + 1.0) * inv_scale).to(torch.float32)
    fx = torch.where(fx <= 0.0, torch.zeros_like(fx), fx - torch.floor(fx))
    last = sx >= in_size - 1
    sx = torch.where(last, torch.full_like(sx, in_size - 1), sx)
    fx = torch.where(last, torch.zeros_like(fx), fx)
    w0 = torch.round((1.0 - fx) * 2048.0).to(torch.float64)  # saturate_cast<short>: round half to even
    w1 = torch.round(fx * 2048.0).to(torch.float64)
    s0 = sx.long()
    s1 = torch.clamp(s0 + 1, max=in_size - 1)
    return s0, s1, w0, w1


def cv_area_resize(images: Tensor, out_h: int, out_w: int) -> Tensor:
    """(N, C, H, W) uint8-valued float64 -> (N, C, out_h, out_w), as `cv2.resize(..., INTER_AREA)` (same scale
    direction on both axes; identity when the size is unchanged, as albumentations skips the call)."""
    in_h, in_w = images.shape[-2], images.shape[-1]
    if in_h == out_h and in_w == out_w:
        return images
    if out_h <= in_h and out_w <= in_w:
        if in_h % out_h == 0 and in_w % out_w == 0 and in_h // out_h == 2 and in_w // out_w == 2:
            # resizeAreaFast's 2x2 kernel: (a + b + c + d + 2) >> 2
            summed = F.avg_pool2d(images, 2) * 4.0
            return torch.floor((summed + 2.0) / 4.0)
        x = torch.matmul(images, cv_area_shrink_weights(in_w, out_w).to(images.device).transpose(0, 1))
        x = torch.matmul(cv_area_shrink_weights(in_h, out_h).to(images.device), x)
        return torch.clamp(torch.round(x), 0.0, 255.0)
    if out_h >= in_h and out_w >= in_w:
        c0, c1, a0, a1 = cv_area_enlarge_taps(in_w, out_w)
        r0, r1, b0, b1 = cv_area_enlarge_taps(in_h, out_h)
        device = images.device
        return cv_area_enlarge(images, torch.stack([c0, c1]).to(device), torch.stack([a0, a1]).to(device),
                               torch.stack([r0, r1]).to(device), torch.stack([b0, b1]).to(device))
    raise ValueError("cv_area_resize: shrinking one axis and enlarging the other is not supported")


def cv_area_enlarge(images: Tensor, columns: Tensor, column_weights: Tensor, rows: Tensor, row_weights: Tensor
                    ) -> Tensor:
    """INTER_AREA enlargement with its taps given (`cv_area_enlarge_taps` of each axis, stacked: (2, out) source
    indices and (2, out) weights, on the images' device)."""
    # exact ints, scaled by 2^11
    horizontal = (torch.index_select(images, 3, columns[0]) * column_weights[0]
                  + torch.index_select(images, 3, columns[1]) * column_weights[1])
    top = torch.floor(torch.index_select(horizontal, 2, rows[0]) / 16.0)
    bottom = torch.floor(torch.index_select(horizontal, 2, rows[1]) / 16.0)
    mixed = (torch.floor(row_weights[0][:, None] * top / 65536.0)
             + torch.floor(row_weights[1][:, None] * bottom / 65536.0))
    return torch.clamp(torch.floor((mixed + 2.0) / 4.0), 0.0, 255.0)


class Gr00tImageTransform(nn.Module):
    """uint8 frames (N, H, W, 3) of one camera -> uint8 (N, S, S, 3), S = `shortest_edge`: NVIDIA's eval transform
    (letterbox, INTER_AREA to S, centre crop `crop_fraction`, INTER_AREA to S).

    The crop -> S enlargement is the same for every camera: its taps are built once (buffers), so a call on S x S
    frames makes no host tensors and a CUDA graph can capture it. Other sizes build the first resize's per call."""

    def __init__(self, shortest_edge: int = 256, crop_fraction: float = 0.95):
        super().__init__()
        if shortest_edge <= 0 or not 0.0 < crop_fraction <= 1.0:
            raise InputError(f"shortest_edge {shortest_edge} must be > 0 and crop_fraction {crop_fraction} in (0, 1]")
        self.shortest_edge = int(shortest_edge)
        self.crop_fraction = float(crop_fraction)
        self.crop = max(1, int(self.shortest_edge * self.crop_fraction))
        s0, s1, w0, w1 = cv_area_enlarge_taps(self.crop, self.shortest_edge)
        self.register_buffer("enlarge_from", torch.stack([s0, s1]), persistent=False)
        self.register_buffer("enlarge_weights", torch.stack([w0, w1]), persistent=False)

    def forward(self, frames: Tensor) -> Tensor:
        if frames.dim() != 4 or frames.size(3) != 3 or frames.dtype != torch.uint8:
            raise ValueError("frames must be uint8 (N, H, W, 3) RGB; pass raw camera frames")
        height, width = frames.size(1), frames.size(2)
        side = max(height, width)
        pad_h, pad_w = side - height, side - width
        x = frames.permute(0, 3, 1, 2).to(torch.float64)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        # SmallestMaxSize on a square: round(side * S / side) = S
        x = cv_area_resize(x, self.shortest_edge, self.shortest_edge)
        crop = self.crop
        offset = (self.shortest_edge - crop) // 2
        x = x[:, :, offset:offset + crop, offset:offset + crop]
        if crop < self.shortest_edge:
            x = cv_area_enlarge(x, self.enlarge_from, self.enlarge_weights, self.enlarge_from, self.enlarge_weights)
        return x.permute(0, 2, 3, 1).to(torch.uint8)


class EagleImageProcessor(nn.Module):
    """uint8 (N, H, W, 3) -> float32 pixel_values (N, 3, h, w) in [-1, 1]: smart_resize with PIL bicubic, then
    (x / 255 - 0.5) / 0.5, which the fast image processor fuses into (x - 127.5) / 127.5.

    `square`: the side of the images it usually gets (the GR00T transform's S): their bicubic weights are built
    once (a buffer), so those calls make no host tensors; other sizes build theirs per call."""

    def __init__(self, square: int = 0):
        super().__init__()
        self.square = int(square)
        side = smart_resize(square, square)[0] if square > 0 else 0
        weights = pil_bicubic_weights(square, side) if square > 0 and side != square else torch.zeros(0, 0)
        self.register_buffer("square_weights", weights.to(torch.float64), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.size(3) != 3 or images.dtype != torch.uint8:
            raise ValueError("images must be uint8 (N, H, W, 3) RGB")
        out_h, out_w = smart_resize(images.size(1), images.size(2))
        x = images.permute(0, 3, 1, 2).to(torch.float64)
        if images.size(1) == self.square and images.size(2) == self.square and self.square_weights.numel() > 0:
            x = pil_bicubic_resize_square(x, self.square_weights)
        else:
            x = pil_bicubic_resize(x, out_h, out_w)
        return ((x - 127.5) / 127.5).to(torch.float32)


class VideoPreprocessor(nn.Module):
    """uint8 frames (N, H, W, 3) of one camera -> pixel_values (N, 3, 252, 252) float32 for a 256 px result of the
    GR00T transform. Frames of different cameras may differ in size: call once per camera."""

    def __init__(self, shortest_edge: int = 256, crop_fraction: float = 0.95):
        super().__init__()
        self.transform = Gr00tImageTransform(shortest_edge, crop_fraction)
        self.processor = EagleImageProcessor(shortest_edge)

    def forward(self, frames: Tensor) -> Tensor:
        return self.processor(self.transform(frames))
