"""The command line as Isaac-GR00T users type it: both option spellings, --data_config, --denoising_steps end to end
(build, manifest, validation, predict, bench), inspect of one model file, help that shows the real defaults,
--version, and the progress lines a piped build prints.

One tiny checkpoint and one build (2 denoising steps, made through the real CLI in a piped subprocess) are shared.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import typer
import yaml
from onnx import helper, numpy_helper
from typer.testing import CliRunner

from gr00t_export import __version__
from gr00t_export.cli import app
from gr00t_export.data.synthetic import make_dataset
from gr00t_export.families import open_reference
from gr00t_export.families.base import synthetic_observation
from gr00t_export.families.n1_5.embodiments import load_modality_config
from gr00t_export.families.n1_5.synthetic import make_checkpoint
from gr00t_export.pipeline.validate import Reporter, validate
from gr00t_export.policies import serve_policy
from gr00t_export.runtime.runner import ExportedGr00tRunner
from gr00t_export.tools.inspect import describe_onnx_file, describe_torchscript_file

STAGES = ("preprocess_video", "preprocess_state_action", "eagle2_tokenizer", "vit", "llm", "denoising_subgraph",
          "postprocess")
ACTION_KEYS = ("action.left_arm", "action.right_arm", "action.left_hand", "action.right_hand")
runner = CliRunner()


def _ok(args: list[str]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result


def _error_line(result) -> str:
    """The CLI's whole stderr must be one `error:` line, with no traceback anywhere."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output + result.stderr, result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def ckpt(root: Path) -> Path:
    return make_checkpoint(root / "ckpt", "tiny", 0, show_progress=False)


@pytest.fixture(scope="module")
def dataset(root: Path) -> Path:
    return make_dataset(root / "dataset", load_modality_config("fourier_gr1_arms_only"))


