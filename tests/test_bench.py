"""`gr00t-export bench` on CPU: a smoke test of the timing harness (GPU figures come from benchmarks/)."""

import json

import pytest

from gr00t_export.bench import bench, floor_analysis, table_rows, write_json
from gr00t_export.build import BuildOptions, build
from gr00t_export.config import preset
from gr00t_export.make_checkpoint import make_checkpoint


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
    assert header[-1] == "vs eager" and rows[0][-1] == "1.000"
    write_json(results, tmp_path / "b.json", {"device": "cpu"})
    assert json.loads((tmp_path / "b.json").read_text())["results"][0]["backend"] == "torch"


def test_floor_analysis_of_the_full_size_config():
    floor = {f["stage"]: f for f in floor_analysis(preset("n1.5-3b"), seq_len=296, views=1, steps=4)}
    # weights alone: SigLIP-400M tower, 12 Qwen3 layers, the DiT re-read every Euler step
    assert 350 < floor["vit"]["params_M"] < 450 and floor["llm"]["params_M"] > 500
    assert floor["denoising_subgraph"]["weight_read_ms"] > floor["llm"]["weight_read_ms"]
    assert all(f["floor_ms"] == max(f["weight_read_ms"], f["compute_ms"]) for f in floor.values())
