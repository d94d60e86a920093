"""The N1.6 partition: every stage exports with the pipeline's own exporter and runs like its eager twin, the chained
stages reproduce the N1.6 reference policy (golden observation, batch 2 with left padding, two cameras of different
sizes), the tokenizer artifact is exact on NVIDIA's golden ids, and the denoising graph keeps each action-head weight
once with the timestep-only weights folded away.

A tiny generated checkpoint (real Eagle-Block2A-2B-v2 tokenizer, the golden processor files) stands in for the 3B."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from gr00t_export.errors import InputError
from gr00t_export.families.base import RawInputs
from gr00t_export.families.n1_6.partition import (
    action_key_dims,
    graph_spec_path,
    partition,
    stage_dims,
    tokens_per_image,
)
from gr00t_export.families.n1_6.policy import ReferencePolicy, Transforms
from gr00t_export.families.n1_6.processor_files import read_embodiment_ids, read_statistics
from gr00t_export.families.n1_6.synthetic import make_checkpoint
from gr00t_export.families.n1_6.tokenizer import N16Tokenizer
from gr00t_export.families.n1_6.tokenizer_script import ScriptableN16Tokenizer, check_against_python, export_tokenizer
from gr00t_export.pipeline.export import export_onnx, export_partition, export_torchscript, trace_feeds
from gr00t_export.runtime.runner import OnnxStageRunner, TorchStageRunner, run_pipeline
from gr00t_export.spec import GraphSpec, Partition, load_graph_spec

VIDEO_KEY = "ego_view_bg_crop_pad_res256_freq20"
KEYS = ("left_arm", "right_arm", "left_hand", "right_hand", "waist")
N15_SPEC = Path(__file__).resolve().parents[1] / "gr00t_export" / "families" / "n1_5" / "graph_spec.yaml"
VARYING = {"batch", "num_images", "seq_len"}
ONNX_TYPES = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64}
EXPORT_ATOL = 1e-4  # an fp32 artifact against its eager twin
PIPELINE_ATOL = 1e-5  # the chained stages (eager or exported) against the reference policy


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    from conftest import _shared

    return dict(np.load(_shared("test_vectors") / "gr1_pickplace_ep1_step5_n16_processor.npz", allow_pickle=False))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from conftest import _shared

    return make_checkpoint(tmp_path_factory.mktemp("n16part") / "tiny", "n1.6-tiny", seed=3, show_progress=False,
                           eagle_path=_shared("eagle_block2a_2b_v2"),
                           processor_dir=_shared("test_vectors") / "n16_processor_files")


@pytest.fixture(scope="module")
def policy(ckpt: Path) -> ReferencePolicy:
    return ReferencePolicy.from_checkpoint(ckpt, embodiment_tag="gr1")


@pytest.fixture(scope="module")
def part(policy: ReferencePolicy) -> Partition:
    return partition(policy.model, policy.transforms, "fp32")


def _obs(golden, instructions: list[str] | None = None) -> dict:
    instructions = instructions or [str(golden["obs.task"][0])]
    batch = len(instructions)
    return {"video": {VIDEO_KEY: np.repeat(golden[f"obs.video.{VIDEO_KEY}"], batch, axis=0)},
            "state": {k: np.repeat(golden[f"obs.state.{k}"], batch, axis=0) for k in KEYS},
            "language": {"task": [[s] for s in instructions]}}


def _raw(transforms: Transforms, obs: dict) -> RawInputs:
    """What the external inputs of the graph get: frames per camera, the raw state, the instructions."""
    frames = transforms.frames(obs)
    batch = frames[0].shape[0]
    state = transforms.state.concat({k: obs["state"][k] for k, _, _ in transforms.state.key_slices})
    external = {f"frames_{i}": f for i, f in enumerate(frames)}
    external |= {"raw_state": state, "instructions": transforms.instructions(obs, batch)}
    return RawInputs(external=external, batch=batch, batched=True)


def _noise(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((batch, 50, 128)).astype(np.float32))


def _eager(part: Partition) -> dict:
    return {s.name: TorchStageRunner(part.modules[s.name], s) for s in part.spec.stages}


def _artifacts(spec: GraphSpec, out: Path) -> dict:
    runners = {}
    for s in spec.stages:
        if s.format == "onnx":
            runners[s.name] = OnnxStageRunner(out / s.file, s, ["CPUExecutionProvider"])
        else:
            runners[s.name] = TorchStageRunner(torch.jit.load(str(out / s.file)), s)
    return runners


def _max_diff(got: dict[str, torch.Tensor], want: dict[str, np.ndarray]) -> float:
    assert set(got) == {f"action.{k}" for k in want}
    for key, value in want.items():
        assert tuple(got[f"action.{key}"].shape) == value.shape and got[f"action.{key}"].dtype == torch.float32
    return max(float(np.abs(got[f"action.{k}"].numpy() - v).max()) for k, v in want.items())


@pytest.fixture(scope="module")
def exported(part: Partition, policy: ReferencePolicy, golden, tmp_path_factory):
    """The build's export step on the golden observation: every stage written, optimised and checked."""
    out = tmp_path_factory.mktemp("n16export")
    results = export_partition(part, _raw(policy.transforms, _obs(golden)), _noise(1), out)
    return out, results


