"""`gr00t-export build` end to end on the tiny preset: exported policy vs the PyTorch reference (fp32, fp16,
batch 2 with left padding, 2 views), each stage alone vs its twin, the ONNX interface vs the graph spec,
TorchScript in a fresh process, golden preprocessing, weight sharing, manifest and the CLI's robustness.

Builds are shared per module (one real-tokenizer checkpoint built in fp32 and fp16, one 2-view build) so
the whole file stays within a few minutes on two cores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from helpers import save_modality_config
from onnx import numpy_helper
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from gr00t_export.cli import app
from gr00t_export.data.lerobot import LeRobotDataset
from gr00t_export.data.synthetic import make_dataset
from gr00t_export.errors import ValidationFailure
from gr00t_export.families import open_reference
from gr00t_export.families.n1_5.checkpoint import load_model, open_checkpoint
from gr00t_export.families.n1_5.embodiments import ModalityConfig, load_modality_config, modality_config_to_dict
from gr00t_export.families.n1_5.partition import graph_spec_path, partition
from gr00t_export.families.n1_5.policy import ReferencePolicy
from gr00t_export.families.n1_5.preprocess.video import VideoPreprocessor
from gr00t_export.families.n1_5.synthetic import make_checkpoint
from gr00t_export.pipeline.build import BuildOptions, BuildResult, build
from gr00t_export.pipeline.export import trace_feeds
from gr00t_export.runtime.runner import ExportedGr00tRunner, TorchStageRunner
from gr00t_export.spec import PRECISIONS, load_graph_spec

ARMS_ONLY = "fourier_gr1_arms_only"
TASK_KEY = "annotation.human.action.task_description"
ACTION_SHAPES = {"action.left_arm": (16, 7), "action.right_arm": (16, 7), "action.left_hand": (16, 6),
                 "action.right_hand": (16, 6)}
VARYING = ("batch", "num_images", "seq_len")  # the spec's run-time dims; the rest are fixed per build
ONNX_TYPES = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16,
              "int64": onnx.TensorProto.INT64, "uint8": onnx.TensorProto.UINT8, "float64": onnx.TensorProto.DOUBLE}
TOL = {"fp32": {"rtol": 0.0, "atol": 1e-4}, "fp16": {"rtol": 1e-2, "atol": 1e-2}}
BUILD_SECONDS: dict[str, float] = {}
BUILD_RESULTS: dict[str, tuple[BuildResult, float]] = {}  # in-process builds: result, wall time measured outside

cli = CliRunner()


def _noise(seed: int, shape: tuple[int, ...] = (16, 32)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _stack(*observations: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.stack([o[k] for o in observations]) for k in observations[0]}


def _spec_dtype(dtype: str, precision: str) -> str:
    return str(PRECISIONS[precision]).removeprefix("torch.") if dtype == "float" else dtype


def _assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], rtol: float, atol: float, what: str):
    assert set(got) == set(want), what
    for key in want:
        assert got[key].shape == want[key].shape, (what, key)
        assert np.isfinite(got[key]).all(), (what, key)
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=atol, err_msg=f"{what} {key}")


def _timed_build(opts: BuildOptions) -> Path:
    start = time.perf_counter()
    result = build(opts)
    name = f"{opts.model_path.name}/{opts.precision}" + ("" if opts.onnx_ops == "standard" else f"/{opts.onnx_ops}")
    BUILD_SECONDS[name] = time.perf_counter() - start
    BUILD_RESULTS[name] = (result, BUILD_SECONDS[name])
    return opts.output


def _error_line(result) -> str:
    """The CLI's whole stderr must be one `error:` line, with no traceback anywhere."""
    assert "Traceback" not in result.output + result.stderr, result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def _tmp_siblings(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.tmp-*"))


# ------------------------------------------------------------------------------ shared builds


@pytest.fixture(scope="module")
def cfg() -> ModalityConfig:
    return load_modality_config(ARMS_ONLY)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("build")


@pytest.fixture(scope="module")
def ckpt(root: Path, pick_n_place: Path, real_eagle_dir: Path) -> Path:
    """Real Qwen3/Eagle tokenizer (golden ids) and PickNPlace statistics, tiny random weights."""
    return make_checkpoint(root / "ckpt", "tiny", seed=0, eagle_path=real_eagle_dir, dataset_path=pick_n_place,
                           show_progress=False)


@pytest.fixture(scope="module")
def builds(root: Path, ckpt: Path, pick_n_place: Path) -> dict[str, Path]:
    return {p: _timed_build(BuildOptions(model_path=ckpt, output=root / f"out_{p}", precision=p,
                                         modality_config=ARMS_ONLY, dataset_path=pick_n_place))
            for p in ("fp32", "fp16")}


@pytest.fixture(scope="module")
def runners(builds: dict[str, Path]) -> dict[str, ExportedGr00tRunner]:
    return {p: ExportedGr00tRunner(path) for p, path in builds.items()}


@pytest.fixture(scope="module")
def reference(ckpt: Path) -> ReferencePolicy:
    return open_reference(ckpt, modality_config=ARMS_ONLY)


@pytest.fixture(scope="module")
def real_obs(pick_n_place: Path, cfg: ModalityConfig) -> dict[str, dict[str, np.ndarray]]:
    ds = LeRobotDataset(pick_n_place)
    # e0 is the "pear" task, e1 "sweet potato": their prompts differ in length, so a batch is left-padded
    return {"e0s40": ds.observation(0, 40, cfg), "e1s5": ds.observation(1, 5, cfg),
            "e2s100": ds.observation(2, 100, cfg)}


@pytest.fixture(scope="module")
def traces(reference: ReferencePolicy, ckpt: Path, real_obs) -> dict[str, tuple]:
    """Per precision: the eager partition and the feeds each stage receives when the twins run a real batch of 2."""
    raw = reference.transforms.reader(_stack(real_obs["e2s100"], real_obs["e1s5"]))
    init = torch.from_numpy(_noise(7, (2, 16, 32)))
    out = {}
    for precision in ("fp32", "fp16"):
        model = reference.model if precision == "fp32" else load_model(open_checkpoint(ckpt), torch.float16)[0]
        part = partition(model, reference.transforms, precision)
        out[precision] = (part, trace_feeds(part, raw, init))
    return out


# ------------------------------------------------------------------------------ exported policy vs reference


def test_fp32_matches_reference_on_real_steps(runners, reference: ReferencePolicy, real_obs):
    for i, name in enumerate(("e0s40", "e1s5", "e2s100")):
        want = reference.get_action(real_obs[name], noise=_noise(i))
        got = runners["fp32"].get_action(real_obs[name], noise=_noise(i))
        assert {k: v.shape for k, v in got.items()} == ACTION_SHAPES
        _assert_close(got, want, **TOL["fp32"], what=name)
    # the noise reaches the exported sampler: other noise, other actions
    other = runners["fp32"].get_action(real_obs["e0s40"], noise=_noise(99))
    assert not np.allclose(other["action.right_arm"], reference.get_action(real_obs["e0s40"],
                                                                           noise=_noise(0))["action.right_arm"])


def test_fp32_batch_of_two_with_left_padding(runners, reference: ReferencePolicy, real_obs):
    batch = _stack(real_obs["e0s40"], real_obs["e1s5"])
    mask = reference.transforms(batch).attention_mask
    lengths = mask.sum(1).tolist()
    assert lengths[0] < lengths[1] == mask.shape[1] and not bool(mask[0, 0])  # sample 0 is left-padded
    noise = np.stack([_noise(10), _noise(11)])
    got, want = runners["fp32"].get_action(batch, noise=noise), reference.get_action(batch, noise=noise)
    assert {k: v.shape for k, v in got.items()} == {k: (2, *s) for k, s in ACTION_SHAPES.items()}
    _assert_close(got, want, **TOL["fp32"], what="batch 2")
    assert not np.allclose(got["action.left_arm"][0], got["action.left_arm"][1])


def test_fp16_close_to_fp32_reference(runners, reference: ReferencePolicy, real_obs):
    for i, name in enumerate(("e0s40", "e2s100")):
        want = reference.get_action(real_obs[name], noise=_noise(i))
        _assert_close(runners["fp16"].get_action(real_obs[name], noise=_noise(i)), want, **TOL["fp16"], what=name)
    batch, noise = _stack(real_obs["e0s40"], real_obs["e1s5"]), np.stack([_noise(10), _noise(11)])
    _assert_close(runners["fp16"].get_action(batch, noise=noise), reference.get_action(batch, noise=noise),
                  **TOL["fp16"], what="fp16 batch 2")


@pytest.fixture(scope="module")
def ort_ops_build(root: Path, ckpt: Path, pick_n_place: Path) -> Path:
    return _timed_build(BuildOptions(model_path=ckpt, output=root / "out_fp16_ortops", precision="fp16",
                                     modality_config=ARMS_ONLY, dataset_path=pick_n_place, onnx_ops="onnxruntime"))


def _op_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_onnxruntime_ops_fuse_every_attention_rope_and_gelu(ort_ops_build: Path, builds, ckpt: Path):
    cfg = open_checkpoint(ckpt).config
    ah = cfg.action_head
    dit = ah.diffusion_model
    steps, dit_self = ah.num_inference_timesteps, sum(dit.interleave_self_attention and i % 2 == 1
                                                      for i in range(dit.num_layers))
    # (unmasked self-attention: Attention, q/k/v one GEMM inside it; cross or masked: MultiHeadAttention)
    attentions = {"eagle2/vit.onnx": (cfg.vision.num_hidden_layers, 0), "eagle2/llm.onnx": (0, cfg.select_layer),
                  "action_head/denoising_subgraph.onnx": (ah.vl_self_attention.num_layers + steps * dit_self,
                                                          steps * (dit.num_layers - dit_self))}
    gelus = {"eagle2/vit.onnx": cfg.vision.num_hidden_layers, "eagle2/llm.onnx": 0,
             "action_head/denoising_subgraph.onnx": sum(attentions["action_head/denoising_subgraph.onnx"])}
    for rel, n in attentions.items():
        fused, plain = _op_counts(ort_ops_build / rel), _op_counts(builds["fp16"] / rel)
        assert (fused.get("Attention", 0), fused.get("MultiHeadAttention", 0)) == n, (rel, fused)
        assert "Softmax" not in fused, (rel, fused)
        assert fused.get("FastGelu", 0) == gelus[rel] and "Tanh" not in fused, (rel, fused)
        assert plain.get("Softmax", 0) == sum(n) and "MultiHeadAttention" not in plain, (rel, plain)
        assert sum(fused.values()) < sum(plain.values())
        # gone from the plain graph: each attention's two batched products, the q/k/v GEMMs the Attention op runs
        # itself, and the llm's q/k/v GEMMs merged into one per layer
        merged = 2 * cfg.select_layer if rel == "eagle2/llm.onnx" else 0
        assert fused.get("MatMul", 0) == plain.get("MatMul", 0) - 2 * sum(n) - 3 * n[0] - merged, (rel, fused, plain)
    # the DiT's cross-attention keys and values reach the kernel split into heads, (B, heads, L, dim), projected
    # and transposed once per call: no per-step transposes or bias adds of the whole VL context
    denoiser = onnx.shape_inference.infer_shapes(onnx.load(str(ort_ops_build / "action_head/denoising_subgraph.onnx"),
                                                           load_external_data=False))
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in denoiser.graph.value_info}
    cross = [n for n in denoiser.graph.node if n.op_type == "MultiHeadAttention"]
    assert cross and all(ranks.get(n.input[1]) == ranks.get(n.input[2]) == 4 for n in cross), ranks
    assert len({n.input[1] for n in cross}) == len(cross) // steps  # each block's keys serve every step
    llm = _op_counts(ort_ops_build / "eagle2/llm.onnx")
    assert llm.get("RotaryEmbedding", 0) == 2 * cfg.select_layer and "Neg" not in llm  # q and k, every layer
    # every residual add is one SkipSimplifiedLayerNormalization with the RMSNorm after it (the final norm
    # included); plain RMSNorms left: the first layer's input norm and each layer's q and k norms
    assert llm.get("SkipSimplifiedLayerNormalization", 0) == 2 * cfg.select_layer, llm
    assert llm.get("Pow", 0) == 1 + 2 * cfg.select_layer, llm
    assert llm.get("Split", 0) == cfg.select_layer, llm  # q, k and v out of one GEMM
    # every pre-norm residual add (with the bias add before it) is one SkipLayerNormalization; what stays a plain
    # LayerNormalization has no residual add in front: the vit's first norm (its input adds constant position
    # embeddings), vlln and the first VL block's norm1, and each Euler step's first DiT norm (after a concat)
    dit_layers = dit.num_layers
    vl_layers = ah.vl_self_attention.num_layers
    skip_norms = {"eagle2/vit.onnx": (2 * cfg.vision.num_hidden_layers, 1),
                  "action_head/denoising_subgraph.onnx": (2 * vl_layers - 1 + steps * 2 * dit_layers, 2 + steps)}
    for rel, (skips, plain_norms) in skip_norms.items():
        fused = _op_counts(ort_ops_build / rel)
        assert (fused.get("SkipLayerNormalization", 0), fused.get("LayerNormalization", 0)) == (skips, plain_norms)
    manifest_stages = {s["name"]: s for s in json.loads((ort_ops_build / "manifest.json").read_text())["stages"]}
    assert manifest_stages["vit"]["optimize"]["fused_norms"] == 2 * cfg.vision.num_hidden_layers
    assert json.loads((ort_ops_build / "manifest.json").read_text())["onnx_ops"] == "onnxruntime"
    assert json.loads((builds["fp16"] / "manifest.json").read_text())["onnx_ops"] == "standard"


