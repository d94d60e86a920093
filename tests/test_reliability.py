"""Issue 8, reliability: every failure a user can cause, through the real CLI in a real subprocess.

Each case asserts the contract of `gr00t_export.errors`/`cli_errors`:

* one clear line: exactly one non-empty stderr line, starting `error:` (`interrupted:` for Ctrl-C), naming the
  problem and the fix; no `Traceback` in stdout or stderr;
* the exit code: 2 for input errors, 1 for validation failures, 130 for SIGINT;
* nothing partial: the output dir does not exist (or is byte-for-byte unchanged) and no `.<name>.*` temp sibling
  remains;
* idempotent re-runs: the same command, with the problem fixed, succeeds (input errors fail before anything is
  written, so their re-run starts from the same disk state as a fresh run; the cases that do write, file-size limit
  and SIGKILL, re-run the build itself).

The OS is not mocked: RLIMIT_FSIZE is a real limit set in the child (SIGXFSZ ignored, so Python sees EFBIG), signals
are real signals to a real `build`, files are really truncated/flipped/rewritten.

Manifest integrity: every file the manifest lists carries its size and sha256 (checked before anything is loaded:
a TorchScript file is code), and the manifest itself carries `manifest_sha256`, the sha256 of its canonical JSON
less `files` (each of those has its own hash). So a hand-edited manifest whose file hashes all still match (precision
changed, state keys reordered) is refused like a modified artifact, naming manifest.json. The seal catches edits and
corruption, not forgery (whoever rewrites the manifest can recompute it).

`GR00T_CASE_TABLE=1` writes the case table (case, message, exit code, what was left) to out/reliability_cases.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gr00t_export.data.synthetic import make_dataset
from gr00t_export.errors import InputError, ValidationFailure
from gr00t_export.families.n1_5.embodiments import load_modality_config, modality_config_to_dict
from gr00t_export.families.n1_5.synthetic import make_checkpoint
from gr00t_export.util import sha256_file

REPO = Path(__file__).resolve().parents[1]
CONFIG = "fourier_gr1_arms_only"
ROWS: list[tuple[str, str, str, str, str]] = []
TMP_ROOT: list[str] = []  # pytest's basetemp, shown as <tmp> in the case table
# rich wraps at 80 columns when stderr is not a terminal; a COLUMNS from the caller would hide a wrapped line.
ENV = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | {"PYTHONUNBUFFERED": "1"}
BUILD_FLAGS = ("--no-simplify", "--no-validate")


# ------------------------------------------------------------------------------------------------ helpers


def cli_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "gr00t_export", *map(str, args)]


def cli(*args, timeout: float = 300, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run(cli_cmd(*args), capture_output=True, text=True, timeout=timeout, env=ENV,
                          preexec_fn=preexec_fn, cwd=REPO)


def cli_parallel(*commands: tuple, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Independent read-only commands, run at the same time."""
    procs = [subprocess.Popen(cli_cmd(*c), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                              cwd=REPO) for c in commands]
    results = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return results


def one_line(res: subprocess.CompletedProcess, code: int, *needles: str, prefix: str = "error:") -> str:
    """The contract: exit `code`, no traceback, exactly one non-empty stderr line starting `prefix`."""
    shown = f"exit {res.returncode}\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stdout + res.stderr, shown
    assert res.returncode == code, shown
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, shown
    line = lines[0].strip()
    assert line.startswith(prefix), shown
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def ok(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stdout + res.stderr


def snapshot(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): sha256_file(p) if p.is_file() else "<dir>" for p in sorted(root.rglob("*"))}


def leftovers(out: Path) -> list[Path]:
    """Temp siblings of `out`: `.<name>.tmp-<pid>` (atomic_output_dir), `.<name>.old-*`, `.<name>.<random>`."""
    return sorted(out.parent.glob(f".{out.name}.*"))


def nothing_partial(out: Path, before: dict[str, str] | None = None) -> str:
    """Asserts the output is absent (or unchanged) and no temp sibling remains; returns what is on disk."""
    assert not leftovers(out), leftovers(out)
    if before is None:
        assert not out.exists(), f"{out} was created: {sorted(snapshot(out))[:5]}"
        return "nothing (no output, no temp)"
    assert snapshot(out) == before, f"{out} changed"
    return "output unchanged, no temp"


