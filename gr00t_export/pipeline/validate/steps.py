"""The step loop: the validation's observations (dataset steps or the synthetic one), both policies loaded, and
one pass over the steps that feeds every tier: the twins' feeds for tier 1, both policies' actions for tier 2
and the plots, the run-time interface and determinism re-runs for tier 0."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gr00t_export.errors import Gr00tExportError, ValidationFailure
from gr00t_export.families import family_named
from gr00t_export.families.base import Observation, PolicyInterface, RawInputs, make_noise, synthetic_observation
from gr00t_export.manifest import Manifest
from gr00t_export.pipeline.validate.accuracy import TensorComparison, compare_tensors
from gr00t_export.pipeline.validate.conformance import (
    DimBindings,
    determinism_issue,
    dynamic_conformance,
    static_conformance,
)
from gr00t_export.pipeline.validate.report import Check, Run
from gr00t_export.pipeline.validate.suite import Suite
from gr00t_export.runtime.runner import StageRunner
from gr00t_export.spec import PRECISIONS, StageSpec

PROGRESS_EVERY = 10  # steps per progress line when not verbose
FLOAT_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class Sample:
    """One validation step: an observation, its seed, and the dataset's recorded actions when there are."""

    label: str
    episode: int | None
    step: int | None
    seed: int
    obs: Observation
    truth: dict[str, np.ndarray] | None = None


def open_dataset(dataset_path: Path, modality: PolicyInterface, num_steps: int, stride: int
                 ) -> tuple[Any, list[tuple[int, int]]]:
    """The dataset and its (episode, step) pairs, opened before any check so a bad dataset is a usage error."""
    from gr00t_export.data.lerobot import LeRobotDataset

    dataset = LeRobotDataset(dataset_path)
    dataset.check_config(modality)
    return dataset, dataset.spread_steps(modality, num_steps, stride)


def iter_samples(modality: PolicyInterface, dataset: Any | None, pairs: list[tuple[int, int]],
                 num_steps: int, seed: int) -> tuple[list[dict[str, Any]], Iterator[Sample]]:
    """Descriptions of the steps (for the report) and a lazy iterator over them (videos decode on demand)."""
    if dataset is None:
        obs = synthetic_observation(modality)
        desc = [{"episode": None, "step": None, "seed": seed + i, "source": "synthetic"} for i in range(num_steps)]
        return desc, (Sample(f"synthetic #{i}", None, None, seed + i, obs) for i in range(num_steps))
    desc = [{"episode": e, "step": s, "seed": seed + i, "source": "dataset"} for i, (e, s) in enumerate(pairs)]

    def gen() -> Iterator[Sample]:
        for i, (episode, step) in enumerate(pairs):
            yield Sample(f"episode {episode} step {step}", episode, step, seed + i,
                         dataset.observation(episode, step, modality), dataset.actions(episode, step, modality))

    return desc, gen()


