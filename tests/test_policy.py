"""Reference policy on real PickNPlace data, golden eval transforms, un-normalisation, and the CLI around it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gr00t_export.cli import app
from gr00t_export.data.lerobot import LeRobotDataset
from gr00t_export.families import open_reference
from gr00t_export.families.n1_5.checkpoint import open_checkpoint
from gr00t_export.families.n1_5.embodiments import ModalityConfig, load_modality_config
from gr00t_export.families.n1_5.metadata import EmbodimentMetadata, read_metadata
from gr00t_export.families.n1_5.policy import ReferencePolicy, Transforms, decode_actions
from gr00t_export.families.n1_5.preprocess.state_action import ActionPostprocessor
from gr00t_export.families.n1_5.preprocess.tokenizer import EagleTokenizer
from gr00t_export.families.n1_5.synthetic import make_checkpoint, synthetic_metadata

ARMS_ONLY = "fourier_gr1_arms_only"
ACTION_SHAPES = {"action.left_arm": (16, 7), "action.right_arm": (16, 7), "action.left_hand": (16, 6),
                 "action.right_hand": (16, 6)}
STATE_DIMS = {"left_arm": 7, "right_arm": 7, "left_hand": 6, "right_hand": 6}
TASK_KEY = "annotation.human.action.task_description"


def _noise(seed: int, shape: tuple[int, ...] = (16, 32)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _synthetic_obs(seed: int) -> dict[str, np.ndarray]:
    """One unbatched observation in the layout of the golden PickNPlace one."""
    rng = np.random.default_rng(seed)
    obs = {"video.ego_view": rng.integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)}
    for key, d in STATE_DIMS.items():
        obs[f"state.{key}"] = rng.uniform(-1.5, 1.5, (1, d))
    obs[TASK_KEY] = np.array(["pick the pear from the counter and place it in the plate"])
    return obs


# ------------------------------------------------------------------------------ real PickNPlace data


@pytest.fixture(scope="module")
def cfg() -> ModalityConfig:
    return load_modality_config(ARMS_ONLY)


@pytest.fixture(scope="module")
def real_ckpt(tmp_path_factory, pick_n_place: Path) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("policy") / "ckpt", "tiny", seed=3, dataset_path=pick_n_place,
                           show_progress=False)


@pytest.fixture(scope="module")
def real_policy(real_ckpt: Path) -> ReferencePolicy:
    # PickNPlace's metadata serves arms_only and arms_waist alike, so the config is named
    return open_reference(real_ckpt, modality_config=ARMS_ONLY)


@pytest.fixture(scope="module")
def real_obs(pick_n_place: Path, cfg) -> dict[str, dict[str, np.ndarray]]:
    ds = LeRobotDataset(pick_n_place)
    # e0 steps share a task (same prompt length); e1's task prompt is one token longer
    return {"e0s40": ds.observation(0, 40, cfg), "e0s200": ds.observation(0, 200, cfg),
            "e1s5": ds.observation(1, 5, cfg)}


def _varying_keys(policy: ReferencePolicy) -> list[str]:
    """Action keys with at least one dim where max > min (PickNPlace's left_hand is constant: min == max)."""
    meta = policy.transforms.metadata
    return [k for k in ACTION_SHAPES if (meta.action[ModalityConfig.short(k)].max
                                          > meta.action[ModalityConfig.short(k)].min).any()]


def test_real_metadata_comes_from_dataset_stats(real_ckpt: Path, pick_n_place: Path):
    meta = read_metadata(real_ckpt / "experiment_cfg" / "metadata.json", "gr1")
    stats = json.loads((pick_n_place / "meta" / "stats.json").read_text())
    layout = json.loads((pick_n_place / "meta" / "modality.json").read_text())
    for short in STATE_DIMS:
        for table, mod, source in ((meta.action, "action", "action"), (meta.state, "state", "observation.state")):
            start, end = layout[mod][short]["start"], layout[mod][short]["end"]
            for name in ("min", "max", "q01", "q99", "mean", "std"):
                np.testing.assert_array_equal(getattr(table[short], name), stats[source][name][start:end])


def test_get_action_on_real_observations(real_policy: ReferencePolicy, real_obs):
    obs = real_obs["e0s40"]
    assert obs["video.ego_view"].shape == (1, 256, 256, 3) and obs["video.ego_view"].dtype == np.uint8
    actions = real_policy.get_action(obs, noise=_noise(0))
    assert {k: v.shape for k, v in actions.items()} == ACTION_SHAPES
    for key, value in actions.items():
        assert value.dtype == np.float32, key
        assert np.isfinite(value).all(), key
    # a dim with min == max decodes to that constant, whatever the model predicts
    meta = real_policy.transforms.metadata.action["left_hand"]
    fixed = meta.min == meta.max
    assert fixed.all()
    np.testing.assert_allclose(actions["action.left_hand"], np.broadcast_to(meta.min, (16, 6)), rtol=1e-6)


def test_same_noise_same_actions_other_noise_differs(real_policy: ReferencePolicy, real_obs):
    obs = real_obs["e0s40"]
    varying = _varying_keys(real_policy)
    assert {"action.left_arm", "action.right_arm", "action.right_hand"} <= set(varying)
    a = real_policy.get_action(obs, noise=_noise(0))
    b = real_policy.get_action(obs, noise=_noise(0))
    c = real_policy.get_action(obs, noise=_noise(1))
    for key in ACTION_SHAPES:
        np.testing.assert_array_equal(a[key], b[key])
    for key in varying:
        assert not np.allclose(a[key], c[key]), key
    # seeded default noise: reproducible per seed
    s1, s2, s3 = (real_policy.get_action(obs, seed=s) for s in (5, 5, 6))
    for key in ACTION_SHAPES:
        np.testing.assert_array_equal(s1[key], s2[key])
    for key in varying:
        assert not np.allclose(s1[key], s3[key]), key


def _batched_and_singles(policy: ReferencePolicy, first, second):
    batched = {k: np.stack([first[k], second[k]]) for k in first}
    noise = np.stack([_noise(10), _noise(11)])
    together = policy.get_action(batched, noise=noise)
    singles = [policy.get_action(o, noise=n) for o, n in ((first, noise[0]), (second, noise[1]))]
    for key, shape in ACTION_SHAPES.items():
        assert together[key].shape == (2, *shape)
    return together, singles, policy.transforms(batched).attention_mask


def test_batched_equals_single_calls(real_policy: ReferencePolicy, real_obs):
    first, second = real_obs["e0s40"], real_obs["e0s200"]
    together, singles, mask = _batched_and_singles(real_policy, first, second)
    assert bool(mask.all())  # same task -> same prompt length -> no padding
    for key in ACTION_SHAPES:
        for i in range(2):
            np.testing.assert_allclose(together[key][i], singles[i][key], rtol=0, atol=1e-5, err_msg=key)
    assert not np.allclose(singles[0]["action.left_arm"], singles[1]["action.left_arm"])


def test_batched_with_left_padding_matches_n15_semantics(real_policy: ReferencePolicy, real_obs):
    """Prompts of different lengths are left-padded. N1.5 keeps positions arange(L) and lets vl_self_attention
    and the DiT attend to the padding, so the padded sample moves; the unpadded one must not."""
    first, second = real_obs["e0s40"], real_obs["e1s5"]
    together, singles, mask = _batched_and_singles(real_policy, first, second)
    lengths = mask.sum(1).tolist()
    assert lengths[0] < lengths[1] == mask.shape[1]
    for key in ACTION_SHAPES:
        np.testing.assert_allclose(together[key][1], singles[1][key], rtol=0, atol=1e-5, err_msg=key)
    diff = max(np.abs(together[k][0] - singles[0][k]).max() for k in _varying_keys(real_policy))
    assert diff > 1e-4, diff


# ------------------------------------------------------------------------------ golden eval transforms


@pytest.fixture(scope="module")
def real_tok_ckpt(tmp_path_factory, real_eagle_dir: Path) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("policy") / "ckpt_tok", "tiny", seed=0, eagle_path=real_eagle_dir,
                           show_progress=False)


