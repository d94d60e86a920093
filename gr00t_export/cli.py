"""`gr00t-export`: the command line. Each command is a thin shell over one library call.

Errors the user can fix print one line and exit 2 (input) or 1 (validation); never a traceback.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from gr00t_export import __version__
from gr00t_export.display import (
    console,
    out_console,
    print_actions,
    print_bench,
    print_build,
    print_drop,
    print_engines,
    print_grid,
    print_model_file,
)
from gr00t_export.errors import Gr00tExportError


def either_separator(name: str) -> str:
    """click normalises option and command names with this, so every multi-word option takes both spellings
    Isaac-GR00T's scripts use (--model_path and --model-path) and no option can forget one."""
    return name.replace("_", "-")


app = typer.Typer(
    help="Staged compiler for GR00T N1.5 policies: checkpoint -> TorchScript/ONNX/TensorRT stages -> IGG config.\n\n"
         "Every option takes - or _ between words (--model-path = --model_path), as Isaac-GR00T's scripts do.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # click's plain help: "[default: ...]" is shown as written (rich markup would eat it) and long help text is
    # wrapped, never cut off, at any terminal width
    rich_markup_mode=None,
    context_settings={"token_normalize_func": either_separator, "max_content_width": 120},
)


def cli_errors(fn):
    """One clear line and an exit code for every error a user can cause."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Gr00tExportError as err:
            # the message is printed literally: `pip install gr00t-export[tensorrt]` is not rich markup
            console.print(Text.assemble(("error: ", "bold red"), str(err)), highlight=False, soft_wrap=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            console.print("[bold red]interrupted:[/] nothing partial was left behind; re-run the command",
                          soft_wrap=True)
            raise typer.Exit(130) from None
        except MemoryError:
            console.print("[bold red]error:[/] out of memory; use a smaller preset or a machine with more RAM",
                          soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as err:
            if err.errno in (27, 28, 122):  # EFBIG, ENOSPC, EDQUOT
                console.print(f"[bold red]error:[/] {err.strerror} while writing {err.filename or 'output'}; "
                              "free disk space or raise the file-size limit, then re-run (nothing partial was kept)",
                              highlight=False, soft_wrap=True)  # one line, however narrow the terminal
                raise typer.Exit(2) from None
            raise

    return wrapper


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"gr00t-export {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    pass


ModelPath = Annotated[Path | None, typer.Option("--model_path", help="GR00T N1.5 or N1.6 checkpoint dir "
                                                 "(config.json, safetensors, metadata or processor files).")]
EaglePath = Annotated[Path | None, typer.Option("--eagle_path", help="Eagle config/tokenizer dir (N1.5: "
                                                "eagle2_hg_model, N1.6: Eagle-Block2A-2B-v2).",
                                                show_default="<model_path>/eagle")]
EmbodimentTag = Annotated[str | None, typer.Option("--embodiment_tag", help="Embodiment tag (gr1, oxe_droid, "
                                                    "agibot_genie1, new_embodiment).",
                                                    show_default="the data config's, or the checkpoint metadata's "
                                                    "only one")]
ModalityOpt = Annotated[str | None, typer.Option("--modality_config", "--data_config",
                                                  help="Data config: one of N1.5's twelve DATA_CONFIG_MAP names "
                                                  "(e.g. so100_dualcam, oxe_droid) or a modality YAML file; "
                                                  "--data_config is Isaac-GR00T's name for it.",
                                                  show_default="the built-in config whose keys match the "
                                                  "checkpoint's metadata")]
DenoisingSteps = Annotated[int | None, typer.Option("--denoising_steps", help="Euler steps of the action head's "
                                                     "flow-matching sampler (Isaac-GR00T's --denoising_steps).",
                                                     show_default="the checkpoint's num_inference_timesteps")]


def note_chosen_config(given: str | None, name: str) -> None:
    """Say which data config was taken when --modality_config was left out."""
    if given is None:
        console.print(f"data config: {name} (the one the checkpoint's metadata matches)", highlight=False,
                      soft_wrap=True)


@app.command("make-checkpoint")
@cli_errors
def make_checkpoint_cmd(
    out: Annotated[Path, typer.Argument(help="Output checkpoint dir.")],
    preset: Annotated[str, typer.Option(
        help="tiny (tests, demo), n1.5-3b (full size, random weights), n1.6-tiny or n1.6-3b.")] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed of the random weights and tokenizer.")] = 0,
    embodiment: Annotated[str | None, typer.Option("--embodiment", help="Embodiment tag of the metadata.",
                                                   show_default="the data config's")] = None,
    modality_config: Annotated[str, typer.Option("--modality_config", "--data_config",
                                                 help="Data config name or YAML file.")] = "fourier_gr1_arms_only",
    dataset_path: Annotated[Path | None, typer.Option("--dataset_path", help="Take normalisation statistics "
                                                      "from this LeRobot dataset's meta/stats.json.")] = None,
    eagle_path: Annotated[Path | None, typer.Option("--eagle_path", help="Copy tokenizer files from this real "
                                                    "Eagle dir instead of training a tiny BPE.")] = None,
    force: Annotated[bool, typer.Option(help="Replace a non-empty OUT.")] = False,
):
    """Generate a checkpoint with random weights in the exact layout of the preset's model family."""
    import time

    from gr00t_export.families import family_for_preset

    start = time.perf_counter()
    path = family_for_preset(preset).make_checkpoint(out, preset, seed, embodiment=embodiment,
                                                      modality_config=modality_config, dataset_path=dataset_path,
                                                      eagle_path=eagle_path, force=force)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    console.print(f"[green]wrote[/] {path} ({size / 2**20:.1f} MiB, preset {preset}, "
                  f"{time.perf_counter() - start:.1f} s)")


