"""Issue 20 §2, data safety: what gr00t-export refuses to write over, through the real CLI in real subprocesses.

The rule, in one place (`gr00t_export.util`): an output is never, never contains and never lies inside an input of
the command (symlinks resolved); an existing non-empty output dir is replaced only with --force, and only when
gr00t-export wrote it as the same kind of output (a build's manifest.json, a validation report, the
`.gr00t-export.json` marker of the checkpoints and datasets it makes); a file it did not write is never replaced.
Every refusal below asserts: exit 2, exactly one `error:` line naming the input (or the output's owner), no
traceback, and every file under the test's folder byte-for-byte as before (nothing partial, no temp sibling).

Also here: Ctrl-C while `build` validates leaves nothing (validation runs before the final rename), `pack` refuses
builds that never passed a full validation unless --allow-unvalidated (recorded in the drop) and never replaces
another checkpoint's drop without --force, an integrity-only `validate` keeps the full report `build` wrote, and
every file the tool writes has the permissions of an ordinary file under the umask.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_reliability import ENV, REPO, cli, cli_cmd, leftovers, nothing_partial, ok, one_line, snapshot

UMASK = 0o027  # not the usual 022: a file written 0644 or 0600 regardless of the umask shows up
FILE_MODE, DIR_MODE = 0o666 & ~UMASK, 0o777 & ~UMASK
NO_VALIDATE = ("--no-simplify", "--no-validate")


def with_umask() -> None:
    os.umask(UMASK)


def run(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI in a child process whose umask is UMASK."""
    return cli(*args, timeout=timeout, preexec_fn=with_umask)


def copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst, symlinks=True))


def modes(*roots: Path) -> dict[str, str]:
    """Every path under `roots` whose mode is not an ordinary file's / dir's under UMASK."""
    wrong = {}
    for root in roots:
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            want = DIR_MODE if path.is_dir() else FILE_MODE
            if path.stat().st_mode & 0o777 != want:
                wrong[str(path)] = oct(path.stat().st_mode & 0o777)
    return wrong


def drop_members(tarball: Path) -> dict[str, bytes]:
    with tarfile.open(tarball) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("safety")


@pytest.fixture(scope="module")
def ckpt(ws: Path) -> Path:
    ok(run("make-checkpoint", ws / "ckpt"))
    return ws / "ckpt"


@pytest.fixture(scope="module")
def dataset(ws: Path) -> Path:
    ok(run("make-dataset", ws / "dataset", "--episodes", "1", "--length", "8"))
    return ws / "dataset"


@pytest.fixture(scope="module")
def art(ws: Path, ckpt: Path, dataset: Path) -> Path:
    """A build with a full validation report (validate --model_path on 2 dataset steps), all made under UMASK."""
    ok(run("build", "--model_path", ckpt, "--output", ws / "art", *NO_VALIDATE))
    ok(run("validate", ws / "art", "--model_path", ckpt, "--dataset_path", dataset, "--num_steps", "2"))
    return ws / "art"


@pytest.fixture(scope="module")
def obs_file(ws: Path, dataset: Path) -> Path:
    from gr00t_export.data.lerobot import LeRobotDataset
    from gr00t_export.families.n1_5.embodiments import load_modality_config

    obs = LeRobotDataset(dataset).observation(0, 0, load_modality_config("fourier_gr1_arms_only"))
    np.savez(ws / "obs.npz", **obs)
    return ws / "obs.npz"


def unvalidated(art: Path, dst: Path) -> Path:
    """The same build as a --no-validate one is: no validation/ dir."""
    root = copy(art, dst)
    shutil.rmtree(root / "validation")
    return root


def refused(res: subprocess.CompletedProcess, tmp_path: Path, before: dict[str, str], *needles: str) -> str:
    """The refusal contract: exit 2, one line with every needle, every file under tmp_path unchanged."""
    line = one_line(res, 2, *needles)
    assert snapshot(tmp_path) == before, "a refused command changed files"
    return line


# ------------------------------------------------------------------------------------------------ build


def _home(tmp_path: Path, ckpt: Path, dataset: Path) -> Path:
    """A user's folder: a checkpoint, a dataset, a tokenizer dir and a file of theirs, side by side."""
    home = tmp_path / "home"
    copy(ckpt, home / "ckpt")
    copy(dataset, home / "dataset")
    copy(ckpt / "eagle", home / "tok" / "eagle")
    (home / "notes.txt").write_text("my notes\n")
    (tmp_path / "link").symlink_to(home / "ckpt", target_is_directory=True)
    return home