def test_transforms_reproduce_golden(real_tok_ckpt: Path, golden_vectors: dict):
    ckpt = open_checkpoint(real_tok_ckpt)
    assert ckpt.config.text.vocab_size == 151680 and ckpt.config.image_token_index == 151669
    tokenizer = EagleTokenizer.from_dir(ckpt.eagle_dir)
    cfg = load_modality_config(ARMS_ONLY)
    transforms = Transforms(cfg, read_metadata(ckpt.metadata_path, "gr1"), tokenizer,
                            ckpt.config.action_head.max_state_dim)
    obs = {k.removeprefix("obs."): v for k, v in golden_vectors.items() if k.startswith("obs.")}
    out = transforms(obs)

    np.testing.assert_array_equal(out.input_ids.numpy(), golden_vectors["transformed.eagle_input_ids"])
    np.testing.assert_array_equal(out.attention_mask.numpy(), golden_vectors["transformed.eagle_attention_mask"])
    assert (out.input_ids == 151669).sum().item() == 256
    pixels = golden_vectors["transformed.eagle_pixel_values"]
    assert out.pixel_values.shape == pixels.shape and out.pixel_values.dtype == torch.float32
    np.testing.assert_allclose(out.pixel_values.numpy(), pixels, rtol=0, atol=1 / 255)
    golden_state = golden_vectors["transformed.state"]
    assert out.state.shape == golden_state.shape == (1, 1, 64)
    # sin/cos of the 26 arm/hand joints: independent of the (synthetic) statistics
    np.testing.assert_allclose(out.state.numpy()[..., :52], golden_state[..., :52], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out.state.numpy()[..., 52:], 0.0)
    np.testing.assert_array_equal(out.embodiment_id.numpy(), golden_vectors["transformed.embodiment_id"])