# --- the graph spec ------------------------------------------------------------------------------------------

def test_graph_spec_matches_n15_contract(policy: ReferencePolicy):
    spec = load_graph_spec(graph_spec_path())
    n15 = load_graph_spec(N15_SPEC)
    assert [(s.name, s.file, s.format) for s in spec.stages] == [(s.name, s.file, s.format) for s in n15.stages]
    assert spec.opset >= 19 and spec.max_views == 4
    post = spec.stage("postprocess")
    assert [(t.name, t.source) for t in post.inputs] == [("action_pred", "denoising_subgraph/action_pred"),
                                                         ("raw_state", "external")]
    externals = sorted({t.name for s in spec.stages for t in s.inputs if t.source == "external"})
    assert externals == ["frames_*", "init_actions", "instructions", "raw_state"]
    assert spec.edges()["eagle2_tokenizer/input_ids"] == ["llm/input_ids", "denoising_subgraph/input_ids"]
    # every producer exists and comes earlier; every fixed dim is resolved for this build
    produced: set[str] = set()
    dims = stage_dims(policy.model.cfg, policy.transforms)
    for stage in spec.stages:
        for t in stage.inputs:
            assert t.source == "external" or t.source in produced, (stage.name, t.name)
        produced |= {f"{stage.name}/{o}" for o in stage.output_names}
        for t in (*stage.inputs, *stage.outputs):
            for d in t.shape:
                assert isinstance(d, int) or d in VARYING | {"height", "width", "key_dim"} or d in dims, (t.name, d)
    assert dims == {"video_horizon": 1, "state_horizon": 1, "raw_state_dim": 29, "image_size": 252,
                    "image_tokens": 81, "backbone_dim": 64, "max_state_dim": 128, "max_action_dim": 128,
                    "action_horizon": 50, "embodiment_horizon": 16}
    two = spec.for_views(2).stage("preprocess_video")
    assert [(t.name, t.shape) for t in two.inputs] == [
        ("frames_0", ("batch", "video_horizon", "height_0", "width_0", 3)),
        ("frames_1", ("batch", "video_horizon", "height_1", "width_1", 3))]
    with pytest.raises(InputError, match="5 camera views"):
        spec.for_views(5)


def test_partition_refuses_bad_arguments(policy: ReferencePolicy):
    with pytest.raises(InputError, match="unknown precision 'fp8'"):
        partition(policy.model, policy.transforms, "fp8")


# --- each stage: artifact vs eager twin -------------------------------------------------------------------------

