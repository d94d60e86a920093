"""What a validation produces: one `Check` per verdict in a `ValidationReport`, the console lines (`Reporter`),
and the report files: validation_report.json (every figure and threshold), validation_report.md, JUnit XML.
All agree with `report.exit_code`."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import torch

from gr00t_export import __version__
from gr00t_export.errors import ValidationFailure

REPORT_JSON = "validation_report.json"
REPORT_MD = "validation_report.md"


def fmt(value: float) -> str:
    """A figure in a message or table: 6 significant digits."""
    return f"{value:.6g}"


@dataclass
class Check:
    """One verdict: what was checked, the figures measured and the thresholds they were held to."""

    name: str
    tier: int
    status: str  # "passed" | "failed" | "skipped"
    message: str
    metrics: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    stage: str | None = None

    @property
    def passed(self) -> bool:
        return self.status != "failed"


@dataclass
class ValidationReport:
    artifact_dir: Path
    output_dir: Path
    mode: str  # "full" | "integrity-only"
    precision: str | None
    inputs: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    stage_timings_ms: dict[str, float] = field(default_factory=dict)
    stage_timing_stats_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    manifest_sha256: str | None = None  # the seal of the manifest validated: ties the report to one build

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else ValidationFailure.exit_code

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "failed"]

    def summary(self) -> str:
        counts = {s: sum(c.status == s for c in self.checks) for s in ("passed", "failed", "skipped")}
        line = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
        if self.failures:
            line += f"; first failure: {self.failures[0].name}: {self.failures[0].message}"
        return line

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(c.status == s for c in self.checks) for s in ("passed", "failed", "skipped")}
        return {
            "format_version": 1,
            "tool": {"name": "gr00t-export", "version": __version__, "python": platform.python_version(),
                     "torch": torch.__version__},
            "created_unix": int(time.time()),
            "artifact_dir": str(self.artifact_dir),
            "passed": self.passed,
            "exit_code": self.exit_code,
            "mode": self.mode,
            "manifest_sha256": self.manifest_sha256,
            "precision": self.precision,
            "inputs": self.inputs,
            "summary": counts | {"checks": len(self.checks), "failures": [f"{c.name}: {c.message}"
                                                                          for c in self.failures]},
            "checks": [dataclasses.asdict(c) | {"passed": c.passed} for c in self.checks],
            "stage_timings_ms": self.stage_timings_ms,
            "stage_timing_stats_ms": self.stage_timing_stats_ms,
            "plots": self.plots,
            "wall_time_s": self.wall_time_s,
            "phase_seconds": self.phase_seconds,
            "files": self.files,
        }


class Reporter:
    """Where the console lines go: stdout by default, a list in tests. Checks never print themselves."""

    def __init__(self, emit: Callable[[str], None] | None = None):
        self.emit = emit or (lambda line: print(line, flush=True))

    def line(self, text: str = "") -> None:
        self.emit(text)

    def section(self, title: str) -> None:
        self.emit("")
        self.emit(f"== {title} ==")

    def check(self, check: Check) -> None:
        mark = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[check.status]
        self.emit(f"[{mark}] {check.name}: {check.message}")


class Run:
    """State of one validation: the report being filled and the reporter that prints it."""

    def __init__(self, report: ValidationReport, reporter: Reporter):
        self.report, self.reporter = report, reporter
        self._mark = time.perf_counter()

    def phase(self, name: str) -> None:
        """Closes the phase that ran since the last call (wall time per phase goes into the report)."""
        now = time.perf_counter()
        self.report.phase_seconds[name] = round(now - self._mark, 3)
        self._mark = now

    def add(self, check: Check) -> Check:
        self.report.checks.append(check)
        self.reporter.check(check)
        return check

    def skip(self, name: str, tier: int, why: str, stage: str | None = None) -> None:
        self.add(Check(name, tier, "skipped", why, stage=stage))


def _jsonable(value: Any) -> Any:
    """Strict JSON: non-finite floats (a shape mismatch has no max diff) become the strings "inf"/"nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def write_json(report: ValidationReport, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(report.to_dict()), indent=2, allow_nan=False))
    return path


