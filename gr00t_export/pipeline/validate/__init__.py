"""`gr00t-export validate`: is this artifact dir the policy it claims to be, and does it still behave like it?

Checks, in this order, each recorded as a `Check` in one `ValidationReport`:

0. integrity and self-consistency (always): manifest hashes first (a TorchScript file is code: nothing is
   loaded before its hash matches), then every artifact's interface against graph_spec.yaml, then determinism.
1. per-module accuracy (with --model_path): every artifact against its PyTorch twin from `partition()` of the
   reference model, on the inputs that stage really receives when the reference twins run dataset steps.
2. distribution consistency (with --model_path): reference policy vs exported policy over N dataset steps with
   the same seeded noise per step: per key and per joint differences, cosine similarity.
3. plots of both policies' actions and a python-vs-onnx comparison per action key.

Reports: validation_report.json (every figure and threshold, per-stage wall time), validation_report.md,
and JUnit XML on request; all agree with `report.exit_code`.

Modules: suite (the suite file), conformance (tier 0), accuracy (tiers 1-2), steps (the step loop), plots (tier 3's
figures), checks (the order of the tiers), report (checks, console lines, report files); `validate` here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gr00t_export.errors import InputError, ValidationFailure
from gr00t_export.families.base import PolicyInterface
from gr00t_export.manifest import MANIFEST, Manifest
from gr00t_export.pipeline.validate.accuracy import compare_tensors, consistency_check
from gr00t_export.pipeline.validate.checks import run_checks
from gr00t_export.pipeline.validate.report import (
    REPORT_JSON,
    REPORT_MD,
    Check,
    Reporter,
    Run,
    ValidationReport,
    write_json,
    write_junit,
    write_markdown,
)
from gr00t_export.pipeline.validate.steps import open_dataset
from gr00t_export.pipeline.validate.suite import Suite, Tolerance, default_suite_path, load_suite
from gr00t_export.spec import PRECISIONS
from gr00t_export.util import atomic_output_dir, check_output_dir, refuse_overlap

__all__ = ["Check", "Reporter", "Tolerance", "ValidationReport", "compare_tensors", "consistency_check",
           "default_suite_path", "fuller_report_kept", "load_suite", "validate"]


def resolve_plot_keys(requested: list[str] | None, suite: Suite, modality: PolicyInterface) -> list[str]:
    """`--plot_actions` (else the suite's list for this modality config, else every action key) as full action keys;
    unknown -> InputError."""
    if requested:
        wanted = [k for item in requested for k in item.replace(",", " ").split() if k]
    else:
        wanted = suite.plot_actions.get(modality.name, suite.plot_actions.get("default", []))
        wanted = [k for k in wanted if ("action." + k.removeprefix("action.")) in modality.action_keys] or list(
            modality.action_keys)
    keys = []
    for k in wanted:
        full = k if k.startswith("action.") else f"action.{k}"
        if full not in modality.action_keys:
            raise InputError(f"unknown action key {k!r} to plot; this build's keys are "
                             f"{', '.join(modality.action_keys)}")
        if full not in keys:
            keys.append(full)
    return keys


def _relocation(*moves: tuple[Path, Path | None]) -> Callable[[Any], Any]:
    """Rewrites paths under each `src` to the same paths under its `dst` in strings, paths, lists and dicts."""
    pairs = [(str(src.resolve()), str(Path(dst).expanduser().resolve())) for src, dst in moves if dst is not None]

    def relocate(value: Any) -> Any:
        if isinstance(value, Path):
            return Path(relocate(str(value)))
        if isinstance(value, str):
            for old, new in pairs:
                value = value.replace(old, new)
            return value
        if isinstance(value, list | tuple):
            return type(value)(relocate(v) for v in value)
        if isinstance(value, dict):
            return {k: relocate(v) for k, v in value.items()}
        return value

    return relocate


def fuller_report_kept(artifact_dir: Path) -> bool:
    """True when ARTIFACT_DIR/validation holds a full report (made with --model_path, e.g. by `build`)."""
    try:
        return json.loads((artifact_dir / "validation" / REPORT_JSON).read_text()).get("mode") == "full"
    except (OSError, ValueError, AttributeError):
        return False


def validate(artifact_dir: str | Path, model_path: str | Path | None = None, eagle_path: str | Path | None = None,
             dataset_path: str | Path | None = None, suite: str | Path | None = None, num_steps: int | None = None,
             plot_actions: list[str] | None = None, report: str | Path | None = None, junit: str | Path | None = None,
             output_dir: str | Path | None = None, reporter: Reporter | None = None, threads: int = 0,
             shown_as: str | Path | None = None, verbose: bool = False) -> ValidationReport:
    """Validates an artifact dir; returns the report (`.passed`, `.exit_code`) after writing it.

    Usage errors (missing dir, bad suite, unknown plot key, bad dataset, an output inside an input) raise
    InputError before any check. `num_steps=None` takes the suite's (30 in the default suite). `threads` > 0 caps
    onnxruntime's and torch's CPU threads while validating (1 is much faster for the tiny preset on a busy
    machine); 0 keeps the defaults. `shown_as`: the path ARTIFACT_DIR will have once renamed (`build` validates
    its staging dir before the final rename); reports and console lines name that path. `verbose` prints every
    step's get_action lines instead of one line per PROGRESS_EVERY steps.

    Without --model_path and without --output_dir, a full report already in ARTIFACT_DIR/validation (the one
    `build` writes) is kept: this run's reports go to ARTIFACT_DIR/validation/integrity instead.
    """
    start = time.perf_counter()
    reporter = reporter or Reporter()
    artifact_dir = Path(artifact_dir)
    if not artifact_dir.is_dir():
        raise InputError(f"artifact dir {artifact_dir} does not exist; run `gr00t-export build` first")
    suite_obj = load_suite(suite)
    steps = suite_obj.num_steps if num_steps is None else num_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"--num_steps must be >= 1, got {steps}")
    for label, p in (("--model_path", model_path), ("--dataset_path", dataset_path), ("--eagle_path", eagle_path)):
        if p is not None and not Path(p).exists():
            raise InputError(f"{label} {p} does not exist; pass an existing path")
    read = {"--model_path": model_path, "--eagle_path": eagle_path, "--dataset_path": dataset_path, "--suite": suite}
    refuse_overlap(artifact_dir / "validation" if output_dir is None else output_dir, read, "--output_dir")
    for label, target_file in (("--report", report), ("--junit", junit)):
        if target_file is None:
            continue
        refuse_overlap(target_file, read, label)
        where = Path(target_file).expanduser().resolve()
        if artifact_dir.resolve() in where.parents and (artifact_dir / "validation").resolve() not in where.parents:
            raise InputError(f"{label} {target_file} would be written among the artifacts of {artifact_dir}; "
                             "choose a path outside it or inside its validation/ dir (nothing was changed)")
    out_dir = Path(output_dir) if output_dir is not None else artifact_dir / "validation"
    if output_dir is None and model_path is None and fuller_report_kept(artifact_dir):
        out_dir = artifact_dir / "validation" / "integrity"
        reporter.line(f"keeping the full report in {artifact_dir / 'validation'}; this integrity-only run writes "
                      f"to {out_dir}")
    check_output_dir(out_dir, force=True, kind="validation")  # never replaces a dir of someone else's
    for target in (out_dir.parent, *(Path(f).parent for f in (report, junit) if f is not None)):
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot write validation output to {target} ({err.strerror}); pass --output_dir "
                             "(and --report/--junit) somewhere writable") from None
    try:
        manifest: Manifest | None = Manifest.read(artifact_dir)
        manifest_error = None
    except ValidationFailure as err:
        manifest, manifest_error = None, str(err)
    modality = plot_keys = None
    if manifest is not None:
        try:
            modality = manifest.interface
        except (ValidationFailure, KeyError, TypeError) as err:
            manifest_error = f"{MANIFEST} has no usable policy interface ({err}); re-run the build"
    dataset, pairs = None, []
    if modality is not None:
        plot_keys = resolve_plot_keys(plot_actions, suite_obj, modality)
        if dataset_path is not None:
            dataset, pairs = open_dataset(Path(dataset_path), modality, steps, suite_obj.stride)
    precision = manifest.get("precision") if manifest else None
    seal = manifest.get("manifest_sha256") if manifest else None
    full = model_path is not None
    if full and precision is not None:
        suite_obj.thresholds(precision)
        if suite_obj.reference_precision(precision) not in PRECISIONS:
            raise InputError(f"suite {suite_obj.path}: the build is {precision}, which PyTorch twins cannot run in; "
                             f"set tolerances.{precision}.reference_precision to one of {', '.join(PRECISIONS)}")
    inputs = {"model_path": str(model_path) if model_path else None, "eagle_path": str(eagle_path) if eagle_path
              else None, "dataset_path": str(dataset_path) if dataset_path else None, "suite": str(suite_obj.path),
              "num_steps": steps, "seed": suite_obj.seed, "plot_actions": plot_keys, "threads": threads}
    result = ValidationReport(artifact_dir=artifact_dir.resolve(), output_dir=out_dir.resolve(),
                              mode="full" if full else "integrity-only", precision=precision, inputs=inputs,
                              manifest_sha256=seal)
    # reports and plots are written into a staging dir that replaces `out_dir` whole at the end (an interrupted
    # run leaves the previous report as it was); the report names the final paths
    with atomic_output_dir(out_dir, force=True, kind="validation") as staging:
        relocate = _relocation((staging, out_dir), (artifact_dir, Path(shown_as) if shown_as is not None else None))
        shown = Reporter(lambda line: reporter.emit(relocate(line)))
        run = Run(result, shown)
        shown.line(f"validating {artifact_dir} ({precision or 'unknown precision'}) with suite {suite_obj.path}")
        if not full:
            shown.line("no --model_path: checking integrity, spec conformance and determinism only "
                       "(per-module accuracy, reference consistency and python plots need --model_path)")
        torch_threads = torch.get_num_threads()
        try:
            if threads > 0:
                torch.set_num_threads(threads)
            run_checks(run, artifact_dir, manifest, manifest_error, modality, suite_obj, steps, plot_keys,
                        Path(model_path) if model_path else None, Path(eagle_path) if eagle_path else None,
                        dataset, pairs, staging, threads, verbose)
        finally:
            torch.set_num_threads(torch_threads)
            result.wall_time_s = time.perf_counter() - start

        def staged(path: Path) -> Path:
            """Where a report file is written now: inside `out_dir` means inside the staging dir."""
            where = path.expanduser().resolve()
            return staging / where.relative_to(out_dir.resolve()) if out_dir.resolve() in where.parents else path

        json_path = Path(report) if report is not None else out_dir / REPORT_JSON
        result.files = {"json": str(json_path), "markdown": str(out_dir / REPORT_MD)}
        if junit is not None:
            result.files["junit"] = str(junit)
        result.artifact_dir, result.output_dir = relocate(result.artifact_dir), relocate(result.output_dir)
        result.files, result.plots = relocate(result.files), relocate(result.plots)
        for check in result.checks:
            check.message, check.metrics = relocate(check.message), relocate(check.metrics)
        write_markdown(result, staging / REPORT_MD)
        write_json(result, staged(json_path))
        if junit is not None:
            write_junit(result, staged(Path(junit)))
    shown.line("")
    shown.line(f"validation {'PASSED' if result.passed else 'FAILED'}: {result.summary()}")
    shown.line(f"report: {json_path} ({result.wall_time_s:.1f} s)")
    return result