def test_every_stage_exports_and_matches_its_twin(exported, part: Partition, policy: ReferencePolicy, golden):
    out, results = exported
    assert [r.name for r in results] == [s.name for s in part.spec.stages]
    for r in results:
        assert r.passed and r.max_abs_diff <= EXPORT_ATOL, (r.name, r.max_abs_diff)
        assert (out / r.file).is_file()
        if r.format == "torchscript":
            assert r.max_abs_diff == 0.0, r.name  # the same TorchScript code runs on the same inputs
    # independently of the exporter's own check: the reloaded artifacts on what each stage receives
    twin_outputs: dict = {}
    feeds = trace_feeds(part, _raw(policy.transforms, _obs(golden)), _noise(1), outputs=twin_outputs)
    artifacts = _artifacts(part.spec, out)
    for stage in part.spec.stages:
        got = artifacts[stage.name].infer(feeds[stage.name])
        want = twin_outputs[stage.name]
        assert list(got) == list(want) == (list(want) if stage.name == "postprocess" else stage.output_names)
        for name, value in want.items():
            diff = (got[name].double() - value.double()).abs().max().item()
            assert got[name].shape == value.shape and diff <= EXPORT_ATOL, (stage.name, name, diff)
    assert list(twin_outputs["postprocess"]) == list(action_key_dims(policy.transforms.decoder))


def test_onnx_graphs_conform_to_the_spec(exported, part: Partition, policy: ReferencePolicy):
    out, _ = exported
    dims = stage_dims(policy.model.cfg, policy.transforms)
    counts = {}
    for stage in (s for s in part.spec.stages if s.format == "onnx"):
        onnx.checker.check_model(str(out / stage.file), full_check=True)
        model = onnx.load(str(out / stage.file))
        assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == part.spec.opset
        counts[stage.name] = len(model.graph.node)
        for values, tensors in ((model.graph.input, stage.inputs), (model.graph.output, stage.outputs)):
            assert [v.name for v in values] == [t.name for t in tensors], stage.name
            for v, t in zip(values, tensors, strict=True):
                want_type = "float32" if t.dtype == "float" else t.dtype
                assert v.type.tensor_type.elem_type == ONNX_TYPES[want_type], (stage.name, t.name)
                for d, want in zip(v.type.tensor_type.shape.dim, t.shape, strict=True):
                    if want in VARYING:
                        assert d.dim_param == want, (stage.name, t.name, d)
                    else:
                        assert d.dim_value == (want if isinstance(want, int) else dims[want]), (stage.name, t.name)
        assert not any(n.op_type in ("Loop", "If", "Scan") for n in model.graph.node), stage.name  # unrolled
    print(f"\nN1.6 tiny ONNX node counts: {counts}")


# --- the chained stages against the reference policy -------------------------------------------------------------

def test_eager_stages_reproduce_the_reference_policy(part: Partition, policy: ReferencePolicy, golden):
    obs = _obs(golden)
    want = policy.get_action(obs, noise=_noise(1).numpy())
    got = run_pipeline(part.spec, _eager(part), _raw(policy.transforms, obs), _noise(1))
    assert _max_diff(got, want) <= PIPELINE_ATOL
    # the stages see NVIDIA's golden model inputs
    trace: dict = {}
    run_pipeline(part.spec, _eager(part), _raw(policy.transforms, obs), _noise(1), trace)
    np.testing.assert_array_equal(trace["llm"]["input_ids"].numpy(), golden["processed.input_ids"])
    np.testing.assert_array_equal(trace["llm"]["attention_mask"].numpy(), golden["processed.attention_mask"])
    np.testing.assert_array_equal(trace["vit"]["pixel_values"].numpy(), golden["processed.pixel_values"])
    assert np.abs(trace["denoising_subgraph"]["state"].numpy() - golden["processed.state"]).max() <= 3e-8
    assert trace["denoising_subgraph"]["embodiment_id"].tolist() == [20]


def test_exported_stages_reproduce_the_reference_policy(exported, part: Partition, policy: ReferencePolicy, golden):
    out, _ = exported
    obs = _obs(golden)
    want = policy.get_action(obs, noise=_noise(1).numpy())
    got = run_pipeline(part.spec, _artifacts(part.spec, out), _raw(policy.transforms, obs), _noise(1))
    diff = _max_diff(got, want)
    print(f"\nexported N1.6 pipeline vs reference, golden observation: max |diff| {diff:.2e}")
    assert diff <= PIPELINE_ATOL