def test_golden_observation_through_real_tokenizer_policy(real_tok_ckpt: Path, golden_vectors: dict):
    policy = open_reference(real_tok_ckpt)
    obs = {k.removeprefix("obs."): v for k, v in golden_vectors.items() if k.startswith("obs.")}
    actions = policy.get_action(obs, noise=_noise(2))
    assert {k: v.shape for k, v in actions.items()} == ACTION_SHAPES
    assert all(np.isfinite(v).all() for v in actions.values())


# ------------------------------------------------------------------------------ un-normalisation


def _check_unnormalise(meta: EmbodimentMetadata, cfg: ModalityConfig, seed: int) -> None:
    post = ActionPostprocessor(cfg, meta)
    rng = np.random.default_rng(seed)
    pred = rng.uniform(-1, 1, (3, 16, 32))
    pred[0], pred[1] = -1.0, 1.0  # the two ends of the range
    decoded = decode_actions(post, torch.from_numpy(pred), batched=True)
    assert list(decoded) == list(cfg.action_keys)
    offset = 0
    for key in cfg.action_keys:
        stats = meta.action[ModalityConfig.short(key)]
        lo, hi = stats.min.astype(np.float32).astype(np.float64), stats.max.astype(np.float32).astype(np.float64)
        d = lo.shape[0]
        y = decoded[key].astype(np.float64)
        assert y.shape == (3, 16, d) and decoded[key].dtype == np.float32
        tol = 1e-6 * (1 + np.maximum(np.abs(lo), np.abs(hi)))
        assert (y >= lo - tol).all() and (y <= hi + tol).all(), key
        np.testing.assert_allclose(y[0], np.broadcast_to(lo, (16, d)), rtol=0, atol=tol.max())
        np.testing.assert_allclose(y[1], np.broadcast_to(hi, (16, d)), rtol=0, atol=tol.max())
        # min_max inverse, column by column: action key k reads its own slice of action_pred
        x = pred[..., offset:offset + d].astype(np.float32).astype(np.float64)
        np.testing.assert_allclose(y, (x + 1) / 2 * (hi - lo) + lo, rtol=0, atol=4 * tol.max())
        offset += d
    # outside [-1, 1] nothing clamps: the range is exceeded, as in the reference
    over = decode_actions(post, torch.full((1, 16, 32), 1.5, dtype=torch.float64), batched=True)
    key = cfg.action_keys[0]
    stats = meta.action[ModalityConfig.short(key)]
    wide = stats.max > stats.min
    assert (over[key][..., wide] > stats.max[wide]).all()


@pytest.mark.parametrize("config_name", [ARMS_ONLY, "fourier_gr1_arms_waist", "unitree_g1"])
def test_unnormalised_actions_stay_in_metadata_range(config_name: str):
    cfg = load_modality_config(config_name)
    assert set(cfg.action_modes.values()) == {"min_max"}
    for seed in range(3):
        _check_unnormalise(synthetic_metadata(cfg, seed), cfg, seed)


def test_unnormalise_with_real_statistics(real_ckpt: Path, cfg):
    _check_unnormalise(read_metadata(real_ckpt / "experiment_cfg" / "metadata.json", "gr1"), cfg, 0)


# ------------------------------------------------------------------------------ CLI


runner = CliRunner()


