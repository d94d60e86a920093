"""`gr00t-export bench` on CPU: a smoke test of the timing harness (GPU figures come from benchmarks/)."""

import json

import pytest
import torch

from gr00t_export.families.base import make_noise, synthetic_observation
from gr00t_export.families.n1_5.config import preset
from gr00t_export.families.n1_5.floor import floor_analysis
from gr00t_export.families.n1_5.synthetic import make_checkpoint
from gr00t_export.pipeline.build import BuildOptions, build
from gr00t_export.tools.bench import BackendResult, bench, table_rows, write_json


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    ckpt = make_checkpoint(root / "ckpt", "tiny", 0, show_progress=False)
    build(BuildOptions(model_path=ckpt, output=root / "out"))
    return ckpt, root / "out"


def test_bench_times_every_stage_and_backend(tiny_build, tmp_path):
    ckpt, out = tiny_build
    results = bench(out, ckpt, ["torch", "ort", "trt"], "fp32", iters=2, warmup=1, device="cpu", log=lambda m: None)
    by_name = {r.backend: r for r in results}
    for name in ("torch", "ort"):
        r = by_name[name]
        assert set(r.stages) == {"preprocess_video", "preprocess_state_action", "eagle2_tokenizer", "vit", "llm",
                                 "denoising_subgraph", "postprocess"}
        assert all(t.median_ms > 0 and t.p90_ms >= t.median_ms for t in r.stages.values())
        assert r.end_to_end.median_ms > 0
    assert by_name["trt"].end_to_end is None and "skipped" in by_name["trt"].note
    header, rows = table_rows(results)
    write_json(results, tmp_path / "b.json", {"device": "cpu"})
    saved = {r["backend"]: r for r in json.loads((tmp_path / "b.json").read_text())["results"]}
    assert list(saved) == ["torch", "ort", "trt"]
    # the ratio column, recomputed from the figures the JSON file holds
    e2e = {name: saved[name]["end_to_end"]["median_ms"] for name in ("torch", "ort")}
    table = {row[0]: row for row in rows}
    assert header[-1] == "vs eager"
    assert table["torch"][-1] == "1.000" and table["ort"][-1] == f"{e2e['ort'] / e2e['torch']:.3f}"
    assert table["ort"][header.index("vit")] == f"{saved['ort']['stages']['vit']['median_ms']:.2f}"