def record(case: str, command: str, res: subprocess.CompletedProcess | int, message: str, left: str) -> None:
    code = res if isinstance(res, int) else res.returncode
    for root in TMP_ROOT:
        message = message.replace(root, "<tmp>")
    ROWS.append((case, command, str(code), message, left))


def copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def rewrite_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


@contextlib.contextmanager
def never_unpickles():
    """torch.load / pickle.load(s) raise inside the block (asserting non-use: no component is replaced)."""
    calls: list[str] = []

    def refuse(name):
        def fn(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called: loading must never unpickle")
        return fn

    targets = [(torch, "load"), (torch.serialization, "load"), (pickle, "load"), (pickle, "loads")]
    saved = [(mod, attr, getattr(mod, attr)) for mod, attr in targets]
    for mod, attr in targets:
        setattr(mod, attr, refuse(f"{mod.__name__}.{attr}"))
    try:
        yield calls
    finally:
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)


def fsize_limit(nbytes: int):
    """preexec_fn: a real RLIMIT_FSIZE in the child; SIGXFSZ ignored so the write fails with EFBIG."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return apply


def wait_for_temp(proc: subprocess.Popen, out: Path, timeout: float = 240) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(out.parent.glob(f".{out.name}.tmp-*"))
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"build ended (exit {proc.returncode}) before its temp dir appeared:\n"
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no temp dir for {out} after {timeout} s")


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def case_table(tmp_path_factory):
    TMP_ROOT.append(str(tmp_path_factory.getbasetemp()))
    yield
    if os.environ.get("GR00T_CASE_TABLE") != "1" or not ROWS:
        return
    out = REPO / "out" / "reliability_cases.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["| case | command | exit | message | left on disk |", "|---|---|---|---|---|"]
    for row in ROWS:
        lines.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |")
    out.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def ckpt(ws: Path) -> Path:
    with never_unpickles():
        return make_checkpoint(ws / "ckpt", "tiny", 0, "gr1", CONFIG, show_progress=False)


@pytest.fixture(scope="module")
def dataset(ws: Path) -> Path:
    return make_dataset(ws / "dataset", load_modality_config(CONFIG), num_episodes=1, episode_length=8)


@pytest.fixture(scope="module")
def obs(ws: Path, dataset: Path) -> dict[str, np.ndarray]:
    from gr00t_export.data.lerobot import LeRobotDataset

    return LeRobotDataset(dataset).observation(0, 0, load_modality_config(CONFIG))


@pytest.fixture(scope="module")
def obs_file(ws: Path, obs) -> Path:
    path = ws / "obs.npz"
    np.savez(path, **obs)
    return path


@pytest.fixture(scope="module")
def built(ws: Path, ckpt: Path, obs) -> dict:
    """The reference build, in process, with torch.load/pickle.load(s) refusing: loading a checkpoint, building
    and running the exported policy never unpickle anything."""
    from gr00t_export.families.n1_5.checkpoint import load_model, open_checkpoint
    from gr00t_export.pipeline.build import BuildOptions, build
    from gr00t_export.runtime.runner import ExportedGr00tRunner

    with never_unpickles() as calls:
        load_model(open_checkpoint(ckpt))
        out = build(BuildOptions(model_path=ckpt, output=ws / "artifacts")).output
        actions = ExportedGr00tRunner(out).get_action(obs)
    return {"dir": Path(out), "calls": calls, "actions": actions}


# ------------------------------------------------------------------------------------------------ 1-9: inputs


CHECKPOINT_CASES = {
    # name: (make the broken --model_path, expected needles)
    "model_path missing": (lambda ckpt, tmp: tmp / "no_such_ckpt", ("is not a directory",)),
    "model_path empty dir": (lambda ckpt, tmp: (tmp / "empty").mkdir() or tmp / "empty",
                             ("has no config.json", "not a checkpoint")),
    "model_path is a file": (lambda ckpt, tmp: (tmp / "ckpt.txt").write_text("x") and tmp / "ckpt.txt",
                             ("is not a directory",)),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_model_path_not_a_checkpoint(case: str, ckpt: Path, tmp_path: Path):
    make, needles = CHECKPOINT_CASES[case]
    bad, out = make(ckpt, tmp_path), tmp_path / "out"
    before = snapshot(tmp_path)
    res = cli("build", "--model_path", bad, "--output", out, *BUILD_FLAGS)
    line = one_line(res, 2, *needles)
    left = nothing_partial(out)
    assert snapshot(tmp_path) == before
    record(f"1 {case}", "build", res, line, left)


def _corrupt(ckpt: Path, tmp: Path, name: str) -> Path:
    """A private copy of the checkpoint with one problem; returns its path."""
    bad = copy(ckpt, tmp / "ckpt")
    cfg, weights, meta = bad / "config.json", bad / "model.safetensors", bad / "experiment_cfg" / "metadata.json"
    if name == "config.json unparsable":
        cfg.write_text(cfg.read_text()[:200])
    elif name.startswith("config.json model_type"):
        rewrite_json(cfg, lambda d: d.update(model_type=name.split()[-1]))
    elif name == "safetensors truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif name.startswith("safetensors"):
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(weights))
        key = "action_head.action_encoder.W1.W"
        assert key in tensors, sorted(tensors)[:20]
        if name == "safetensors missing key":
            del tensors[key]
        elif name == "safetensors extra key":
            tensors["action_head.not_a_layer.weight"] = torch.zeros(3)
        else:
            tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 1, *tensors[key].shape[2:])
        save_file(tensors, str(weights), metadata={"format": "pt"})
    elif name == "metadata without statistics for the tag":
        rewrite_json(meta, lambda d: d["gr1"].pop("statistics"))
    elif name == "metadata without the tag":
        rewrite_json(meta, lambda d: d.update(new_embodiment=d.pop("gr1")))
    else:
        raise AssertionError(name)
    return bad


CORRUPTIONS = {
    "config.json unparsable": ("config.json", "is not valid JSON", "restore"),
    "config.json model_type gr00t_n1": ("model_type 'gr00t_n1'", "not 'gr00t_n1_5'"),
    "config.json model_type llama": ("model_type 'llama'", "not 'gr00t_n1_5'"),
    "safetensors truncated": ("model.safetensors", "truncated or corrupt", "re-copy"),
    "safetensors missing key": ("1 missing key(s): action_head.action_encoder.W1.W",),
    "safetensors extra key": ("1 unexpected key(s): action_head.not_a_layer.weight",),
    "safetensors mis-shaped tensor": ("1 mis-shaped key(s): action_head.action_encoder.W1.W",),
    "metadata without statistics for the tag": ("'gr1' has no statistics", "regenerate metadata.json"),
    "metadata without the tag": ("No metadata found for embodiment tag: gr1", "has: new_embodiment"),
}
CASE_NUMBER = {"config.json": "2", "safetensors truncated": "3", "safetensors": "4", "metadata": "6"}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_broken_checkpoint(case: str, ckpt: Path, tmp_path: Path):
    bad, out = _corrupt(ckpt, tmp_path, case), tmp_path / "out"
    before = snapshot(tmp_path)
    # asked for explicitly: left out, the tag would be the metadata's only one (new_embodiment)
    tag = ("--embodiment_tag", "gr1") if case == "metadata without the tag" else ()
    res = cli("build", "--model_path", bad, *tag, "--output", out, *BUILD_FLAGS)
    line = one_line(res, 2, *CORRUPTIONS[case])
    left = nothing_partial(out)
    assert snapshot(tmp_path) == before, "a failed build touched its inputs"
    number = next(v for k, v in CASE_NUMBER.items() if case.startswith(k))
    record(f"{number} {case}", "build", res, line, left)


def test_broken_checkpoint_fixed_rerun(ckpt: Path, obs_file: Path, tmp_path: Path):
    """Restoring the broken file (the fix every message above names) makes the same checkpoint dir work again."""
    bad = _corrupt(ckpt, tmp_path, "safetensors truncated")
    res = cli("predict", "--model_path", bad, "--obs", obs_file)
    one_line(res, 2, "truncated or corrupt")
    shutil.copy2(ckpt / "model.safetensors", bad / "model.safetensors")
    res = cli("predict", "--model_path", bad, "--obs", obs_file, "--out", tmp_path / "actions.npz")
    ok(res)
    assert set(np.load(tmp_path / "actions.npz")) == {f"action.{k}" for k in
                                                      ("left_arm", "right_arm", "left_hand", "right_hand")}
    record("2-6 re-run after restoring the file", "predict", res, "(actions table)", "actions.npz")


def test_unknown_embodiment_tag(ckpt: Path, tmp_path: Path):
    out = tmp_path / "out"
    res = cli("build", "--model_path", ckpt, "--embodiment_tag", "robot_x", "--output", out, *BUILD_FLAGS)
    line = one_line(res, 2, "unknown embodiment tag 'robot_x'", "gr1", "new_embodiment")
    record("5 unknown embodiment tag", "build", res, line, nothing_partial(out))


def test_eagle_dir_without_tokenizer(ckpt: Path, tmp_path: Path):
    eagle, out = tmp_path / "eagle", tmp_path / "out"
    eagle.mkdir()
    shutil.copy2(ckpt / "eagle" / "config.json", eagle / "config.json")
    res = cli("build", "--model_path", ckpt, "--eagle_path", eagle, "--output", out, *BUILD_FLAGS)
    line = one_line(res, 2, str(eagle), "vocab.json", "merges.txt", "eagle2_hg_model")
    record("7 Eagle dir without tokenizer files", "build", res, line, nothing_partial(out))


def test_modality_config_key_the_metadata_lacks(ckpt: Path, tmp_path: Path):
    cfg = modality_config_to_dict(load_modality_config(CONFIG))
    cfg["name"] = "arms_and_waist"
    cfg["state_keys"] = [*cfg["state_keys"], "state.waist"]
    yml, out = tmp_path / "arms_and_waist.yaml", tmp_path / "out"
    yml.write_text(yaml.safe_dump(cfg))
    res = cli("build", "--model_path", ckpt, "--modality_config", yml, "--output", out, *BUILD_FLAGS)
    line = one_line(res, 2, "state.waist", "modality config without it")
    record("8 modality YAML with a state key the metadata lacks", "build", res, line, nothing_partial(out))


def _edit_dataset(dataset: Path, tmp: Path, case: str) -> Path:
    ds = copy(dataset, tmp / "ds")
    meta = ds / "meta"
    if case == "state dims differ from modality.json":
        rewrite_json(meta / "modality.json", lambda d: d["state"]["left_arm"].update(end=d["state"]["left_arm"]["end"]
                                                                                    - 2))
    elif case == "no video key":
        rewrite_json(meta / "modality.json", lambda d: d.update(video={}))
    elif case == "frames of an unexpected size":
        rewrite_json(meta / "info.json", lambda d: d["features"]["observation.images.ego_view"].update(
            shape=[128, 128, 3]))
    elif case == "NaN in the parquet state":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = next((ds / "data").rglob("*.parquet"))
        table = pq.read_table(path)
        state = np.array(table.column("observation.state").to_pylist())
        state[0, 3] = np.nan
        idx = table.column_names.index("observation.state")
        pq.write_table(table.set_column(idx, "observation.state", pa.array(list(state))), path)
    else:
        raise AssertionError(case)
    return ds


DATASET_CASES = {
    "state dims differ from modality.json": ("8", ("state.left_arm", "(T, 7)", "meta/modality.json")),
    "no video key": ("9", ("video key video.ego_view is not in", "modality.json")),
    "frames of an unexpected size": ("9", ("(256, 256, 3)", "info.json says (128, 128, 3)")),
    "NaN in the parquet state": ("10", ("state.left_arm contains NaN or inf",)),
}


@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_dataset_does_not_match(case: str, ckpt: Path, dataset: Path, tmp_path: Path):
    number, needles = DATASET_CASES[case]
    ds, out = _edit_dataset(dataset, tmp_path, case), tmp_path / "out"
    before = snapshot(ds)
    res = cli("build", "--model_path", ckpt, "--dataset_path", ds, "--output", out, *BUILD_FLAGS)
    line = one_line(res, 2, *needles)
    left = nothing_partial(out)
    assert snapshot(ds) == before
    record(f"{number} dataset: {case}", "build --dataset_path", res, line, left)


# ------------------------------------------------------------------------------------------------ 10: NaN/inf


def test_nan_or_inf_in_observation(ckpt: Path, obs, tmp_path: Path):
    commands, actions = [], tmp_path / "actions.npz"
    for value in ("nan", "inf"):
        bad = {k: v.copy() for k, v in obs.items()}
        bad["state.right_hand"][0, 2] = float(value)
        np.savez(tmp_path / f"obs_{value}.npz", **bad)
        commands.append(("predict", "--model_path", ckpt, "--obs", tmp_path / f"obs_{value}.npz", "--out", actions))
    for value, res in zip(("nan", "inf"), cli_parallel(*commands), strict=True):
        line = one_line(res, 2, "state.right_hand contains NaN or inf")
        record(f"10 {value} in obs.npz state", "predict --obs", res, line, "nothing (no --out file)")
    assert not actions.exists()
    np.savez(tmp_path / "obs_nan.npz", **obs)  # fixed: the same command succeeds
    ok(cli(*commands[0]))
    assert actions.is_file()


def test_nan_in_fp8_calibration_feed(built: dict, tmp_path: Path):
    from gr00t_export.pipeline.quantize import quantize_fp8

    src, out = built["dir"] / "eagle2" / "vit.onnx", tmp_path / "vit_fp8.onnx"
    import onnx

    shapes = {i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
              for i in onnx.load(str(src), load_external_data=False).graph.input}
    feed = {name: np.random.default_rng(0).standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    name = next(iter(feed))
    feed[name].flat[7] = np.nan
    before = snapshot(src.parent)
    with pytest.raises(InputError) as info:
        quantize_fp8(src, out, [feed])
    msg = str(info.value)
    assert "\n" not in msg and "NaN or inf" in msg and "calibration feed #0" in msg, msg
    assert not out.exists() and not list(tmp_path.iterdir()) and snapshot(src.parent) == before
    record("10 NaN in an FP8 calibration feed", "quantize_fp8()", 2, f"InputError: {msg}", "nothing (no output graph)")


# ------------------------------------------------------------------------ 11-13: --output, disk full, signals


def _interrupted_build(ckpt: Path, out: Path, sig: signal.Signals) -> tuple[subprocess.CompletedProcess, Path]:
    """Starts a real `build`, sends `sig` once its temp dir exists (model loaded, export under way)."""
    proc = subprocess.Popen(cli_cmd("build", "--model_path", ckpt, "--output", out, *BUILD_FLAGS),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    try:
        temp = wait_for_temp(proc, out)
        time.sleep(0.3)
        assert proc.poll() is None, "build finished before the signal"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), temp


def test_output_dir_survives_disk_full_signals_and_reruns(ckpt: Path, tmp_path: Path):
    """One output path through every way a build can stop, then the re-runs (two full builds in all).

    12: RLIMIT_FSIZE 16 KiB fails on the first TorchScript stage (libtorch's own file writer used to abort the
    process there, leaving its temp dir), 1 MiB on the first ONNX graph above it. 13: SIGINT cleans up; SIGKILL
    cannot, so its temp dir stays, is no build to `validate`, and the next build removes it. 11: the complete
    output is then refused without --force (untouched) and replaced with it.
    """
    out = tmp_path / "out"
    for limit in (16 << 10, 1 << 20):
        res = cli("build", "--model_path", ckpt, "--output", out, *BUILD_FLAGS, preexec_fn=fsize_limit(limit))
        line = one_line(res, 2, "File too large", "file-size limit", "nothing partial was kept")
        record(f"12 RLIMIT_FSIZE {limit >> 10} KiB mid-build", "build", res, line, nothing_partial(out))

    res, _ = _interrupted_build(ckpt, out, signal.SIGINT)
    line = one_line(res, 130, "nothing partial was left behind", "re-run", prefix="interrupted:")
    record("13 SIGINT mid-build", "build", res, line, nothing_partial(out))

    res, temp = _interrupted_build(ckpt, out, signal.SIGKILL)
    assert res.returncode == -signal.SIGKILL and not out.exists()
    left = sorted(p.name for p in leftovers(out))
    record("13 SIGKILL mid-build", "build", res, "(killed: no message possible)",
           f"no output; {', '.join(left) or 'no temp'} (removed by the next build)")
    target = temp if temp.exists() else out  # whatever is there is not a build: one line, nothing changed
    before = snapshot(target)
    res = cli("validate", target)
    line = one_line(res, 2, "manifest.json", "re-run")
    after = snapshot(target)
    if after.get("validation") == "<dir>" and not any(k.startswith("validation/") for k in after):
        del after["validation"]  # validate.py makes its (empty) report dir before it reads the manifest
    assert after == before
    record("13 validate what SIGKILL left", "validate", res, line, "temp dir unchanged (+ empty validation/)")

    res = cli("build", "--model_path", ckpt, "--output", out, *BUILD_FLAGS)  # the same command, nothing wrong now
    ok(res)
    assert (out / "manifest.json").is_file() and not leftovers(out), leftovers(out)
    record("12/13 re-run", "build", res, "(stage table)", "complete output; stale temp removed")

    (out / "notes.txt").write_text("mine\n")
    before = snapshot(out)
    res = cli("build", "--model_path", ckpt, "--output", out, *BUILD_FLAGS)
    line = one_line(res, 2, "exists and is not empty", "--force")
    record("11 --output exists, no --force", "build", res, line, nothing_partial(out, before))
    res = cli("build", "--model_path", ckpt, "--output", out, "--force", *BUILD_FLAGS)
    ok(res)
    assert not (out / "notes.txt").exists() and (out / "manifest.json").is_file() and not leftovers(out)
    record("11 --output exists, --force", "build --force", res, "(stage table)", "output replaced whole, no temp")


def test_file_size_limit_make_checkpoint(tmp_path: Path):
    out = tmp_path / "ckpt"
    res = cli("make-checkpoint", out, preexec_fn=fsize_limit(1 << 20))
    line = one_line(res, 2, "File too large", "model.safetensors", "file-size limit")
    record("12 RLIMIT_FSIZE 1 MiB", "make-checkpoint", res, line, nothing_partial(out))
    ok(cli("make-checkpoint", out))
    assert (out / "model.safetensors").is_file() and not leftovers(out)


# ------------------------------------------------------------------------------------------------ 14: artifacts


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _tamper(art: Path, case: str) -> str:
    """Applies one problem to a copy of the build; returns the file the error must name."""
    manifest = art / "manifest.json"
    if case == "one byte flipped":
        _flip(art / "preprocess" / "preprocess_state_action.pt")
        return "preprocess/preprocess_state_action.pt"
    if case == "artifact missing":
        (art / "eagle2" / "llm.onnx").unlink()
        return "eagle2/llm.onnx"
    if case == "manifest sha256 edited":
        rewrite_json(manifest, lambda m: next(f for f in m["files"] if f["path"] == "eagle2/vit.onnx").update(
            sha256="0" * 64))
        return "eagle2/vit.onnx"
    if case == "manifest precision edited":
        rewrite_json(manifest, lambda m: m.update(precision="fp16"))
        return "manifest.json"
    if case == "manifest state keys reordered":
        def swap(m):
            keys = m["modality_config"]["state_keys"]
            keys[0], keys[1] = keys[1], keys[0]
        rewrite_json(manifest, swap)
        return "manifest.json"
    if case == "manifest truncated":
        manifest.write_text(manifest.read_text()[:500])
        return "manifest.json"
    raise AssertionError(case)


TAMPER_CASES = ["one byte flipped", "artifact missing", "manifest sha256 edited", "manifest precision edited",
                "manifest state keys reordered", "manifest truncated"]


@pytest.mark.parametrize("case", TAMPER_CASES)
def test_tampered_artifacts_are_refused(case: str, built: dict, obs_file: Path, tmp_path: Path):
    art = copy(built["dir"], tmp_path / "art")
    named = _tamper(art, case)
    before = snapshot(art)
    actions = tmp_path / "actions.npz"
    validated, predicted = cli_parallel(("validate", art, "--output_dir", tmp_path / "report"),
                                        ("predict", "--artifacts", art, "--obs", obs_file, "--out", actions))
    line = one_line(validated, 1, named, "failed validation")
    record(f"14 {case}", "validate", validated, line, "artifacts unchanged; report in --output_dir")
    line = one_line(predicted, 1, named, "the build" if case != "manifest truncated" else "truncated")
    record(f"14 {case}", "predict --artifacts", predicted, line, "nothing (no --out file)")
    assert not actions.exists() and snapshot(art) == before


def test_restored_artifact_validates_again(built: dict, obs_file: Path, tmp_path: Path):
    """The fix the message names (restore the drop) makes the same validate command pass."""
    art = copy(built["dir"], tmp_path / "art")
    _flip(art / "eagle2" / "vit.onnx")
    one_line(cli("validate", art, "--output_dir", tmp_path / "report"), 1, "eagle2/vit.onnx")
    shutil.copy2(built["dir"] / "eagle2" / "vit.onnx", art / "eagle2" / "vit.onnx")
    res = cli("validate", art, "--output_dir", tmp_path / "report", "--num_steps", "1")
    ok(res)
    assert "validation PASSED" in res.stdout
    record("14 re-run after restoring the file", "validate", res, "validation PASSED", "report in --output_dir")


# ------------------------------------------------------------------------------------------------ no unpickling


def test_loading_building_running_never_unpickle(built: dict):
    assert built["calls"] == []
    assert set(built["actions"]) == {f"action.{k}" for k in ("left_arm", "right_arm", "left_hand", "right_hand")}
    assert all(np.isfinite(v).all() for v in built["actions"].values())


class _Payload(torch.nn.Module):
    """What an attacker would drop in place of preprocess_video.pt: same interface, writes a file when run."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        written = torch.from_file(self.marker, True, 4, dtype=torch.uint8)  # shared=True creates the file
        written.fill_(33)
        return frames.float() + 0 * written.sum()  # used, so TorchScript keeps the write