@pytest.fixture(scope="module")
def cli_ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "ckpt"
    result = runner.invoke(app, ["make-checkpoint", str(out), "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and (out / "experiment_cfg" / "metadata.json").is_file()
    return out


@pytest.fixture(scope="module")
def obs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "obs.npz"
    np.savez(path, **_synthetic_obs(0))
    return path


def _ok(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def test_cli_predict_equals_library(cli_ckpt: Path, obs_file: Path, tmp_path: Path):
    noise_file = tmp_path / "noise.npy"
    np.save(noise_file, _noise(9))
    out = tmp_path / "a.npz"
    _ok(["predict", "--model_path", str(cli_ckpt), "--obs", str(obs_file), "--noise", str(noise_file),
         "--out", str(out)])
    got = _load(out)
    want = open_reference(cli_ckpt).get_action(_synthetic_obs(0), noise=_noise(9))
    assert {k: v.shape for k, v in got.items()} == ACTION_SHAPES
    for key in ACTION_SHAPES:
        np.testing.assert_array_equal(got[key], want[key])


def test_cli_predict_seed_is_reproducible(cli_ckpt: Path, obs_file: Path, tmp_path: Path):
    paths = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        paths[name] = tmp_path / f"{name}.npz"
        _ok(["predict", "--model_path", str(cli_ckpt), "--obs", str(obs_file), "--seed", str(seed),
             "--out", str(paths[name])])
    a, b, c = (_load(paths[n]) for n in "abc")
    want = open_reference(cli_ckpt).get_action(_synthetic_obs(0), seed=3)
    for key in ACTION_SHAPES:
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key], want[key])
        assert not np.allclose(a[key], c[key]), key


def test_cli_predict_from_dataset_equals_library(cli_ckpt: Path, pick_n_place: Path, cfg, tmp_path: Path):
    out = tmp_path / "ds.npz"
    _ok(["predict", "--model_path", str(cli_ckpt), "--dataset_path", str(pick_n_place), "--episode", "1",
         "--step", "5", "--seed", "2", "--out", str(out)])
    obs = LeRobotDataset(pick_n_place).observation(1, 5, cfg)
    want = open_reference(cli_ckpt).get_action(obs, seed=2)
    got = _load(out)
    for key in ACTION_SHAPES:
        np.testing.assert_array_equal(got[key], want[key])


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    files = {"noise": root / "noise_8x32.npy", "obs": root / "obs_no_hand.npz", "dir": root / "ds"}
    np.save(files["noise"], _noise(0, (8, 32)))
    obs = _synthetic_obs(1)
    del obs["state.left_hand"]
    np.savez(files["obs"], **obs)
    files["dir"].mkdir()
    return files


BAD_CASES = {
    "missing model_path": (["--model_path", "{tmp}/no_such_ckpt"], ["no_such_ckpt", "not a directory"]),
    "no policy at all": (["--obs", "{obs}"], ["--model_path", "--artifacts"]),
    "unknown embodiment": (["--model_path", "{ckpt}", "--embodiment_tag", "robot_x"], ["robot_x"]),
    "unknown modality config": (["--model_path", "{ckpt}", "--modality_config", "no_such_cfg"], ["no_such_cfg"]),
    "noise of wrong shape": (["--model_path", "{ckpt}", "--noise", "{noise}"], ["noise", "(8, 32)"]),
    "obs missing a state key": (["--model_path", "{ckpt}", "--obs", "{bad_obs}"], ["state.left_hand"]),
    "both obs and dataset": (["--model_path", "{ckpt}", "--dataset_path", "{dir}"], ["--obs", "--dataset_path"]),
    "unknown dtype": (["--model_path", "{ckpt}", "--dtype", "fp8"], ["fp8"]),
    "noise file missing": (["--model_path", "{ckpt}", "--noise", "{tmp}/none.npy"], ["none.npy"]),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_cli_bad_inputs_one_error_line(case: str, cli_ckpt: Path, obs_file: Path, bad_files, tmp_path: Path):
    args, needles = BAD_CASES[case]
    subs = {"ckpt": cli_ckpt, "obs": obs_file, "noise": bad_files["noise"], "bad_obs": bad_files["obs"],
            "dir": bad_files["dir"], "tmp": tmp_path}
    args = [a.format(**subs) for a in args]
    if "--obs" not in args and "--model_path" in args and case != "missing model_path":
        args += ["--obs", str(obs_file)]
    if case == "missing model_path":
        args += ["--obs", str(obs_file)]
    result = runner.invoke(app, ["predict", *args])
    assert result.exit_code == 2, (case, result.output)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert result.stdout == ""


def test_cli_entry_point_error_has_no_traceback(tmp_path: Path, obs_file: Path):
    exe = Path(sys.executable).parent / "gr00t-export"
    if not exe.exists():
        pytest.skip("gr00t-export console script not installed")
    proc = subprocess.run([str(exe), "predict", "--model_path", str(tmp_path / "gone"), "--obs", str(obs_file)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "gone" in lines[0], proc.stderr


def test_cli_help_for_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output
    names = [c.name or c.callback.__name__.lower().replace("_", "-") for c in app.registered_commands]
    assert {"make-checkpoint", "make-dataset", "predict"} <= set(names)
    for name in names:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage" in result.output and name in result.output and "Traceback" not in result.output
