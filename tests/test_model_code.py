"""The model code itself: tiny-preset actions bit-identical to the golden written by the code before the
`gr00t_export.nn` refactor, forwards free of runtime knowledge, the onnxruntime lowering done from outside (and
undone), checkpoint names absorbed at load, RoPE tables computed once.

`python tests/test_model_code.py WRITE_GOLDEN` rewrites the golden with the checked-out code; it was written by
the `arch` branch's model code (commit bea982c), CPU, fp32, one thread.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).with_name("golden") / "tiny_action_pred.npz"
SEED = 3


def _model_inputs(cfg, image_tokens: int, image_size: int, state_dim: int, horizon: int, action_dim: int,
                  embodiment: int) -> tuple[torch.Tensor, ...]:
    """Batch 2, one view each; sample 0 is left-padded by 3 tokens, so the causal + padding mask is exercised."""
    g = torch.Generator().manual_seed(SEED)
    text = 20
    length = 3 + 4 + image_tokens + text
    ids = torch.randint(1, min(cfg.image_token_index, 1000), (2, length), generator=g)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[0, :3] = 0
    ids[0, :3] = 0
    ids[0, 7:7 + image_tokens] = cfg.image_token_index
    ids[1, 4:4 + image_tokens] = cfg.image_token_index
    pixels = torch.rand(2, 3, image_size, image_size, generator=g) * 2 - 1
    state = torch.randn(2, 1, state_dim, generator=g)
    noise = torch.randn(2, horizon, action_dim, generator=g)
    return pixels, ids, mask, state, torch.tensor([embodiment, embodiment]), noise


def tiny_action_preds(tmp: Path) -> dict[str, np.ndarray]:
    """action_pred of the tiny N1.5 and N1.6 presets, loaded from seeded synthetic checkpoints."""
    from gr00t_export.families.n1_5.checkpoint import load_model as load_n15
    from gr00t_export.families.n1_5.checkpoint import open_checkpoint as open_n15
    from gr00t_export.families.n1_5.synthetic import make_checkpoint as make_n15
    from gr00t_export.families.n1_6.load import load_model as load_n16
    from gr00t_export.families.n1_6.load import open_checkpoint as open_n16
    from gr00t_export.families.n1_6.synthetic import make_checkpoint as make_n16

    torch.set_num_threads(1)
    out = {}
    n15, _ = load_n15(open_n15(make_n15(tmp / "n15", "tiny", seed=SEED, show_progress=False)))
    cfg = n15.cfg
    ah = cfg.action_head
    inputs = _model_inputs(cfg, cfg.tokens_per_image, cfg.vision.image_size, ah.max_state_dim, ah.action_horizon,
                           ah.action_dim, 24)
    with torch.no_grad():
        out["n1_5"] = n15(*inputs).numpy()
    n16, _ = load_n16(open_n16(make_n16(tmp / "n16", "n1.6-tiny", seed=SEED, show_progress=False)))
    cfg = n16.cfg
    ah = cfg.action_head
    inputs = _model_inputs(cfg, cfg.tokens_per_image(), cfg.image_size, ah.max_state_dim, ah.action_horizon,
                           ah.max_action_dim, 20)
    with torch.no_grad():
        out["n1_6"] = n16(*inputs).numpy()
    return out


def test_tiny_actions_are_bit_identical_to_the_golden(tmp_path: Path):
    golden = dict(np.load(GOLDEN))
    got = tiny_action_preds(tmp_path)
    assert set(got) == set(golden)
    for family, want in golden.items():
        assert got[family].shape == want.shape and np.isfinite(want).all(), family
        assert np.array_equal(got[family], want), (family, np.abs(got[family] - want).max())


if __name__ == "__main__" and sys.argv[1:] == ["WRITE_GOLDEN"]:
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        preds = tiny_action_preds(Path(scratch))
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez(GOLDEN, **preds)
    print({k: (v.shape, float(np.abs(v).max())) for k, v in preds.items()})
