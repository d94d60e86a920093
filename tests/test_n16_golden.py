"""N1.6 preprocessing and decoding against the golden vectors of NVIDIA's own N1.6 processor (real PickNPlace step,
real Eagle-Block2A-2B-v2 tokenizer) and, for sizes the golden frame does not cover, against OpenCV and Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gr00t_export.families.n1_6.processor_files import read_processor_config, read_statistics
from gr00t_export.families.n1_6.state_action import ActionDecoder, StateEncoder
from gr00t_export.families.n1_6.tokenizer import N16Tokenizer, formalize_language
from gr00t_export.families.n1_6.video import (
    EagleImageProcessor,
    Gr00tImageTransform,
    VideoPreprocessor,
    cv_area_resize,
    pil_bicubic_resize,
    smart_resize,
)

VIDEO_KEY = "ego_view_bg_crop_pad_res256_freq20"
KEYS = ("left_arm", "right_arm", "left_hand", "right_hand", "waist")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    from conftest import _shared

    return dict(np.load(_shared("test_vectors") / "gr1_pickplace_ep1_step5_n16_processor.npz", allow_pickle=False))


@pytest.fixture(scope="module")
def files() -> Path:
    from conftest import _shared

    return _shared("test_vectors") / "n16_processor_files"


@pytest.fixture(scope="module")
def tokenizer() -> N16Tokenizer:
    from conftest import _shared

    return N16Tokenizer.from_dir(_shared("eagle_block2a_2b_v2"))


@pytest.fixture(scope="module")
def gr1(files: Path):
    processor = read_processor_config(files / "processor_config.json")
    stats = read_statistics(files / "statistics.json")["gr1"]
    encoder = StateEncoder(processor, stats, "gr1")
    return encoder, ActionDecoder(processor, stats, "gr1", encoder.key_slices)


@pytest.fixture(scope="module")
def hf_tokenizer():
    """transformers' Qwen2 tokenizer on the same real files: the test-only oracle."""
    transformers = pytest.importorskip("transformers")
    from conftest import _shared

    return transformers.Qwen2TokenizerFast.from_pretrained(str(_shared("eagle_block2a_2b_v2")))


def _frame(golden) -> torch.Tensor:
    return torch.from_numpy(golden[f"obs.video.{VIDEO_KEY}"][0])  # (T=1, 256, 256, 3)


# --- tokenizer ------------------------------------------------------------------------------------

def test_ids_mask_and_image_mask_are_exact(golden, tokenizer: N16Tokenizer):
    ids, mask = tokenizer.encode([str(golden["obs.task"][0])], [81])
    np.testing.assert_array_equal(ids, golden["processed.input_ids"])
    np.testing.assert_array_equal(mask, golden["processed.attention_mask"])
    np.testing.assert_array_equal(tokenizer.image_mask(ids), golden["processed.image_mask"])
    assert ids.shape == (1, 117) and tokenizer.image_mask(ids).sum() == 81


def test_formalize_language():
    assert formalize_language("Pick the Sweet-Potato, then STOP!") == "pick the sweetpotato then stop"
    assert formalize_language("Grab it_now: 3 cubes\t(\u00c9t\u00e9)") == "grab it_now 3 cubes\t\u00e9t\u00e9"


def test_left_padding_and_two_views(tokenizer: N16Tokenizer):
    ids, mask = tokenizer.encode(["go", "pick the red cube and place it on the blue plate"], [81, 81])
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()
    assert (ids[0][mask[0] == 0] == tokenizer.pad_id).all()
    assert (tokenizer.image_mask(ids).sum(axis=1) == 162).all()
    text = tokenizer.eagle.decode(ids[1][mask[1] == 1])
    assert text.index("plate<image 1><img>") < text.index("</img><image 2><img>")
    assert text.endswith("</img><|im_end|>\n") and "<|im_start|>assistant" not in text  # no generation prompt


@pytest.mark.parametrize("instruction", [
    "Pick the pear, please!", "  spaces  and\ttabs\n", "caf\u00e9 na\u00efve \u65e5\u672c", "it's 2 o'clock", "",
])
def test_matches_transformers_tokenizer(tokenizer: N16Tokenizer, hf_tokenizer, instruction: str):
    hf = hf_tokenizer
    prompt = tokenizer.build_prompt(instruction, [81])
    ids, _ = tokenizer.encode([instruction], [81])
    assert ids[0].tolist() == hf(prompt, add_special_tokens=False)["input_ids"]


# --- video ----------------------------------------------------------------------------------------

def test_gr00t_transform_is_bit_exact(golden):
    got = Gr00tImageTransform()(_frame(golden))[0].numpy()
    want = golden["processed.image_after_gr00t_transform"]
    assert np.abs(got.astype(int) - want.astype(int)).max() == 0


def test_pixel_values_are_exact_eager_and_scripted(golden):
    want = golden["processed.pixel_values"]
    assert tuple(golden["processed.image_sizes"][0]) == (252, 252) == smart_resize(256, 256)
    eager = VideoPreprocessor()(_frame(golden)).numpy()
    scripted = torch.jit.script(VideoPreprocessor())(_frame(golden)).numpy()
    assert eager.shape == want.shape == (1, 3, 252, 252)
    assert np.abs(eager - want).max() == 0.0 and np.abs(scripted - want).max() == 0.0
    # the Eagle processor alone, from the golden 256 px frame
    alone = EagleImageProcessor()(torch.from_numpy(golden["processed.image_after_gr00t_transform"])[None]).numpy()
    assert np.abs(alone - want).max() == 0.0


