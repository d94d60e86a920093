"""Numerical parity of the plain-PyTorch towers with transformers' implementations (fp32, shared weights)."""

import pytest
import torch

from gr00t_export.families.n1_5.config import TextConfig, VisionConfig
from gr00t_export.families.n1_5.model import SiglipVisionModel
from gr00t_export.nn.qwen3 import Qwen3Model

transformers = pytest.importorskip("transformers")


def _randomize(module: torch.nn.Module, seed: int) -> None:
    # non-trivial norm weights and biases too, so a swapped or ignored parameter shows up
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.5) + (1.0 if p.ndim == 1 else 0))


def test_siglip_matches_transformers():
    cfg = VisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       image_size=56, patch_size=14)
    ours = SiglipVisionModel(cfg).eval()
    _randomize(ours, 0)
    hf_cfg = transformers.SiglipVisionConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=56,
        patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, attn_implementation="eager",
    )
    theirs = transformers.SiglipVisionModel(hf_cfg).eval()
    state = ours.state_dict()
    if not any(k.startswith("vision_model.") for k in theirs.state_dict()):  # transformers 5 dropped a level
        state = {k.removeprefix("vision_model."): v for k, v in state.items()}
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("head.", "vision_model.head.")) for k in missing), (missing, unexpected)
    pixels = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        diff = (ours(pixels) - theirs(pixel_values=pixels).last_hidden_state).abs().max().item()
    assert diff <= 1e-5, diff


def test_qwen3_matches_transformers_with_padding():
    cfg = TextConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    ours = Qwen3Model(cfg, num_layers=3).eval()
    _randomize(ours, 1)
    hf_cfg = transformers.Qwen3Config(
        vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, rope_theta=1e6, rms_norm_eps=1e-6, attn_implementation="eager",
    )
    theirs = transformers.Qwen3Model(hf_cfg).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ids = torch.randint(0, 300, (2, 21), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 21, dtype=torch.long)
    mask[1, :5] = 0  # left padding, as the Eagle processor pads
    with torch.no_grad():
        a = ours(ours.embed_tokens(ids), mask)
        b = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
    # padded query rows attend to nothing: compare the real tokens
    real = mask.bool()
    diff = (a - b)[real].abs().max().item()
    assert diff <= 1e-5, diff