def test_batch_of_two_prompts_of_different_lengths(exported, part: Partition, policy: ReferencePolicy, golden):
    """Left padding reaches the LLM's causal mask and both DiT key masks; the batch-1 export takes batch 2."""
    out, _ = exported
    obs = _obs(golden, ["Pick the sweet potato, then place it on the plate!", "go"])
    obs["state"]["left_arm"] = obs["state"]["left_arm"] + np.array([0.0, 0.1], np.float32)[:, None, None]
    noise = _noise(2, seed=5)
    want = policy.get_action(obs, noise=noise.numpy())
    raw = _raw(policy.transforms, obs)
    trace: dict = {}
    got = run_pipeline(part.spec, _eager(part), raw, noise, trace)
    mask = trace["llm"]["attention_mask"]
    assert mask.shape[0] == 2 and mask[0].all() and not mask[1].all() and mask[1, -1] == 1 and mask[1, 0] == 0
    assert _max_diff(got, want) <= PIPELINE_ATOL
    assert not np.allclose(want["left_arm"][0], want["left_arm"][1])  # two different samples
    second = {"video": {VIDEO_KEY: obs["video"][VIDEO_KEY][1:]}, "state": {k: v[1:] for k, v in obs["state"].items()},
              "language": {"task": [["go"]]}}
    single = policy.get_action(second, noise=noise[1:].numpy())
    assert max(np.abs(want[k][1:] - single[k]).max() for k in KEYS) <= PIPELINE_ATOL  # padding changes nothing
    exported_got = run_pipeline(part.spec, _artifacts(part.spec, out), raw, noise)
    diff = _max_diff(exported_got, want)
    print(f"\nexported N1.6 pipeline vs reference, batch 2: max |diff| {diff:.2e}")
    assert diff <= PIPELINE_ATOL


def test_two_cameras_of_different_sizes(exported, policy: ReferencePolicy, ckpt: Path, golden, tmp_path: Path):
    """A second camera at 180 x 320: each is letterboxed and resized on its own, the prompt holds two image blocks,
    and the ONNX graphs exported for one camera take the doubled image count and longer prompt."""
    out, _ = exported
    t = policy.transforms
    gr1 = t.processor.embodiment("gr1")
    two = dataclasses.replace(gr1, video=dataclasses.replace(gr1.video, modality_keys=(VIDEO_KEY, "wrist")))
    processor = dataclasses.replace(t.processor, modality_configs={**t.processor.modality_configs, "gr1": two})
    transforms = Transforms(processor, read_statistics(ckpt / "statistics.json"),
                            read_embodiment_ids(ckpt / "embodiment_id.json"), "gr1", t.tokenizer, policy.model.cfg)
    reference = ReferencePolicy(policy.model, transforms)
    obs = _obs(golden, ["pick the sweet potato", "put the cup in the sink and stop"])
    wrist = np.random.default_rng(1).integers(0, 256, (2, 1, 180, 320, 3), dtype=np.uint8)
    obs["video"]["wrist"] = wrist
    noise = _noise(2, seed=7)
    want = reference.get_action(obs, noise=noise.numpy())

    part2 = partition(policy.model, transforms, "fp32")
    assert part2.views == 2 and part2.spec.stage("preprocess_video").input_names == ["frames_0", "frames_1"]
    assert tokens_per_image(policy.model.cfg, transforms) == [81, 81]
    raw = _raw(transforms, obs)
    trace: dict = {}
    got = run_pipeline(part2.spec, _eager(part2), raw, noise, trace)
    assert trace["vit"]["pixel_values"].shape == (4, 3, 252, 252)  # (batch, view) order
    assert (trace["llm"]["input_ids"] == policy.model.cfg.image_token_index).sum(1).tolist() == [162, 162]
    assert _max_diff(got, want) <= PIPELINE_ATOL

    # the camera-count-specific stages exported for 2 views; vit / llm / denoising / postprocess from the 1-view build
    for name in ("preprocess_video", "eagle2_tokenizer"):
        stage = part2.spec.stage(name)
        export_torchscript(part2.modules[name], stage, trace[name], tmp_path / stage.file)
    runners = _artifacts(part2.spec, out)
    runners |= {name: TorchStageRunner(torch.jit.load(str(tmp_path / part2.spec.stage(name).file)),
                                       part2.spec.stage(name)) for name in ("preprocess_video", "eagle2_tokenizer")}
    diff = _max_diff(run_pipeline(part2.spec, runners, raw, noise), want)
    print(f"\nexported N1.6 pipeline vs reference, 2 cameras (256 x 256, 180 x 320), batch 2: max |diff| {diff:.2e}")
    assert diff <= PIPELINE_ATOL