def test_onnxruntime_ops_build_matches_reference_with_left_padding(ort_ops_build: Path, runners,
                                                                   reference: ReferencePolicy, real_obs):
    # batch 2, one prompt left-padded: the causal + padding mask reaches MultiHeadAttention as attention_bias
    fused = ExportedGr00tRunner(ort_ops_build)
    batch, noise = _stack(real_obs["e0s40"], real_obs["e1s5"]), np.stack([_noise(10), _noise(11)])
    want = reference.get_action(batch, noise=noise)
    _assert_close(fused.get_action(batch, noise=noise), want, **TOL["fp16"], what="onnxruntime ops, batch 2")
    _assert_close(fused.get_action(batch, noise=noise), runners["fp16"].get_action(batch, noise=noise),
                  **TOL["fp16"], what="onnxruntime ops vs standard ops")


def test_onnxruntime_ops_are_refused_where_tensorrt_would_read_them(ort_ops_build: Path, ckpt: Path, root: Path):
    from gr00t_export.errors import InputError
    from gr00t_export.pipeline.engines import write_build_plan

    with pytest.raises(InputError, match="--onnx_ops standard"):
        write_build_plan(ort_ops_build, "fp16", "thor")
    with pytest.raises(InputError, match="need --onnx_ops standard"):
        build(BuildOptions(model_path=ckpt, output=root / "never", precision="fp8", onnx_ops="onnxruntime",
                           dataset_path=Path("unused")))
    with pytest.raises(InputError, match="unknown --onnx_ops"):
        build(BuildOptions(model_path=ckpt, output=root / "never", onnx_ops="tensorrt"))
    assert not (root / "never").exists()


