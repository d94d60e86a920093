"""The order of one validation, and the step loop's measurements turned into checks: integrity first (nothing is
loaded from a drop that fails it), then spec conformance, tier 1 accuracy, tier 2 determinism and consistency,
tier 3 plots."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from gr00t_export.families.base import PolicyInterface
from gr00t_export.manifest import MANIFEST
from gr00t_export.pipeline.validate.accuracy import (
    accuracy_check,
    consistency_check,
    merge_comparisons,
    report_comparison,
)
from gr00t_export.pipeline.validate.conformance import check_integrity
from gr00t_export.pipeline.validate.report import Check, Run
from gr00t_export.pipeline.validate.steps import (
    Exported,
    Reference,
    Steps,
    iter_samples,
    load_exported,
    load_reference_checked,
    run_steps,
    timing_stats,
)
from gr00t_export.pipeline.validate.suite import Suite
from gr00t_export.spec import SPEC_FILE


def run_checks(run: Run, artifact_dir: Path, manifest: dict | None, manifest_error: str | None,
                modality: PolicyInterface | None, suite: Suite, num_steps: int, plot_keys: list[str] | None,
                model_path: Path | None, eagle_path: Path | None, dataset: Any | None,
                pairs: list[tuple[int, int]], out_dir: Path, threads: int, verbose: bool = False) -> None:
    """Integrity first (nothing is loaded from a drop that fails it), then the tiers in order."""
    run.reporter.section("integrity")
    if manifest is None or modality is None:
        run.add(Check("integrity/manifest", 0, "failed", manifest_error or f"{MANIFEST} unreadable"))
        run.skip("remaining checks", 0, "the manifest is unusable")
        return
    if not run.add(check_integrity(artifact_dir, manifest)).passed:
        run.skip("remaining checks", 0, "integrity failed, nothing from this drop is loaded")
        return
    exported = load_exported(run, artifact_dir, manifest, modality, suite, threads)
    if exported is None:
        return
    reference = None if model_path is None else load_reference_checked(run, model_path, eagle_path, manifest, suite)
    desc, samples = iter_samples(modality, dataset, pairs, num_steps, suite.seed)
    run.report.inputs["samples"] = desc
    if dataset is None:
        run.reporter.line("no --dataset_path: using the build's seeded synthetic observation with a new noise seed "
                          "per step")
    per_module_steps = min(suite.per_module_steps, num_steps)
    run.phase("integrity_and_loading")
    run.reporter.section("running the steps" + (f" (tier 1 on the first {per_module_steps})" if reference else ""))
    steps = run_steps(run, exported, reference, samples, modality, suite, per_module_steps, out_dir, len(desc),
                      verbose)
    run.phase("steps")
    groups = key_groups(modality, suite)
    _add_spec_checks(run, exported, steps)
    _add_accuracy_checks(run, exported, reference, steps, suite, per_module_steps)
    _add_tier2_checks(run, exported, reference, steps, suite, groups)
    _add_plots(run, exported, reference, steps, suite, groups, plot_keys or [], out_dir)
    run.phase("checks_and_plots")
    stats = {name: timing_stats(t.times_ms) for name, t in exported.timed.items() if t.times_ms}
    run.report.stage_timing_stats_ms = stats
    run.report.stage_timings_ms = {name: s["median"] for name, s in stats.items()}


def _add_spec_checks(run: Run, exported: Exported, steps: Steps) -> None:
    run.reporter.section(f"spec conformance ({SPEC_FILE})")
    for s in exported.stages:
        issues = exported.static[s.name] + steps.dynamic.get(s.name, [])
        msg = (f"stage {s.name} ({s.file}) does not match {SPEC_FILE}: " + "; ".join(issues)) if issues else (
            f"{len(s.inputs)} input(s), {len(s.outputs)} output(s) match names, dtypes and dims"
            + ("" if s.name in steps.dynamic else " (statically; the pipeline did not run)"))
        run.add(Check(f"spec/{s.name}", 0, "failed" if issues else "passed", msg, {"issues": issues},
                      {"float_dtype": exported.float_dtype}, stage=s.name))
    if steps.broken:
        run.add(Check("run/exported", 2, "failed", steps.broken))


def _add_accuracy_checks(run: Run, exported: Exported, reference: Reference | None, steps: Steps, suite: Suite,
                         per_module_steps: int) -> None:
    run.reporter.section("tier 1: per-module accuracy (artifact vs PyTorch twin)")
    for s in exported.stages:
        name = f"accuracy/{s.name}"
        if reference is None:
            run.skip(name, 1, "needs --model_path", s.name)
            continue
        found = steps.comparisons[s.name]
        if not found:
            run.skip(name, 1, "the run stopped before this stage", s.name)
            continue
        tol = suite.tolerance(exported.precision, s.name)
        run.reporter.line(f"-- stage {s.name} ({s.format}, {s.file}) vs its PyTorch twin ({reference.precision}), "
                          f"{per_module_steps} step(s)")
        merged = [merge_comparisons([c for c in found if c.name == n]) for n in dict.fromkeys(c.name for c in found)]
        for c in merged:
            report_comparison(run.reporter, s, c, tol)
        run.add(accuracy_check(s, merged, tol, exported.precision, steps.accuracy_seconds[s.name], per_module_steps))


def _add_tier2_checks(run: Run, exported: Exported, reference: Reference | None, steps: Steps, suite: Suite,
                      groups: list) -> None:
    run.reporter.section("tier 2: determinism and distribution consistency")
    if steps.nondeterministic is not None:
        stage, out, label = steps.nondeterministic
        run.add(Check("determinism", 2, "failed", f"stage {stage} is not deterministic: output {out} differs "
                      f"between two runs of the same input ({label}); remove the randomness from that stage",
                      {"stage": stage, "output": out, "runs": steps.determinism_runs}, {"bitwise_equal": True},
                      stage=stage))
    elif steps.determinism_runs:
        run.add(Check("determinism", 2, "passed", f"{steps.determinism_runs} step(s) run twice: every stage's "
                      "outputs bitwise identical", {"runs": steps.determinism_runs}, {"bitwise_equal": True}))
    else:
        run.skip("determinism", 2, "the exported pipeline did not complete a step")
    done = steps.completed(steps.exported)
    if reference is None or done == 0 or steps.completed(steps.reference) < done:
        why = "needs --model_path" if reference is None else "the exported pipeline did not complete the steps"
        for g in groups:
            run.skip(f"consistency/{g.key}", 2, f"{why}")
        return
    limits = suite.thresholds(exported.precision)
    spans = exported.runner.interface.action_spans
    before = len(run.report.failures)
    for g in groups:
        span = np.asarray(spans.get(g.key, np.ones(len(g.joints))), dtype=np.float64)
        run.add(consistency_check(g.key, np.stack(steps.reference[g.key][:done]), np.stack(steps.exported[g.key]),
                                  g.joints, span, limits, exported.precision))
    if len(run.report.failures) == before and steps.nondeterministic is None:
        run.reporter.line(f"network consistency test passed over {done} runs")


def _add_plots(run: Run, exported: Exported, reference: Reference | None, steps: Steps, suite: Suite,
               groups: list, plot_keys: list[str], out_dir: Path) -> None:
    run.reporter.section("tier 3: plots")
    done = steps.completed(steps.exported)
    if not suite.plots_enabled:
        run.skip("plots", 3, f"plots.enabled is false in {suite.path.name}")
        return
    if done == 0:
        run.skip("plots", 3, "no exported actions to plot")
        return
    start = time.perf_counter()
    truth = steps.truth if steps.completed(steps.truth) >= done else None
    try:
        paths = _plots(run, groups, steps.reference if reference else None, steps.exported, truth, plot_keys,
                       exported.precision, suite, out_dir, steps.labels[:done], done)
    except (OSError, ValueError) as err:
        run.add(Check("plots", 3, "failed", f"plotting failed: {err}"))
        return
    run.report.plots = [str(p) for p in paths]
    run.add(Check("plots", 3, "passed", f"{len(paths)} PNG(s) in {out_dir / 'plots'}", {"files": run.report.plots},
                  seconds=time.perf_counter() - start))


def key_groups(modality: PolicyInterface, suite: Suite) -> list:
    """One plot group per action key: its joints named by the suite, else by the interface, else key[j]."""
    from gr00t_export.pipeline.validate.plots import KeyGroup

    groups = []
    for key in modality.action_keys:
        names = suite.joint_names.get(key) or list(modality.joint_names.get(key, ()))
        short = modality.short(key)
        dims = modality.action_dims[key]
        if len(names) != dims:
            names = [f"{short}[{j}]" for j in range(dims)]
        groups.append(KeyGroup(key, tuple(names), suite.units.get(key, "a.u.")))
    return groups


def _plots(run: Run, groups, ref_actions, exp_actions, truth, plot_keys: list[str], precision: str, suite: Suite,
           out_dir: Path, labels: list[str], n: int) -> list[Path]:
    from gr00t_export.pipeline.validate.plots import comparison_plot, overview_plots, series_stats

    horizon = exp_actions[groups[0].key][0].shape[0]
    paths: list[Path] = []
    sides = ([("python", ref_actions)] if ref_actions is not None else []) + [("onnx", exp_actions)]
    for side, actions in sides:
        data = np.concatenate([np.stack(actions[g.key][:n]).reshape(n * horizon, -1) for g in groups], axis=1)
        stats = series_stats(data, suite.clamp)
        run.reporter.line(f"[{side}] Time series data: {stats.time_steps} time steps, {stats.features} features")
        run.reporter.line(f"[{side}] Tensor Statistics: Mean: {stats.mean:.4f}, Std: {stats.std:.4f}, "
                          f"Max: {stats.max:.4f}" + (f" ({stats.clipped} values beyond ±{suite.clamp:g} clamped)"
                                                     if stats.clipped else ""))
        label = "python (PyTorch reference)" if side == "python" else f"onnx (exported, {precision})"
        paths += overview_plots(data, groups, out_dir / "plots" / side, label, horizon, suite.clamp)
    by_key = {g.key: g for g in groups}
    for key in plot_keys:
        path = comparison_plot(by_key[key], np.stack(exp_actions[key][:n]),
                               np.stack(ref_actions[key][:n]) if ref_actions else None,
                               np.stack(truth[key][:n]) if truth else None, out_dir / "plots" / f"compare_{key}.png",
                               precision, labels)
        run.reporter.line(f"comparison plot of {key}: {path}")
        paths.append(path)
    return paths
