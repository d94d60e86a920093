"""N1.6 strict loading: generated checkpoints round-trip (single file and sharded), every bad layout is one error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gr00t_export.errors import InputError
from gr00t_export.families.n1_6.load import load_model, open_checkpoint
from gr00t_export.families.n1_6.model import UNUSED_KEY_PREFIXES
from gr00t_export.families.n1_6.synthetic import init_n16_tensor, make_checkpoint, weight_shapes
from gr00t_export.weights import INDEX_FILE, SINGLE_FILE

SEED = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    # no --eagle_path: a tiny trained tokenizer, so this module needs no shared data
    return make_checkpoint(tmp_path_factory.mktemp("n16") / "tiny", "n1.6-tiny", seed=SEED, show_progress=False)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("n16") / "sharded", "n1.6-tiny", seed=SEED, show_progress=False,
                           shard_bytes=1 << 20)


@pytest.fixture
def copy_of(tmp_path: Path):
    return lambda src: Path(shutil.copytree(src, tmp_path / src.name))


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg and "\n" not in msg, repr(msg)
    return msg


def _load(path: Path):
    return load_model(open_checkpoint(path))


def test_release_layout(tiny: Path, sharded: Path):
    assert sorted(p.name for p in tiny.iterdir()) == ["config.json", "eagle", "embodiment_id.json",
                                                      SINGLE_FILE, "processor_config.json", "statistics.json"]
    assert json.loads((tiny / "config.json").read_text())["model_type"] == "Gr00tN1d6"
    index = json.loads((sharded / INDEX_FILE).read_text())
    shards = sorted({f for f in index["weight_map"].values()})
    assert len(shards) > 1 and all((sharded / f).is_file() for f in shards)
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"


def test_roundtrip_every_tensor(tiny: Path):
    ckpt = open_checkpoint(tiny)
    model, report = load_model(ckpt)
    state = model.state_dict()
    shapes = weight_shapes(ckpt.config)
    assert set(state) | set(report.ignored_unused) == set(shapes)
    assert report.ignored_unused and all(k.startswith(UNUSED_KEY_PREFIXES) for k in report.ignored_unused)
    assert "backbone.model.language_model.lm_head.weight" in report.ignored_unused
    for name, tensor in state.items():
        want = init_n16_tensor(name, shapes[name], SEED).to(torch.bfloat16).float()  # stored as bf16
        assert torch.equal(tensor, want), name
    assert not any(p.requires_grad for p in model.parameters())
    assert ckpt.config.image_token_index == ckpt.config.text.vocab_size - 37 + 26  # tiny BPE, real added layout


def test_sharded_loads_the_same_weights(tiny: Path, sharded: Path):
    a, _ = _load(tiny)
    b, _ = _load(sharded)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_missing_eagle_dir_names_eagle_path(copy_of, tiny: Path):
    path = copy_of(tiny)
    shutil.rmtree(path / "eagle")
    assert "--eagle_path" in _error(open_checkpoint, path)


def _rewrite(path: Path, edit) -> None:
    tensors = load_file(str(path / SINGLE_FILE))
    edit(tensors)
    save_file(tensors, str(path / SINGLE_FILE), metadata={"format": "pt"})


def test_missing_unexpected_and_misshaped_in_one_error(copy_of, tiny: Path):
    path = copy_of(tiny)

    def edit(t):
        del t["action_head.model.transformer_blocks.2.attn1.to_k.weight"]
        t["action_head.extra_adapter.weight"] = torch.zeros(2)
        t["backbone.model.mlp1.3.weight"] = torch.zeros(3, 3)

    _rewrite(path, edit)
    msg = _error(_load, path)
    assert "1 missing key(s): action_head.model.transformer_blocks.2.attn1.to_k.weight" in msg
    assert "1 unexpected key(s): action_head.extra_adapter.weight" in msg
    assert "1 mis-shaped key(s): backbone.model.mlp1.3.weight [3, 3] != [64, 64]" in msg


def test_unused_keys_are_optional(copy_of, tiny: Path):
    path = copy_of(tiny)
    _rewrite(path, lambda t: [t.pop(k) for k in [k for k in t if k.startswith(UNUSED_KEY_PREFIXES)]])
    _, report = _load(path)
    assert report.ignored_unused == []


def test_truncated_shard(copy_of, sharded: Path):
    path = copy_of(sharded)
    shard = sorted(path.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert "truncated or corrupt" in _error(_load, path)


def test_index_naming_a_missing_shard(copy_of, sharded: Path):
    path = copy_of(sharded)
    sorted(path.glob("model-*.safetensors"))[-1].unlink()
    assert "missing" in _error(open_checkpoint, path)


def test_config_that_disagrees_with_the_weights(copy_of, tiny: Path):
    path = copy_of(tiny)
    cfg = json.loads((path / "config.json").read_text())
    cfg["diffusion_model_cfg"]["num_layers"] = 6
    (path / "config.json").write_text(json.dumps(cfg))
    msg = _error(_load, path)
    assert "missing key(s): action_head.model.transformer_blocks.4." in msg


def test_pickled_only_checkpoint(copy_of, tiny: Path):
    path = copy_of(tiny)
    (path / SINGLE_FILE).unlink()
    (path / "pytorch_model.bin").write_bytes(b"not read")
    assert "pickled" in _error(open_checkpoint, path)