def test_floor_analysis_against_the_full_size_model_on_meta():
    """The floor's parameter and FLOP counts (from the config, by formula) against the 3B model itself: its
    nn.Linear weights counted per stage, its FLOPs counted by torch's FlopCounterMode on meta tensors."""
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from gr00t_export.families.n1_5.model import Gr00tN15
    from gr00t_export.families.n1_5.partition import DenoisingStage, LLMStage, VisionStage

    cfg, seq_len = preset("n1.5-3b"), 296
    with torch.device("meta"):
        model = Gr00tN15(cfg)
    floor = {f["stage"]: f for f in floor_analysis(cfg, seq_len=seq_len, views=1, steps=4)}

    def linear_weights(module: nn.Module) -> int:
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))

    def counted_gflop(module: nn.Module, *args: torch.Tensor) -> float:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module(*args)
        return counter.get_total_flops() / 1e9

    vit, llm, dit = VisionStage(model), LLMStage(model), DenoisingStage(model)
    size, hidden, ah = cfg.vision.image_size, cfg.text.hidden_size, cfg.action_head
    assert floor["vit"]["params_M"] * 1e6 == linear_weights(vit)
    assert floor["llm"]["params_M"] * 1e6 == linear_weights(llm) - linear_weights(vit)  # llm.onnx has no ViT
    meta = {"device": "meta"}
    counted = {
        "vit": counted_gflop(vit, torch.empty(1, 3, size, size, **meta)),
        "llm": counted_gflop(llm, torch.zeros(1, seq_len, dtype=torch.long, **meta),
                             torch.empty(1, (size // cfg.vision.patch_size) ** 2, cfg.vision.hidden_size, **meta),
                             torch.ones(1, seq_len, dtype=torch.long, **meta)),
        "denoising_subgraph": counted_gflop(dit, torch.empty(1, seq_len, hidden, **meta),
                                            torch.ones(1, seq_len, dtype=torch.long, **meta),
                                            torch.empty(1, 1, ah.max_state_dim, **meta),
                                            torch.zeros(1, dtype=torch.long, **meta),
                                            torch.empty(1, ah.action_horizon, ah.action_dim, **meta)),
    }
    for stage, gflop in counted.items():
        # a floor: the formula counts the weight matmuls only, so it may not exceed what really runs
        assert floor[stage]["gflop"] <= gflop, (stage, floor[stage]["gflop"], gflop)
    # ViT and LLM are almost all weight matmuls (attention scores add < 5%); the action head's cross-attention
    # over the backbone tokens adds more
    assert floor["vit"]["gflop"] > 0.95 * counted["vit"] and floor["llm"]["gflop"] > 0.95 * counted["llm"]
    assert floor["denoising_subgraph"]["gflop"] > 0.75 * counted["denoising_subgraph"]


def test_aoti_package_of_a_stage_matches_its_twin(tiny_build, tmp_path):
    """The `.pt2` path bench's aoti backend takes, on the tiny vit: compiled, loaded back, same outputs as eager."""
    import torch

    from gr00t_export.families import open_reference
    from gr00t_export.families.base import make_noise
    from gr00t_export.families.n1_5.family import example_observation
    from gr00t_export.families.n1_5.partition import partition
    from gr00t_export.pipeline.export import trace_feeds
    from gr00t_export.tools.bench import AotiStageRunner, compile_aoti

    ckpt, _ = tiny_build
    policy = open_reference(ckpt)
    part = partition(policy.model, policy.transforms, "fp32")
    raw = policy.transforms.reader(example_observation(policy.transforms.modality, policy.transforms.metadata, None))
    outputs: dict = {}
    feeds = trace_feeds(part, raw, make_noise((raw.batch, *policy.interface.noise_shape), None, 0), outputs=outputs)
    stage = part.spec.stage("vit")
    package = compile_aoti(part.modules["vit"], stage, feeds["vit"], tmp_path / "vit.pt2", torch.device("cpu"))
    got = AotiStageRunner(package, stage, feeds["vit"], torch.device("cpu")).infer(feeds["vit"])
    want = outputs["vit"]["vit_embeds"]
    assert got["vit_embeds"].shape == want.shape
    torch.testing.assert_close(got["vit_embeds"], want, rtol=1e-4, atol=1e-4)


def test_kernel_kinds_and_profile_table():
    from gr00t_export.tools.bench import BackendResult, KernelProfile, Timing, kernel_kind, kernel_rows

    assert kernel_kind("sm90_xmma_gemm_f16f16_f32f16_tn_n_tilesize128x128x64") == "matmul"
    assert kernel_kind("nvjet_hsh_128x64_64x4_1x2_h_bz_coopB_NNT") == "matmul"
    assert kernel_kind("onnxruntime::contrib::cuda::FlashAttentionKernel") == "attention"
    assert kernel_kind("fmha_cutlassF_f16_aligned_64x64_rf_sm80") == "attention"
    assert kernel_kind("void onnxruntime::cuda::LayerNormKernelSmall<half>") == "norm"
    assert kernel_kind("triton_poi_fused_add_mul_native_layer_norm_3") == "norm"  # named for the fused norm
    assert kernel_kind("triton_poi_fused__to_copy_add_5") == "triton (fused)"
    assert kernel_kind("void at::native::vectorized_elementwise_kernel<4, ...>") == "elementwise"
    assert kernel_kind("cudaGraphLaunch_mystery") == "other"
    result = BackendResult("ort", {"vit": Timing(2.0, 2.2)}, Timing(10.0, 11.0),
                           kernels={"vit": KernelProfile(500.0, 1.5, {"matmul": (1.0, 190.0), "norm": (0.5, 55.0)})})
    header, rows = kernel_rows([result, BackendResult("torch")])
    assert header[:3] == ["backend", "stage", "kernels"] and len(rows) == 1
    assert rows[0][:6] == ["ort", "vit", "500", "1.50", "2.00", "75"]
    assert rows[0][6].startswith("matmul 1.00 (190)")


def test_tick_timeline_splits_wall_time_into_busy_gaps_and_stalls():
    from gr00t_export.errors import InputError
    from gr00t_export.tools.bench import TickTimeline, tick_timeline, timeline_rows

    # tick 1 (us): lead 10, kernels a, b 1 us apart (a launch gap), 10 us idle before c (a stall), a copy d
    # overlapping c (counted once), tail 45; an activity after the tick belongs to no tick
    acts = [(10, 20, "a"), (21, 30, "b"), (40, 50, "c"), (45, 55, "copy d"), (150, 160, "outside")]
    one = tick_timeline([(0, 100)], acts)
    assert (one.wall_ms, one.activities) == (0.1, 4)
    assert one.busy_ms == pytest.approx(0.034) and one.gaps_ms == pytest.approx(0.001)
    assert one.stalls_ms == pytest.approx(0.010) and one.lead_ms == pytest.approx(0.010)
    assert one.tail_ms == pytest.approx(0.045) and one.worst_stalls == [(10, "c")]
    # the wall time is fully accounted for: lead + busy + gaps + stalls + tail
    assert one.lead_ms + one.busy_ms + one.gaps_ms + one.stalls_ms + one.tail_ms == pytest.approx(one.wall_ms)
    # three ticks: medians, and a stall threshold that makes the 10 us gap a launch gap
    shifted = [(a + off, b + off, n) for off in (0, 200, 400) for a, b, n in acts[:4]]
    three = tick_timeline([(0, 100), (200, 300), (400, 520)], shifted, stall_us=20.0)
    assert three.wall_ms == pytest.approx(0.1) and three.stalls_ms == 0 and three.gaps_ms == pytest.approx(0.011)
    assert three.worst_stalls == []
    with pytest.raises(InputError, match="no device activity"):
        tick_timeline([(0, 100)], [(150, 160, "outside")])
    header, rows = timeline_rows([BackendResult("ort", timeline=one), BackendResult("torch")])
    assert len(rows) == 1 and rows[0][:5] == ["ort", "0.10", "0.03", "0.00", "0.01"] and "10 c" in rows[0][-1]
    assert isinstance(one, TickTimeline) and header[0] == "backend"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUPTI traces need a GPU; benchmarks/gpu_bench.py runs this")
def test_tick_profile_sees_the_gpu_wait_for_a_sleeping_host():
    import time

    from gr00t_export.tools.bench import profile_ticks

    x = torch.randn(2048, 2048, device="cuda")

    def tick():
        y = x @ x
        torch.cuda.synchronize()
        time.sleep(0.002)  # the host works 2 ms while the GPU has nothing queued
        return (y @ x).sum().item()

    t = profile_ticks(tick, iters=5)
    assert t.activities >= 3 and t.busy_ms > 0
    assert t.stalls_ms >= 1.9 and t.wall_ms >= t.busy_ms + t.stalls_ms


@pytest.mark.parametrize("family", ["n1_5", "n1_6"])
def test_the_host_tokenizes_while_the_gpu_runs_the_stages_before(family, tiny_build):
    import importlib

    from gr00t_export.runtime.runner import ExportedGr00tRunner, run_pipeline
    from gr00t_export.spec import load_graph_spec

    graph = load_graph_spec(importlib.import_module(f"gr00t_export.families.{family}.partition").graph_spec_path(),
                            views=1)
    order = [s.name for s in graph.launch_order()]
    assert sorted(order) == sorted(s.name for s in graph.stages)
    done: set[str] = set()
    for name in order:  # every input is produced before its stage runs
        assert all(t.source == "external" or t.source.split("/")[0] in done for t in graph.stage(name).inputs), name
        done.add(name)
    host = [s.name for s in graph.stages if any(t.dtype == "string" for t in s.inputs)]
    assert host and all(order.index(h) > [s.name for s in graph.stages].index(h) for h in host)  # later than in spec
    for h in host:  # right before the first stage that reads it, after the GPU stages queued before that one
        reader = next(n for n in order if any(t.source.startswith(f"{h}/") for t in graph.stage(n).inputs))
        assert order.index(h) == order.index(reader) - 1
    if family == "n1_5":  # a real run calls the stages in that order
        assert order.index("vit") < order.index("eagle2_tokenizer") < order.index("llm")
        runner = ExportedGr00tRunner(tiny_build[1])
        ran: list[str] = []

        class Recorded:
            def __init__(self, name, inner):
                self.name, self.inner, self.spec = name, inner, inner.spec

            def infer(self, feeds):
                ran.append(self.name)
                return self.inner.infer(feeds)

        raw = runner.reader(synthetic_observation(runner.interface))
        init = make_noise((raw.batch, *runner.interface.noise_shape), None, 0)
        out = run_pipeline(runner.graph, {n: Recorded(n, r) for n, r in runner.stages.items()}, raw, init)
        assert ran == [s.name for s in runner.graph.launch_order()]
        assert set(out) == set(runner.interface.action_keys)  # the spec's last stage answers, as before


def test_profile_is_a_no_op_on_cpu(tiny_build):
    ckpt, out = tiny_build
    results = bench(out, ckpt, ["ort"], "fp32", iters=1, warmup=0, device="cpu", log=lambda m: None, profile=True)
    assert results[0].end_to_end is not None and results[0].kernels == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU; benchmarks/gpu_bench.py runs this")
def test_cuda_graph_replay_of_a_torchscript_stage_equals_calling_it():
    from gr00t_export.families.n1_5.partition import VideoStage, graph_spec_path
    from gr00t_export.runtime.cuda_graphs import StaticCudaGraphTorchRunner
    from gr00t_export.runtime.runner import TorchStageRunner
    from gr00t_export.spec import load_graph_spec

    spec = load_graph_spec(graph_spec_path(), views=1).stage("preprocess_video")
    direct = TorchStageRunner(torch.jit.script(VideoStage(torch.float16)).cuda(), spec, "cuda")
    frames = [torch.randint(0, 256, (1, 1, 256, 256, 3), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(i)) for i in range(3)]
    graphed = StaticCudaGraphTorchRunner(direct, {"frames_0": frames[0]})
    for f in frames[1:]:  # new frames go through the captured graph's fixed input buffer
        got = graphed.infer({"frames_0": f})["pixel_values"].clone()
        assert torch.equal(got, direct.infer({"frames_0": f})["pixel_values"])
    assert not torch.equal(got, direct.infer({"frames_0": frames[0]})["pixel_values"])
