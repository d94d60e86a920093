"""`gr00t-export`: the command line. Each command is a thin shell over one library call.

Errors the user can fix print one line and exit 2 (input) or 1 (validation); never a traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gr00t_export.errors import Gr00tExportError

app = typer.Typer(
    help="Staged compiler for GR00T N1.5 policies: checkpoint -> TorchScript/ONNX/TensorRT stages -> IGG config.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
out_console = Console()


def cli_errors(fn):
    """One clear line and an exit code for every error a user can cause."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Gr00tExportError as err:
            console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            console.print("[bold red]interrupted:[/] nothing partial was left behind; re-run the command")
            raise typer.Exit(130) from None
        except MemoryError:
            console.print("[bold red]error:[/] out of memory; use a smaller preset or a machine with more RAM")
            raise typer.Exit(2) from None
        except OSError as err:
            if err.errno in (27, 28, 122):  # EFBIG, ENOSPC, EDQUOT
                console.print(f"[bold red]error:[/] {err.strerror} while writing {err.filename or 'output'}; "
                              "free disk space or raise the file-size limit, then re-run (nothing partial was kept)")
                raise typer.Exit(2) from None
            raise

    return wrapper


ModelPath = Annotated[Path | None, typer.Option("--model_path", help="GR00T N1.5 checkpoint dir (config.json, "
                                                 "safetensors, experiment_cfg/metadata.json).")]
EaglePath = Annotated[Path | None, typer.Option("--eagle_path", help="Eagle 2.5 config/tokenizer dir "
                                                 "[default: <model_path>/eagle].")]
EmbodimentTag = Annotated[str, typer.Option("--embodiment_tag", help="Embodiment tag (gr1, oxe_droid, "
                                             "agibot_genie1, new_embodiment).")]
ModalityOpt = Annotated[str | None, typer.Option("--modality_config", help="Data config name "
                                                  "(fourier_gr1_arms_only, fourier_gr1_arms_waist, unitree_g1) "
                                                  "or a modality YAML file.")]


@app.command("make-checkpoint")
@cli_errors
def make_checkpoint_cmd(
    out: Annotated[Path, typer.Argument(help="Output checkpoint dir.")],
    preset: Annotated[str, typer.Option(help="tiny (tests, demo) or n1.5-3b (full size, random weights).")] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed of the random weights and tokenizer.")] = 0,
    embodiment: Annotated[str, typer.Option("--embodiment", help="Embodiment tag of the metadata.")] = "gr1",
    modality_config: Annotated[str, typer.Option("--modality_config", help="Data config name or YAML file.")
                               ] = "fourier_gr1_arms_only",
    dataset_path: Annotated[Path | None, typer.Option("--dataset_path", help="Take normalisation statistics "
                                                      "from this LeRobot dataset's meta/stats.json.")] = None,
    eagle_path: Annotated[Path | None, typer.Option("--eagle_path", help="Copy tokenizer files from this real "
                                                    "Eagle dir instead of training a tiny BPE.")] = None,
    force: Annotated[bool, typer.Option(help="Replace a non-empty OUT.")] = False,
):
    """Generate a checkpoint with random weights in the exact GR00T N1.5 layout."""
    import time

    from gr00t_export.make_checkpoint import make_checkpoint

    start = time.perf_counter()
    path = make_checkpoint(out, preset, seed, embodiment, modality_config, dataset_path, eagle_path, force)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    console.print(f"[green]wrote[/] {path} ({size / 2**20:.1f} MiB, preset {preset}, "
                  f"{time.perf_counter() - start:.1f} s)")


@app.command("make-dataset")
@cli_errors
def make_dataset_cmd(
    out: Annotated[Path, typer.Argument(help="Output dataset dir (LeRobot v2).")],
    modality_config: Annotated[str, typer.Option("--modality_config", help="Data config name or YAML file.")
                               ] = "fourier_gr1_arms_only",
    episodes: Annotated[int, typer.Option(help="Number of episodes.")] = 2,
    length: Annotated[int, typer.Option(help="Steps per episode.")] = 48,
    seed: Annotated[int, typer.Option(help="Seed of the trajectories.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace a non-empty OUT.")] = False,
):
    """Write a small synthetic LeRobot v2 dataset (parquet, mp4, meta/*) so the demo needs nothing external."""
    from gr00t_export.data.synthetic import make_dataset
    from gr00t_export.embodiments import load_modality_config
    from gr00t_export.util import atomic_output_dir

    cfg = load_modality_config(modality_config)
    with atomic_output_dir(out, force=force) as tmp:
        make_dataset(tmp / "dataset", cfg, num_episodes=episodes, episode_length=length, seed=seed)
        for item in (tmp / "dataset").iterdir():
            item.rename(tmp / item.name)
        (tmp / "dataset").rmdir()
    console.print(f"[green]wrote[/] {out} ({episodes} episodes x {length} steps, {cfg.name})")