def _headline(check: Check) -> str:
    m = check.metrics
    if "max_abs" in m:
        text = f"max {fmt(m['max_abs'])}"
        if "cosine" in m:
            text += f", cos {m['cosine']:.6f}"
        return text
    if "files_checked" in m:
        return f"{m['files_checked']} files"
    return ""


def _threshold_text(check: Check) -> str:
    t = check.thresholds
    if "atol" in t:
        cosine = f", or cosine >= {t['cosine_min']:g}" if t.get("cosine_min") is not None else ""
        return "exact" if t.get("exact") else f"rtol {t['rtol']:g}, atol {t['atol']:g}{cosine}"
    return ", ".join(f"{k} {v:g}" if not isinstance(v, bool) else k for k, v in t.items()
                     if isinstance(v, int | float) and v is not False)


def write_markdown(report: ValidationReport, path: Path) -> Path:
    verdict = "PASSED" if report.passed else "FAILED"
    lines = [f"# Validation of `{report.artifact_dir}`: {verdict}", "",
             f"{report.summary()}  ", f"mode: {report.mode}; precision: {report.precision}; "
             f"wall time {report.wall_time_s:.1f} s", "",
             "| inputs | |", "|---|---|"]
    for k in ("model_path", "dataset_path", "suite", "num_steps"):
        lines.append(f"| {k} | {report.inputs.get(k)} |")
    lines += ["", "| tier | check | status | figure | threshold | message |", "|---|---|---|---|---|---|"]
    for c in report.checks:
        msg = c.message.replace("|", "\\|")
        lines.append(f"| {c.tier} | {c.name} | {c.status.upper()} | {_headline(c)} | {_threshold_text(c)} | {msg} |")
    if report.stage_timings_ms:
        lines += ["", "## Stage wall time during validation (ms, this machine)", "",
                  "| stage | median | mean | p90 | runs |", "|---|---|---|---|---|"]
        for stage, s in report.stage_timing_stats_ms.items():
            lines.append(f"| {stage} | {s['median']:.2f} | {s['mean']:.2f} | {s['p90']:.2f} | {s['runs']} |")
    if report.plots:
        lines += ["", "## Plots", ""]
        base = path.parent
        for p in sorted(report.plots, key=lambda p: "compare_" not in Path(p).name):  # the comparisons first
            rel = Path(p).resolve().relative_to(base.resolve()) if Path(p).resolve().is_relative_to(
                base.resolve()) else Path(p)
            lines.append(f"![{rel.as_posix()}]({rel.as_posix()})")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_junit(report: ValidationReport, path: Path) -> Path:
    """One testcase per check; failures carry the message, skipped checks say why."""
    failures = sum(c.status == "failed" for c in report.checks)
    skipped = sum(c.status == "skipped" for c in report.checks)
    attrs = {"name": "gr00t-export validate", "tests": str(len(report.checks)), "failures": str(failures),
             "errors": "0", "skipped": str(skipped), "time": f"{report.wall_time_s:.3f}"}
    root = ElementTree.Element("testsuites", attrs)
    suite = ElementTree.SubElement(root, "testsuite", attrs | {"name": f"validate {report.artifact_dir.name}"})
    for c in report.checks:
        case = ElementTree.SubElement(suite, "testcase", {"classname": f"gr00t_export.pipeline.validate.tier{c.tier}",
                                                          "name": c.name, "time": f"{c.seconds:.3f}"})
        if c.status == "failed":
            node = ElementTree.SubElement(case, "failure", {"message": c.message, "type": "ValidationFailure"})
            node.text = json.dumps(_jsonable({"metrics": c.metrics, "thresholds": c.thresholds}), indent=1)
        elif c.status == "skipped":
            ElementTree.SubElement(case, "skipped", {"message": c.message})
        else:
            ElementTree.SubElement(case, "system-out").text = c.message
    path.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path
