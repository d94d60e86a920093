"""The policy a command names: an exported drop, the PyTorch reference of a checkpoint, or (for `serve`) a
dataset's recorded actions. Each mistake in choosing one is an InputError before anything is loaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from gr00t_export.errors import InputError


def predict_policy(artifacts: Path | None, model_path: Path | None, eagle_path: Path | None = None, *,
                   embodiment_tag: str | None = None, modality_config: str | None = None, dtype: str = "fp32",
                   device: str = "cpu", denoising_steps: int | None = None) -> Any:
    """`predict`'s policy: the exported runner of `artifacts` (which runs the Euler steps it was built with), else
    the reference of `model_path` in `dtype`."""
    if artifacts is not None:
        from gr00t_export.runtime.runner import ExportedGr00tRunner, check_denoising_steps

        check_denoising_steps(artifacts, denoising_steps)
        return ExportedGr00tRunner(artifacts, device=device)
    if model_path is not None:
        from gr00t_export.families import open_reference

        return open_reference(model_path, eagle_path, embodiment_tag=embodiment_tag, modality_config=modality_config,
                              dtype=dtype, device=device, denoising_steps=denoising_steps)
    raise InputError("no policy given: pass --model_path CKPT (reference) or --artifacts DIR (exported)")


def serve_policy(artifact_dir: Path | None, model_path: Path | None, eagle_path: Path | None,
                 embodiment_tag: str | None, modality_config: str | None, backend: str | None, device: str,
                 dataset_path: Path | None = None, episode: int = 0, execution_horizon: int | None = None,
                 denoising_steps: int | None = None, cuda_graphs: bool = False) -> Any:
    """The policy `serve` runs: the exported runner for ARTIFACT_DIR, the PyTorch reference for --model_path, the
    recorded actions of --dataset_path's episode when there is no model (with the one built-in data config its
    modality.json fits when `modality_config` is None). `cuda_graphs`: the exported stages replayed as CUDA graphs,
    one per input shape (batch size padded to a power of two, prompt length), captured on first sight."""
    if sum(x is not None for x in (artifact_dir, model_path, dataset_path)) != 1:
        raise InputError("give exactly one policy: ARTIFACT_DIR (exported), --model_path CKPT (reference) or "
                         "--dataset_path DS (replay of recorded actions)")
    if cuda_graphs and (artifact_dir is None or backend not in (None, "ort") or not device.startswith("cuda")):
        raise InputError("--cuda_graphs replays an exported build's onnxruntime stages on the GPU: give ARTIFACT_DIR "
                         "with --device cuda (and --backend ort, the default)")
    if dataset_path is not None:
        if backend is not None:
            raise InputError(f"--dataset_path replays recorded actions; --backend {backend} applies to ARTIFACT_DIR")
        from gr00t_export.families import data_config, match_data_config
        from gr00t_export.serve.replay import ReplayPolicy

        keys = data_config(modality_config or match_data_config(dataset_path, embodiment_tag))
        return ReplayPolicy(dataset_path, keys, episode, execution_horizon, name=keys.name)
    if execution_horizon is not None:
        raise InputError("--execution_horizon applies to the replay (--dataset_path); a model answers every call")
    if backend not in (None, "ort", "trt", "torch"):
        raise InputError(f"unknown --backend {backend!r}; use ort, trt or torch")
    if backend == "trt" and importlib.util.find_spec("tensorrt") is None:
        raise InputError("--backend trt needs TensorRT, which is not importable here; pip install tensorrt "
                         "on a GPU machine, or use --backend ort")
    if model_path is not None:
        if backend not in (None, "torch"):
            raise InputError(f"--model_path runs the PyTorch reference; --backend {backend} applies to ARTIFACT_DIR")
        from gr00t_export.families import open_reference

        return open_reference(model_path, eagle_path, embodiment_tag=embodiment_tag, modality_config=modality_config,
                              device=device, denoising_steps=denoising_steps)
    from gr00t_export.runtime.runner import ExportedGr00tRunner, check_denoising_steps

    check_denoising_steps(artifact_dir, denoising_steps)
    runner = ExportedGr00tRunner(artifact_dir, device=device, backend=backend or "ort")
    if cuda_graphs:
        from gr00t_export.runtime.cuda_graphs import graphed_stages

        runner.stages = graphed_stages(runner.graph, runner.stages, runner.dir, device)
        runner.pad_batches = True  # batches of 1, 2, 4, 8, ...: a few captures instead of one per batch size
    return runner