# --- the tokenizer artifact -------------------------------------------------------------------------------------

def _instructions(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    pieces = ["pick", "Place", "the", "RED", "cube", "it's", "don't", "2", "42", "x_1", "_", "-", ",", ".", "!", "?",
              "(left)", "#3", "@", "'", '"', "\\", "<img>", "</img>", "<IMG_CONTEXT>", "<|im_end|>", "<image 1>",
              " ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x7f", "\x00"]
    return ["".join(rng.choice(pieces) + (" " if rng.random() < 0.5 else "") for _ in range(rng.integers(0, 14)))
            for _ in range(n)]


def test_tokenizer_artifact_is_exact(exported, policy: ReferencePolicy, golden, tmp_path: Path):
    out, _ = exported
    artifact = torch.jit.load(str(out / "preprocess" / "eagle2_tokenizer.pt"))
    ids, mask = artifact([str(golden["obs.task"][0])])
    np.testing.assert_array_equal(ids.numpy(), golden["processed.input_ids"])
    np.testing.assert_array_equal(mask.numpy(), golden["processed.attention_mask"])
    assert ids.dtype == mask.dtype == torch.int64 and artifact.tokens_per_image == [81]
    # formalisation: case and punctuation do not change the ids
    assert torch.equal(artifact(["PICK the Sweet-Potato... from the counter; and place it in the plate!!"])[0],
                       artifact(["pick the sweetpotato from the counter and place it in the plate"])[0])
    tokenizer = policy.transforms.tokenizer
    instructions = _instructions(300, seed=1) + ["", "   ", "Don't!", "end_of_task_2"]
    got_ids, got_mask = artifact(instructions)
    want_ids, want_mask = tokenizer.encode(instructions, [81])
    np.testing.assert_array_equal(got_ids.numpy(), want_ids)
    np.testing.assert_array_equal(got_mask.numpy(), want_mask)
    check_against_python(artifact, tokenizer)  # the export's own self-check passes on the artifact too
    # two views: 2 x 81 image tokens, still exact
    two = torch.jit.load(str(export_tokenizer(tokenizer, [81, 81], tmp_path / "two.pt")))
    want_ids, want_mask = tokenizer.encode(instructions[:60], [81, 81])
    np.testing.assert_array_equal(two(instructions[:60])[0].numpy(), want_ids)
    np.testing.assert_array_equal(two(instructions[:60])[1].numpy(), want_mask)
    # a processor with formalize_language false: the instruction goes in as it is
    raw_tokenizer = N16Tokenizer(tokenizer.eagle, formalize=False)
    verbatim = torch.jit.script(ScriptableN16Tokenizer(raw_tokenizer, [81]))
    check_against_python(verbatim, raw_tokenizer, instructions[:80])
    assert not torch.equal(verbatim(["Pick it!"])[0], artifact(["Pick it!"])[0])


def test_tokenizer_artifact_matches_transformers(exported, policy: ReferencePolicy):
    """transformers' own Qwen2 tokenizer on the same real files, on the formalised prompts: the test-only oracle."""
    transformers = pytest.importorskip("transformers")
    from conftest import _shared

    from gr00t_export.families.n1_6.tokenizer import build_prompt

    hf = transformers.Qwen2TokenizerFast.from_pretrained(str(_shared("eagle_block2a_2b_v2")))
    out, _ = exported
    artifact = torch.jit.load(str(out / "preprocess" / "eagle2_tokenizer.pt"))
    instructions = _instructions(200, seed=2)
    ids, mask = artifact(instructions)
    oracle = hf([build_prompt(s, [81]) for s in instructions], add_special_tokens=False)["input_ids"]
    assert [row[m == 1].tolist() for row, m in zip(ids, mask, strict=True)] == oracle


def test_tokenizer_refuses_non_ascii_and_bad_counts(exported, policy: ReferencePolicy):
    out, _ = exported
    artifact = torch.jit.load(str(out / "preprocess" / "eagle2_tokenizer.pt"))
    with pytest.raises(torch.jit.Error, match="instruction 1 has the non-ASCII character U\\+00E9 at character 3"):
        artifact(["fine", "caf\u00e9"])
    with pytest.raises(torch.jit.Error, match="non-empty list"):
        artifact([])
    with pytest.raises(InputError, match="tokens_per_image"):
        ScriptableN16Tokenizer(policy.transforms.tokenizer, [81, 0])


# --- TorchScript stages without the package ----------------------------------------------------------------------

_FRESH = r"""
import sys, torch
jobs = torch.load(sys.argv[1])
out = {}
for key, (path, args) in jobs.items():
    with torch.no_grad():
        out[key] = torch.jit.load(path)(*args)
torch.save(out, sys.argv[2])
leaked = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] == "gr00t_export")
assert not leaked, leaked
"""


def test_torchscript_stages_run_without_the_package(exported, part: Partition, policy: ReferencePolicy, golden,
                                                    tmp_path: Path):
    out, _ = exported
    twin_outputs: dict = {}
    feeds = trace_feeds(part, _raw(policy.transforms, _obs(golden)), _noise(1), outputs=twin_outputs)
    stages = [s for s in part.spec.stages if s.format == "torchscript"]
    jobs = {s.name: (str(out / s.file), [feeds[s.name][n] for n in s.input_names]) for s in stages}
    torch.save(jobs, tmp_path / "jobs.pt")
    code = "import sys; sys.modules['gr00t_export'] = None\n" + _FRESH
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "jobs.pt"), str(tmp_path / "out.pt")],
                            capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    got = torch.load(tmp_path / "out.pt")
    for s in stages:
        values = got[s.name]
        values = values if isinstance(values, dict) else dict(zip(s.output_names, values if isinstance(
            values, tuple) else (values,), strict=True))
        for name, want in twin_outputs[s.name].items():
            assert torch.equal(values[name], want), (s.name, name)