@app.command("make-dataset")
@cli_errors
def make_dataset_cmd(
    out: Annotated[Path, typer.Argument(help="Output dataset dir (LeRobot v2).")],
    modality_config: Annotated[str, typer.Option("--modality_config", "--data_config",
                                                 help="Data config name or YAML file.")] = "fourier_gr1_arms_only",
    episodes: Annotated[int, typer.Option(help="Number of episodes.")] = 2,
    length: Annotated[int, typer.Option(help="Steps per episode.")] = 48,
    seed: Annotated[int, typer.Option(help="Seed of the trajectories.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace a non-empty OUT.")] = False,
):
    """Write a small synthetic LeRobot v2 dataset (parquet, mp4, meta/*) so the demo needs nothing external."""
    from gr00t_export.data.synthetic import write_dataset

    cfg = write_dataset(out, modality_config, episodes, length, seed, force)
    console.print(f"[green]wrote[/] {out} ({episodes} episodes x {length} steps, {cfg.name})")


@app.command()
@cli_errors
def predict(
    model_path: ModelPath = None,
    eagle_path: EaglePath = None,
    embodiment_tag: EmbodimentTag = None,
    modality_config: ModalityOpt = None,
    artifacts: Annotated[Path | None, typer.Option("--artifacts", help="Run an exported artifact dir "
                                                   "instead of the PyTorch reference.")] = None,
    dataset_path: Annotated[Path | None, typer.Option("--dataset_path", help="LeRobot v2 dataset.")] = None,
    episode: Annotated[int, typer.Option(help="Episode index in --dataset_path.")] = 0,
    step: Annotated[int, typer.Option(help="Step index in the episode.")] = 0,
    obs: Annotated[Path | None, typer.Option("--obs", help="Observation .npz (video.<k>, state.<k>, "
                                             "annotation.<k>).")] = None,
    noise: Annotated[Path | None, typer.Option("--noise", help="Initial noise .npy, (16,32) or (B,16,32) float32.",
                                               show_default="N(0, 1) seeded with --seed")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initial noise when --noise is not given.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Write actions to this .npz (keys action.<k>).")] = None,
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (reference only).")] = "fp32",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    denoising_steps: DenoisingSteps = None,
):
    """Run one observation through the reference policy (or an exported artifact dir) and print its actions.

    --denoising_steps sets the reference's Euler steps; an exported dir runs the steps it was built with.
    """
    from gr00t_export.data.npz import is_actions_file, load_noise, load_observation, write_actions
    from gr00t_export.policies import predict_policy
    from gr00t_export.util import check_output_file

    out_inputs = {"--model_path": model_path, "--eagle_path": eagle_path, "--artifacts": artifacts,
                  "--dataset_path": dataset_path, "--obs": obs, "--noise": noise}
    if out is not None:
        out = out if out.suffix == ".npz" else out.with_name(out.name + ".npz")  # where np.savez has always put it
        check_output_file(out, out_inputs, ours=is_actions_file, what="--out")
    policy = predict_policy(artifacts, model_path, eagle_path, embodiment_tag=embodiment_tag,
                            modality_config=modality_config, dtype=dtype, device=device,
                            denoising_steps=denoising_steps)
    observation = load_observation(obs, dataset_path, episode, step, policy.interface)
    actions = policy.get_action(observation, noise=load_noise(noise), seed=seed)
    print_actions(actions)
    if out is not None:
        write_actions(actions, out, out_inputs)
        console.print(f"[green]wrote[/] {out}")
    if artifacts is None:
        note_chosen_config(modality_config, policy.interface.name)


@app.command()
@cli_errors
def serve(
    artifact_dir: Annotated[Path | None, typer.Argument(help="Exported artifact dir to serve (or use --model_path).")
                            ] = None,
    model_path: ModelPath = None,
    eagle_path: EaglePath = None,
    embodiment_tag: EmbodimentTag = None,
    modality_config: ModalityOpt = None,
    host: Annotated[str, typer.Option(help="Interface to bind; keep 127.0.0.1 unless robots connect over the "
                                           "network (then set --api_token).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0 picks a free one).")] = 5555,
    api_token: Annotated[str | None, typer.Option("--api_token", help="Answer only requests carrying this "
                                                  "api_token.")] = None,
    backend: Annotated[str | None, typer.Option(help="ort, trt or torch.",
                                                show_default="ort for ARTIFACT_DIR, torch for --model_path")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    log_every: Annotated[int, typer.Option("--log_every", min=0, help="Print get_action p50/p99 latency every N "
                                           "requests (0: never).")] = 0,
    max_message_mb: Annotated[float, typer.Option("--max_message_mb", min=0.001, help="Largest request answered "
                                                  "(MiB); bigger ones get an error reply.")] = 64.0,
    denoising_steps: DenoisingSteps = None,
    dataset_path: Annotated[Path | None, typer.Option("--dataset_path", help="No model: replay this LeRobot "
                                                      "dataset's recorded actions (to test a robot or simulator "
                                                      "client).")] = None,
    episode: Annotated[int, typer.Option(help="Episode replayed from --dataset_path.")] = 0,
    execution_horizon: Annotated[int | None, typer.Option("--execution_horizon", help="Replay: recorded steps "
                                                          "each get_action advances [default: the chunk, 16].")
                                 ] = None,
    modality_config_protocol: Annotated[str, typer.Option("--modality_config_protocol", help="Dialect of "
                                                          "get_modality_config, the one request both clients send "
                                                          "alike: current (Isaac-GR00T's PolicyClient, IsaacLab) "
                                                          "or n1.5 (RobotInferenceClient).")] = "current",
    batch_window_ms: Annotated[float, typer.Option("--batch_window_ms", min=0, help="Run get_action "
                                                   "requests of concurrent clients arriving within this many ms as "
                                                   "one policy call, each answered with its own actions (0: one "
                                                   "request at a time).")] = 0.0,
    max_batch: Annotated[int, typer.Option("--max_batch", min=1, help="Most environments in one batched policy "
                                           "call (with --batch_window_ms).")] = 8,
    cuda_graphs: Annotated[bool, typer.Option("--cuda_graphs", help="GPU: replay the exported stages as CUDA graphs, "
                                              "one set per prompt length and batch size (padded to 1, 2, 4, 8, ...), "
                                              "captured at its first request (a few seconds, and a copy of each "
                                              "ONNX stage's weights, per new shape).")] = False,
):
    """Serve a policy over Isaac-GR00T's ZeroMQ protocol, current and N1.5 dialects (get_action, reset,
    get_modality_config, ping, kill).

    Clients written for NVIDIA's run_gr00t_server (PolicyClient, IsaacLab's GR00T tasks) or its N1.5
    RobotInferenceServer connect unchanged; get_action answers in the dialect of each request. Stops on kill,
    Ctrl-C or SIGTERM.

    get_action is deterministic: the noise is seeded with 0 unless an N1.5 request sends "seed" or "noise".
    """
    from gr00t_export.errors import InputError
    from gr00t_export.policies import serve_policy
    from gr00t_export.serve import PROTOCOLS, PolicyServer

    if modality_config_protocol not in PROTOCOLS:  # before a model is loaded for nothing
        raise InputError(f"unknown --modality_config_protocol {modality_config_protocol!r}; use current "
                         "(Isaac-GR00T's PolicyClient, IsaacLab) or n1.5 (RobotInferenceClient)")
    policy = serve_policy(artifact_dir, model_path, eagle_path, embodiment_tag, modality_config, backend, device,
                          dataset_path, episode, execution_horizon, denoising_steps, cuda_graphs)
    if dataset_path is not None:
        note_chosen_config(modality_config, policy.interface.name)  # the config the dataset's modality.json fits
    if host not in ("127.0.0.1", "localhost", "::1") and not api_token:
        console.print(f"[yellow]warning:[/] serving on {host} without --api_token: anyone who reaches this port "
                      "can drive the policy")
    server = PolicyServer(policy, host=host, port=port, api_token=api_token,
                          max_message_bytes=int(max_message_mb * 2**20), log_every=log_every,
                          log=lambda line: console.print(line, highlight=False, soft_wrap=True, markup=False),
                          modality_config_protocol=modality_config_protocol, batch_window_ms=batch_window_ms,
                          max_batch=max_batch)
    if model_path is not None:
        note_chosen_config(modality_config, policy.interface.name)
    server.run()


@app.command()
@cli_errors
def client(
    host: Annotated[str, typer.Option(help="Server address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Server port.")] = 5555,
    protocol: Annotated[str, typer.Option(help="current (Isaac-GR00T's PolicyClient: nested observation, "
                                          "(action, info) back) or n1.5 (RobotInferenceClient).")] = "current",
    dataset_path: Annotated[Path | None, typer.Option("--dataset_path", help="Send this LeRobot dataset's step "
                                                      "(its keys are the server's get_modality_config).")] = None,
    episode: Annotated[int, typer.Option(help="Episode index in --dataset_path.")] = 0,
    step: Annotated[int, typer.Option(help="Step index in the episode.")] = 0,
    obs: Annotated[Path | None, typer.Option("--obs", help="Send this observation .npz instead (video.<k>, "
                                             "state.<k>, annotation.<k>; batched or not).")] = None,
    api_token: Annotated[str | None, typer.Option("--api_token", help="The server's api_token.")] = None,
    timeout_ms: Annotated[int, typer.Option("--timeout_ms", min=1, help="Wait this long for each reply.")] = 15000,
    out: Annotated[Path | None, typer.Option("--out", help="Write the actions to this .npz.")] = None,
):
    """Send one observation to a running policy server (gr00t-export serve or NVIDIA's) and print its actions."""
    from gr00t_export.data.npz import load_observation, write_actions
    from gr00t_export.errors import InputError
    from gr00t_export.serve import (
        CURRENT,
        N15,
        Client,
        PolicyClient,
        ProtocolError,
        ServerError,
        modality_from_reply,
        to_current_observation,
    )

    if protocol not in (CURRENT, N15):
        raise InputError(f"unknown --protocol {protocol!r}; use current or n1.5")
    with (PolicyClient if protocol == CURRENT else Client)(host, port, api_token, timeout_ms) as conn:
        try:
            modality = modality_from_reply(conn.get_modality_config())
            observation = load_observation(obs, dataset_path, episode, step, modality)
            if protocol == CURRENT:
                actions, info = conn.get_action(to_current_observation(observation))
            else:
                actions, info = conn.get_action(observation), {}
        except TimeoutError as err:
            raise InputError(f"{err}; start one with `gr00t-export serve`") from None
        except ServerError as err:
            raise InputError(f"the server answered: {err}") from None
        except ProtocolError as err:
            raise InputError(f"{err} (or try the other --protocol)") from None
    # the current dialect names keys bare; the .npz uses `action.<key>` whatever the dialect, as `predict --out` does
    actions = {k if k.startswith("action.") else f"action.{k}": v for k, v in actions.items()}
    print_actions(actions, title=f"actions from tcp://{host}:{port} ({protocol})")
    if out is not None:
        write_actions(actions, out, {"--dataset_path": dataset_path, "--obs": obs})
        console.print(f"[green]wrote[/] {out}")
    if info:
        out_console.print(f"info: {info}", highlight=False)


@app.command()
@cli_errors
def build(
    model_path: ModelPath = None,
    embodiment_tag: EmbodimentTag = None,
    modality_config: ModalityOpt = None,
    eagle_path: EaglePath = None,
    precision: Annotated[str, typer.Option(help="fp32, fp16, bf16, or fp8 (fp16 graphs with calibrated E4M3 "
                                           "linear layers; needs --dataset_path).")] = "fp32",
    calib_steps: Annotated[int, typer.Option("--calib_steps", help="fp8: dataset steps to calibrate on.")] = 16,
    views: Annotated[int | None, typer.Option(help="Camera views (checked against the modality config).")] = None,
    max_batch: Annotated[int, typer.Option("--max_batch", help="Largest batch of the TensorRT profiles.")] = 1,
    output: Annotated[Path | None, typer.Option("--output", help="Artifact dir.",
                                                show_default="out/<checkpoint name>-<precision>; --demo: "
                                                "out/demo_export")] = None,
    dataset_path: Annotated[Path | None, typer.Option("--dataset_path", help="LeRobot dataset whose first step is "
                                                      "the export example.")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Make the tiny checkpoint and a synthetic dataset first "
                                       "(under --output's parent) and build those.")] = False,
    simplify: Annotated[bool, typer.Option(help="Simplify ONNX graphs with onnxslim (numerically checked).")] = True,
    device: Annotated[str, typer.Option(help="Trace/export the model stages on cpu or cuda.")] = "cpu",
    onnx_ops: Annotated[str, typer.Option("--onnx_ops", help="standard: plain ONNX ops, which TensorRT parses and "
                                          "fuses itself; onnxruntime: attention, RoPE, bias+GELU and residual "
                                          "add+LayerNorm as onnxruntime's fused kernels (com.microsoft "
                                          "MultiHeadAttention, RotaryEmbedding, FastGelu, SkipLayerNormalization), "
                                          "for the onnxruntime CUDA runtime; TensorRT cannot read those.")
                        ] = "standard",
    force: Annotated[bool, typer.Option(help="Replace a non-empty --output.")] = False,
    validate_build: Annotated[bool, typer.Option("--validate/--no-validate", help="Run `validate` on the new build "
                                                 "(needs --dataset_path or --demo).")] = True,
    denoising_steps: Annotated[int | None, typer.Option(
        "--denoising_steps", help="Euler steps unrolled into the denoising graph (Isaac-GR00T's --denoising_steps); "
        "recorded in the manifest, and validation's reference runs as many.",
        show_default="the checkpoint's num_inference_timesteps")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Validation prints every step's get_action lines.")
                       ] = False,
):
    """Export a checkpoint into the deployable stages (TorchScript + ONNX), each checked against PyTorch."""
    from gr00t_export.errors import InputError
    from gr00t_export.families.base import require_denoising_steps
    from gr00t_export.pipeline.build import BuildOptions, demo_inputs, validate_staged_build
    from gr00t_export.pipeline.build import build as run_build
    from gr00t_export.util import step_progress

    require_denoising_steps(denoising_steps)  # a usage error before any work, --demo's included
    if demo:
        output = output or Path("out/demo_export")
        model_path, dataset_path = demo_inputs(output, embodiment_tag, modality_config, log=console.print)
    if model_path is None:
        raise InputError("no checkpoint: pass --model_path CKPT (or --demo for the embedded tiny one)")
    output = output or Path("out") / f"{model_path.name}-{precision}"
    opts = BuildOptions(model_path=model_path, output=output, embodiment_tag=embodiment_tag,
                        modality_config=modality_config, eagle_path=eagle_path, precision=precision, views=views,
                        max_batch=max_batch, dataset_path=dataset_path, force=force, simplify=simplify,
                        device=device, calib_steps=calib_steps, onnx_ops=onnx_ops, denoising_steps=denoising_steps)
    validation: dict = {}
    with step_progress("build", console) as progress:

        def before_commit(result) -> None:
            progress.stop()  # the table and validate's lines go to the terminal undisturbed
            print_build(result)
            if validate_build and dataset_path is not None:
                validation["report"] = validate_staged_build(result, model_path, eagle_path, dataset_path, verbose)

        result = run_build(opts, on_step=progress, before_commit=before_commit)
    note_chosen_config(modality_config, result.manifest.interface.name)
    report = validation.get("report")
    if report is not None and not report.passed:
        from gr00t_export.errors import ValidationFailure

        raise ValidationFailure(f"{result.output} was written (for inspection) but failed validation: "
                                f"{report.summary()}; re-run with --force to replace it")


@app.command()
@cli_errors
def inspect(
    artifact_dir: Annotated[Path, typer.Argument(help="Artifact dir written by `gr00t-export build`, or one .onnx "
                                                 "or TorchScript .pt file.")],
    png: Annotated[Path | None, typer.Option("--png", help="Also draw the execution graph into this PNG "
                                             "(artifact dirs).")] = None,
):
    """Show a build (stage graph, tensors, sizes, precisions, hashes, IGG config, validation) or one model file.

    An .onnx file: inputs/outputs with dtypes and symbolic shapes, opsets, op counts, initializers and their bytes
    (external data included, never loaded). A .pt file: TorchScript forward schema, parameters and buffers.
    """
    from gr00t_export.errors import InputError
    from gr00t_export.tools.inspect import describe_drop, describe_file, render_graph_png

    if not artifact_dir.is_dir() and artifact_dir.exists():
        if png is not None:
            raise InputError("--png draws an artifact dir's stage graph; leave it out when inspecting one file")
        print_model_file(describe_file(artifact_dir))
        return
    view = describe_drop(artifact_dir)
    print_drop(view)
    if png is not None:
        render_graph_png(view, png)
        out_console.print(f"[green]wrote[/] {png}")


@app.command()
@cli_errors
def bench(
    artifact_dir: Annotated[Path | None, typer.Argument(help="Exported build (for the ort/trt backends).")] = None,
    model_path: ModelPath = None,
    eagle_path: EaglePath = None,
    embodiment_tag: EmbodimentTag = None,
    modality_config: ModalityOpt = None,
    backends: Annotated[str, typer.Option(help="Comma-separated: torch, torch-compile, aoti, ort, "
                                              "ort-cudagraph, trt.")
                        ] = "torch,torch-compile,ort,trt",
    dtype: Annotated[str | None, typer.Option(help="Precision of the PyTorch backends: fp16, bf16 or fp32.",
                                              show_default="fp16 on cuda, fp32 on cpu")] = None,
    iters: Annotated[int, typer.Option(help="Timed iterations per backend.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up iterations.")] = 5,
    device: Annotated[str | None, typer.Option(help="cuda or cpu (cpu: smoke tests only).",
                                               show_default="cuda when a GPU is visible, else cpu")] = None,
    dataset_path: Annotated[Path | None, typer.Option("--dataset_path", help="Take the observation from this "
                                                      "LeRobot dataset.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every figure to this JSON file.")] = None,
    profile: Annotated[bool, typer.Option("--profile", help="GPU: also trace each model stage's CUDA kernels "
                                          "(count, busy time, kinds) to show where its time goes.")] = False,
    denoising_steps: Annotated[int | None, typer.Option(
        "--denoising_steps", help="Euler steps of the PyTorch backends.",
        show_default="ARTIFACT_DIR's, else the checkpoint's num_inference_timesteps")] = None,
    grid: Annotated[bool, typer.Option("--grid", help="Time every --batches x --views cell (torch, torch-compile, "
                                       "ort, ort-cudagraph): p50/p90 ms, samples/s, ratio to torch.compile.")
                    ] = False,
    batches: Annotated[str, typer.Option("--batches", help="--grid: batch sizes.")] = "1,2,4,8",
    views: Annotated[str, typer.Option("--views", help="--grid: camera counts.")] = "1,2,3",
):
    """Per-stage and end-to-end latency (median, p90) of each backend on the same observation, with ratios."""
    import torch

    from gr00t_export.tools.bench import bench as run_bench
    from gr00t_export.tools.bench import is_bench_json, write_json
    from gr00t_export.util import atomic_output_file, check_output_file

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("fp16" if device.startswith("cuda") else "fp32")
    json_inputs = {"ARTIFACT_DIR": artifact_dir, "--model_path": model_path, "--eagle_path": eagle_path,
                   "--dataset_path": dataset_path}
    if json_out is not None:
        check_output_file(json_out, json_inputs, ours=is_bench_json, what="--json")  # before minutes of timing
    names = [b.strip() for b in backends.split(",") if b.strip()]
    if grid:  # every (batch, views) cell: its own table and JSON
        from gr00t_export.tools.grid import bench_grid, parse_grid_axis, write_grid_json

        cells = bench_grid(artifact_dir, model_path, names, dtype, iters, warmup, device,
                           parse_grid_axis(batches, "--batches"), parse_grid_axis(views, "--views"), eagle_path,
                           embodiment_tag, modality_config, log=lambda m: console.print(m),
                           denoising_steps=denoising_steps)
        for cell in (c for c in cells if c.note):
            console.print(f"{cell.backend} batch {cell.batch} x {cell.views} view(s): {cell.note}", markup=False)
        gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
        print_grid(cells, gpu, iters)
        if json_out is not None:
            with atomic_output_file(json_out, json_inputs, ours=is_bench_json, what="--json") as tmp:
                write_grid_json(cells, tmp, {"device": gpu, "dtype": dtype, "iters": iters, "warmup": warmup,
                                             "backends": names, "artifact_dir": str(artifact_dir),
                                             "model_path": str(model_path)})
            console.print(f"[green]wrote[/] {json_out}")
        return
    results = run_bench(artifact_dir, model_path, names, dtype, iters, warmup, device, dataset_path, eagle_path,
                        embodiment_tag, modality_config, log=lambda m: console.print(m), profile=profile,
                        denoising_steps=denoising_steps)
    gpu = "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name()
    print_bench(results, gpu, iters)
    if json_out is not None:
        with atomic_output_file(json_out, json_inputs, ours=is_bench_json, what="--json") as tmp:
            write_json(results, tmp, {"device": gpu, "dtype": dtype, "iters": iters, "backends": names,
                                      "artifact_dir": str(artifact_dir), "model_path": str(model_path)})
        console.print(f"[green]wrote[/] {json_out}")


@app.command(context_settings={"allow_extra_args": True})
@cli_errors
def validate(
    ctx: typer.Context,
    artifact_dir: Annotated[Path, typer.Argument(help="Exported build to validate (the --output of `build`).")],
    model_path: Annotated[Path | None, typer.Option("--model_path", help="The checkpoint the build came from; "
                                                    "without it only integrity, spec and determinism are checked.")
                          ] = None,
    eagle_path: EaglePath = None,
    dataset_path: Annotated[Path | None, typer.Option("--dataset_path", help="LeRobot dataset whose steps are run.",
                                                      show_default="the build's seeded synthetic observation")] = None,
    suite: Annotated[Path | None, typer.Option("--suite", help="Validation suite YAML (tolerances, steps, plots).",
                                               show_default="validation/default.yaml")] = None,
    num_steps: Annotated[int | None, typer.Option("--num_steps", help="Steps compared in tier 2.",
                                                  show_default="the suite's, 30")] = None,
    plot_actions: Annotated[list[str] | None, typer.Option("--plot_actions", help="Action keys to plot python vs "
                                                           "onnx: repeat the option or give a comma/space-separated "
                                                           "list.", show_default="the suite's, else every action key")
                            ] = None,
    report: Annotated[Path | None, typer.Option("--report", help="JSON report.",
                                                show_default="<output_dir>/validation_report.json")] = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="Also write JUnit XML (one testcase per check).")
                     ] = None,
    output_dir: Annotated[Path | None, typer.Option("--output_dir", help="Reports and plots.",
                                                    show_default="ARTIFACT_DIR/validation")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Print every step's get_action lines (as NVIDIA's "
                                          "export guide does) instead of one line per 10 steps.")] = False,
):
    """Check a build: hashes, spec, determinism; with --model_path also per-stage accuracy, actions and plots.

    Exit code 0: every check passed; 1: a check failed (reports are still written); 2: bad usage or input.
    """
    from gr00t_export.errors import InputError, ValidationFailure
    from gr00t_export.pipeline.validate import validate as run_validate

    extra = list(ctx.args)
    if extra and not plot_actions:
        raise InputError(f"unexpected argument(s) {' '.join(extra)}; only ARTIFACT_DIR is positional")
    keys = [*(plot_actions or []), *extra] or None
    result = run_validate(artifact_dir, model_path=model_path, eagle_path=eagle_path, dataset_path=dataset_path,
                          suite=suite, num_steps=num_steps, plot_actions=keys, report=report, junit=junit,
                          output_dir=output_dir, verbose=verbose)
    if not result.passed:
        raise ValidationFailure(f"{artifact_dir} failed validation: {result.summary()}")


