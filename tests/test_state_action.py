"""State/action numerics: every mode against the reference formulas, the golden GR1 vector, TorchScript."""

import numpy as np
import pytest
import torch
from helpers import compute_key_stats, normalize, unnormalize

from gr00t_export.errors import InputError
from gr00t_export.families.n1_5.embodiments import DATA_CONFIGS, modality_config_from_dict
from gr00t_export.families.n1_5.metadata import (
    EmbodimentMetadata,
    KeyStats,
    metadata_from_lerobot_stats,
)
from gr00t_export.families.n1_5.preprocess.state_action import ActionPostprocessor, StatePreprocessor

RNG = np.random.default_rng(1234)


def _stats_with_degenerate_dim(x: np.ndarray) -> tuple[np.ndarray, KeyStats]:
    """Data of 4 dims whose dim 2 is constant, so min==max, q01==q99 and std==0 there."""
    x = x.copy()
    x[:, 2] = 0.75
    return x, compute_key_stats(x)


@pytest.mark.parametrize("mode", ["min_max", "q99", "mean_std", "identity"])
def test_round_trip_each_mode_with_degenerate_dim(mode: str):
    x, stats = _stats_with_degenerate_dim(RNG.normal(size=(500, 4)))
    y = normalize(x, stats, mode)
    if mode == "q99":  # clamping loses the tails: round trip only inside [q01, q99]
        x = np.clip(x, stats.q01, stats.q99)
        y = normalize(x, stats, mode)
    np.testing.assert_allclose(unnormalize(y, stats, mode), x, atol=1e-12)


def test_degenerate_cases_follow_reference():
    x, stats = _stats_with_degenerate_dim(RNG.normal(size=(100, 4)))
    probe = np.array([[0.3, 0.3, 5.0, 0.3]])
    assert normalize(probe, stats, "min_max")[0, 2] == 0.0  # min==max -> 0
    assert normalize(probe, stats, "mean_std")[0, 2] == 5.0  # std==0 -> passed through
    assert normalize(probe, stats, "q99")[0, 2] == 1.0  # q01==q99 passed through, then still clamped
    assert normalize(np.array([[0, 0, -0.4, 0]]), stats, "q99")[0, 2] == -0.4
    # The reference inverse has no special case: a degenerate dim comes back as the constant.
    for mode in ("min_max", "q99", "mean_std"):
        assert unnormalize(np.array([[0.2, 0.2, 0.9, 0.2]]), stats, mode)[0, 2] == 0.75