def test_tokenizer_stage_is_cached_per_instruction(runners):
    from gr00t_export.runtime.runner import InstructionCache

    cached = runners["fp32"].stages["eagle2_tokenizer"]
    assert isinstance(cached, InstructionCache)
    pear, potato = {"instructions": np.array(["pick the pear"])}, {"instructions": np.array(["pick the potato"])}
    first = cached.infer(pear)
    assert cached.infer({"instructions": np.array(["pick the pear"])}) is first  # a hit: no second tokenization
    other = cached.infer(potato)
    assert not torch.equal(other["input_ids"], first["input_ids"])
    for feeds, got in ((pear, first), (potato, other)):  # what the cache returns is what the TorchScript computes
        want = cached.inner.infer(feeds)
        assert all(torch.equal(got[k], want[k]) for k in want)
    small = InstructionCache(cached.inner, size=2)
    for text in ("a", "b", "c"):
        small.infer({"instructions": np.array([text])})
    assert list(small._cache) == [("b",), ("c",)]  # oldest dropped first


# ------------------------------------------------------------------------------ stage by stage


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_each_stage_alone_matches_its_twin(precision: str, runners, traces):
    part, feeds = traces[precision]
    assert feeds["vit"]["pixel_values"].shape[0] == 2 and feeds["llm"]["input_ids"].shape[0] == 2
    assert not bool(feeds["llm"]["attention_mask"].all())  # the recorded batch is left-padded
    for stage in part.spec.stages:
        want = TorchStageRunner(part.modules[stage.name], stage).infer(feeds[stage.name])
        got = runners[precision].stages[stage.name].infer(feeds[stage.name])
        assert set(got) == set(want), stage.name
        for key, w in want.items():
            g = got[key]
            assert g.shape == w.shape and g.dtype == w.dtype, (stage.name, key, g.dtype, w.dtype)
            if w.is_floating_point():
                assert torch.isfinite(g).all(), (stage.name, key)
                np.testing.assert_allclose(g.double().numpy(), w.double().numpy(), **TOL[precision],
                                           err_msg=f"{precision} {stage.name}/{key}")
            else:
                assert torch.equal(g, w), (stage.name, key)


