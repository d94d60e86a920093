"""N1.6 model sanity: token layout helpers, the AlternateVLDiT masks, batch independence of the Euler sampler, and
parity of the SigLIP2 tower with transformers' implementation on tiny shared weights."""

from __future__ import annotations

import pytest
import torch

from gr00t_export.families.n1_6.config import Siglip2VisionConfig, preset
from gr00t_export.families.n1_6.model import (
    Gr00tN16,
    Gr00tN16ActionHead,
    cross_attention_biases,
    pixel_unshuffle_tokens,
    scatter_image_tokens,
)
from gr00t_export.families.n1_6.vision import Siglip2VisionModel, patchify


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.5) + (1.0 if p.ndim == 1 else 0))
    return module.eval()


@pytest.fixture(scope="module")
def head() -> Gr00tN16ActionHead:
    return _randomize(Gr00tN16ActionHead(preset("n1.6-tiny").action_head), 0)


def _context(batch: int = 2, length: int = 12, seed: int = 1):
    """Backbone features, a left-padded attention mask and an image mask (positions 5..9 are image tokens)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, length, 64, generator=g)
    attention = torch.ones(batch, length, dtype=torch.long)
    attention[0, :2] = 0
    image = torch.zeros(batch, length, dtype=torch.bool)
    image[:, 5:10] = True
    return features, attention, image


def test_patchify_order():
    # pixel (channel c, row y, col x) = 1000 c + 100 y + x on a 2 x 3 grid of 2 px patches
    c, y, x = torch.meshgrid(torch.arange(3), torch.arange(4), torch.arange(6), indexing="ij")
    patches = patchify((1000 * c + 100 * y + x)[None].float(), 2)
    assert patches.shape == (1, 6, 12)
    # patch (row 1, col 2) is token 5; its entries run (pixel-row, pixel-col, channel)
    assert patches[0, 5, :4].tolist() == [204.0, 1204.0, 2204.0, 205.0]
    assert patches[0, 5, 6].item() == 304.0


def test_pixel_unshuffle_channel_order():
    channels, h, w = 2, 4, 4
    tokens = torch.arange(channels * h * w, dtype=torch.float32).reshape(channels, h * w).T[None]  # (1, 16, 2)
    out = pixel_unshuffle_tokens(tokens, h, w, 2)
    assert out.shape == (1, 4, 8)
    # merged token (1, 0) takes rows 2-3, cols 0-1; channel index c * 4 + dy * 2 + dx
    token = out[0, 2]
    for c in range(channels):
        for dy in range(2):
            for dx in range(2):
                assert token[c * 4 + dy * 2 + dx].item() == c * 16 + (2 + dy) * 4 + dx


def test_scatter_image_tokens_in_order():
    ids = torch.tensor([[1, 9, 9, 2], [9, 3, 9, 4]])
    embeds = torch.zeros(2, 4, 3)
    image = torch.arange(12, dtype=torch.float32).reshape(4, 3) + 1
    out = scatter_image_tokens(embeds, ids, 9, image)
    assert torch.equal(out[0, 1], image[0]) and torch.equal(out[0, 2], image[1])
    assert torch.equal(out[1, 0], image[2]) and torch.equal(out[1, 2], image[3])
    assert not out[0, 0].any() and not out[1, 3].any()


def test_key_masks_split_text_image_and_padding():
    _, attention, image = _context()
    text_bias, image_bias = cross_attention_biases(image, attention, torch.float32)
    assert text_bias.shape == (2, 1, 1, 12)
    kept_text = text_bias[:, 0, 0] == 0
    kept_image = image_bias[:, 0, 0] == 0
    assert kept_text[0].tolist() == [False, False, True, True, True] + [False] * 5 + [True, True]
    assert kept_image[1].tolist() == [False] * 5 + [True] * 5 + [False, False]


def _kick(seed: int) -> torch.Tensor:
    # not a constant shift: vlln (a LayerNorm) would remove that
    return 3.0 * torch.randn(64, generator=torch.Generator().manual_seed(seed))


def _block_out(head: Gr00tN16ActionHead, block: int, features: torch.Tensor, attention, image) -> torch.Tensor:
    dit = head.model
    text_bias, image_bias = cross_attention_biases(image, attention, torch.float32)
    temb = dit.timestep_encoder(torch.tensor([250]))
    x = torch.randn(features.shape[0], 51, dit.dim, generator=torch.Generator().manual_seed(5))
    bias = text_bias if dit.text[block] else image_bias
    return dit.transformer_blocks[block](x, head.vlln(features), temb, bias)


@torch.no_grad()
def test_image_block_ignores_text_tokens_and_padding(head):
    features, attention, image = _context()
    base = _block_out(head, 2, features, attention, image)  # block 2: image tokens only
    changed = features.clone()
    changed[:, 11] += _kick(1)  # a text token
    changed[0, 0] += _kick(2)  # a padding position
    torch.testing.assert_close(_block_out(head, 2, changed, attention, image), base, rtol=0, atol=0)
    changed[:, 7] += _kick(3)  # an image token does matter
    assert (_block_out(head, 2, changed, attention, image) - base).abs().max() > 1e-3


@torch.no_grad()
def test_text_block_ignores_image_tokens_and_padding(head):
    features, attention, image = _context()
    base = _block_out(head, 0, features, attention, image)  # block 0: non-image tokens
    changed = features.clone()
    changed[:, 6] += _kick(4)  # an image token
    changed[0, 1] += _kick(5)  # padding
    torch.testing.assert_close(_block_out(head, 0, changed, attention, image), base, rtol=0, atol=0)
    changed[:, 3] += _kick(6)  # a text token does matter
    assert (_block_out(head, 0, changed, attention, image) - base).abs().max() > 1e-3


@torch.no_grad()
def test_action_head_ignores_padding_and_is_batch_independent(head):
    features, attention, image = _context(batch=3)
    state = torch.randn(3, 1, 128, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(3, 50, 128, generator=torch.Generator().manual_seed(3))
    ids = torch.tensor([20, 10, 20])
    batched = head.get_action(features, attention, image, state, ids, noise)
    assert batched.shape == (3, 50, 128) and torch.isfinite(batched).all()
    for i in range(3):
        alone = head.get_action(features[i:i + 1], attention[i:i + 1], image[i:i + 1], state[i:i + 1], ids[i:i + 1],
                                noise[i:i + 1])
        torch.testing.assert_close(alone, batched[i:i + 1], rtol=1e-5, atol=1e-5)
    padded = features.clone()
    padded[0, :2] = 100.0  # sample 0's left padding
    torch.testing.assert_close(head.get_action(padded, attention, image, state, ids, noise), batched, rtol=0, atol=0)


@torch.no_grad()
def test_sampler_uses_one_timestep_per_step(head, monkeypatch):
    seen = []
    original = head.model.timestep_encoder.forward

    def spy(timesteps):
        seen.append(timesteps.tolist())
        return original(timesteps)

    monkeypatch.setattr(head.model.timestep_encoder, "forward", spy)
    features, attention, image = _context(batch=2)
    head.get_action(features, attention, image, torch.zeros(2, 1, 128), torch.tensor([20, 20]),
                    torch.zeros(2, 50, 128))
    # the timestep input never carries the batch: the exporter folds each step's embedding to a constant
    assert seen == [[0], [250], [500], [750]]


@torch.no_grad()
def test_embodiment_rows_select_the_projectors(head):
    features, attention, image = _context(batch=1)
    args = (features, attention, image, torch.zeros(1, 1, 128))
    noise = torch.zeros(1, 50, 128)
    a = head.get_action(*args, torch.tensor([20]), noise)
    b = head.get_action(*args, torch.tensor([10]), noise)
    assert (a - b).abs().max() > 1e-3


@torch.no_grad()
def test_full_model_runs_on_two_views():
    cfg = preset("n1.6-tiny")
    cfg.text.vocab_size = 300
    cfg.image_token_index = 299
    model = _randomize(Gr00tN16(cfg), 4)
    ids = torch.randint(0, 290, (1, 200), generator=torch.Generator().manual_seed(1))
    ids[0, 20:101] = 299
    ids[0, 110:191] = 299
    pixels = torch.rand(2, 3, 252, 252) * 2 - 1
    out = model(pixels, ids, torch.ones_like(ids), torch.zeros(1, 1, 128), torch.tensor([20]),
                torch.zeros(1, 50, 128))
    assert out.shape == (1, 50, 128) and torch.isfinite(out).all()
    assert model.backbone.model.image_tokens(pixels).shape == (2, 81, 64)


def test_siglip2_matches_transformers():
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Siglip2VisionModel"):
        pytest.skip("transformers has no Siglip2VisionModel")
    cfg = Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    ours = _randomize(Siglip2VisionModel(cfg), 0)
    hf_cfg = transformers.Siglip2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_patches=256,
        patch_size=14, num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False,
    )
    hf_cfg._attn_implementation = "eager"
    theirs = transformers.Siglip2VisionModel(hf_cfg).eval()
    state = ours.state_dict()
    if not any(k.startswith("vision_model.") for k in theirs.state_dict()):
        state = {k.removeprefix("vision_model."): v for k, v in state.items()}
    theirs.load_state_dict(state, strict=True)
    pixels = torch.rand(2, 3, 252, 196, generator=torch.Generator().manual_seed(1)) * 2 - 1
    patches = patchify(pixels, 14)
    with torch.no_grad():
        want = theirs(pixel_values=patches, pixel_attention_mask=torch.ones(2, patches.shape[1], dtype=torch.long),
                      spatial_shapes=torch.tensor([[18, 14], [18, 14]])).last_hidden_state
        got = ours(pixels)
    assert got.shape == (2, 18 * 14, 32)
    assert (got - want).abs().max().item() <= 1e-5
