"""`gr00t-export features`: batched backbone features equal what the action head receives for each step run alone;
both file formats read back the same records; an interrupted or time-boxed run resumes to the same file; bad
inputs are one line and leave nothing behind; real PickNPlace steps run on the CPU."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from gr00t_export.cli import cli_errors, either_separator
from gr00t_export.data.lerobot import LeRobotDataset
from gr00t_export.data.synthetic import make_dataset
from gr00t_export.errors import InputError
from gr00t_export.families import family_for_preset
from gr00t_export.families.base import make_noise
from gr00t_export.families.n1_5.embodiments import load_modality_config
from gr00t_export.pipeline.build import BuildOptions, build
from gr00t_export.runtime.runner import ExportedGr00tRunner, run_pipeline
from gr00t_export.tools.features import (
    FeaturesFile,
    FeaturesOptions,
    PartStore,
    backbone_graph,
    extract_features,
    features_cmd,
    parse_episodes,
)
from gr00t_export.util import sha256_file

REPO = Path(__file__).resolve().parents[1]
CONFIG = "fourier_gr1_arms_only"
EPISODE_LENGTH = 40


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def dataset(work: Path) -> Path:
    """Two episodes with different tasks, whose prompts differ in length (so a chunk holds two instructions)."""
    return make_dataset(work / "dataset", load_modality_config(CONFIG), num_episodes=2,
                        episode_length=EPISODE_LENGTH)


@pytest.fixture(scope="module")
def fp16_build(work: Path) -> Path:
    checkpoint = family_for_preset("tiny").make_checkpoint(work / "ckpt", "tiny", 0, embodiment="gr1",
                                                           modality_config=CONFIG, show_progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build(BuildOptions(model_path=checkpoint, output=work / "build_fp16", precision="fp16")).output
    finally:
        torch.set_num_threads(threads)


def options(build_dir: Path, dataset: Path, out: Path, **kw) -> FeaturesOptions:
    return FeaturesOptions(artifact_dir=build_dir, dataset_path=dataset, out=out, device="cpu", show_progress=False,
                           **kw)


@pytest.fixture(scope="module")
def reference_file(work: Path, fp16_build: Path, dataset: Path) -> Path:
    """The uninterrupted run: batches of 8, chunks of 24 steps (chunk 1 spans both episodes' instructions)."""
    result = extract_features(options(fp16_build, dataset, work / "reference.safetensors", batch_size=8,
                                      chunk_steps=24))
    assert result.out is not None and result.computed_steps == 2 * EPISODE_LENGTH
    print(f"tiny fp16 build, CPU: {result.steps_per_second:.1f} steps/s (batch 8, {torch.get_num_threads()} "
          "threads)")
    return result.out


def single_step_oracle(runner: ExportedGr00tRunner, dataset: Path, episode: int, frame: int):
    """What the denoiser receives when the whole exported pipeline runs this one step alone (batch 1)."""
    obs = LeRobotDataset(dataset).observation(episode, frame, runner.interface)
    raw = runner.reader(obs)
    trace: dict = {}
    run_pipeline(runner.graph, runner.stages, raw, make_noise((1, *runner.interface.noise_shape), None, 0), trace)
    feeds = trace["denoising_subgraph"]
    return feeds["backbone_features"][0], feeds["backbone_attention_mask"][0], raw.external["instructions"][0]


# ------------------------------------------------------------------------------------------- the graph


def test_backbone_stages_are_found_from_the_graph_edges(fp16_build: Path):
    spec = ExportedGr00tRunner(fp16_build).graph
    graph = backbone_graph(spec)
    assert graph.stage_names == ["preprocess_video", "eagle2_tokenizer", "vit", "llm"]  # no state, no denoiser
    assert graph.features == "llm/backbone_features"
    assert graph.sources == {"attention_mask": "eagle2_tokenizer/attention_mask",
                             "input_ids": "eagle2_tokenizer/input_ids"}
    # names are not hard-coded: the same graph with the stages renamed is found the same way
    renames = {"llm": "language_model", "vit": "vision", "eagle2_tokenizer": "tokenizer"}

    def renamed(stage):
        inputs = tuple(dataclasses.replace(t, source="/".join([renames.get(t.source.split("/")[0],
                                                                           t.source.split("/")[0]),
                                                               *t.source.split("/")[1:]]))
                       for t in stage.inputs)
        return dataclasses.replace(stage, name=renames.get(stage.name, stage.name), inputs=inputs)

    other = backbone_graph(dataclasses.replace(spec, stages=tuple(renamed(s) for s in spec.stages)))
    assert other.stage_names == ["preprocess_video", "tokenizer", "vision", "language_model"]
    assert other.taps["attention_mask"] == ("language_model", "attention_mask")
    no_features = dataclasses.replace(spec, stages=tuple(s for s in spec.stages if s.name != "llm"))
    with pytest.raises(InputError, match="0 stages producing 'backbone_features'"):
        backbone_graph(no_features)


# ------------------------------------------------------------------------------------------- batched == alone


def test_batched_features_equal_each_step_run_alone(reference_file: Path, fp16_build: Path, dataset: Path):
    features = FeaturesFile(reference_file)
    assert len(features) == 2 * EPISODE_LENGTH
    assert [(int(e), int(f)) for e, f in zip(features.episode_index, features.frame_index, strict=True)] == \
        [(e, f) for e in range(2) for f in range(EPISODE_LENGTH)]
    runner = ExportedGr00tRunner(fp16_build)
    lengths = set()
    # chunk edges (23/24), both episodes, the step where the instruction changes inside chunk 1 (39 -> 40)
    for index in (0, 5, 23, 24, 39, 40, 47, 79):
        record = features[index]
        want, mask, instruction = single_step_oracle(runner, dataset, record.episode_index, record.frame_index)
        assert record.features.dtype == torch.float16 and record.features.shape == want.shape
        assert torch.equal(record.features, want), (index, (record.features.float() - want.float()).abs().max())
        assert torch.equal(record.tokens["attention_mask"], mask) and record.instruction == instruction
        assert bool(record.tokens["attention_mask"].all())  # stored unpadded: every token is real
        lengths.add(record.features.shape[0])
    assert len(lengths) == 2  # the two instructions' prompts differ in length: neither was padded to the other


def test_batch_size_does_not_change_the_features(work: Path, fp16_build: Path, dataset: Path, reference_file: Path):
    result = extract_features(options(fp16_build, dataset, work / "batch3.parquet", batch_size=3, chunk_steps=50,
                                      episodes=[1, 0], max_steps=30))
    batch3, reference = FeaturesFile(result.out), FeaturesFile(reference_file)
    # the given episode order is kept: episode 1 first
    assert [r.episode_index for r in batch3] == [1] * 30 and [r.frame_index for r in batch3] == list(range(30))
    for record in batch3:
        same = reference[EPISODE_LENGTH + record.frame_index]
        assert torch.equal(record.features, same.features) and record.instruction == same.instruction


# ------------------------------------------------------------------------------------------- files


def test_both_formats_read_back_the_same_records_and_metadata(work: Path, fp16_build: Path, dataset: Path,
                                                             reference_file: Path):
    parquet = extract_features(options(fp16_build, dataset, work / "all.parquet", batch_size=8, chunk_steps=24)).out
    a, b = FeaturesFile(reference_file), FeaturesFile(parquet)
    assert len(a) == len(b) == 2 * EPISODE_LENGTH
    for left, right in zip(a, b, strict=True):
        assert (left.episode_index, left.frame_index, left.instruction) == \
            (right.episode_index, right.frame_index, right.instruction)
        assert torch.equal(left.features, right.features)
        assert all(torch.equal(left.tokens[k], right.tokens[k]) for k in ("attention_mask", "input_ids"))
    manifest = json.loads((fp16_build / "manifest.json").read_text())
    meta = a.metadata
    assert meta["build"]["manifest_sha256"] == manifest["manifest_sha256"]
    assert meta["build"]["source_fingerprint_sha256"] == manifest["source"]["fingerprint_sha256"]
    assert meta["build"]["precision"] == "fp16" and meta["dtype"] == "float16" and meta["dim"] == 64
    assert meta["dataset"]["path"] == str(dataset.resolve()) and meta["episodes"] == [0, 1]
    assert meta["stages"] == ["preprocess_video", "eagle2_tokenizer", "vit", "llm"]
    tasks = {json.loads(line)["task"] for line in (dataset / "meta" / "tasks.jsonl").read_text().splitlines()}
    assert set(meta["instructions"]) <= tasks and len(set(meta["instructions"])) == 2
    assert {k: v for k, v in b.metadata.items() if k != "instructions"} == \
        {k: v for k, v in meta.items() if k != "instructions"}
    assert not (work / ".all.features-parts").exists() and not list(work.glob(".all.parquet.tmp-*"))


@pytest.mark.parametrize("suffix", [".safetensors", ".parquet"])
def test_bf16_features_round_trip_bit_exact(work: Path, reference_file: Path, suffix: str):
    """bf16 builds: Arrow has no bfloat16, so parquet stores the bit patterns; both formats give them back."""
    from gr00t_export.tools.features import _write_parquet, _write_safetensors

    source = FeaturesFile(reference_file)
    records = [dataclasses.replace(source[i], features=(source[i].features.float() * 3.3).to(torch.bfloat16))
               for i in range(0, 2 * EPISODE_LENGTH, 7)]
    store = PartStore(work / f"bf16{suffix}", {"test": suffix})
    store.open(lambda m: None)
    store.write(0, records[:6], "cpu")
    store.write(1, records[6:], "cpu")
    out = work / f"bf16{suffix}"
    meta = {**source.metadata, "dtype": "bfloat16"}
    (_write_parquet if suffix == ".parquet" else _write_safetensors)(store, 2, meta, out)
    back = FeaturesFile(out)
    assert len(back) == len(records)
    for want, got in zip(records, back, strict=True):
        assert got.features.dtype == torch.bfloat16 and torch.equal(got.features, want.features)
        assert (got.episode_index, got.frame_index, got.instruction) == \
            (want.episode_index, want.frame_index, want.instruction)
    store.remove()


# ------------------------------------------------------------------------------------------- resuming


def test_time_boxed_runs_resume_to_the_uninterrupted_file(work: Path, fp16_build: Path, dataset: Path,
                                                           reference_file: Path):
    out = work / "resumed.safetensors"
    parts = work / ".resumed.features-parts"
    first = extract_features(options(fp16_build, dataset, out, batch_size=8, chunk_steps=24, time_limit=0))
    assert first.out is None and first.chunks_done == 1 and first.chunks == 4 and not out.exists()
    assert sorted(p.name for p in parts.iterdir()) == ["index.json", "part-00000.safetensors"]
    second = extract_features(options(fp16_build, dataset, out, batch_size=8, chunk_steps=24, time_limit=0))
    assert second.chunks_resumed == 1 and second.chunks_done == 2 and second.computed_steps == 24
    # damage: a flipped byte in part 1, the temp file of a write that was killed, a part the index never recorded
    part = parts / "part-00001.safetensors"
    data = bytearray(part.read_bytes())
    data[-5] ^= 0xFF
    part.write_bytes(bytes(data))
    (parts / f".part-00002.safetensors.tmp-{os.getpid() + 1}").write_bytes(b"half")
    (parts / "part-00003.safetensors").write_bytes(b"never indexed")
    logs: list[str] = []
    last = extract_features(options(fp16_build, dataset, out, batch_size=5, chunk_steps=24), log=logs.append)
    assert last.chunks_resumed == 1 and last.computed_steps == 2 * EPISODE_LENGTH - 24
    assert any("part-00001.safetensors is missing or does not match its hash" in m for m in logs)
    assert sha256_file(out) == sha256_file(reference_file)  # byte for byte the uninterrupted run's file
    assert not parts.exists()


def _same_records(a: Path, b: Path) -> bool:
    left, right = FeaturesFile(a), FeaturesFile(b)
    return len(left) == len(right) and all(
        torch.equal(x.features, y.features) and (x.episode_index, x.frame_index) == (y.episode_index, y.frame_index)
        for x, y in zip(left, right, strict=True))


def test_parts_serve_either_format_and_other_inputs_discard_them(work: Path, fp16_build: Path, dataset: Path):
    started = extract_features(options(fp16_build, dataset, work / "switch.safetensors", chunk_steps=16,
                                       time_limit=0, episodes=[0]))
    assert started.out is None
    finished = extract_features(options(fp16_build, dataset, work / "switch.parquet", chunk_steps=16, episodes=[0]))
    assert finished.chunks_resumed == 1 and finished.computed_steps == EPISODE_LENGTH - 16
    extract_features(options(fp16_build, dataset, work / "other.parquet", chunk_steps=16, time_limit=0,
                             episodes=[0]))
    logs: list[str] = []
    result = extract_features(options(fp16_build, dataset, work / "other.parquet", chunk_steps=16, episodes=[1]),
                              log=logs.append)
    assert result.chunks_resumed == 0 and any("discarding the parts of an earlier run" in m for m in logs)
    assert {r.episode_index for r in FeaturesFile(result.out)} == {1}


def test_foreign_parts_dirs_are_refused_and_kept(work: Path, fp16_build: Path, dataset: Path):
    foreign = work / ".mine.features-parts"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("the user's")
    with pytest.raises(InputError, match="was not written by gr00t-export features"):
        extract_features(options(fp16_build, dataset, work / "mine.parquet", chunk_steps=16))
    assert (foreign / "notes.txt").read_text() == "the user's"


def _cli_script(build_dir: Path, dataset: Path, out: Path) -> list[str]:
    code = ("import sys, typer; from gr00t_export.cli import cli_errors, either_separator; "
            "from gr00t_export.tools.features import features_cmd; "
            "app = typer.Typer(context_settings={'token_normalize_func': either_separator}); "
            "app.command()(cli_errors(features_cmd)); app()")
    return [sys.executable, "-c", code, str(build_dir), "--dataset-path", str(dataset), "--out", str(out),
            "--batch_size", "2", "--chunk_steps", "8", "--device", "cpu"]


def test_ctrl_c_mid_run_keeps_finished_chunks_and_the_rerun_completes(work: Path, fp16_build: Path, dataset: Path,
                                                                      reference_file: Path):
    out = work / "interrupted.safetensors"
    index = work / ".interrupted.features-parts" / "index.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli_script(fp16_build, dataset, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(json.loads(index.read_text())["parts"]) >= 1:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert not out.exists() and "Traceback" not in stderr
    done = len(json.loads(index.read_text())["parts"])
    assert 1 <= done < 10  # 80 steps in chunks of 8
    rerun = extract_features(options(fp16_build, dataset, out, batch_size=2, chunk_steps=8))
    assert rerun.chunks_resumed == done and rerun.computed_steps == 2 * EPISODE_LENGTH - 8 * done
    assert _same_records(out, reference_file)


# ------------------------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    """The command as the lead registers it on gr00t-export's app."""
    app = typer.Typer(context_settings={"token_normalize_func": either_separator}, pretty_exceptions_enable=False)
    app.command()(cli_errors(features_cmd))
    return app


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_the_command_writes_the_file_and_says_so(cli, work: Path, fp16_build: Path, dataset: Path):
    out = work / "cli.safetensors"
    result = CliRunner().invoke(cli, [str(fp16_build), "--dataset-path", str(dataset), "--out", str(out),
                                      "--episodes", "1", "--max_steps", "12", "--batch-size", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out} (12 steps" in " ".join(result.stderr.split()) and "steps/s on cpu" in result.stderr
    assert [r.frame_index for r in FeaturesFile(out)] == list(range(12))


def test_bad_inputs_are_one_line_and_leave_nothing(cli, work: Path, fp16_build: Path, dataset: Path):
    bad = work / "bad"
    bad.mkdir()
    foreign = bad / "theirs.safetensors"
    foreign.write_bytes(b"not ours")
    base = [str(fp16_build), "--dataset_path", str(dataset)]
    cases = {
        "must end in .safetensors or .parquet": [*base, "--out", str(bad / "f.npz")],
        "lies inside the input --dataset_path": [*base, "--out", str(dataset / "f.parquet")],
        "exists and was not written by this gr00t-export command": [*base, "--out", str(foreign)],
        "--episodes names 7, not in": [*base, "--out", str(bad / "f.parquet"), "--episodes", "0,7"],
        "is not a list of episode indices": [*base, "--out", str(bad / "f.parquet"), "--episodes", "a-b"],
        "--batch_size must be an integer >= 1": [*base, "--out", str(bad / "f.parquet"), "--batch_size", "0"],
        "--max_steps must be an integer >= 1": [*base, "--out", str(bad / "f.parquet"), "--max_steps", "0"],
        "does not exist; run `gr00t-export build` first": [str(bad / "nobuild"), "--dataset_path", str(dataset),
                                                           "--out", str(bad / "f.parquet")],
        "is not a directory; pass a LeRobot v2 dataset": [str(fp16_build), "--dataset_path", str(bad / "nods"),
                                                          "--out", str(bad / "f.parquet")],
    }
    if not torch.cuda.is_available():
        cases["no CUDA GPU is visible"] = [*base, "--out", str(bad / "f.parquet"), "--device", "cuda"]
    for message, args in cases.items():
        line = _error_line(CliRunner().invoke(cli, args))
        assert message in line, (message, line)
    assert sorted(p.name for p in bad.iterdir()) == ["theirs.safetensors"]
    assert foreign.read_bytes() == b"not ours"
    assert not list(dataset.glob("*.parquet")) and not list(bad.glob(".f.*"))


def test_a_safetensors_file_larger_than_memory_is_refused_before_assembly(tmp_path: Path):
    from gr00t_export.tools.features import available_memory, check_memory_for

    free = available_memory()
    if free is None:
        pytest.skip("this system does not report MemAvailable")
    check_memory_for(free // 4, tmp_path / "f.safetensors")
    with pytest.raises(InputError, match=r"re-run with --out .*f\.parquet \(streamed; the finished chunks are reused"):
        check_memory_for(free * 2, tmp_path / "f.safetensors")


def test_parse_episodes():
    assert parse_episodes(None) is None
    assert parse_episodes("3, 0-2,2") == [3, 0, 1, 2]
    with pytest.raises(InputError, match="empty or negative"):
        parse_episodes("5-2")


# ------------------------------------------------------------------------------------------- real data, example


def test_picknplace_steps_on_cpu(work: Path, fp16_build: Path, pick_n_place: Path):
    result = extract_features(options(fp16_build, pick_n_place, work / "pnp.parquet", episodes=[1], max_steps=16,
                                      batch_size=8, chunk_steps=8))
    print(f"PickNPlace, tiny fp16 build, CPU: {result.steps_per_second:.1f} steps/s")
    records = list(FeaturesFile(result.out))
    assert [r.frame_index for r in records] == list(range(16)) and {r.episode_index for r in records} == {1}
    interface = ExportedGr00tRunner(fp16_build).interface
    task = LeRobotDataset(pick_n_place).observation(1, 0, interface)[interface.language_key]
    assert {r.instruction for r in records} == {str(task[0])} and "sweet potato" in str(task[0])
    assert all(torch.isfinite(r.features.float()).all() and r.features.shape[1] == 64 for r in records)
    # frames change along the episode, so do the features
    assert not torch.equal(records[0].features, records[15].features)


def test_reader_example_trains_a_student(reference_file: Path, dataset: Path):
    proc = subprocess.run([sys.executable, str(REPO / "export_examples" / "features" / "train_student.py"),
                           str(reference_file), "--dataset_path", str(dataset), "--epochs", "6"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 * EPISODE_LENGTH and summary["last_loss"] < summary["first_loss"]


def test_stored_token_ids_are_the_prompt_of_the_step(reference_file: Path, fp16_build: Path):
    runner = ExportedGr00tRunner(fp16_build)
    features = FeaturesFile(reference_file)
    for record in (features[0], features[-1]):
        tokens = runner.stages["eagle2_tokenizer"].infer({"instructions": [record.instruction]})
        assert torch.equal(record.tokens["input_ids"], tokens["input_ids"][0])
        assert record.features.shape[0] == tokens["input_ids"].shape[1]
