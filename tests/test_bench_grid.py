"""`bench --grid` on CPU (tiny preset): every batch x views cell timed, batching that never mixes samples, the
per-camera stages of another view count equal to a real build of that count, and the shape-keyed pools that keep
one pinned session (one CUDA graph on a GPU) per input shape."""

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch
from helpers import save_modality_config
from typer.testing import CliRunner

from gr00t_export.cli import app
from gr00t_export.errors import InputError
from gr00t_export.families import family_for_checkpoint
from gr00t_export.families.n1_5.embodiments import load_modality_config
from gr00t_export.families.n1_5.synthetic import make_checkpoint
from gr00t_export.pipeline.build import BuildOptions, build
from gr00t_export.pipeline.optimize import save_onnx
from gr00t_export.runtime.cuda_graphs import ShapePool, StaticCudaGraphOnnxRunner, shape_key
from gr00t_export.runtime.runner import ExportedGr00tRunner, OnnxStageRunner, run_pipeline
from gr00t_export.spec import load_graph_spec
from gr00t_export.tools.grid import (
    bench_grid,
    exported_stages_for_views,
    grid_observation,
    grid_rows,
    write_grid_json,
)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """One tiny checkpoint, built for its own single camera and for two cameras (same weights)."""
    root = tmp_path_factory.mktemp("grid")
    ckpt = make_checkpoint(root / "ckpt", "tiny", 0, show_progress=False)
    one = build(BuildOptions(model_path=ckpt, output=root / "views1")).output
    cfg = family_for_checkpoint(ckpt).open(ckpt).modality
    two_cfg = dataclasses.replace(cfg, name="gr1_two_views", video_keys=("video.ego_view", "video.wrist_view"))
    yaml_path = save_modality_config(two_cfg, root / "two_views.yaml")
    two = build(BuildOptions(model_path=ckpt, output=root / "views2", modality_config=str(yaml_path))).output
    return {"ckpt": ckpt, 1: one, 2: two, "two_cfg": load_modality_config(yaml_path)}


def test_grid_times_every_cell_and_the_table_matches_the_json(builds, tmp_path):
    cells = bench_grid(builds[1], builds["ckpt"], ["torch", "ort", "trt"], "fp32", iters=2, warmup=0, device="cpu",
                       batches=[1, 2], views=[1, 2], log=lambda m: None, setup_runs=1)
    assert [(c.backend, c.batch, c.views) for c in cells] == [
        (b, n, v) for b in ("torch", "ort") for v in (1, 2) for n in (1, 2)]  # trt: single-shape only, left out
    seq_len = {}
    for c in cells:
        assert c.note == "" and c.end_to_end is not None, c.note
        assert 0 < c.end_to_end.median_ms <= c.end_to_end.p90_ms
        assert c.samples_per_s == pytest.approx(c.batch / c.end_to_end.median_ms * 1e3)
        assert c.setup_s > 0 and c.new_graphs is None  # no CUDA graphs on the CPU
        assert {"vit", "llm", "denoising_subgraph", "preprocess_video"} <= set(c.stages)
        # the cell really ran at its shape: one image per camera per sample, one prompt length per camera count
        assert c.dims["batch"] == c.batch and c.dims["num_images"] == c.batch * c.views
        assert seq_len.setdefault(c.views, c.dims["seq_len"]) == c.dims["seq_len"]
    assert seq_len[2] > seq_len[1]  # each camera adds its image block to the prompt

    header, rows = grid_rows(cells)
    write_grid_json(cells, tmp_path / "grid.json", {"device": "cpu"})
    saved = json.loads((tmp_path / "grid.json").read_text())
    assert saved["context"]["mode"] == "grid"
    by_cell = {(r["backend"], r["batch"], r["views"]): r for r in saved["results"]}
    assert header[-1] == "vs torch" and len(rows) == 8
    for row in rows:
        batch, views, backend = int(row[0]), int(row[1]), row[3]
        mine, eager = by_cell[backend, batch, views], by_cell["torch", batch, views]
        ratio = mine["end_to_end"]["median_ms"] / eager["end_to_end"]["median_ms"]
        assert row[-1] == f"{ratio:.3f}"
        assert row[4] == f"{mine['end_to_end']['median_ms']:.2f}" and row[5] == f"{mine['end_to_end']['p90_ms']:.2f}"
        assert row[6] == f"{batch / mine['end_to_end']['median_ms'] * 1e3:.1f}"
        assert row[2] == str(mine["dims"]["seq_len"])