BUILD_OVERLAPS = {
    # case: (extra args with {home}/{tmp} placeholders, the output, needles of the one line)
    "output is the checkpoint": ([], "{home}/ckpt", ("is the input --model_path",)),
    "output is the checkpoint's parent": ([], "{home}", ("contains the input --model_path",)),
    "output inside the checkpoint": ([], "{home}/ckpt/export", ("lies inside the input --model_path",)),
    "output is the dataset": (["--dataset_path", "{home}/dataset"], "{home}/dataset",
                              ("is the input --dataset_path",)),
    "output contains the tokenizer": (["--eagle_path", "{home}/tok/eagle"], "{home}/tok",
                                      ("contains the input --eagle_path",)),
    "output is a symlink to the checkpoint": ([], "{tmp}/link", ("is the input --model_path",)),
}


@pytest.mark.parametrize("case", list(BUILD_OVERLAPS))
def test_build_force_never_touches_an_input(case: str, ckpt: Path, dataset: Path, tmp_path: Path):
    home = _home(tmp_path, ckpt, dataset)
    extra, out, needles = BUILD_OVERLAPS[case]
    fill = {"home": home, "tmp": tmp_path}
    before = snapshot(tmp_path)
    res = run("build", "--model_path", home / "ckpt", *(a.format(**fill) for a in extra), "--output",
              out.format(**fill), "--force", *NO_VALIDATE)
    refused(res, tmp_path, before, *needles, "nothing was changed")


FORCE_CASES = {
    # case: (command, what is at the output path, needles)
    "build over a dir of the user's": ("build", "user dir", ("was not written by gr00t-export",
                                                             "--force replaces only")),
    "build over a file": ("build", "file", ("is a file",)),
    "build over a gr00t-export dataset": ("build", "dataset", ("is a gr00t-export dataset, not a build",)),
    "make-checkpoint over a dir of the user's": ("make-checkpoint", "user dir", ("was not written by gr00t-export",)),
    "make-dataset over a gr00t-export checkpoint": ("make-dataset", "checkpoint",
                                                    ("is a gr00t-export checkpoint, not a dataset",)),
}


@pytest.mark.parametrize("case", list(FORCE_CASES))
def test_force_replaces_only_an_earlier_output_of_its_kind(case: str, ckpt: Path, dataset: Path, tmp_path: Path):
    command, occupant, needles = FORCE_CASES[case]
    out = tmp_path / "out"
    if occupant == "user dir":
        (out / "sub").mkdir(parents=True)
        (out / "thesis.tex").write_text("years of work\n")
        (out / "sub" / "data.bin").write_bytes(bytes(range(256)))
    elif occupant == "file":
        out.write_text("not a dir\n")
    else:
        copy(dataset if occupant == "dataset" else ckpt, out)
    args = {"build": ("build", "--model_path", ckpt, "--output", out, *NO_VALIDATE),
            "make-checkpoint": ("make-checkpoint", out), "make-dataset": ("make-dataset", out)}[command]
    before = snapshot(tmp_path)
    refused(run(*args, "--force"), tmp_path, before, *needles)
    assert not leftovers(out)


def test_force_replaces_an_earlier_dataset_whole(tmp_path: Path):
    out = tmp_path / "ds"
    ok(run("make-dataset", out, "--episodes", "1", "--length", "4"))
    marker = json.loads((out / ".gr00t-export.json").read_text())
    assert marker["tool"]["name"] == "gr00t-export" and marker["kind"] == "dataset"
    parquet = next(out.rglob("*.parquet"))
    first = parquet.read_bytes()
    (out / "stale.txt").write_text("left by hand in an output of the tool\n")
    one_line(run("make-dataset", out, "--episodes", "1", "--length", "4", "--seed", "1"), 2, "--force")
    ok(run("make-dataset", out, "--episodes", "1", "--length", "4", "--seed", "1", "--force"))
    assert not (out / "stale.txt").exists() and parquet.read_bytes() != first and not leftovers(out)