def _used_action_head_params(model) -> dict[str, torch.Tensor]:
    """Parameters of `action_head` that reach `get_action`'s output (their gradient is not None)."""
    head = model.action_head
    ah = model.cfg.action_head
    params = dict(head.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    with torch.enable_grad():
        out = head.float().get_action(torch.randn(1, 8, ah.backbone_embedding_dim), torch.randn(1, 1, ah.max_state_dim),
                                      torch.tensor([24]), torch.randn(1, ah.action_horizon, ah.action_dim))
        out.sum().backward()
    used = {n: p.detach().clone() for n, p in params.items() if p.grad is not None}
    for p in params.values():
        p.requires_grad_(False)
        p.grad = None
    return used


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_denoising_graph_stores_action_head_weights_once(precision: str, builds, ckpt: Path):
    model, _ = load_model(open_checkpoint(ckpt), torch.float32)
    used = _used_action_head_params(model)
    # weights that only ever see the fixed Euler timesteps fold into per-step constants: none of them may remain
    timestep_only = {n for n in used if re.match(r"model\.(timestep_encoder|transformer_blocks\.\d+\.norm1\.linear|"
                                                 r"proj_out_1)\.", n)}
    assert timestep_only and all(n.endswith((".weight", ".bias")) for n in timestep_only)
    folded = {n: used.pop(n) for n in sorted(timestep_only)}
    horizon = model.cfg.action_head.action_horizon
    # the position table enters the graph only as its first `action_horizon` rows
    used["position_embedding.weight"] = used["position_embedding.weight"][:horizon]
    dtype = PRECISIONS[precision]
    itemsize = torch.tensor([], dtype=dtype).element_size()
    weight_bytes = sum(p.numel() * itemsize for p in used.values())

    path = builds[precision] / "action_head" / "denoising_subgraph.onnx"
    graph = onnx.load(str(path))
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    init_bytes = sum(a.nbytes for a in arrays.values())
    del graph.graph.initializer[:]
    structure = graph.ByteSize()  # nodes, names and value infos without any weight
    size = path.stat().st_size
    print(f"\n{precision} denoising_subgraph.onnx: {size} B = {init_bytes} B initializers + {structure} B graph; "
          f"action_head weights used: {weight_bytes} B ({init_bytes / weight_bytes:.3f}x)")
    assert init_bytes <= 1.1 * weight_bytes
    assert size <= 1.1 * weight_bytes + structure

    seen: dict[tuple, str] = {}
    for name, a in arrays.items():
        key = (a.dtype.str, a.shape, a.tobytes())
        assert a.size < 2 or key not in seen, f"{name} is a copy of {seen.get(key)}"
        seen[key] = name
    np_dtype = np.float16 if precision == "fp16" else np.float32
    found_bytes = 0
    for name, p in used.items():
        w = p.to(dtype).numpy().astype(np_dtype)
        forms = {(w.shape, w.tobytes())}
        if w.ndim == 2:
            forms.add((w.T.shape, np.ascontiguousarray(w.T).tobytes()))
        copies = [n for n, a in arrays.items() if (a.shape, a.tobytes()) in forms and a.dtype == np_dtype]
        assert len(copies) <= 1, f"{name} is stored {len(copies)} times: {copies}"
        found_bytes += w.nbytes * len(copies)
    # the rest appear verbatim (or transposed), each once; only the position table's rows may be fused with others
    assert found_bytes >= 0.95 * weight_bytes, (found_bytes, weight_bytes)
    for name, p in folded.items():
        w = p.to(dtype).numpy().astype(np_dtype)
        forms = {w.tobytes(), np.ascontiguousarray(w.T).tobytes()}
        assert not any(a.shape in (w.shape, w.T.shape) and a.tobytes() in forms for a in arrays.values()), \
            f"{name} only meets constants but is still in the graph"


# ------------------------------------------------------------------------------ interface vs graph spec


def _model_dims(ckpt: Path) -> dict[str, int]:
    c = open_checkpoint(ckpt).config
    return {"vision_hidden": c.vision.hidden_size, "backbone_dim": c.action_head.backbone_embedding_dim,
            "max_state_dim": c.action_head.max_state_dim, "action_horizon": c.action_head.action_horizon,
            "action_dim": c.action_head.action_dim}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_artifacts_conform_to_graph_spec(precision: str, builds, ckpt: Path):
    out = builds[precision]
    spec = load_graph_spec(out / "graph_spec.yaml")
    assert spec == load_graph_spec(graph_spec_path())  # the shipped spec travels with the build
    dims = _model_dims(ckpt)
    onnx_stages = [s for s in spec.stages if s.format == "onnx"]
    assert [s.name for s in onnx_stages] == ["vit", "llm", "denoising_subgraph"]
    for stage in onnx_stages:
        path = out / stage.file
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path), load_external_data=False)
        opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        assert opsets["ai.onnx"] >= 19 and spec.opset >= 19, opsets
        for values, tensors in ((model.graph.input, stage.inputs), (model.graph.output, stage.outputs)):
            assert [v.name for v in values] == [t.name for t in tensors], stage.name
            for v, t in zip(values, tensors, strict=True):
                where = f"{precision} {stage.name}/{t.name}"
                assert v.type.tensor_type.elem_type == ONNX_TYPES[_spec_dtype(t.dtype, precision)], where
                got = v.type.tensor_type.shape.dim
                assert len(got) == len(t.shape), where
                for d, want in zip(got, t.shape, strict=True):
                    if want in VARYING:
                        assert d.dim_param == want, (where, d)
                    else:
                        assert not d.dim_param and d.dim_value == (want if isinstance(want, int) else dims[want]), \
                            (where, d, want)