def test_grid_from_the_cli_and_its_input_errors(builds, tmp_path):
    cli = CliRunner()
    out = tmp_path / "grid.json"
    result = cli.invoke(app, ["bench", str(builds[1]), "--model_path", str(builds["ckpt"]), "--grid", "--batches", "2",
                              "--views", "3", "--backends", "ort", "--iters", "1", "--warmup", "0", "--device", "cpu",
                              "--json", str(out)])
    assert result.exit_code == 0, result.output
    (cell,) = json.loads(out.read_text())["results"]
    assert (cell["backend"], cell["batch"], cell["views"], cell["dims"]["num_images"]) == ("ort", 2, 3, 6)
    for args, problem in ((["--batches", "1,0"], "--batches"), (["--views", "2,2"], "--views"),
                          (["--views", "5"], "takes 1 to 4 cameras"), (["--backends", "trt"], "--grid times")):
        result = cli.invoke(app, ["bench", str(builds[1]), "--grid", "--device", "cpu", *args])
        assert result.exit_code == 2 and problem in result.output, result.output
        assert "Traceback" not in result.output


def test_cells_past_the_budget_or_outside_the_compile_subset_are_reported_not_run(builds):
    cells = bench_grid(builds[1], builds["ckpt"], ["ort"], "fp32", iters=1, warmup=0, device="cpu", batches=[1],
                       views=[1, 2], log=lambda m: None, budget_s=0)
    assert [c.end_to_end for c in cells] == [None, None] and all("budget" in c.note for c in cells)
    cells = bench_grid(builds[1], builds["ckpt"], ["torch-compile"], "fp32", iters=1, warmup=0, device="cpu",
                       batches=[1, 2], views=[1], log=lambda m: None, compile_cells=set())
    assert [c.end_to_end for c in cells] == [None, None] and all("subset" in c.note for c in cells)
    _, rows = grid_rows(cells)
    assert rows[0][3:] == ["torch-compile", "-", "-", "-", "-"]


@pytest.mark.parametrize("views", [1, 2])
def test_a_batch_of_4_equals_4_single_runs(builds, views):
    """Batching must not mix samples: each row of a batch-4 tick is what that sample alone gets, same noise."""
    runner = ExportedGr00tRunner(builds[views])
    batch = grid_observation(runner.interface, 4, seed=3)
    assert not np.array_equal(batch[runner.interface.video_keys[-1]][0], batch[runner.interface.video_keys[-1]][1])
    noise = np.random.default_rng(0).standard_normal((4, *runner.interface.noise_shape)).astype(np.float32)
    together = runner.get_action(batch, noise=noise)
    for i in range(4):
        alone = runner.get_action({k: v[i] for k, v in batch.items()}, noise=noise[i])
        for key, value in alone.items():
            np.testing.assert_allclose(together[key][i], value, rtol=1e-5, atol=1e-5, err_msg=f"{key} sample {i}")
    first = next(iter(together))
    assert not np.allclose(together[first][0], together[first][1])  # the samples really differ


def test_another_view_count_runs_what_a_build_of_that_count_runs(builds, tmp_path):
    """The grid's 2-camera cells on a 1-camera build (its ONNX stages, the 2-camera video and tokenizer stages
    scripted from the family) give the actions of a real 2-camera build of the same checkpoint."""
    runner = ExportedGr00tRunner(builds[1])
    family = family_for_checkpoint(builds["ckpt"])
    own = family.open_for_manifest(builds["ckpt"], None, runner.manifest)
    assert own.with_views(1) is own
    opened = own.with_views(2)
    assert opened.interface.video_keys == ("video.ego_view", "video.view_1")
    model = opened.load(torch.float32, "meta")  # the per-camera stages need no weights
    graph, stages = exported_stages_for_views(runner, opened, model, tmp_path)
    assert graph.stage("preprocess_video").input_names == ["frames_0", "frames_1"]
    raw = opened.reader()(grid_observation(opened.interface, 2, seed=5))
    init = torch.randn((2, *opened.interface.noise_shape), generator=torch.Generator().manual_seed(1))
    trace: dict = {}
    got = run_pipeline(graph, stages, raw, init, trace)
    assert trace["vit"]["pixel_values"].shape[0] == 4
    real = ExportedGr00tRunner(builds[2])
    assert real.manifest.views == 2
    want = real.run_raw(raw, init)
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)


def test_pinned_sessions_are_kept_per_shape_and_the_least_recent_dropped(builds, tmp_path):
    """The pool behind ort-cudagraph, on the CPU EP (pinned dims, fixed buffers, no graph): one session per input
    shape, made on first sight and reused, at most `size` kept; each equals the dynamic-shape session."""
    spec = load_graph_spec(builds[1] / "graph_spec.yaml", views=1).stage("vit")
    source = builds[1] / spec.file
    external = tmp_path / "external" / "vit.onnx"  # weights in vit.onnx_data, as the 3B graphs keep them
    save_onnx(onnx.load(str(source)), external, external=True)
    dynamic = OnnxStageRunner(source, spec, ["CPUExecutionProvider"])
    for path in (source, external):
        workdir = tmp_path / f"pinned_{path.parent.name}"
        pinned = StaticCudaGraphOnnxRunner(path, spec, None, workdir, size=2, device="cpu")
        made = []
        for images in (1, 2, 1, 3, 2):
            feeds = {"pixel_values": torch.randn(images, 3, 224, 224, generator=torch.Generator().manual_seed(images))}
            got = pinned.infer(feeds)["vit_embeds"].clone()
            torch.testing.assert_close(got, dynamic.infer(feeds)["vit_embeds"], rtol=1e-5, atol=1e-5)
            made.append(pinned.pool.made)
            session = pinned.pool.entries[shape_key(spec, feeds)].session
            assert session.get_inputs()[0].shape == [images, 3, 224, 224]  # pinned: no symbolic dim left
        # 1 and 2 made, 1 reused, 3 made (dropping 2, the least recently used), 2 made again (dropping 1)
        assert made == [1, 2, 2, 3, 4]
        assert [key[0][0] for key in pinned.pool.entries] == [3, 2]
        assert len(list(workdir.glob("vit.*x*.onnx"))) == 2  # a dropped shape's pinned graph is deleted with it
        assert len(list(workdir.glob("*.onnx_data"))) == 1  # one weights file shared by every shape
        pinned.close()
        assert not workdir.exists()