@pytest.fixture(scope="module")
def piped_build(root: Path, ckpt: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """`build --denoising-steps 2` in a fresh process whose stdout/stderr are pipes, as in a CI log."""
    out = root / "build_2steps"
    proc = subprocess.run([sys.executable, "-m", "gr00t_export", "build", "--model-path", str(ckpt), "--output",
                           str(out), "--denoising-steps", "2", "--no-validate"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


# ------------------------------------------------------------------------------ option spellings


def _spellings(opt: str) -> tuple[str, str] | None:
    body = opt[2:]
    if not opt.startswith("--") or not re.search(r"[-_]", body):
        return None
    return "--" + body.replace("-", "_"), "--" + body.replace("_", "-")


def test_every_multi_word_option_takes_both_spellings():
    """Walks every command's click options: each multi-word name parses with `_` and with `-` to the same value
    (a future option cannot forget a spelling: the names are normalised, not listed)."""
    group = typer.main.get_command(app)
    parent = group.make_context("gr00t-export", [], resilient_parsing=True)
    checked = 0
    for name, command in group.commands.items():
        for param in command.params:
            if param.param_type_name != "option":
                continue
            for opt, value in [*((o, True) for o in param.opts), *((o, False) for o in param.secondary_opts)]:
                pair = _spellings(opt)
                if pair is None:
                    continue
                args = [] if param.is_flag else ["3"]  # parses as every option type here: int, float, str, path
                parsed = []
                for spelling in pair:
                    ctx = command.make_context(name, [spelling, *args], parent=parent, resilient_parsing=True)
                    parsed.append(ctx.params[param.name])
                assert parsed[0] == parsed[1], (name, opt, parsed)
                want = value if param.is_flag else parsed[0]
                assert parsed[0] is not None and parsed[0] == want, (name, opt)
                assert parsed[0] != param.default or opt in param.secondary_opts, (name, opt)  # it took the value
                checked += 1
    assert checked >= 40  # model_path, dataset_path, embodiment_tag, ... of every command


def test_both_spellings_and_data_config_through_the_real_cli(root: Path, ckpt: Path, dataset: Path):
    outs = {}
    for style, args in {
        "underscore": ["--model_path", str(ckpt), "--embodiment_tag", "gr1", "--modality_config",
                       "fourier_gr1_arms_only", "--dataset_path", str(dataset), "--denoising_steps", "3"],
        "hyphen": ["--model-path", str(ckpt), "--embodiment-tag", "gr1", "--data-config", "fourier_gr1_arms_only",
                   "--dataset-path", str(dataset), "--denoising-steps", "3"],
        "data_config": ["--model_path", str(ckpt), "--data_config", "fourier_gr1_arms_only", "--dataset_path",
                        str(dataset), "--denoising_steps", "3"],
    }.items():
        outs[style] = root / f"predict_{style}.npz"
        _ok(["predict", *args, "--episode", "1", "--step", "4", "--seed", "5", "--out", str(outs[style])])
    got = {style: _load(path) for style, path in outs.items()}
    for key in ACTION_KEYS:
        np.testing.assert_array_equal(got["underscore"][key], got["hyphen"][key])
        np.testing.assert_array_equal(got["underscore"][key], got["data_config"][key])
    # command names take either separator too
    _ok(["make_dataset", str(root / "ds_underscore"), "--data-config", "fourier_gr1_arms_only", "--episodes", "1",
         "--length", "4"])
    assert (root / "ds_underscore" / "meta" / "info.json").is_file()


# ------------------------------------------------------------------------------ --denoising_steps


def test_denoising_steps_build_matches_the_reference_at_those_steps(piped_build, ckpt: Path):
    out, _ = piped_build
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["denoising_steps"] == 2
    assert manifest["model"]["config"]["action_head"]["num_inference_timesteps"] == 2
    igg = yaml.safe_load(next((out / "igg").glob("*.yaml")).read_text())
    assert igg["pipeline"]["configs"]["denoising_steps"] == 2  # Isaac Deploy is told the same count
    exported = ExportedGr00tRunner(out)
    obs = synthetic_observation(exported.interface)
    noise = np.random.default_rng(3).standard_normal((16, 32)).astype(np.float32)
    got = exported.get_action(obs, noise=noise)
    at_two = open_reference(ckpt, denoising_steps=2).get_action(obs, noise=noise)
    at_four = open_reference(ckpt).get_action(obs, noise=noise)  # the checkpoint's 4
    for key in ACTION_KEYS:
        np.testing.assert_allclose(got[key], at_two[key], rtol=0, atol=1e-4, err_msg=key)
    assert max(float(np.abs(got[k] - at_four[k]).max()) for k in ACTION_KEYS) > 1e-2
    # the graph holds two DiT evaluations, not four: one Softmax per attention layer per step
    softmax = sum(n.op_type == "Softmax" for n in onnx.load(str(out / "action_head" / "denoising_subgraph.onnx"),
                                                            load_external_data=False).graph.node)
    dit_layers = exported.manifest["model"]["config"]["action_head"]["diffusion_model"]["num_layers"]
    vl_layers = exported.manifest["model"]["config"]["action_head"]["vl_self_attention"]["num_layers"]
    assert softmax == vl_layers + 2 * dit_layers


def test_validation_reference_runs_the_build_steps(piped_build, ckpt: Path, dataset: Path, root: Path):
    """Validation compares like with like (a 4-step reference would fail consistency), prints condensed step lines
    without --verbose, and draws a comparison plot for every action key by default."""
    out, _ = piped_build
    lines: list[str] = []
    report = validate(out, model_path=ckpt, dataset_path=dataset, num_steps=2, output_dir=root / "val2",
                      reporter=Reporter(lines.append), threads=1)
    bad = [f"{c.name}: {c.message}" for c in report.checks if c.status != "passed"]
    assert report.passed and not bad, bad
    assert "reference twins run in fp32 on cpu, 2 denoising steps as the build" in lines
    assert not any("get_actions for iteration" in line for line in lines)
    assert sum(line.startswith("step ") for line in lines) == 1
    assert any(re.fullmatch(r"step 2/2: reference and exported get_action done \(\d+\.\d s\)", line) for line in lines)
    for key in ACTION_KEYS:
        assert (root / "val2" / "plots" / f"compare_{key}.png").is_file(), key


def test_denoising_steps_usage_errors(piped_build, ckpt: Path, root: Path):
    out, _ = piped_build
    line = _error_line(runner.invoke(app, ["predict", "--artifacts", str(out), "--denoising_steps", "4"]))
    assert "built with 2 denoising steps" in line and "--denoising_steps 4" in line
    for bad in ("0", "-3"):
        target = root / f"never_{bad}"
        line = _error_line(runner.invoke(app, ["build", "--model_path", str(ckpt), "--output", str(target),
                                               "--denoising_steps", bad]))
        assert "--denoising_steps must be an integer >= 1" in line and not target.exists()
    line = _error_line(runner.invoke(app, ["build", "--demo", "--output", str(root / "demo_x" / "out"),
                                           "--denoising_steps", "0"]))
    assert "--denoising_steps" in line and not (root / "demo_x").exists()  # checked before the demo inputs


def test_serve_policy_takes_denoising_steps(piped_build, ckpt: Path):
    out, _ = piped_build
    policy = serve_policy(None, ckpt, None, "gr1", None, None, "cpu", denoising_steps=3)
    assert policy.model.cfg.action_head.num_inference_timesteps == 3
    from gr00t_export.errors import InputError

    with pytest.raises(InputError, match="built with 2 denoising steps"):
        serve_policy(out, None, None, "gr1", None, None, "cpu", denoising_steps=3)


# ------------------------------------------------------------------------------ progress when piped


def test_piped_build_prints_a_line_per_step_with_elapsed_time(piped_build):
    _, proc = piped_build
    # on stdout: a failing build's stderr stays its one error line
    steps = re.findall(r"^build \[\s*(\d+\.\d) s\] (.+)$", proc.stdout, flags=re.MULTILINE)
    labels = [label for _, label in steps]
    assert labels[0] == "load checkpoint" and labels[-1] == "done"
    assert [f"export {s}" for s in STAGES] == [label for label in labels if label.startswith("export ")]
    elapsed = [float(t) for t, _ in steps]
    assert elapsed == sorted(elapsed)  # seconds since the build started, so a stalled step shows
    assert "\x1b[" not in proc.stdout + proc.stderr  # no spinner escape codes in a log


# ------------------------------------------------------------------------------ bench


def test_bench_defaults_to_cpu_without_a_gpu(piped_build, ckpt: Path, tmp_path: Path):
    if torch.cuda.is_available():
        pytest.skip("this test is about a machine without a GPU")
    out, _ = piped_build
    result = _ok(["bench", str(out), "--model_path", str(ckpt), "--backends", "torch,ort", "--iters", "1",
                  "--warmup", "0", "--json", str(tmp_path / "b.json")])
    assert "latency in ms on cpu" in result.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["context"]["device"] == "cpu" and data["context"]["dtype"] == "fp32"
    assert [r["backend"] for r in data["results"]] == ["torch", "ort"]
    assert all(r["end_to_end"]["median_ms"] > 0 for r in data["results"])


# ------------------------------------------------------------------------------ inspect FILE


def test_inspect_onnx_file_reads_interface_ops_and_sizes(piped_build):
    out, _ = piped_build
    path = out / "eagle2" / "llm.onnx"
    view = describe_onnx_file(path)
    model = onnx.load(str(path))  # the oracle loads the weights; describe_onnx_file must not need to
    graph = model.graph
    assert [(t.name, t.dtype) for t in view.inputs] == [("input_ids", "int64"), ("vit_embeds", "float32"),
                                                        ("attention_mask", "int64")]
    assert view.inputs[0].shape == ["batch", "seq_len"] and view.outputs[0].shape[:2] == ["batch", "seq_len"]
    assert view.opsets == {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    assert view.nodes == len(graph.node) and sum(view.op_counts.values()) == len(graph.node)
    assert view.op_counts["MatMul"] == sum(n.op_type == "MatMul" for n in graph.node)
    assert view.initializers == len(graph.initializer)
    assert view.initializer_bytes == sum(numpy_helper.to_array(t).nbytes for t in graph.initializer)
    result = _ok(["inspect", str(path)])
    assert "[batch, seq_len]" in result.output and "input_ids" in result.output and "MatMul" in result.output


def test_inspect_onnx_external_data_counted_without_loading(tmp_path: Path):
    weight = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)
    bias = np.ones(32, dtype=np.float16)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Cast", ["b"], ["b32"], to=1),
         helper.make_node("Add", ["h", "b32"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 32])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    view = describe_onnx_file(path)
    assert view.initializer_bytes == weight.nbytes + bias.nbytes
    assert view.external_files == {"m.onnx.data": weight.nbytes + bias.nbytes}
    assert view.missing_external == [] and view.op_counts == {"Add": 1, "Cast": 1, "MatMul": 1}
    assert [(t.name, t.dtype, t.shape) for t in view.inputs] == [("x", "float32", ["batch", 64])]
    (tmp_path / "m.onnx.data").unlink()  # the header is all it reads: a missing data file is reported, not fatal
    assert describe_onnx_file(path).missing_external == ["m.onnx.data"]
    assert "MISSING" in _ok(["inspect", str(path)]).output


class _Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 4)
        self.register_buffer("offset", torch.zeros(5, dtype=torch.float64))

    def forward(self, x: torch.Tensor, scale: float, names: list[str]) -> tuple[torch.Tensor, int]:
        return self.proj(x) * scale, len(names)


def test_inspect_torchscript_file(tmp_path: Path):
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(_Scaled()), str(path))
    view = describe_torchscript_file(path)
    assert view.forward_args == [("x", "Tensor"), ("scale", "float"), ("names", "List[str]")]
    assert view.forward_returns == ["Tuple[Tensor, int]"]
    assert (view.parameters, view.parameter_bytes) == (2, (3 * 4 + 4) * 4)
    assert (view.buffers, view.buffer_bytes) == (1, 5 * 8)
    assert view.tensor_dtypes == {"float32": 2, "float64": 1}
    output = _ok(["inspect", str(path)]).output
    assert "forward(x: Tensor, scale: float, names: List[str]) -> Tuple[Tensor, int]" in output


def test_inspect_rejects_other_files_in_one_line(tmp_path: Path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x96\x01not a model at all\xff\xff")
    pickled = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, pickled)  # a zip, but a torch.save checkpoint, not TorchScript
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    expectations = {garbage: "not a readable ONNX model", pickled: "not a TorchScript archive",
                    text: "cannot inspect notes.txt", tmp_path / "absent.onnx": "does not exist"}
    for path, words in expectations.items():
        line = _error_line(runner.invoke(app, ["inspect", str(path)]))
        assert words in line, line
    line = _error_line(runner.invoke(app, ["inspect", str(text), "--png", str(tmp_path / "g.png")]))
    assert "--png" in line


# ------------------------------------------------------------------------------ help and version


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("width", [80, 200])
def test_help_shows_every_option_whole_with_its_default(width: int):
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        result = runner.invoke(app, [name, "--help"], terminal_width=width)
        assert result.exit_code == 0, (name, result.output)
        shown = _squash(result.output)
        for param in command.params:
            if param.param_type_name != "option" or param.hidden:
                continue
            assert _squash(param.help or "") in shown, (name, param.name, "help text cut or eaten")
            if isinstance(param.show_default, str):
                assert _squash(f"[default: ({param.show_default})]") in shown, (name, param.name)
            elif param.default is not None and not param.is_flag:
                assert _squash(f"[default: {param.default}") in shown, (name, param.name)
    build_help = _squash(runner.invoke(app, ["build", "--help"], terminal_width=width).output)
    assert _squash("Artifact dir. [default: (out/<checkpoint name>-<precision>") in build_help
    assert _squash("[default: (<model_path>/eagle)]") in build_help


def test_main_help_lists_every_command_summary_whole():
    result = runner.invoke(app, ["--help"], terminal_width=80)
    shown = _squash(result.output)
    assert "..." not in result.output.split("Commands:")[1]  # click cuts a summary to fit, with "..."
    for command in app.registered_commands:
        assert _squash(command.callback.__doc__.split("\n\n")[0]) in shown


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"gr00t-export {__version__}"
    assert __version__ == importlib.metadata.version("gr00t-export")
