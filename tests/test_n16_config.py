"""N1.6 family: config presets and readers, processor-file readers, the full-size parameter count (meta device)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gr00t_export.errors import InputError
from gr00t_export.families.n1_6.config import (
    CHECKPOINT_DEFAULTS,
    checkpoint_config_dict,
    eagle_config_dict,
    preset,
    read_config,
)
from gr00t_export.families.n1_6.load import build_on_meta
from gr00t_export.families.n1_6.model import unused_key_shapes
from gr00t_export.families.n1_6.processor_files import (
    N16_EMBODIMENT_TABLE,
    embodiment_id,
    processor_config_dict,
    read_embodiment_ids,
    read_processor_config,
    read_statistics,
    statistics_dict,
)

RELEASE_PARAMETERS = 3_286_608_832  # nvidia/GR00T-N1.6-3B: 6.57 GB of bf16, lm_head and pooling head included
RELEASE_TENSORS = 1106
DIT_PARAMETERS = 1_091_722_240


def _one_line(fn, *args) -> str:
    with pytest.raises(InputError) as info:
        fn(*args)
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def eagle_cfg(tmp_path: Path) -> Path:
    return _write(tmp_path / "eagle.json", eagle_config_dict(preset("n1.6-3b")))


def test_3b_preset_has_the_release_parameter_count_on_meta():
    cfg = preset("n1.6-3b")
    model = build_on_meta(cfg)
    state = model.state_dict()
    assert all(t.device.type == "meta" for t in state.values())  # nothing allocated
    unused = unused_key_shapes(cfg)
    total = sum(t.numel() for t in state.values()) + sum(int(np.prod(s)) for s in unused.values())
    assert total == RELEASE_PARAMETERS
    assert len(state) + len(unused) == RELEASE_TENSORS
    assert sum(t.numel() for k, t in state.items() if k.startswith("action_head.model.")) == DIT_PARAMETERS
    # spot-check the facts' shapes, including the alternating cross-attention widths
    assert state["backbone.model.vision_model.vision_model.embeddings.patch_embedding.weight"].shape == (1152, 588)
    assert state["backbone.model.mlp1.1.weight"].shape == (2048, 4608)
    assert len({k.split(".")[5] for k in state if k.startswith("backbone.model.language_model.model.layers.")}) == 16
    assert state["action_head.model.transformer_blocks.30.attn1.to_k.weight"].shape == (1536, 2048)
    assert state["action_head.model.transformer_blocks.31.attn1.to_k.weight"].shape == (1536, 1536)
    assert state["action_head.action_encoder.W2.W"].shape == (32, 3072, 1536)
    assert state["action_head.position_embedding.weight"].shape == (1024, 1536)


def test_tiny_preset_keeps_the_real_token_layout():
    cfg = preset("n1.6-tiny")
    assert cfg.tokens_per_image() == 81 and cfg.image_size == 252
    assert cfg.action_head.action_horizon == 50 and cfg.action_head.max_action_dim == 128
    dit = cfg.action_head.diffusion_model
    assert [dit.is_cross_attention(i) for i in range(4)] == [True, False, True, False]
    assert [dit.attends_text(i) for i in (0, 2)] == [True, False]
    model = build_on_meta(cfg)
    assert sum(t.numel() for t in model.parameters()) < 12_000_000


def test_config_roundtrip_through_both_json_files(tmp_path: Path):
    cfg = preset("n1.6-tiny")
    got = read_config(_write(tmp_path / "config.json", checkpoint_config_dict(cfg)),
                      _write(tmp_path / "eagle.json", eagle_config_dict(cfg)))
    assert got.action_head == cfg.action_head and got.vision == cfg.vision and got.text == cfg.text
    assert got.select_layer == cfg.select_layer and got.image_token_index == cfg.image_token_index


def test_real_eagle_config_reads_as_the_3b_backbone(tmp_path: Path):
    from conftest import SHARED_DATA

    real = SHARED_DATA / "eagle_block2a_2b_v2" / "config.json"
    if not real.is_file():
        pytest.skip(f"real Eagle-Block2A-2B-v2 config not found at {real}")
    cfg = read_config(_write(tmp_path / "config.json", checkpoint_config_dict(preset("n1.6-3b"))), real)
    want = preset("n1.6-3b")
    assert cfg.vision == want.vision and cfg.text == want.text and cfg.image_token_index == 151669


def test_missing_keys_fall_back_to_nvidia_class_defaults(tmp_path: Path, eagle_cfg: Path):
    cfg = read_config(_write(tmp_path / "config.json", {"model_type": "Gr00tN1d6"}), eagle_cfg)
    ah = cfg.action_head
    # the class defaults, not the released 3B values (128 / 128 / 50)
    assert (ah.max_state_dim, ah.max_action_dim, ah.action_horizon) == (29, 29, 16)
    assert cfg.select_layer == CHECKPOINT_DEFAULTS["select_layer"] == 16
    assert ah.diffusion_model.num_layers == 32 and ah.timestep_buckets() == [0, 250, 500, 750]


@pytest.mark.parametrize("top, fragment", [
    ({"model_type": "gr00t_n1_5"}, "not 'Gr00tN1d6'"),
    ({"model_type": "Gr00tN1d6", "use_alternate_vl_dit": False}, "use_alternate_vl_dit"),
    ({"model_type": "Gr00tN1d6", "max_state_dim": "128"}, "max_state_dim must be int"),
    ({"model_type": "Gr00tN1d6", "hidden_size": 512}, "DiT output_dim 1024 != hidden_size 512"),
])
def test_bad_checkpoint_config_is_one_line(tmp_path: Path, eagle_cfg: Path, top: dict, fragment: str):
    msg = _one_line(read_config, _write(tmp_path / "config.json", top), eagle_cfg)
    assert fragment in msg


def test_n15_eagle_dir_is_refused(tmp_path: Path):
    from gr00t_export.families.n1_5.config import Gr00tConfig
    from gr00t_export.families.n1_5.config import eagle_config_dict as n15_eagle

    msg = _one_line(read_config, _write(tmp_path / "config.json", {"model_type": "Gr00tN1d6"}),
                    _write(tmp_path / "eagle.json", n15_eagle(Gr00tConfig())))
    assert "eagle_2_5_vl" in msg and "Eagle-Block2A-2B-v2" in msg


def test_rope_vision_config_is_refused(tmp_path: Path):
    eagle = eagle_config_dict(preset("n1.6-3b"))
    eagle["vision_config"]["use_rope"] = True
    msg = _one_line(read_config, _write(tmp_path / "config.json", {"model_type": "Gr00tN1d6"}),
                    _write(tmp_path / "eagle.json", eagle))
    assert "RoPE" in msg


# --- processor files ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def processor_files() -> Path:
    from conftest import _shared

    return _shared("test_vectors") / "n16_processor_files"


def test_real_processor_config_reads_typed(processor_files: Path, tmp_path: Path):
    cfg = read_processor_config(processor_files / "processor_config.json")
    gr1 = cfg.embodiment("gr1")
    assert gr1.video.modality_keys == ("ego_view_bg_crop_pad_res256_freq20",)
    assert gr1.state.sin_cos_embedding_keys == ("left_arm", "right_arm", "left_hand", "right_hand", "waist")
    assert gr1.action_horizon == 16
    assert [gr1.action_config(k).rep for k in gr1.action.modality_keys] == ["RELATIVE"] * 4 + ["ABSOLUTE"]
    assert (cfg.max_state_dim, cfg.max_action_dim, cfg.max_action_horizon) == (128, 128, 50)
    assert cfg.apply_sincos_state_encoding and cfg.use_relative_action and not cfg.use_percentiles
    assert (cfg.shortest_image_edge, cfg.crop_fraction) == (256, 0.95)
    # writing it back gives the same typed object
    again = processor_config_dict(cfg)
    assert read_processor_config(_write(tmp_path / "processor_config.json", again)) == cfg
    with pytest.raises(InputError, match="no modality config for embodiment 'unitree_g1'"):
        cfg.embodiment("unitree_g1")


def test_real_statistics_read_with_per_step_relative_stats(processor_files: Path):
    stats = read_statistics(processor_files / "statistics.json")["gr1"]
    assert {k: s.dim for k, s in stats.state.items()} == {"left_arm": 7, "right_arm": 7, "left_hand": 6,
                                                           "right_hand": 6, "waist": 3}
    assert stats.relative_action["left_arm"].min.shape == (16, 7)
    assert set(stats.relative_action) == {"left_arm", "right_arm", "left_hand", "right_hand"}
    back = statistics_dict({"gr1": stats})["gr1"]
    assert np.allclose(back["relative_action"]["right_hand"]["max"], stats.relative_action["right_hand"].max)


def test_statistics_with_wrong_shapes_is_one_line(tmp_path: Path):
    bad = {"gr1": {"state": {"left_arm": {"min": [0, 1], "max": [1], "mean": [0], "std": [1], "q01": [0],
                                          "q99": [1]}}}}
    assert "left_arm" in _one_line(read_statistics, _write(tmp_path / "statistics.json", bad))


def test_embodiment_table_is_n16s(processor_files: Path, tmp_path: Path):
    ids = read_embodiment_ids(processor_files / "embodiment_id.json")
    assert ids["gr1"] == 20 and ids["new_embodiment"] == 10 and ids == N16_EMBODIMENT_TABLE
    # a partial file keeps its own rows and gets the missing tags from NVIDIA's table
    partial = read_embodiment_ids(_write(tmp_path / "embodiment_id.json", {"my_robot": 30, "gr1": 21}))
    assert partial["my_robot"] == 30 and partial["gr1"] == 21 and partial["unitree_g1"] == 8
    assert "gr2" in _one_line(embodiment_id, ids, "gr2", 32)
    assert "max_num_embodiments" in _one_line(embodiment_id, {"big": 40}, "big", 32)