@app.command("engines")
@cli_errors
def engines_cmd(
    artifact_dir: Annotated[Path, typer.Argument(help="Exported build (the --output of `gr00t-export build`).")],
    precision: Annotated[str, typer.Option(help="fp16 (an fp16 build) or fp8 (an fp8 build's Q/DQ graphs); engines "
                                           "are strongly typed, so this is the ONNX graphs' own precision.")],
    target: Annotated[str, typer.Option(help="local: build the engines here with TensorRT; thor: only write "
                                        "engines/build_engines.sh (trtexec) to run on the Thor.")] = "local",
    workspace: Annotated[int, typer.Option(help="TensorRT builder workspace in MiB.")] = 4096,
):
    """TensorRT engines for the ONNX stages: the trtexec plan for the target, and the engines when built here."""
    from gr00t_export.errors import InputError, ValidationFailure
    from gr00t_export.pipeline.engines import build_engines, write_build_plan

    if target not in ("local", "thor"):
        raise InputError(f"unknown --target {target!r}; use local or thor")
    if target != "local":
        plan = write_build_plan(artifact_dir, precision, target, workspace)
        console.print(f"[green]wrote[/] {plan} and {plan.with_name('README.md')}; on the {target}, from the artifact "
                      f"dir: bash engines/{plan.name}", highlight=False, soft_wrap=True)
        return
    reports = build_engines(artifact_dir, precision, workspace, log=lambda m: console.print(m, highlight=False))
    print_engines(reports, f"{artifact_dir}/engines ({precision})")
    failed = [r for r in reports if not r.ok]
    if failed:
        first = failed[0]
        reason = first.errors[0] if first.errors else "no message"
        raise ValidationFailure(f"{len(failed)} engine(s) failed, first {first.stage}: {reason} (see "
                                f"{artifact_dir}/{first.log})")


