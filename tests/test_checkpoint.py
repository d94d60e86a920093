"""Stage 1 (load): generated checkpoints round-trip, sharding, strict one-line errors, no unpickling, dtypes."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gr00t_export.errors import InputError
from gr00t_export.families import open_reference
from gr00t_export.families.base import make_noise
from gr00t_export.families.n1_5.checkpoint import load_model, open_checkpoint
from gr00t_export.families.n1_5.config import preset
from gr00t_export.families.n1_5.model import UNUSED_KEY_PREFIXES
from gr00t_export.families.n1_5.preprocess.tokenizer import EagleTokenizer
from gr00t_export.families.n1_5.synthetic import make_checkpoint, weight_shapes
from gr00t_export.weights import INDEX_FILE, SINGLE_FILE, init_tensor

POOLING_PREFIX = "backbone.eagle_model.vision_model.vision_model.head."
SEED = 7


def _make(out: Path, seed: int = SEED, **kwargs) -> Path:
    return make_checkpoint(out, "tiny", seed=seed, show_progress=False, **kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _make(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def tiny_model(tiny: Path):
    ckpt = open_checkpoint(tiny)
    model, report = load_model(ckpt)
    return ckpt, model, report


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    return _make(tmp_path_factory.mktemp("ckpt") / "sharded", shard_bytes=1 << 20)


@pytest.fixture
def copy_of(tmp_path: Path):
    """A private copy of a module-scoped checkpoint, to corrupt."""

    def copy(src: Path) -> Path:
        return Path(shutil.copytree(src, tmp_path / src.name))

    return copy


def _one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
    return msg


def _open_and_load(path: Path, eagle_path: Path | None = None):
    return load_model(open_checkpoint(path, eagle_path))


# ---------------------------------------------------------------------------------------- round trip


def test_every_tensor_is_init_tensor(tiny_model):
    ckpt, model, _ = tiny_model
    state = model.state_dict()
    shapes = weight_shapes(ckpt.config)
    assert set(state) == {k for k in shapes if not k.startswith(POOLING_PREFIX)}
    for name, tensor in state.items():
        assert tensor.dtype == torch.float32, name
        assert tuple(tensor.shape) == shapes[name], name
        assert torch.equal(tensor, init_tensor(name, shapes[name], SEED)), name
    # the unused pooling-head tensors are written from the same generator
    with safe_open(str(ckpt.path / SINGLE_FILE), framework="pt") as f:
        for name in (k for k in shapes if k.startswith(POOLING_PREFIX)):
            assert torch.equal(f.get_tensor(name), init_tensor(name, shapes[name], SEED)), name


def test_config_read_back_equals_preset(tiny_model):
    ckpt, model, _ = tiny_model
    tok = EagleTokenizer.from_dir(ckpt.eagle_dir)
    expected = preset("tiny")
    expected.text.vocab_size = tok.vocab_size
    expected.image_token_index = tok.image_token_id
    assert ckpt.config == expected
    assert model.cfg == expected
    assert ckpt.config.image_token_index < ckpt.config.text.vocab_size
    top = json.loads((ckpt.path / "config.json").read_text())
    assert top["model_type"] == "gr00t_n1_5" and top["architectures"] == ["GR00T_N1_5"]
    assert (ckpt.metadata_path).is_file()


def test_pooling_head_is_the_only_ignored_key(tiny_model):
    ckpt, model, report = tiny_model
    expected = sorted(k for k in weight_shapes(ckpt.config) if k.startswith(POOLING_PREFIX))
    assert len(expected) == 11
    assert report.ignored_unused == expected
    assert all(k.startswith(UNUSED_KEY_PREFIXES) for k in report.ignored_unused)
    assert report.num_parameters == sum(t.numel() for t in model.state_dict().values())


def test_same_seed_is_byte_identical_other_seed_differs(tiny: Path, tmp_path: Path):
    again = _make(tmp_path / "again")
    assert (again / SINGLE_FILE).read_bytes() == (tiny / SINGLE_FILE).read_bytes()
    # the whole tree, tokenizer and metadata included, is a function of the seed
    files = sorted(f.relative_to(tiny) for f in tiny.rglob("*") if f.is_file())
    assert files == sorted(f.relative_to(again) for f in again.rglob("*") if f.is_file())
    for rel in files:
        assert (again / rel).read_bytes() == (tiny / rel).read_bytes(), rel
    assert open_checkpoint(again).fingerprint() == open_checkpoint(tiny).fingerprint()

    other = _make(tmp_path / "other", seed=SEED + 1)
    a, b = load_file(str(tiny / SINGLE_FILE)), load_file(str(other / SINGLE_FILE))
    assert a.keys() == b.keys()
    assert all(not torch.equal(a[k], b[k]) for k in a)  # every tensor is re-drawn, not only some
    assert open_checkpoint(other).fingerprint() != open_checkpoint(tiny).fingerprint()


# ---------------------------------------------------------------------------------------- sharding


def test_sharded_tiny_loads_identically(sharded: Path, tiny_model):
    _, single_model, single_report = tiny_model
    shards = sorted(sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3
    assert all(f.name.endswith(f"-of-{len(shards):05d}.safetensors") for f in shards)
    assert not (sharded / SINGLE_FILE).exists()
    index = json.loads((sharded / INDEX_FILE).read_text())
    assert set(index["weight_map"].values()) == {f.name for f in shards}
    assert index["metadata"]["total_size"] == 4 * sum(int(np.prod(s)) for s in weight_shapes(
        single_model.cfg).values())
    for f in shards:
        assert f.stat().st_size <= (1 << 20) + 64 * 1024  # header slack

    ckpt = open_checkpoint(sharded)
    assert ckpt.weight_files == shards
    model, report = load_model(ckpt)
    assert report == single_report
    a, b = model.state_dict(), single_model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shard_bytes_must_be_positive(tmp_path: Path):
    msg = _one_line_error(make_checkpoint, tmp_path / "x", "tiny", show_progress=False, shard_bytes=0)
    assert "shard_bytes" in msg
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------- load errors


def test_model_path_missing_file_or_without_config(tmp_path: Path, tiny: Path):
    msg = _one_line_error(open_checkpoint, tmp_path / "nowhere")
    assert "nowhere" in msg and "not a directory" in msg
    a_file = tmp_path / "weights.safetensors"
    a_file.write_bytes(b"x")
    msg = _one_line_error(open_checkpoint, a_file)
    assert "weights.safetensors" in msg and "not a directory" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = _one_line_error(open_checkpoint, empty)
    assert "config.json" in msg and str(empty) in msg


def test_config_json_unparsable(copy_of, tiny: Path):
    path = copy_of(tiny)
    (path / "config.json").write_text('{"model_type": "gr00t_n1_5", "backbone_cfg": {')
    msg = _one_line_error(open_checkpoint, path)
    assert "config.json" in msg and "not valid JSON" in msg


@pytest.mark.parametrize("model_type", ["gr00t_n1", "llama"])
def test_config_json_of_another_model(copy_of, tiny: Path, model_type: str):
    path = copy_of(tiny)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = model_type
    (path / "config.json").write_text(json.dumps(cfg))
    msg = _one_line_error(open_checkpoint, path)
    assert repr(model_type) in msg and "gr00t_n1_5" in msg and "config.json" in msg


def test_truncated_single_file(copy_of, tiny: Path):
    path = copy_of(tiny)
    data = (path / SINGLE_FILE).read_bytes()
    (path / SINGLE_FILE).write_bytes(data[: len(data) // 2])
    msg = _one_line_error(_open_and_load, path)
    assert SINGLE_FILE in msg and "truncated" in msg


def test_truncated_shard(copy_of, sharded: Path):
    path = copy_of(sharded)
    victim = sorted(path.glob("model-*.safetensors"))[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    msg = _one_line_error(_open_and_load, path)
    assert victim.name in msg and "truncated" in msg


def test_index_names_missing_shard(copy_of, sharded: Path):
    path = copy_of(sharded)
    victim = sorted(path.glob("model-*.safetensors"))[-1]
    victim.unlink()
    msg = _one_line_error(_open_and_load, path)
    assert victim.name in msg and INDEX_FILE in msg and "missing" in msg


@pytest.mark.parametrize("case", ["entry_dropped", "wrong_shard"])
def test_index_disagreeing_with_shards(copy_of, sharded: Path, case: str):
    # before the fix these failed in load_model as a bare KeyError / SafetensorError
    path = copy_of(sharded)
    index = json.loads((path / INDEX_FILE).read_text())
    key = "action_head.action_decoder.layer2.W"
    real = index["weight_map"][key]
    if case == "entry_dropped":
        del index["weight_map"][key]
    else:
        index["weight_map"][key] = next(f for f in sorted(set(index["weight_map"].values())) if f != real)
    (path / INDEX_FILE).write_text(json.dumps(index))
    msg = _one_line_error(_open_and_load, path)
    assert INDEX_FILE in msg and key in msg and real in msg


def _rewrite(path: Path, edit) -> None:
    tensors = load_file(str(path / SINGLE_FILE))
    edit(tensors)
    save_file(tensors, str(path / SINGLE_FILE), metadata={"format": "pt"})


def test_missing_key(copy_of, tiny: Path):
    path = copy_of(tiny)
    key = "action_head.action_decoder.layer2.W"
    _rewrite(path, lambda t: t.pop(key))
    msg = _one_line_error(_open_and_load, path)
    assert "1 missing key(s)" in msg and key in msg


def test_unknown_extra_key(copy_of, tiny: Path):
    path = copy_of(tiny)
    key = "backbone.eagle_model.mlp2.weight"
    _rewrite(path, lambda t: t.__setitem__(key, torch.zeros(4, 4)))
    msg = _one_line_error(_open_and_load, path)
    assert "1 unexpected key(s)" in msg and key in msg
    assert POOLING_PREFIX not in msg  # the known-unused keys are not reported as offenders


def test_mis_shaped_tensor(copy_of, tiny: Path):
    path = copy_of(tiny)
    key = "backbone.eagle_model.mlp1.0.weight"

    def edit(t):
        t[key] = torch.zeros(t[key].shape[0], t[key].shape[1] + 1)

    _rewrite(path, edit)
    msg = _one_line_error(_open_and_load, path)
    assert "1 mis-shaped key(s)" in msg and key in msg and "[64, 65] != [64, 64]" in msg


def test_eagle_dir_missing(copy_of, tiny: Path, tmp_path: Path):
    path = copy_of(tiny)
    msg = _one_line_error(open_checkpoint, path, tmp_path / "no_eagle")
    assert "no_eagle" in msg and "--eagle_path" in msg
    shutil.rmtree(path / "eagle")
    msg = _one_line_error(open_checkpoint, path)
    assert str(path / "eagle") in msg and "--eagle_path" in msg


@pytest.mark.parametrize("missing", ["vocab.json", "merges.txt"])
def test_eagle_dir_without_tokenizer(copy_of, tiny: Path, missing: str):
    path = copy_of(tiny)
    (path / "eagle" / missing).unlink()
    msg = _one_line_error(open_checkpoint, path)
    assert missing in msg and "eagle" in msg


def test_pickled_weights_only(copy_of, tiny: Path):
    path = copy_of(tiny)
    state = load_file(str(path / SINGLE_FILE))
    (path / SINGLE_FILE).unlink()
    torch.save(state, path / "pytorch_model.bin")
    msg = _one_line_error(open_checkpoint, path)
    assert "pickled" in msg and "safetensors" in msg and str(path) in msg


def test_no_weights_at_all(copy_of, tiny: Path):
    path = copy_of(tiny)
    (path / SINGLE_FILE).unlink()
    msg = _one_line_error(open_checkpoint, path)
    assert SINGLE_FILE in msg and INDEX_FILE in msg


def test_inconsistent_config(copy_of, tiny: Path):
    path = copy_of(tiny)
    cfg = json.loads((path / "config.json").read_text())
    cfg["action_head_cfg"]["diffusion_model_cfg"]["num_attention_heads"] = 3  # 3 * 12 != 48
    (path / "config.json").write_text(json.dumps(cfg))
    msg = _one_line_error(open_checkpoint, path)
    assert "inconsistent model config" in msg and "input_embedding_dim 48" in msg and "36" in msg


# ---------------------------------------------------------------------------------------- safety, dtypes


def test_loading_never_unpickles(tiny: Path, sharded: Path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("loading must not unpickle anything")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    for path in (tiny, sharded):
        model, _ = _open_and_load(path)
        name = "action_head.action_decoder.layer2.W"
        assert torch.equal(model.state_dict()[name], init_tensor(name, tuple(model.state_dict()[name].shape), SEED))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_load_in_half_dtypes(tiny_model, dtype: torch.dtype):
    ckpt, fp32_model, _ = tiny_model
    model, _ = load_model(ckpt, dtype=dtype)
    state, ref = model.state_dict(), fp32_model.state_dict()
    assert {t.dtype for t in state.values()} == {dtype}
    assert all(torch.equal(state[k], ref[k].to(dtype)) for k in state)
    assert not any(p.requires_grad for p in model.parameters())


def _golden_like_obs(seed: int) -> dict[str, np.ndarray]:
    """Same layout as the golden PickNPlace observation: (T=1, 256, 256, 3) uint8 and (T=1, d) float64."""
    rng = np.random.default_rng(seed)
    obs = {"video.ego_view": rng.integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)}
    for key, d in (("left_arm", 7), ("right_arm", 7), ("left_hand", 6), ("right_hand", 6)):
        obs[f"state.{key}"] = rng.uniform(-1.5, 1.5, (1, d))
    obs["annotation.human.action.task_description"] = np.array(["pick the pear from the counter and place it"])
    return obs


def test_bf16_forward_is_finite_and_close_to_fp32(tiny: Path):
    obs = _golden_like_obs(0)
    noise = np.random.default_rng(1).standard_normal((16, 32)).astype(np.float32)
    fp32 = open_reference(tiny, dtype="fp32")
    bf16 = open_reference(tiny, dtype="bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    inputs = bf16.transforms(obs)
    init = make_noise((1, *bf16.interface.noise_shape), noise, 0)
    pred16 = bf16.action_pred(inputs, init)
    pred32 = fp32.action_pred(inputs, init)
    assert pred16.shape == (1, 16, 32) and pred16.dtype == torch.float32
    assert torch.isfinite(pred16).all()
    assert not torch.equal(pred16, pred32)  # it really ran in bf16
    err = (pred16 - pred32).abs().max().item()
    assert err < 0.1 * max(pred32.abs().max().item(), 1.0), err
    actions = bf16.get_action(obs, noise=noise)
    assert all(np.isfinite(v).all() and v.dtype == np.float32 for v in actions.values())