def test_formulas_and_q99_clamp():
    stats = KeyStats(min=[-2.0], max=[2.0], mean=[1.0], std=[2.0], q01=[-1.0], q99=[1.0])
    x = np.array([[-3.0], [-1.0], [0.0], [0.5], [3.0]])
    np.testing.assert_array_equal(normalize(x, stats, "min_max")[:, 0], [-1.5, -0.5, 0.0, 0.25, 1.5])
    np.testing.assert_array_equal(normalize(x, stats, "q99")[:, 0], [-1.0, -1.0, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(normalize(x, stats, "mean_std")[:, 0], [-2.0, -1.0, -0.5, -0.25, 1.0])


def test_binary_and_sin_cos():
    x = np.array([[0.5, 0.51, -1.0, 2.0]])
    np.testing.assert_array_equal(normalize(x, None, "binary"), [[0.0, 1.0, 0.0, 1.0]])
    np.testing.assert_array_equal(unnormalize(x, None, "binary"), [[0.0, 1.0, 0.0, 1.0]])
    angles = RNG.uniform(-np.pi + 1e-6, np.pi, size=(10, 3))
    sc = normalize(angles, None, "sin_cos")
    assert sc.shape == (10, 6)
    np.testing.assert_array_equal(sc[:, :3], np.sin(angles))
    np.testing.assert_array_equal(sc[:, 3:], np.cos(angles))
    np.testing.assert_allclose(unnormalize(sc, None, "sin_cos"), angles, atol=1e-12)
    with pytest.raises(InputError, match="cannot normalise with mode 'min_max' without statistics"):
        normalize(x, None, "min_max")


# --- modules ---------------------------------------------------------------------------------------


def _meta_for(cfg, dims: dict[str, int], data: dict[str, np.ndarray]) -> EmbodimentMetadata:
    def table(mod: str) -> dict[str, KeyStats]:
        return {cfg.short(k): compute_key_stats(data[k]) for k in getattr(cfg, f"{mod}_keys")}

    modalities = {
        mod: {cfg.short(k): {"absolute": True, "rotation_type": None, "shape": [dims[k]], "continuous": True}
              for k in getattr(cfg, f"{mod}_keys")}
        for mod in ("state", "action")
    }
    return EmbodimentMetadata(tag=cfg.embodiment_tag, state=table("state"), action=table("action"),
                              modalities=modalities)


def _mixed_cfg():
    modes = {"a": "min_max", "b": "q99", "c": "mean_std", "d": "binary", "e": "sin_cos", "f": "identity"}
    return modality_config_from_dict({
        "embodiment_tag": "new_embodiment",
        "state_keys": list(modes),
        "action_keys": [k for k in modes if k != "e"],
        "state_modes": modes,
        "action_modes": {k: v for k, v in modes.items() if k != "e"},
    })


def _mixed_setup():
    cfg = _mixed_cfg()
    dims = {}
    data = {}
    for key in cfg.state_keys + cfg.action_keys:
        d = 3
        x = RNG.normal(size=(400, d))
        x[:, 1] = -0.25  # one degenerate dim per key
        if key.endswith(".d"):
            x = (x > 0).astype(np.float64)
        dims[key], data[key] = d, x
    return cfg, _meta_for(cfg, dims, data)


def test_state_preprocessor_matches_functions_per_mode():
    cfg, meta = _mixed_setup()
    pre = StatePreprocessor(cfg, meta, max_state_dim=64)
    raw = {k: RNG.normal(size=(2, 1, 3)) * 2 for k in cfg.state_keys}
    raw["state.b"][..., 1] = 7.0  # degenerate q99 dim, passed through then clamped
    out, mask = pre(pre.concat(raw))
    assert out.dtype == torch.float32 and out.shape == (2, 1, 64) and mask.dtype == torch.bool
    expected = np.concatenate(
        [normalize(raw[k], meta.state[cfg.short(k)], cfg.state_mode(k)) for k in cfg.state_keys], axis=-1
    )
    assert expected.shape[-1] == 21  # 5 keys * 3 + sin_cos key * 6
    np.testing.assert_allclose(out[..., :21].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert out[0, 0, 3 + 1].item() == 1.0  # q99 degenerate dim clamped
    assert torch.all(out[..., 21:] == 0) and mask[..., :21].all() and not mask[..., 21:].any()


def test_state_truncation_and_mask():
    cfg, meta = _mixed_setup()
    pre = StatePreprocessor(cfg, meta, max_state_dim=8)
    raw = pre.concat({k: RNG.normal(size=(1, 3)) for k in cfg.state_keys})
    out, mask = pre(raw)
    full, _ = StatePreprocessor(cfg, meta, max_state_dim=64)(raw)
    assert out.shape == (1, 8) and mask.all()
    torch.testing.assert_close(out, full[..., :8], rtol=0, atol=0)


def test_state_input_checks():
    cfg, meta = _mixed_setup()
    pre = StatePreprocessor(cfg, meta)
    with pytest.raises(InputError, match="observation lacks 'state.a'"):
        pre.concat({})
    with pytest.raises(InputError, match="'state.a' has 2 dims, metadata says 3"):
        pre.concat({k: np.zeros((1, 2 if k == "state.a" else 3)) for k in cfg.state_keys})
    with pytest.raises(AssertionError):
        pre(torch.zeros(1, 1, 5))


def test_action_postprocessor_inverts_and_splits():
    cfg, meta = _mixed_setup()
    post = ActionPostprocessor(cfg, meta)
    pred = torch.rand(2, 16, 32) * 2.4 - 1.2
    out = post(pred)
    assert out.shape == (2, 16, 15) and out.dtype == torch.float32
    parts = post.split(out)
    assert list(parts) == list(cfg.action_keys)
    for key, start, end in post.key_slices:
        assert parts[key].shape == (2, 16, 3)
        want = unnormalize(pred[..., start:end].double().numpy(), meta.action[cfg.short(key)], cfg.action_mode(key))
        np.testing.assert_allclose(parts[key].numpy(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(parts["action.f"], pred[..., 12:15])  # identity is exact
    # normalise -> un-normalise through the module recovers in-range actions.
    acts = {k: RNG.uniform(-0.2, 0.2, size=(16, 3)) for k in cfg.action_keys}
    acts["action.d"] = (acts["action.d"] > 0).astype(np.float64)
    for k in acts:
        if k != "action.d":
            acts[k][:, 1] = -0.25  # the degenerate dim's constant
    norm = np.concatenate(
        [normalize(acts[k], meta.action[cfg.short(k)], cfg.action_mode(k)) for k in cfg.action_keys], -1
    )
    back = post.split(post(torch.nn.functional.pad(torch.from_numpy(norm), [0, 32 - 15])))
    for k in cfg.action_keys:
        np.testing.assert_allclose(back[k].numpy(), acts[k], atol=1e-5)


def test_action_dim_over_model_width_is_input_error():
    cfg, meta = _mixed_setup()
    with pytest.raises(InputError, match="needs 15 action dims but the model emits 8"):
        ActionPostprocessor(cfg, meta, max_action_dim=8)


def test_both_modules_script_and_match_eager():
    cfg, meta = _mixed_setup()
    pre, post = StatePreprocessor(cfg, meta), ActionPostprocessor(cfg, meta)
    spre, spost = torch.jit.script(pre), torch.jit.script(post)
    raw = torch.randn(3, 1, pre.raw_dim, dtype=torch.float64) * 3
    (a, am), (b, bm) = pre(raw), spre(raw)
    assert torch.equal(a, b) and torch.equal(am, bm)
    pred = torch.randn(3, 16, 32)
    assert torch.equal(post(pred), spost(pred))


def test_golden_gr1_state(pick_n_place, golden_vectors):
    cfg = DATA_CONFIGS["fourier_gr1_arms_only"]
    meta = metadata_from_lerobot_stats(pick_n_place, cfg)
    pre = StatePreprocessor(cfg, meta)
    obs = {k[len("obs."):]: v for k, v in golden_vectors.items() if k.startswith("obs.state.")}
    state, mask = pre(pre.concat(obs)[None])  # (1, T=1, 26) -> (1, 1, 64)
    want = golden_vectors["transformed.state"]
    assert state.shape == want.shape
    np.testing.assert_allclose(state.numpy(), want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(mask.numpy(), golden_vectors["transformed.state_mask"])
    assert int(golden_vectors["transformed.embodiment_id"][0]) == cfg.embodiment_id
    sstate, smask = torch.jit.script(pre)(pre.concat(obs)[None])
    assert torch.equal(sstate, state) and torch.equal(smask, mask)
    post = ActionPostprocessor(cfg, meta)
    assert [(k, e - s) for k, s, e in post.key_slices] == [
        ("action.left_arm", 7), ("action.right_arm", 7), ("action.left_hand", 6), ("action.right_hand", 6)
    ]