class TimedRunner:
    """Wraps a StageRunner: keeps its latest feeds and outputs and every call's wall time; names it on errors."""

    def __init__(self, name: str, inner: StageRunner):
        self.name, self.inner, self.spec = name, inner, inner.spec
        self.times_ms: list[float] = []
        self.last: dict[str, Any] = {}
        self.last_feeds: Mapping[str, Any] = {}

    def infer(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        self.last_feeds = feeds
        start = time.perf_counter()
        try:
            out = self.inner.infer(feeds)
        except Gr00tExportError:
            raise
        except Exception as err:  # onnxruntime and TorchScript raise many types; all mean "this stage broke"
            raise ValidationFailure(f"stage {self.name} failed to run: {type(err).__name__}: "
                                    f"{str(err).splitlines()[0] if str(err) else ''}") from err
        self.times_ms.append((time.perf_counter() - start) * 1e3)
        self.last = out
        return out


def timing_stats(times_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(times_ms)
    return {"median": float(np.median(arr)), "mean": float(arr.mean()), "min": float(arr.min()),
            "max": float(arr.max()), "p90": float(np.percentile(arr, 90)), "runs": len(times_ms)}


@dataclass
class Reference:
    """The PyTorch side: the reference policy and its stage twins, from --model_path."""

    policy: Any  # ReferencePolicy
    part: Any  # Partition
    precision: str
    fingerprint: str


def load_reference(model_path: Path, eagle_path: Path | None, manifest: Manifest, precision: str) -> Reference:
    """The checkpoint opened as the build opened it (same embodiment, config and Euler steps), loaded in `precision`,
    with its stage twins."""
    opened = family_named(manifest.family).open_for_manifest(model_path, eagle_path, manifest)
    model = opened.load(PRECISIONS[precision])
    return Reference(opened.reference(model), opened.partition(model, precision), precision, opened.fingerprint())


def twin_run(ref: Reference, raw: RawInputs, init_actions: torch.Tensor
             ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Runs the eager twins end to end: (feeds, outputs) per stage."""
    from gr00t_export.runtime.runner import TorchStageRunner, run_pipeline

    twins = {s.name: TimedRunner(s.name, TorchStageRunner(ref.part.modules[s.name], s)) for s in ref.part.spec.stages}
    feeds: dict[str, dict[str, Any]] = {}
    run_pipeline(ref.part.spec, twins, raw, init_actions, feeds)
    return feeds, {name: t.last for name, t in twins.items()}


@dataclass
class Exported:
    """The artifact side once loaded: the runner (its stages wrapped in TimedRunner) and what the spec says."""

    runner: Any  # ExportedGr00tRunner
    timed: dict[str, TimedRunner]
    precision: str
    float_dtype: str
    bindings: DimBindings
    action_dims: dict[str, int]
    static: dict[str, list[str]]

    @property
    def stages(self) -> tuple[StageSpec, ...]:
        return self.runner.graph.stages

    def outputs(self) -> dict[str, dict[str, Any]]:
        return {s.name: self.timed[s.name].last for s in self.stages}


@dataclass
class Steps:
    """Everything the step loop measured, for the checks and plots after it."""

    labels: list[str] = field(default_factory=list)
    reference: dict[str, list[np.ndarray]] = field(default_factory=dict)
    exported: dict[str, list[np.ndarray]] = field(default_factory=dict)
    truth: dict[str, list[np.ndarray]] = field(default_factory=dict)
    comparisons: dict[str, list[TensorComparison]] = field(default_factory=dict)
    accuracy_seconds: dict[str, float] = field(default_factory=dict)
    dynamic: dict[str, list[str]] = field(default_factory=dict)
    nondeterministic: tuple[str, str, str] | None = None  # stage, output, step
    determinism_runs: int = 0
    broken: str | None = None  # why the exported pipeline stopped

    def completed(self, side: dict[str, list[np.ndarray]]) -> int:
        return min((len(v) for v in side.values()), default=0)


def _precision_float(precision: str, suite: Suite) -> str:
    return FLOAT_DTYPES.get(precision) or FLOAT_DTYPES.get(suite.reference_precision(precision), "float32")


def load_exported(run: Run, artifact_dir: Path, manifest: Manifest, modality: PolicyInterface, suite: Suite,
                  threads: int) -> Exported | None:
    """The drop's runner with every stage timed, and what its files say statically; None (a failed check) when
    onnxruntime or TorchScript refuses a file."""
    from gr00t_export.runtime.runner import ExportedGr00tRunner

    try:
        runner = ExportedGr00tRunner(artifact_dir, threads=threads)
    except ValidationFailure as err:
        run.add(Check("load/exported", 0, "failed", str(err)))
        return None
    except Exception as err:  # a file with the right hash that onnxruntime/TorchScript still rejects
        run.add(Check("load/exported", 0, "failed", f"cannot load the artifacts: {type(err).__name__}: {err}"))
        return None
    timed = {name: TimedRunner(name, r) for name, r in runner.stages.items()}
    runner.stages = timed  # the runner now times and records every stage it runs
    fixed = {k: int(v) for k, v in manifest.get("model", {}).get("dims", {}).items()}  # the spec's named widths
    precision = manifest["precision"]
    float_dtype = _precision_float(precision, suite)
    bindings = DimBindings(fixed)
    static = {s.name: static_conformance(s, artifact_dir / s.file, timed[s.name].inner, float_dtype, bindings)
              for s in runner.graph.stages}
    action_dims = dict(modality.action_dims)
    return Exported(runner, timed, precision, float_dtype, bindings, action_dims, static)


def load_reference_checked(run: Run, model_path: Path, eagle_path: Path | None, manifest: dict, suite: Suite
                           ) -> Reference:
    """The reference and its twins, with a check that --model_path is the checkpoint the build came from."""
    run.reporter.section("loading the PyTorch reference")
    twin_precision = suite.reference_precision(manifest["precision"])
    reference = load_reference(model_path, eagle_path, manifest, twin_precision)
    want = manifest.get("source", {}).get("fingerprint_sha256")
    metrics, limits = {"fingerprint": reference.fingerprint}, {"manifest": want}
    if want and want != reference.fingerprint:
        run.add(Check("source/fingerprint", 1, "failed", f"--model_path {model_path} is not the checkpoint this "
                      f"artifact was built from (fingerprint {reference.fingerprint[:12]}… vs manifest {want[:12]}…); "
                      "pass the build's checkpoint", metrics, limits))
    else:
        run.add(Check("source/fingerprint", 1, "passed", f"checkpoint matches the manifest ({want[:12]}…)" if want
                      else "manifest records no fingerprint; not compared", metrics, limits))
    run.reporter.line(f"reference twins run in {twin_precision} on cpu, "
                      f"{reference.policy.model.cfg.action_head.num_inference_timesteps} denoising steps as the build")
    return reference


def compare_stages(exported: Exported, reference: Reference, sample: Sample, suite: Suite, steps: Steps) -> None:
    """Tier 1 on one step: every artifact on the feeds its twin received when the twins ran this step."""
    raw = exported.runner.reader(sample.obs)
    feeds, twin_out = twin_run(reference, raw, make_noise((raw.batch, *exported.runner.interface.noise_shape), None,
                                                          sample.seed))
    for stage in exported.stages:
        start = time.perf_counter()
        got = exported.timed[stage.name].infer(feeds[stage.name])
        tol = suite.tolerance(exported.precision, stage.name)
        for name, want in twin_out[stage.name].items():
            steps.comparisons[stage.name].append(
                compare_tensors(name, got[name], want, tol) if name in got else
                TensorComparison(name, False, False, math.inf, math.inf, math.inf, "the artifact does not produce it"))
        steps.accuracy_seconds[stage.name] += time.perf_counter() - start


def run_steps(run: Run, exported: Exported, reference: Reference | None, samples: Iterator[Sample],
              modality: PolicyInterface, suite: Suite, per_module_steps: int, out_dir: Path, total: int,
              verbose: bool) -> Steps:
    """One loop over the validation steps: tier 1 feeds, both policies' actions, determinism re-runs.

    Prints a line per iteration and side when `verbose` (as NVIDIA's export guide does), else one per
    PROGRESS_EVERY steps, so a CI log shows progress without 2 x num_steps lines."""
    keys = modality.action_keys
    steps = Steps(reference={k: [] for k in keys}, exported={k: [] for k in keys}, truth={k: [] for k in keys},
                  comparisons={s.name: [] for s in exported.stages},
                  accuracy_seconds=dict.fromkeys((s.name for s in exported.stages), 0.0))
    python_dir, onnx_dir = out_dir / "plots" / "python", out_dir / "plots" / "onnx"
    order = [s.name for s in exported.stages]
    start = time.perf_counter()
    sides = "reference and exported" if reference is not None else "exported"
    for i, sample in enumerate(samples):
        steps.labels.append(sample.label)
        try:
            if reference is not None:
                if i < per_module_steps:
                    compare_stages(exported, reference, sample, suite, steps)
                if verbose:
                    run.reporter.line(f"computing {python_dir} get_actions for iteration {i}")
                actions = reference.policy.get_action(sample.obs, seed=sample.seed)
                for k in keys:
                    steps.reference[k].append(actions[k])
            if verbose:
                run.reporter.line(f"computing {onnx_dir} get_actions for iteration {i}")
            actions = exported.runner.get_action(sample.obs, seed=sample.seed)
            first = exported.outputs()
            if i == 0:
                probe = exported.bindings.copy()
                steps.dynamic = {s.name: dynamic_conformance(s, exported.timed[s.name].last_feeds, first[s.name],
                                                             exported.float_dtype, probe, exported.action_dims)
                                 for s in exported.stages}
            for k in keys:
                steps.exported[k].append(actions[k])
                if sample.truth is not None:
                    steps.truth[k].append(sample.truth[k])
            if i < suite.determinism_steps:
                exported.runner.get_action(sample.obs, seed=sample.seed)
                steps.determinism_runs += 1
                issue = determinism_issue(first, exported.outputs(), order)
                if issue and steps.nondeterministic is None:
                    steps.nondeterministic = (issue[0], issue[1], sample.label)
        except ValidationFailure as err:
            steps.broken = str(err)
            break
        if not verbose and ((i + 1) % PROGRESS_EVERY == 0 or i + 1 == total):
            run.reporter.line(f"step {i + 1}/{total}: {sides} get_action done ({time.perf_counter() - start:.1f} s)")
    return steps