# --- weights in the denoising graph --------------------------------------------------------------------------------

def _used_action_head_params(policy: ReferencePolicy) -> dict[str, torch.Tensor]:
    """Parameters of `action_head` that reach `get_action`'s output (their gradient is not None)."""
    head, cfg = policy.model.action_head, policy.model.cfg.action_head
    params = dict(head.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    length = 12
    image_mask = torch.zeros(1, length, dtype=torch.bool)
    image_mask[0, 3:8] = True
    try:
        with torch.enable_grad():
            out = head.get_action(torch.randn(1, length, cfg.backbone_embedding_dim), torch.ones(1, length),
                                  image_mask, torch.randn(1, 1, cfg.max_state_dim), torch.tensor([20]),
                                  torch.randn(1, cfg.action_horizon, cfg.max_action_dim))
            out.sum().backward()
        return {n: p.detach().clone() for n, p in params.items() if p.grad is not None}
    finally:
        for p in params.values():
            p.requires_grad_(False)
            p.grad = None


def _stored_arrays(path: Path) -> dict[str, np.ndarray]:
    graph = onnx.load(str(path))
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    return arrays | {n.output[0]: numpy_helper.to_array(a.t) for n in graph.graph.node if n.op_type == "Constant"
                     for a in n.attribute if a.name == "value"}


def _holds(arrays: dict[str, np.ndarray], w: np.ndarray) -> list[str]:
    """Names of the stored arrays equal to `w` or its transpose."""
    forms = {(w.shape, w.tobytes())}
    if w.ndim == 2:
        forms.add((w.T.shape, np.ascontiguousarray(w.T).tobytes()))
    return [n for n, a in arrays.items() if a.dtype == w.dtype and (a.shape, a.tobytes()) in forms]


def test_denoising_graph_stores_action_head_weights_once(exported, policy: ReferencePolicy, part: Partition, golden,
                                                         tmp_path: Path):
    out, _ = exported
    used = _used_action_head_params(policy)
    assert len(used) == len(dict(policy.model.action_head.named_parameters()))  # every weight reaches the output
    # weights that only ever meet the fixed Euler timesteps fold into per-step constants: none may remain
    timestep_only = {n for n in used if re.match(r"model\.(timestep_encoder|transformer_blocks\.\d+\.norm1\.linear|"
                                                 r"proj_out_1)\.", n)}
    assert len(timestep_only) == 4 + 2 * 4 + 2  # 2 linears of the timestep MLP, each block's AdaLN, the output AdaLN
    folded = {n: used.pop(n) for n in sorted(timestep_only)}
    horizon = policy.model.cfg.action_head.action_horizon
    used["position_embedding.weight"] = used["position_embedding.weight"][:horizon]  # only the action tokens' rows
    weight_bytes = sum(p.numel() * 4 for p in used.values())

    path = out / "action_head" / "denoising_subgraph.onnx"
    arrays = _stored_arrays(path)
    init_bytes = sum(a.nbytes for a in arrays.values())
    print(f"\ndenoising_subgraph.onnx: {path.stat().st_size} B, {init_bytes} B of constants for {weight_bytes} B of "
          f"action-head weights ({init_bytes / weight_bytes:.3f}x)")
    assert init_bytes <= 1.1 * weight_bytes  # the per-step AdaLN constants are the only extra
    seen: dict[tuple, str] = {}
    for name, a in arrays.items():
        key = (a.dtype.str, a.shape, a.tobytes())
        assert a.size < 2 or key not in seen, f"{name} is a copy of {seen.get(key)}"
        seen[key] = name
    found = 0
    for name, p in used.items():
        copies = _holds(arrays, p.numpy())
        assert len(copies) <= 1, f"{name} is stored {len(copies)} times: {copies}"
        found += p.numpy().nbytes if copies else 0
    assert found >= 0.95 * weight_bytes, (found, weight_bytes)  # the rest verbatim (or transposed), each once
    # the timestep-only weights are gone from the artifact, and already from the exporter's raw graph: the stage
    # holds the modulation table as a constant, so no optimiser pass is needed (big graphs skip onnxslim)
    stage = part.spec.stage("denoising_subgraph")
    feeds = trace_feeds(part, _raw(policy.transforms, _obs(golden)), _noise(1))["denoising_subgraph"]
    export_onnx(part.modules["denoising_subgraph"], stage, feeds, tmp_path / "raw.onnx", part.spec.opset)
    raw_arrays = _stored_arrays(tmp_path / "raw.onnx")
    for name, p in folded.items():
        assert not _holds(arrays, p.numpy()) and not _holds(raw_arrays, p.numpy()), f"{name} is still in the graph"
    assert not {n.op_type for n in onnx.load(str(tmp_path / "raw.onnx")).graph.node} & {"Gemm", "Sin", "Cos"}
    # four unrolled steps: one LayerNormalization per block and step, the output norm per step, and vlln
    norms = sum(n.op_type == "LayerNormalization" for n in onnx.load(str(path)).graph.node)
    dit = policy.model.cfg.action_head.diffusion_model
    assert norms == 4 * (2 * dit.num_layers + 1) + 1