def test_interrupt_while_build_validates_leaves_nothing(ckpt: Path, tmp_path: Path):
    """Ctrl-C during the validation part of `build`: the message says nothing partial was left, and that is true
    (validation runs in the staging dir, before the final rename), so the same output needs no --force after."""
    dataset = tmp_path / "ds"
    ok(run("make-dataset", dataset, "--episodes", "1", "--length", "48"))  # the suite's 30 steps + 16 actions
    out = tmp_path / "out"
    proc = subprocess.Popen(cli_cmd("build", "--model_path", ckpt, "--dataset_path", dataset, "--output", out,
                                    "--no-simplify"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob(f".{out.name}.tmp-*/.validation.tmp-*")):  # validate's own staging dir
            assert proc.poll() is None, f"build ended (exit {proc.returncode}) before validating:\n{proc.stderr.read()}"
            assert time.monotonic() < deadline, "validation never started"
            time.sleep(0.05)
        time.sleep(0.5)
        assert proc.poll() is None, "build finished before the signal"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    res = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    one_line(res, 130, "nothing partial was left behind", prefix="interrupted:")
    nothing_partial(out)
    ok(run("build", "--model_path", ckpt, "--output", out, *NO_VALIDATE))  # not blocked: no --force needed
    assert (out / "manifest.json").is_file() and not leftovers(out)


# ------------------------------------------------------------------------------------------------ validate


def test_integrity_only_validate_keeps_the_full_report(art: Path, tmp_path: Path):
    root = copy(art, tmp_path / "art")
    full = root / "validation" / "validation_report.json"
    assert json.loads(full.read_text())["mode"] == "full"
    before = snapshot(root)
    res = run("validate", root)
    ok(res)
    assert "keeping the full report" in res.stdout
    after = snapshot(root)
    assert {k: v for k, v in after.items() if not k.startswith("validation/integrity")} == before
    integrity = json.loads((root / "validation" / "integrity" / "validation_report.json").read_text())
    assert integrity["mode"] == "integrity-only" and integrity["passed"]
    assert integrity["files"]["json"] == str(root / "validation" / "integrity" / "validation_report.json")


VALIDATE_OUTPUTS = {
    # case: (args after ARTIFACT_DIR, needles); placeholders {tmp}, {root}
    "--output_dir is the dataset": (["--dataset_path", "{tmp}/ds", "--output_dir", "{tmp}/ds"],
                                    ("is the input --dataset_path",)),
    "--output_dir is a dir of the user's": (["--output_dir", "{tmp}/mine"], ("was not written by gr00t-export",)),
    "--output_dir is the build itself": (["--output_dir", "{root}"], ("is a gr00t-export build, not a validation",)),
    "--report is the suite": (["--suite", "{tmp}/suite.yaml", "--report", "{tmp}/suite.yaml"],
                              ("is the input --suite",)),
    "--report over an artifact": (["--report", "{root}/eagle2/vit.onnx"], ("among the artifacts",)),
}


@pytest.mark.parametrize("case", list(VALIDATE_OUTPUTS))
def test_validate_never_writes_over_inputs_or_artifacts(case: str, art: Path, dataset: Path, tmp_path: Path):
    from gr00t_export.pipeline.validate import default_suite_path

    root = copy(art, tmp_path / "art")
    copy(dataset, tmp_path / "ds")
    shutil.copy(default_suite_path(), tmp_path / "suite.yaml")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "plan.md").write_text("mine\n")
    args, needles = VALIDATE_OUTPUTS[case]
    before = snapshot(tmp_path)
    res = run("validate", root, *(a.format(tmp=tmp_path, root=root) for a in args))
    refused(res, tmp_path, before, *needles)


# ------------------------------------------------------------------------------------------------ predict, bench