@app.command("pack")
@cli_errors
def pack_cmd(
    artifact_dir: Annotated[Path, typer.Argument(help="Exported build to pack (hash-checked first).")],
    target: Annotated[str, typer.Option(help="Where the drop runs: thor or local (names the file and the plan).")
                      ] = "thor",
    precision: Annotated[str | None, typer.Option(help="Engine precision of the plan: fp16 or fp8.",
                                                  show_default="the build's")] = None,
    dist: Annotated[Path, typer.Option("--dist", help="Output folder of the .tar.gz.")] = Path("dist"),
    force: Annotated[bool, typer.Option(help="Replace an existing drop of the same name made from another "
                                        "checkpoint (a drop of the same checkpoint is always replaced).")] = False,
    allow_unvalidated: Annotated[bool, typer.Option("--allow-unvalidated", help="Pack a build that has not passed "
                                                    "`validate --model_path` (e.g. built with --no-validate); "
                                                    "pack.json and README_TARGET.md in the drop say so.")] = False,
):
    """One verified tar.gz for the target: artifacts, manifest, engine build plan and what to run there, in order.

    Only a build that passed a full validation is packed, unless --allow-unvalidated.
    """
    from gr00t_export.tools.pack import pack

    out = pack(artifact_dir, target, precision, dist, force=force, allow_unvalidated=allow_unvalidated)
    console.print(f"[green]wrote[/] {out} ({out.stat().st_size / 2**20:.1f} MiB); on the {target}: "
                  f"tar -xzf {out.name}, then follow README_TARGET.md", highlight=False, soft_wrap=True)


def _register_features() -> None:
    """`features` lives with its library code (tools/features.py); its options are typer-annotated there."""
    from gr00t_export.tools.features import features_cmd

    app.command("features")(cli_errors(features_cmd))


_register_features()


# click shortens each command's summary in `gr00t-export --help` to fit the terminal; a given short help is wrapped
for _command in app.registered_commands:
    _command.short_help = _command.short_help or " ".join((_command.callback.__doc__ or "").split("\n\n")[0].split())
