"""N1.6 end to end: a tiny generated checkpoint (real tokenizer, the golden processor files) loads strictly and the
reference policy turns the golden raw observation into actions, with the golden model inputs on the way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gr00t_export.errors import InputError
from gr00t_export.families.n1_6.policy import ReferencePolicy
from gr00t_export.families.n1_6.synthetic import make_checkpoint

VIDEO_KEY = "ego_view_bg_crop_pad_res256_freq20"
KEYS = ("left_arm", "right_arm", "left_hand", "right_hand", "waist")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    from conftest import _shared

    return dict(np.load(_shared("test_vectors") / "gr1_pickplace_ep1_step5_n16_processor.npz", allow_pickle=False))


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> ReferencePolicy:
    from conftest import _shared

    ckpt = make_checkpoint(tmp_path_factory.mktemp("n16") / "tiny", "n1.6-tiny", seed=1, show_progress=False,
                           eagle_path=_shared("eagle_block2a_2b_v2"),
                           processor_dir=_shared("test_vectors") / "n16_processor_files")
    return ReferencePolicy.from_checkpoint(ckpt, embodiment_tag="gr1")


def _obs(golden) -> dict:
    return {"video": {VIDEO_KEY: golden[f"obs.video.{VIDEO_KEY}"]},
            "state": {k: golden[f"obs.state.{k}"] for k in KEYS},
            "language": {"task": [[str(golden["obs.task"][0])]]}}


def test_model_inputs_are_the_golden_ones(policy: ReferencePolicy, golden):
    assert policy.model.cfg.image_token_index == 151669 and policy.model.cfg.text.vocab_size == 151680
    inputs = policy.transforms(_obs(golden))
    np.testing.assert_array_equal(inputs.input_ids.numpy(), golden["processed.input_ids"])
    np.testing.assert_array_equal(inputs.attention_mask.numpy(), golden["processed.attention_mask"])
    assert np.abs(inputs.pixel_values.numpy() - golden["processed.pixel_values"]).max() == 0.0
    assert np.abs(inputs.state.numpy() - golden["processed.state"]).max() <= 3e-8
    assert inputs.embodiment_id.tolist() == golden["processed.embodiment_id"].tolist() == [20]


def test_actions_from_the_golden_observation(policy: ReferencePolicy, golden):
    noise = np.random.default_rng(0).standard_normal((50, 128)).astype(np.float32)
    actions = policy.get_action(_obs(golden), noise=noise)
    assert {k: v.shape for k, v in actions.items()} == {"left_arm": (1, 16, 7), "right_arm": (1, 16, 7),
                                                        "left_hand": (1, 16, 6), "right_hand": (1, 16, 6),
                                                        "waist": (1, 16, 3)}
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in actions.values())
    again = policy.get_action(_obs(golden), noise=noise)
    assert all(np.array_equal(actions[k], again[k]) for k in actions)  # same noise, same actions
    other = policy.get_action(_obs(golden), noise=-noise)
    assert any(not np.array_equal(actions[k], other[k]) for k in KEYS[:4])
    # the decode stage of the policy is the golden one: decoding the golden chunk gives the golden actions
    inputs = policy.transforms(_obs(golden))
    decoded = policy.transforms.decoder.split(
        policy.transforms.decoder(torch.from_numpy(golden["decode.action_pred_normalized"]), inputs.raw_state))
    for key in KEYS:
        assert np.abs(decoded[key].numpy() - golden[f"decode.actions.{key}"]).max() == 0.0


def test_flat_observation_and_batch(policy: ReferencePolicy, golden):
    flat = {f"video.{VIDEO_KEY}": np.repeat(golden[f"obs.video.{VIDEO_KEY}"], 2, axis=0),
            **{f"state.{k}": np.repeat(golden[f"obs.state.{k}"], 2, axis=0) for k in KEYS},
            "task": np.array([str(golden["obs.task"][0]), "put the cup in the sink"])}
    noise = np.zeros((2, 50, 128), np.float32)
    actions = policy.get_action(flat, noise=noise)
    single = policy.get_action(_obs(golden), noise=noise[:1])
    assert actions["left_arm"].shape == (2, 16, 7)
    np.testing.assert_allclose(actions["left_arm"][:1], single["left_arm"], rtol=1e-5, atol=1e-5)


def test_bad_observations_are_one_line(policy: ReferencePolicy, golden):
    obs = _obs(golden)
    del obs["state"]["waist"]
    with pytest.raises(InputError, match="waist"):
        policy.get_action(obs)
    obs = _obs(golden)
    obs["video"][VIDEO_KEY] = obs["video"][VIDEO_KEY].astype(np.float32)
    with pytest.raises(InputError, match="uint8"):
        policy.get_action(obs)
    with pytest.raises(InputError, match="noise has shape"):
        policy.get_action(_obs(golden), noise=np.zeros((16, 32), np.float32))


def test_unknown_embodiment_is_one_line(policy: ReferencePolicy):
    from gr00t_export.families.n1_6.policy import Transforms

    t = policy.transforms
    statistics = {"gr1": None, "unitree_g1": None}
    with pytest.raises(InputError, match="no modality config for embodiment 'unitree_g1'"):
        Transforms(t.processor, statistics, {}, "unitree_g1", t.tokenizer, policy.model.cfg)