_FRESH = r"""
import sys, torch
jobs = torch.load(sys.argv[1])
out = {}
for key, (path, args) in jobs.items():
    module = torch.jit.load(path)
    with torch.no_grad():
        out[key] = module(*args)
torch.save(out, sys.argv[2])
leaked = sorted(m for m in sys.modules if m.split(".")[0] == "gr00t_export")
assert not leaked, leaked
"""


def test_torchscript_artifacts_run_in_a_fresh_process(builds, traces, reference: ReferencePolicy, tmp_path: Path):
    jobs, expected = {}, {}
    for precision, out in builds.items():
        part, feeds = traces[precision]
        for stage in part.spec.stages:
            if stage.format != "torchscript":
                continue
            args = [feeds[stage.name][n] for n in stage.input_names]
            jobs[f"{precision}/{stage.name}"] = (str(out / stage.file), args)
            expected[f"{precision}/{stage.name}"] = (stage, TorchStageRunner(part.modules[stage.name], stage).infer(
                feeds[stage.name]))
    assert len(jobs) == 8
    torch.save(jobs, tmp_path / "jobs.pt")
    proc = subprocess.run([sys.executable, "-I", "-c", _FRESH, str(tmp_path / "jobs.pt"), str(tmp_path / "out.pt")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = torch.load(tmp_path / "out.pt")
    action_keys = list(reference.transforms.modality.action_keys)
    for key, (stage, want) in expected.items():
        precision = key.split("/")[0]
        raw = results[key]
        if isinstance(raw, dict):
            assert list(raw) == action_keys, key  # `action.*`: one output per action key, in modality order
            got = raw
            specs = dict.fromkeys(raw, stage.outputs[0])
        else:
            got = dict(zip(stage.output_names, raw if isinstance(raw, tuple | list) else (raw,), strict=True))
            specs = {t.name: t for t in stage.outputs}
        assert set(got) == set(want), key
        for name, value in got.items():
            t = specs[name]
            assert str(value.dtype).removeprefix("torch.") == _spec_dtype(t.dtype, precision), (key, name, value.dtype)
            assert value.dim() == len(t.shape), (key, name)
            assert torch.equal(value, want[name]), (key, name)


# ------------------------------------------------------------------------------ golden preprocessing


def _golden_obs(golden_vectors: dict) -> dict[str, np.ndarray]:
    return {k.removeprefix("obs."): v for k, v in golden_vectors.items() if k.startswith("obs.")}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tokenizer_artifact_reproduces_golden_ids(precision: str, runners, golden_vectors: dict):
    instruction = str(golden_vectors[f"obs.{TASK_KEY}"][0])
    got = runners[precision].stages["eagle2_tokenizer"].infer({"instructions": [instruction]})
    np.testing.assert_array_equal(got["input_ids"].numpy(), golden_vectors["transformed.eagle_input_ids"])
    np.testing.assert_array_equal(got["attention_mask"].numpy(), golden_vectors["transformed.eagle_attention_mask"])


def test_preprocess_video_artifact_golden_and_exact(runners, golden_vectors: dict, real_obs):
    stage = runners["fp32"].stages["preprocess_video"]
    got = stage.infer({"frames_0": torch.from_numpy(golden_vectors["obs.video.ego_view"][None])})["pixel_values"]
    want = golden_vectors["transformed.eagle_pixel_values"]
    assert got.dtype == torch.float32 and got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1 / 255)
    frames = torch.from_numpy(np.stack([o["video.ego_view"] for o in real_obs.values()]))  # batch of 3
    assert frames.shape == (3, 1, 256, 256, 3)
    got = stage.infer({"frames_0": frames})["pixel_values"]
    assert torch.equal(got, VideoPreprocessor()(frames[:, 0]))
    assert torch.equal(runners["fp16"].stages["preprocess_video"].infer({"frames_0": frames})["pixel_values"],
                       got.half())


def test_preprocess_state_artifact_reproduces_golden_state(runners, golden_vectors: dict):
    raw = runners["fp32"].reader(_golden_obs(golden_vectors))
    raw_state = torch.from_numpy(raw.external["raw_state"])
    got = runners["fp32"].stages["preprocess_state_action"].infer({"raw_state": raw_state})
    want = golden_vectors["transformed.state"]
    assert got["state"].dtype == torch.float32 and got["state"].shape == want.shape == (1, 1, 64)
    np.testing.assert_allclose(got["state"].numpy(), want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got["embodiment_id"].numpy(), golden_vectors["transformed.embodiment_id"])


# ------------------------------------------------------------------------------ manifest


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_manifest_lists_every_file_with_hash_and_provenance(precision: str, builds, ckpt: Path, cfg):
    out = builds[precision]
    manifest = json.loads((out / "manifest.json").read_text())
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == on_disk
    spec = load_graph_spec(graph_spec_path())
    assert {s.file for s in spec.stages} | {"graph_spec.yaml"} <= on_disk
    for path, entry in listed.items():
        data = (out / path).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest(), path
    fingerprint = manifest["source"]["fingerprint_sha256"]
    assert len(fingerprint) == 64 and fingerprint == open_checkpoint(ckpt).fingerprint()
    assert manifest["embodiment_tag"] == "gr1"
    assert manifest["modality_config"] == modality_config_to_dict(cfg)
    assert manifest["precision"] == precision and manifest["views"] == 1
    libs = manifest["libraries"]
    assert libs["torch"] == torch.__version__ and libs["onnx"] == onnx.__version__
    assert libs["onnxruntime"] == onnxruntime.__version__ and libs["numpy"] == np.__version__
    assert libs["python"] == ".".join(map(str, sys.version_info[:3]))


# ------------------------------------------------------------------------------ two camera views


@pytest.fixture(scope="module")
def two_views(root: Path, cfg: ModalityConfig) -> dict:
    """A 2-view modality YAML, a synthetic dataset and checkpoint made with it, built via the CLI with --force."""
    two = dataclasses.replace(cfg, name="gr1_two_views", video_keys=("video.ego_view", "video.wrist_view"))
    yaml_path = save_modality_config(two, root / "two_views.yaml")
    dataset = make_dataset(root / "ds2", load_modality_config(yaml_path), num_episodes=2, episode_length=20, seed=1)
    ckpt2 = make_checkpoint(root / "ckpt2", "tiny", seed=2, modality_config=yaml_path, dataset_path=dataset,
                            show_progress=False)
    out = root / "out_2views"
    out.mkdir()  # an empty dir is replaceable; a dir gr00t-export did not write never is (test_data_safety.py)
    start = time.perf_counter()
    # no --dataset_path: the export example is the seeded synthetic one (and the CLI skips its own validation)
    result = cli.invoke(app, ["build", "--model_path", str(ckpt2), "--modality_config", str(yaml_path), "--views", "2",
                              "--output", str(out), "--force"])
    BUILD_SECONDS["ckpt2 (2 views, CLI)/fp32"] = time.perf_counter() - start
    assert result.exit_code == 0, result.output + result.stderr
    return {"cfg": load_modality_config(yaml_path), "yaml": yaml_path, "dataset": dataset, "ckpt": ckpt2, "out": out}


def test_two_views_match_reference_and_force_replaced(two_views: dict):
    out, modality = two_views["out"], two_views["cfg"]
    assert (out / "manifest.json").is_file() and not _tmp_siblings(out)  # --force replaced the empty dir
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["views"] == 2 and manifest["modality_config"]["video_keys"] == list(modality.video_keys)
    assert manifest["profiles"]["views_2"]["num_images"]["max"] == 2
    runner = ExportedGr00tRunner(out)
    reference = open_reference(two_views["ckpt"], modality_config=two_views["yaml"])
    ds = LeRobotDataset(two_views["dataset"])
    first, second = ds.observation(0, 3, modality), ds.observation(1, 12, modality)
    assert not np.array_equal(first["video.ego_view"], first["video.wrist_view"])  # two real, different views
    trace: dict = {}
    raw = runner.reader(first)
    runner.run_raw(raw, torch.from_numpy(_noise(0)[None]), trace)
    assert trace["vit"]["pixel_values"].shape[0] == 2
    assert int((trace["llm"]["input_ids"] == reference.transforms.tokenizer.image_token_id).sum()) == 2 * 256
    for obs, noise in ((first, _noise(0)), (second, _noise(1))):
        _assert_close(runner.get_action(obs, noise=noise), reference.get_action(obs, noise=noise), **TOL["fp32"],
                      what="2 views")
    batch, noise = _stack(first, second), np.stack([_noise(2), _noise(3)])
    mask = reference.transforms(batch).attention_mask
    assert not bool(mask.all())  # the two episodes' tasks differ in length: left padding
    _assert_close(runner.get_action(batch, noise=noise), reference.get_action(batch, noise=noise), **TOL["fp32"],
                  what="2 views batch 2")


# ------------------------------------------------------------------------------ robustness


def test_refuses_non_empty_output_without_force(two_views: dict, root: Path):
    out = root / "occupied"
    (out / "sub").mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = _snapshot(out)
    result = cli.invoke(app, ["build", "--model_path", str(two_views["ckpt"]), "--modality_config",
                              str(two_views["yaml"]), "--output", str(out)])
    assert result.exit_code == 2
    assert "--force" in _error_line(result)
    assert _snapshot(out) == before and not _tmp_siblings(out)


def test_failed_builds_leave_no_output(two_views: dict, root: Path):
    # early failure: the checkpoint's metadata has no entry for the tag
    bad = root / "ckpt_no_tag"
    shutil.copytree(two_views["ckpt"], bad)
    meta_path = bad / "experiment_cfg" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["new_embodiment"] = meta.pop("gr1")
    meta_path.write_text(json.dumps(meta))
    out = root / "out_no_tag"
    result = cli.invoke(app, ["build", "--model_path", str(bad), "--modality_config", str(two_views["yaml"]),
                              "--embodiment_tag", "gr1", "--output", str(out)])
    assert result.exit_code == 2 and "embodiment tag: gr1" in _error_line(result)
    assert not out.exists() and not _tmp_siblings(out)

    # mid-way failure: weights that overflow fp16 in the ViT (a real overflow, found by the exporter's check)
    hot = root / "ckpt_fp16_overflow"
    shutil.copytree(two_views["ckpt"], hot)
    weights = load_file(hot / "model.safetensors")
    key = next(k for k in weights if k.endswith("patch_embedding.weight"))
    weights[key] = weights[key] * 1e6
    save_file(weights, hot / "model.safetensors", metadata={"format": "pt"})
    out = root / "out_overflow"
    seen: dict[str, list[str]] = {}

    def observe(label: str) -> None:
        seen[label] = sorted(str(p.relative_to(t)) for t in _tmp_siblings(out) for p in t.rglob("*") if p.is_file())

    with pytest.raises(ValidationFailure, match="NaN/inf"):
        build(BuildOptions(model_path=hot, output=out, modality_config=str(two_views["yaml"]), precision="fp16",
                           dataset_path=two_views["dataset"]), on_step=observe)
    assert "preprocess/preprocess_video.pt" in seen["export vit"]  # it failed with files already written
    assert "export llm" not in seen
    assert not out.exists() and not _tmp_siblings(out)


@pytest.mark.parametrize("case", ["missing checkpoint", "not a checkpoint", "unknown embodiment",
                                  "unknown modality config", "views mismatch", "ambiguous data config"])
def test_cli_input_errors_are_one_line(case: str, ckpt: Path, root: Path):
    out = root / f"out_{case.replace(' ', '_')}"
    empty = root / "not_a_checkpoint"
    empty.mkdir(exist_ok=True)
    (empty / "notes.txt").write_text("no config.json here")
    args = {"missing checkpoint": ["--model_path", str(root / "nope")],
            "not a checkpoint": ["--model_path", str(empty)],
            "unknown embodiment": ["--model_path", str(ckpt), "--embodiment_tag", "robot_x"],
            "unknown modality config": ["--model_path", str(ckpt), "--modality_config", "no_such_config"],
            "views mismatch": ["--model_path", str(ckpt), "--modality_config", ARMS_ONLY, "--views", "2"],
            # PickNPlace's metadata serves both GR1 arm configs: no --modality_config is a question, not a guess
            "ambiguous data config": ["--model_path", str(ckpt)]}[case]
    result = cli.invoke(app, ["build", *args, "--output", str(out)])
    assert result.exit_code == 2, (case, result.output, result.stderr)
    line = _error_line(result)
    assert {"missing checkpoint": "nope", "not a checkpoint": "not_a_checkpoint", "unknown embodiment": "robot_x",
            "unknown modality config": "no_such_config", "views mismatch": "--views 2",
            "ambiguous data config": "(fourier_gr1_arms_waist, fourier_gr1_arms_only); pass --modality_config",
            }[case] in line
    assert not out.exists() and not _tmp_siblings(out)


def test_predict_artifacts_equals_predict_model_path(builds, ckpt: Path, real_obs, tmp_path: Path):
    np.savez(tmp_path / "obs.npz", **real_obs["e2s100"])
    np.save(tmp_path / "noise.npy", _noise(5))
    common = ["--obs", str(tmp_path / "obs.npz"), "--noise", str(tmp_path / "noise.npy")]
    a = cli.invoke(app, ["predict", "--artifacts", str(builds["fp32"]), *common, "--out", str(tmp_path / "a.npz")])
    b = cli.invoke(app, ["predict", "--model_path", str(ckpt), "--modality_config", ARMS_ONLY, *common,
                         "--out", str(tmp_path / "b.npz")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + a.stderr + b.output + b.stderr
    with np.load(tmp_path / "a.npz") as got, np.load(tmp_path / "b.npz") as want:
        _assert_close(dict(got), dict(want), **TOL["fp32"], what="predict")
        assert {k: got[k].shape for k in got.files} == ACTION_SHAPES


def test_build_records_each_step_and_its_time(builds, two_views):
    """Every step a build goes through is timed once, in order, and the steps fit inside the build's own total,
    which fits inside the wall time measured around the call. The figures print with `pytest -s`."""
    assert {"ckpt/fp32", "ckpt/fp16"} <= set(BUILD_RESULTS)
    for name, (result, outside) in BUILD_RESULTS.items():
        exports = [f"export {s.name}" for s in result.stages]
        assert exports == [f"export {s.name}" for s in load_graph_spec(graph_spec_path()).stages]
        assert list(result.step_seconds) == ["load checkpoint", "partition", *exports,
                                             "self-check the artifacts", "manifest", "emit IGG config"], name
        assert all(seconds >= 0 for seconds in result.step_seconds.values()), result.step_seconds
        assert sum(result.step_seconds.values()) <= result.seconds <= outside, (name, result.step_seconds)
        assert result.staging_dir is None and result.output.is_dir()
        slowest = max(result.step_seconds, key=result.step_seconds.get)
        print(f"\ntiny build {name}: {result.seconds:.1f} s, slowest step {slowest} "
              f"{result.step_seconds[slowest]:.1f} s")
    print(f"tiny build via the CLI, 2 views: {BUILD_SECONDS['ckpt2 (2 views, CLI)/fp32']:.1f} s")


def test_unsimplified_denoiser_holds_no_timestep_path(root: Path, ckpt: Path, pick_n_place: Path):
    """3B graphs skip onnxslim (over 1 GiB), and the exporter folds no MatMul: the timestep MLP and the AdaLN
    projections must leave the denoiser by construction (a constant modulation table), not by a simplifier."""
    out = _timed_build(BuildOptions(model_path=ckpt, output=root / "out_unsimplified", precision="fp32",
                                    simplify=False, dataset_path=pick_n_place, modality_config=ARMS_ONLY))
    model, _ = load_model(open_checkpoint(ckpt), torch.float32)
    timestep_only = {n: p for n, p in model.action_head.named_parameters()
                     if re.match(r"model\.(timestep_encoder|transformer_blocks\.\d+\.norm1\.linear|proj_out_1)\.", n)}
    assert timestep_only
    graph = onnx.load(str(out / "action_head" / "denoising_subgraph.onnx"))
    stored = [numpy_helper.to_array(t) for t in graph.graph.initializer]
    stored += [numpy_helper.to_array(a.t) for n in graph.graph.node for a in n.attribute if a.HasField("t")]
    for name, p in timestep_only.items():
        w = p.detach().numpy()
        forms = {w.tobytes()} | ({np.ascontiguousarray(w.T).tobytes()} if w.ndim == 2 else set())
        assert not any(a.dtype == np.float32 and a.tobytes() in forms for a in stored), f"{name} is in the graph"
    assert not any(n.op_type == "Gemm" for n in graph.graph.node)
