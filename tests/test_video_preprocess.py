"""VideoPreprocessor: golden pixel values, TorchScript parity, batching, non-square frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gr00t_export.errors import InputError
from gr00t_export.families.n1_5.preprocess.video import VideoPreprocessor, center_crop_box


@pytest.fixture(scope="module")
def scripted() -> torch.jit.ScriptModule:
    return torch.jit.script(VideoPreprocessor())


def preprocess_frames(frames: np.ndarray) -> np.ndarray:
    """The eager module on uint8 (N, H, W, 3) or (H, W, 3) frames, as numpy."""
    batch = np.ascontiguousarray(frames.reshape(-1, *frames.shape[-3:]))
    with torch.no_grad():
        return VideoPreprocessor()(torch.from_numpy(batch)).numpy()


def _frames(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_golden_pixel_values(golden_vectors) -> None:
    frames = golden_vectors["obs.video.ego_view"]
    expected = golden_vectors["transformed.eagle_pixel_values"]
    got = preprocess_frames(frames)
    assert got.dtype == np.float32 and got.shape == expected.shape == (1, 3, 224, 224)
    diff = np.abs(got.astype(np.float64) - expected)
    n_diff = int((diff > 0).sum())
    print(f"golden eagle_pixel_values: max |diff| = {diff.max():.3g}, {n_diff} of {diff.size} values differ")
    assert diff.max() <= 1.0 / 255.0
    # one uint8 level is 2/255 after normalisation, so the bound above means the levels agree exactly
    assert n_diff == 0


def test_scripted_equals_eager(scripted, golden_vectors) -> None:
    eager = VideoPreprocessor()
    for frames in (golden_vectors["obs.video.ego_view"], _frames((3, 181, 317, 3), seed=1)):
        x = torch.from_numpy(frames)
        assert torch.equal(scripted(x), eager(x))


def test_batch_equals_per_frame(scripted) -> None:
    frames = _frames((5, 256, 256, 3), seed=2)
    batched = preprocess_frames(frames)
    assert batched.shape == (5, 3, 224, 224)
    for i in range(5):
        np.testing.assert_array_equal(batched[i], preprocess_frames(frames[i])[0])
    assert torch.equal(scripted(torch.from_numpy(frames)), torch.from_numpy(batched))


def test_non_square_and_upscale(scripted) -> None:
    for shape in ((2, 480, 640, 3), (1, 120, 90, 3), (1, 224, 224, 3)):
        frames = _frames(shape, seed=3)
        out = scripted(torch.from_numpy(frames))
        assert out.shape == (shape[0], 3, 224, 224) and out.dtype == torch.float32
        assert out.min() >= -1.0 and out.max() <= 1.0
        levels = (out + 1.0) * 127.5
        assert torch.allclose(levels, levels.round(), atol=1e-4)  # outputs sit on uint8 levels


def test_crop_follows_torchvision_rounding() -> None:
    for h in range(8, 700, 7):
        for w in (64, 255, 256, 480, 641):
            top, left, ch, cw = center_crop_box(h, w, 0.95)
            assert (ch, cw) == (int(h * 0.95), int(w * 0.95))
            assert top == int(round((h - ch) / 2.0)) and left == int(round((w - cw) / 2.0))
    assert center_crop_box(256, 256, 0.95) == (6, 6, 243, 243)


def test_constant_frame_and_channel_order() -> None:
    frames = np.zeros((1, 100, 150, 3), dtype=np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 255, 0, 128
    out = preprocess_frames(frames)
    np.testing.assert_array_equal(out[0, 0], np.ones((224, 224), np.float32))
    np.testing.assert_array_equal(out[0, 1], -np.ones((224, 224), np.float32))
    np.testing.assert_allclose(out[0, 2], (128 - 127.5) / 127.5, rtol=0, atol=1e-7)


def test_bad_input() -> None:
    with pytest.raises(InputError, match="crop_scale"):
        VideoPreprocessor(crop_scale=0.0)
    with pytest.raises(ValueError, match="uint8"):
        VideoPreprocessor()(torch.zeros(1, 8, 8, 3))