def test_predict_out_never_replaces_an_input_or_a_file_of_the_users(art: Path, obs_file: Path, tmp_path: Path):
    root = copy(art, tmp_path / "art")
    obs = Path(shutil.copy(obs_file, tmp_path / "obs.npz"))
    np.savez(tmp_path / "weights.npz", w=np.arange(4.0))
    cases = [(obs, "is the input --obs"), (root / "actions.npz", "lies inside the input --artifacts"),
             (tmp_path / "weights.npz", "was not written by this gr00t-export command")]
    for out, needle in cases:
        before = snapshot(tmp_path)
        refused(run("predict", "--artifacts", root, "--obs", obs, "--out", out), tmp_path, before, needle)
    # an earlier `predict --out` is replaced (a re-run), atomically
    actions = tmp_path / "actions.npz"
    ok(run("predict", "--artifacts", root, "--obs", obs, "--out", actions))
    ok(run("predict", "--artifacts", root, "--obs", obs, "--out", actions, "--seed", "1"))
    with np.load(actions) as data:
        assert sorted(data.files) == sorted(f"action.{k}" for k in ("left_arm", "right_arm", "left_hand",
                                                                     "right_hand"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["actions.npz", "art", "obs.npz", "weights.npz"]


def test_bench_json_refused_before_timing(art: Path, tmp_path: Path):
    mine = tmp_path / "results.json"
    mine.write_text('{"my": "figures"}\n')
    before = snapshot(tmp_path)
    res = run("bench", art, "--backends", "ort", "--device", "cpu", "--iters", "1", "--warmup", "0", "--json", mine)
    refused(res, tmp_path, before, "--json", "was not written by this gr00t-export command")


# ------------------------------------------------------------------------------------------------ pack


def test_pack_refuses_a_build_that_never_passed_a_full_validation(art: Path, tmp_path: Path):
    root = unvalidated(art, tmp_path / "art")
    dist = tmp_path / "dist"
    before = snapshot(tmp_path)
    refused(run("pack", root, "--dist", dist), tmp_path, before, "not validated", "--allow-unvalidated")
    # an integrity-only report is no validation against the checkpoint either
    ok(run("validate", root))
    before = snapshot(tmp_path)
    refused(run("pack", root, "--dist", dist), tmp_path, before, "validated without --model_path",
            "--allow-unvalidated")
    # the user says so: packed, and the drop records it
    ok(run("pack", root, "--dist", dist, "--allow-unvalidated"))
    (tarball,) = dist.glob("*.tar.gz")
    members = drop_members(tarball)
    record = json.loads(members["pack.json"])
    assert record["validation"]["status"] == "not validated" and record["validation"]["allow_unvalidated"]
    assert record["validation"]["why"].startswith("validated without --model_path")
    assert "**Warning: this build is not validated**" in members["README_TARGET.md"].decode()


def test_pack_of_a_validated_build_records_it(art: Path, tmp_path: Path):
    dist = tmp_path / "dist"
    ok(run("pack", art, "--dist", dist))
    (tarball,) = dist.glob("*.tar.gz")
    members = drop_members(tarball)
    record = json.loads(members["pack.json"])
    manifest = json.loads((art / "manifest.json").read_text())
    assert record["validation"] == {"status": "validated", "report": "validation/validation_report.json",
                                    "why": "full validation passed", "allow_unvalidated": False}
    assert record["manifest_sha256"] == manifest["manifest_sha256"] and record["source"] == manifest["source"]
    assert "Warning" not in members["README_TARGET.md"].decode()
    assert modes(tarball) == {}


def test_pack_never_silently_replaces_another_checkpoints_drop(art: Path, ws: Path, tmp_path: Path):
    """Two checkpoints in folders of the same name give drops of the same name."""
    other_ckpt = tmp_path / "other" / "ckpt"
    ok(run("make-checkpoint", other_ckpt, "--seed", "1"))
    other = tmp_path / "other_art"
    ok(run("build", "--model_path", other_ckpt, "--output", other, *NO_VALIDATE))
    dist = tmp_path / "dist"
    ok(run("pack", art, "--dist", dist))
    (tarball,) = dist.glob("*.tar.gz")
    before = snapshot(tmp_path)
    refused(run("pack", other, "--dist", dist, "--allow-unvalidated"), tmp_path, before,
            "is a drop of another checkpoint", "--force")
    ok(run("pack", art, "--dist", dist))  # the same checkpoint again: a re-pack replaces it
    ok(run("pack", other, "--dist", dist, "--allow-unvalidated", "--force"))
    other_source = json.loads((other / "manifest.json").read_text())["source"]["fingerprint_sha256"]
    assert json.loads(drop_members(tarball)["pack.json"])["source"]["fingerprint_sha256"] == other_source
    assert [p.name for p in dist.iterdir()] == [tarball.name]
    # a file there that is no drop is never replaced, --force or not
    tarball.write_bytes(b"my own archive")
    before = snapshot(tmp_path)
    refused(run("pack", art, "--dist", dist, "--force"), tmp_path, before, "is not a gr00t-export drop")


# ------------------------------------------------------------------------------------------------ permissions


def test_every_file_written_follows_the_umask(ckpt: Path, dataset: Path, art: Path):
    """make-checkpoint (safetensors writes 0600), make-dataset (mkdtemp: 0700), build, validate: under umask 027
    every file is 0640 and every dir 0750, like any file the user creates."""
    assert (ckpt / "model.safetensors").is_file() and (art / "validation" / "plots").is_dir()
    assert modes(ckpt, dataset, art) == {}


def test_atomic_output_dir_gives_external_onnx_data_ordinary_permissions(tmp_path: Path):
    """onnx writes `.onnx_data` 0600 (as for the 3B denoising graph); the output helper fixes every file."""
    from gr00t_export.util import atomic_output_dir

    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    previous = os.umask(UMASK)
    try:
        raw = tmp_path / "raw.onnx"
        onnx.save_model(helper.make_model(graph), str(raw), save_as_external_data=True, location="raw.onnx_data",
                        size_threshold=0)
        assert (tmp_path / "raw.onnx_data").stat().st_mode & 0o777 == 0o600  # what onnx itself does
        with atomic_output_dir(tmp_path / "out", kind="graphs") as tmp:
            onnx.save_model(helper.make_model(graph), str(tmp / "g.onnx"), save_as_external_data=True,
                            location="g.onnx_data", size_threshold=0)
        assert modes(tmp_path / "out") == {}
    finally:
        os.umask(previous)


def test_engine_plan_follows_the_umask(art: Path, tmp_path: Path):
    """`engines --target thor` writes through mkstemp (0600); the plan must be readable like the rest."""
    root = copy(art, tmp_path / "art")
    ok(run("engines", root, "--precision", "fp32", "--target", "thor"))
    script, readme = root / "engines" / "build_engines.sh", root / "engines" / "README.md"
    assert script.stat().st_mode & 0o777 == 0o777 & ~UMASK and readme.stat().st_mode & 0o777 == FILE_MODE