def test_a_call_on_square_frames_builds_no_resize_taps(golden, monkeypatch):
    # what lets a CUDA graph capture the stage: no host tensors built (and copied to the GPU) during a call
    from gr00t_export.families.n1_6 import video

    stage = VideoPreprocessor()

    def refuse(*args):
        raise AssertionError("resize taps built per call")

    for name in ("cv_area_enlarge_taps", "cv_area_shrink_weights", "pil_bicubic_weights"):
        monkeypatch.setattr(video, name, refuse)
    assert np.abs(stage(_frame(golden)).numpy() - golden["processed.pixel_values"]).max() == 0.0
    with pytest.raises(AssertionError, match="per call"):  # another size still builds its first resize's weights
        stage(torch.zeros(1, 200, 300, 3, dtype=torch.uint8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU; benchmarks/device_run.py runs this")
def test_the_video_stage_replays_as_a_cuda_graph(golden):
    from gr00t_export.families.n1_6.partition import VideoStage, graph_spec_path
    from gr00t_export.runtime.cuda_graphs import CapturedWherePossible
    from gr00t_export.runtime.runner import TorchStageRunner
    from gr00t_export.spec import load_graph_spec

    spec = load_graph_spec(graph_spec_path(), views=1).stage("preprocess_video")
    direct = TorchStageRunner(torch.jit.script(VideoStage(256, 0.95, torch.float16)).cuda(), spec, "cuda")
    graphed = CapturedWherePossible(direct)
    frames = _frame(golden)[None]  # (B=1, T=1, 256, 256, 3)
    for shift in (0, 7, 0):  # a capture, a replay on other frames, a replay of the first
        feeds = {"frames_0": torch.roll(frames, shift, dims=3)}
        got = graphed.infer(feeds)["pixel_values"].clone()
        assert graphed.failure == "" and torch.equal(got, direct.infer(feeds)["pixel_values"])


@pytest.mark.parametrize("height, width", [(480, 640), (256, 320), (200, 200), (720, 1280)])
def test_transform_matches_opencv_pipeline(height: int, width: int):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(height + width)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = (np.sin(xx / 9.0) + np.cos(yy / 6.0)) * 60 + 128
    frame = np.clip(np.stack([smooth, smooth[::-1], 255 - smooth], -1) + rng.normal(0, 8, (height, width, 3)), 0, 255)
    frame = frame.astype(np.uint8)
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    ref = cv2.copyMakeBorder(frame, top, side - height - top, left, side - width - left, cv2.BORDER_CONSTANT, value=0)
    if side != 256:
        ref = cv2.resize(ref, (256, 256), interpolation=cv2.INTER_AREA)
    ref = ref[6:249, 6:249]
    ref = cv2.resize(ref, (256, 256), interpolation=cv2.INTER_AREA)
    got = Gr00tImageTransform()(torch.from_numpy(frame)[None])[0].numpy()
    assert np.abs(got.astype(int) - ref.astype(int)).max() == 0


@pytest.mark.parametrize("size, out", [(256, 252), (480, 252), (200, 224), (512, 504)])
def test_bicubic_matches_pillow(size: int, out: int):
    from PIL import Image

    img = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(img).resize((out, out), Image.BICUBIC))
    got = pil_bicubic_resize(torch.from_numpy(img).permute(2, 0, 1)[None].double(), out, out)[0].permute(1, 2, 0)
    assert np.abs(got.numpy().astype(int) - ref.astype(int)).max() == 0


def test_area_shrink_matches_opencv_within_one_step():
    cv2 = pytest.importorskip("cv2")
    img = np.random.default_rng(1).integers(0, 256, (260, 260, 3), dtype=np.uint8)
    got = cv_area_resize(torch.from_numpy(img).permute(2, 0, 1)[None].double(), 243, 243)[0].permute(1, 2, 0)
    diff = np.abs(got.numpy().astype(int) - cv2.resize(img, (243, 243), interpolation=cv2.INTER_AREA).astype(int))
    # OpenCV sums float32 weights in its own order; ties can round the other way
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


# --- state and decoding ---------------------------------------------------------------------------

def test_state_matches_golden(golden, gr1):
    encoder, _ = gr1
    raw = encoder.concat({k: golden[f"obs.state.{k}"] for k in KEYS})
    got = torch.jit.script(encoder)(torch.from_numpy(raw)).numpy()
    want = golden["processed.state"]
    assert got.shape == want.shape == (1, 1, 128) and got.dtype == np.float32
    assert (got[..., 58:] == 0).all()
    # sin/cos rounded from float64; NumPy's float32 sin may be 1 ulp off the correctly rounded value
    assert np.abs(got - want).max() <= 3e-8
    np.testing.assert_array_max_ulp(got, want, maxulp=1)


def test_decode_matches_golden(golden, gr1):
    encoder, decoder = gr1
    raw = torch.from_numpy(encoder.concat({k: golden[f"obs.state.{k}"] for k in KEYS}))
    actions = torch.jit.script(decoder)(torch.from_numpy(golden["decode.action_pred_normalized"]), raw)
    for key, value in decoder.split(actions).items():
        want = golden[f"decode.actions.{key}"]
        assert value.shape == want.shape and value.dtype == torch.float32
        assert np.abs(value.numpy() - want).max() == 0.0, key


def test_decode_relative_keys_follow_the_state(golden, gr1):
    encoder, decoder = gr1
    raw = torch.from_numpy(encoder.concat({k: golden[f"obs.state.{k}"] for k in KEYS}))
    pred = torch.from_numpy(golden["decode.action_pred_normalized"])
    shifted = raw.clone()
    shifted[..., :7] += 0.5  # left_arm moves
    a, b = (decoder.split(decoder(pred, s)) for s in (raw, shifted))
    torch.testing.assert_close(b["left_arm"] - a["left_arm"], torch.full_like(a["left_arm"], 0.5))
    assert torch.equal(a["right_arm"], b["right_arm"]) and torch.equal(a["waist"], b["waist"])