def load_observation(obs_path: Path | None, dataset_path: Path | None, episode: int, step: int, modality):
    import numpy as np

    from gr00t_export.errors import InputError

    if (obs_path is None) == (dataset_path is None):
        raise InputError("give exactly one input: --obs obs.npz or --dataset_path DS (with --episode/--step)")
    if obs_path is not None:
        if not obs_path.is_file():
            raise InputError(f"--obs {obs_path} not found; write one with numpy.savez (keys video.<k>, state.<k>)")
        try:
            with np.load(obs_path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (ValueError, OSError) as err:
            raise InputError(f"--obs {obs_path} is not a readable .npz without pickles ({err})") from None
    from gr00t_export.data.lerobot import LeRobotDataset

    return LeRobotDataset(dataset_path).observation(episode, step, modality)


def load_noise(noise_path: Path | None):
    import numpy as np

    from gr00t_export.errors import InputError

    if noise_path is None:
        return None
    try:
        noise = np.load(noise_path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise InputError(f"--noise {noise_path} is not a readable .npy ({err}); save float32 (16,32) with np.save")
    if not np.isfinite(noise).all():
        raise InputError(f"--noise {noise_path} contains NaN or inf")
    return noise


@app.command()
@cli_errors
def predict(
    model_path: ModelPath = None,
    eagle_path: EaglePath = None,
    embodiment_tag: EmbodimentTag = "gr1",
    modality_config: ModalityOpt = None,
    artifacts: Annotated[Path | None, typer.Option("--artifacts", help="Run an exported artifact dir "
                                                   "instead of the PyTorch reference.")] = None,
    dataset_path: Annotated[Path | None, typer.Option("--dataset_path", help="LeRobot v2 dataset.")] = None,
    episode: Annotated[int, typer.Option(help="Episode index in --dataset_path.")] = 0,
    step: Annotated[int, typer.Option(help="Step index in the episode.")] = 0,
    obs: Annotated[Path | None, typer.Option("--obs", help="Observation .npz (video.<k>, state.<k>, "
                                             "annotation.<k>).")] = None,
    noise: Annotated[Path | None, typer.Option("--noise", help="Initial noise .npy, (16,32) or (B,16,32) "
                                               "float32 [default: seeded N(0,1)].")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initial noise when --noise is not given.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Write actions to this .npz (keys action.<k>).")] = None,
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (reference only).")] = "fp32",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
):
    """Run one observation through the reference policy (or an exported artifact dir) and print its actions."""
    import numpy as np

    from gr00t_export.errors import InputError

    if artifacts is not None:
        from gr00t_export.runner import ExportedGr00tRunner

        policy = ExportedGr00tRunner(artifacts, device=device)
    elif model_path is not None:
        from gr00t_export.policy import ReferencePolicy

        policy = ReferencePolicy.from_checkpoint(model_path, eagle_path, embodiment_tag, modality_config,
                                                 dtype, device)
    else:
        raise InputError("no policy given: pass --model_path CKPT (reference) or --artifacts DIR (exported)")
    observation = load_observation(obs, dataset_path, episode, step, policy.spec.modality)
    actions = policy.get_action(observation, noise=load_noise(noise), seed=seed)
    table = Table(title="actions", title_justify="left")
    for col in ("key", "shape", "mean", "min", "max", "first step"):
        table.add_column(col)
    for key, value in actions.items():
        first = np.array2string(value.reshape(-1, value.shape[-1])[0], precision=3, max_line_width=60)
        table.add_row(key, str(value.shape), f"{value.mean():.4f}", f"{value.min():.4f}", f"{value.max():.4f}", first)
    out_console.print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, **actions)
        console.print(f"[green]wrote[/] {out}")


def main() -> None:  # pragma: no cover
    sys.exit(app())