def test_shape_pool_refuses_an_empty_bound():
    with pytest.raises(InputError, match="at least one"):
        ShapePool(lambda feeds: None, size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU; benchmarks/gpu_bench.py runs this")
def test_cuda_graphs_of_a_torchscript_stage_are_kept_per_batch():
    from gr00t_export.families.n1_5.partition import VideoStage, graph_spec_path
    from gr00t_export.runtime.cuda_graphs import StaticCudaGraphTorchRunner
    from gr00t_export.runtime.runner import TorchStageRunner

    spec = load_graph_spec(graph_spec_path(), views=1).stage("preprocess_video")
    direct = TorchStageRunner(torch.jit.script(VideoStage(torch.float16)).cuda(), spec, "cuda")
    graphed = StaticCudaGraphTorchRunner(direct)
    for i, batch in enumerate((1, 4, 1, 4, 2)):
        frames = torch.randint(0, 256, (batch, 1, 256, 256, 3), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(i))
        got = graphed.infer({"frames_0": frames})["pixel_values"].clone()
        assert torch.equal(got, direct.infer({"frames_0": frames})["pixel_values"])
    assert graphed.pool.made == 3  # batch 1 and 4 captured once each, replayed when they come back; then 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU; benchmarks/gpu_bench.py runs this")
def test_onnxruntime_cuda_graphs_are_kept_per_shape(builds, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    spec = load_graph_spec(builds[1] / "graph_spec.yaml", views=1).stage("vit")
    dynamic = OnnxStageRunner(builds[1] / spec.file, spec, ["CPUExecutionProvider"])
    graphed = StaticCudaGraphOnnxRunner(builds[1] / spec.file, spec, None, tmp_path / "pinned")
    for images in (1, 2, 1, 2):
        feeds = {"pixel_values": torch.randn(images, 3, 224, 224, generator=torch.Generator().manual_seed(images))}
        got = graphed.infer({k: v.cuda() for k, v in feeds.items()})["vit_embeds"].cpu()
        # onnxruntime's CUDA EP runs fp32 GEMMs in TF32 (its default): ~1e-3 from the CPU's answer; a replay on
        # stale inputs or into an unbound buffer is off by the values' own size
        torch.testing.assert_close(got, dynamic.infer(feeds)["vit_embeds"], rtol=1e-2, atol=5e-3)
    assert graphed.pool.made == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU; benchmarks/stream_ab.py runs this")
def test_cuda_options_reach_every_pinned_session(builds, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    spec = load_graph_spec(builds[1] / "graph_spec.yaml", views=1).stage("vit")
    graphed = StaticCudaGraphOnnxRunner(builds[1] / spec.file, spec, None, tmp_path / "pinned",
                                        cuda_options={"sdpa_kernel": "1"})  # ORT's flash attention only
    for images in (1, 2):
        graphed.infer({"pixel_values": torch.randn(images, 3, 224, 224, device="cuda")})
    for session in graphed.pool.entries.values():
        options = session.session.get_provider_options()["CUDAExecutionProvider"]
        assert options["sdpa_kernel"] == "1" and options["enable_cuda_graph"] == "1"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU; benchmarks/stream_ab.py runs this")
def test_graphed_pipeline_on_one_stream_answers_as_the_ungraphed_runner(builds, tmp_path):
    import onnxruntime

    from gr00t_export.runtime.cuda_graphs import graphed_stages

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    plain = ExportedGr00tRunner(builds[1], device="cuda")
    graphed = ExportedGr00tRunner(builds[1], device="cuda")
    graphed.stages = graphed_stages(graphed.graph, graphed.stages, graphed.dir, "cuda", tmp_path / "graphs")
    for seed in (1, 2, 1):  # a capture, a replay on new inputs, a replay of the first
        obs = grid_observation(plain.interface, 1, seed)
        want, got = plain.get_action(obs, seed=seed), graphed.get_action(obs, seed=seed)
        for key, value in want.items():
            # TF32 GEMMs, and kernels picked for pinned shapes: ~1e-3 (the capture bug this guards was O(1), NaN)
            np.testing.assert_allclose(got[key], value, rtol=1e-2, atol=5e-3, err_msg=f"{key}, seed {seed}")