def test_replaced_torchscript_is_never_loaded(built: dict, obs_file: Path, tmp_path: Path, monkeypatch):
    from gr00t_export.runtime.runner import ExportedGr00tRunner

    # the payload works: loaded and run, it writes its marker
    probe = tmp_path / "probe.bin"
    torch.jit.save(torch.jit.script(_Payload(str(probe))), str(tmp_path / "probe.pt"))
    torch.jit.load(str(tmp_path / "probe.pt"))(torch.zeros(1, 2, 2, 3, dtype=torch.uint8))
    assert probe.is_file()

    art = copy(built["dir"], tmp_path / "art")
    marker, target = tmp_path / "pwned.bin", art / "preprocess" / "preprocess_video.pt"
    torch.jit.save(torch.jit.script(_Payload(str(marker))), str(target))

    loaded: list[str] = []
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda f, *a, **k: loaded.append(str(f)) or real_load(f, *a, **k))
    with pytest.raises(ValidationFailure, match="preprocess/preprocess_video.pt does not match its manifest sha256"):
        ExportedGr00tRunner(art)
    assert str(target) not in loaded and not marker.exists()
    monkeypatch.undo()

    results = cli_parallel(("predict", "--artifacts", art, "--obs", obs_file),
                           ("validate", art, "--output_dir", tmp_path / "report"))
    for command, res in zip(("predict --artifacts", "validate"), results, strict=True):
        line = one_line(res, 1, "preprocess/preprocess_video.pt", "manifest")
        record("14 TorchScript replaced by a payload", command, res, line, "marker never written")
    assert not marker.exists()
