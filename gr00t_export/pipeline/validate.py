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
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import torch
import yaml

from gr00t_export import __version__
from gr00t_export.compare import compare_outputs
from gr00t_export.errors import Gr00tExportError, InputError, ValidationFailure
from gr00t_export.families import family_named
from gr00t_export.families.base import Observation, PolicyInterface, RawInputs, make_noise, synthetic_observation
from gr00t_export.manifest import MANIFEST, Manifest
from gr00t_export.runtime.runner import StageRunner
from gr00t_export.spec import PRECISIONS, SPEC_FILE, StageSpec
from gr00t_export.util import atomic_output_dir, check_output_dir, refuse_overlap, sha256_file

REPORT_JSON = "validation_report.json"
PROGRESS_EVERY = 10  # steps per progress line when not verbose
REPORT_MD = "validation_report.md"
VARYING_DIMS = {"batch", "num_images", "seq_len", "height", "width", "state_horizon", "raw_state_dim", "key_dim"}
ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64", 6: "int32", 2: "uint8", 11: "float64",
               9: "bool", 17: "float8e4m3fn"}
FLOAT_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


# --- suite ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    exact: bool = False
    cosine_min: float | None = None  # also accept a tensor whose cosine similarity to its twin reaches this

    def to_dict(self) -> dict[str, Any]:
        return {"rtol": self.rtol, "atol": self.atol, "exact": self.exact, "cosine_min": self.cosine_min}


DEFAULT_TOLERANCE = Tolerance(rtol=1e-2, atol=1e-2)
CONSISTENCY_KEYS = ("max_abs", "mean_abs", "joint_range_frac", "cosine_min")


@dataclass
class Suite:
    """A parsed validation suite (schema in resources/validation/default.yaml)."""

    path: Path
    num_steps: int = 30
    stride: int = 10
    seed: int = 0
    per_module_steps: int = 3
    determinism_steps: int = 2
    tolerances: dict[str, dict[str, Any]] = field(default_factory=dict)
    consistency: dict[str, dict[str, float | None]] = field(default_factory=dict)
    clamp: float = 3.5
    plots_enabled: bool = True
    plot_actions: dict[str, list[str]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    joint_names: dict[str, list[str]] = field(default_factory=dict)

    def tolerance(self, precision: str, stage: str) -> Tolerance:
        profile = self.tolerances.get(precision, {})
        raw = profile.get(stage, profile.get("default"))
        if raw is None:
            return DEFAULT_TOLERANCE
        cosine = raw.get("cosine_min")
        return Tolerance(float(raw.get("rtol", DEFAULT_TOLERANCE.rtol)), float(raw.get("atol", DEFAULT_TOLERANCE.atol)),
                         bool(raw.get("exact", False)), None if cosine is None else float(cosine))

    def reference_precision(self, precision: str) -> str:
        return str(self.tolerances.get(precision, {}).get("reference_precision", precision))

    def thresholds(self, precision: str) -> dict[str, float | None]:
        if precision not in self.consistency:
            raise InputError(f"suite {self.path} has no consistency thresholds for precision {precision}; "
                             f"add consistency.{precision} to it")
        return self.consistency[precision]


def default_suite_path() -> Path:
    return Path(str(resources.files("gr00t_export") / "resources" / "validation" / "default.yaml"))


def _positive_int(raw: Any, label: str, where: Path) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise InputError(f"suite {where}: {label} must be an integer >= 1, got {raw!r}; fix the suite file")
    return raw


def _mapping(raw: Any, label: str, where: Path) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(f"suite {where}: {label} must be a mapping, got {type(raw).__name__}; fix the suite file")
    return raw


def _check_tolerances(tolerances: dict, where: Path) -> None:
    for precision, profile in tolerances.items():
        for stage, tol in _mapping(profile, f"tolerances.{precision}", where).items():
            if stage == "reference_precision":
                if tol not in PRECISIONS:
                    raise InputError(f"suite {where}: tolerances.{precision}.reference_precision must be one of "
                                     f"{', '.join(PRECISIONS)}, got {tol!r}")
                continue
            tol = _mapping(tol, f"tolerances.{precision}.{stage}", where)
            for key, value in tol.items():
                ok = (isinstance(value, bool) if key == "exact" else
                      isinstance(value, int | float) and not isinstance(value, bool) and value >= 0)
                if key == "cosine_min":
                    ok = ok and value <= 1
                if key not in ("rtol", "atol", "exact", "cosine_min") or not ok:
                    raise InputError(f"suite {where}: tolerances.{precision}.{stage}.{key}={value!r} is invalid; "
                                     "use rtol/atol >= 0, cosine_min in [0, 1] and exact: true|false")


SUITE_KEYS = {"version", "num_steps", "stride", "seed", "per_module", "determinism", "tolerances", "consistency",
              "plots"}


def _read_suite_file(where: Path) -> dict:
    if not where.is_file():
        raise InputError(f"suite file {where} not found; pass an existing YAML (see validation/default.yaml)")
    try:
        raw = yaml.safe_load(where.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise InputError(f"suite file {where} is not readable YAML ({err}); fix its syntax") from None
    raw = _mapping(raw, "the top level", where)
    if raw.get("version") != 1:
        raise InputError(f"suite {where}: version must be 1, got {raw.get('version')!r}; start from "
                         "validation/default.yaml")
    unknown = sorted(set(raw) - SUITE_KEYS)
    if unknown:
        raise InputError(f"suite {where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(SUITE_KEYS))}")
    return raw


def _merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`, mappings merged key by key (lists and scalars replaced)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def load_suite(path: str | Path | None = None) -> Suite:
    """Reads and checks a suite file laid over the default suite, so a suite names only what it changes.

    Every mistake is an InputError naming the file and the key.
    """
    raw = _read_suite_file(default_suite_path())
    where = default_suite_path()
    if path is not None:
        where = Path(path)
        raw = _merge(raw, _read_suite_file(where))
    suite = Suite(path=where)
    suite.num_steps = _positive_int(raw.get("num_steps", suite.num_steps), "num_steps", where)
    suite.stride = _positive_int(raw.get("stride", suite.stride), "stride", where)
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"suite {where}: seed must be an integer, got {seed!r}")
    suite.seed = seed
    suite.per_module_steps = _positive_int(_mapping(raw.get("per_module"), "per_module", where).get(
        "num_steps", suite.per_module_steps), "per_module.num_steps", where)
    suite.determinism_steps = _positive_int(_mapping(raw.get("determinism"), "determinism", where).get(
        "num_steps", suite.determinism_steps), "determinism.num_steps", where)
    suite.tolerances = _mapping(raw.get("tolerances"), "tolerances", where)
    _check_tolerances(suite.tolerances, where)
    for precision, limits in _mapping(raw.get("consistency"), "consistency", where).items():
        limits = _mapping(limits, f"consistency.{precision}", where)
        for key, value in limits.items():
            if key not in CONSISTENCY_KEYS or not (value is None or isinstance(value, int | float)):
                raise InputError(f"suite {where}: consistency.{precision}.{key}={value!r} is invalid; use "
                                 f"{', '.join(CONSISTENCY_KEYS)} with a number or null")
        suite.consistency[precision] = {k: (None if limits.get(k) is None else float(limits[k]))
                                        for k in CONSISTENCY_KEYS}
    plots = _mapping(raw.get("plots"), "plots", where)
    clamp = plots.get("clamp", suite.clamp)
    if isinstance(clamp, bool) or not isinstance(clamp, int | float) or clamp <= 0:
        raise InputError(f"suite {where}: plots.clamp must be a positive number, got {clamp!r}")
    suite.clamp = float(clamp)
    enabled = plots.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InputError(f"suite {where}: plots.enabled must be true or false, got {enabled!r}")
    suite.plots_enabled = enabled
    for name, keys in _mapping(plots.get("actions"), "plots.actions", where).items():
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InputError(f"suite {where}: plots.actions.{name} must be a list of action keys")
        suite.plot_actions[name] = keys
    suite.units = {str(k): str(v) for k, v in _mapping(plots.get("units"), "plots.units", where).items()}
    for key, names in _mapping(plots.get("joint_names"), "plots.joint_names", where).items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError(f"suite {where}: plots.joint_names.{key} must be a list of strings")
        suite.joint_names[key] = names
    return suite


# --- results ----------------------------------------------------------------------------------------------

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


# --- helpers ----------------------------------------------------------------------------------------------

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


def _dtype_name(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return str(value.dtype).removeprefix("torch.")
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return "string"
    return str(np.asarray(value).dtype)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else (len(value),)


def _fmt(value: float) -> str:
    return f"{value:.6g}"


@dataclass
class TensorComparison:
    name: str
    exact: bool
    within: bool
    max_abs: float
    mean_abs: float
    min_abs: float
    problem: str | None = None  # shape/dtype mismatch, NaN
    cosine: float = 1.0
    max_rel: float = 0.0  # |artifact - twin| / |twin|
    mean_rel: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare_tensors(name: str, got: Any, want: Any, tol: Tolerance) -> TensorComparison:
    """Artifact output vs twin output: shape and dtype first, then exact, then allclose(rtol, atol) or cosine."""
    c = compare_outputs({name: got}, {name: want}, atol=tol.atol, rtol=tol.rtol)[name]
    integer = _array_kind(want) not in "fc"
    within = c.exact or (c.problem is None and not integer and not tol.exact and (
        c.passed or (tol.cosine_min is not None and c.cosine >= tol.cosine_min)))
    return TensorComparison(name, c.exact, within, c.max_abs, c.mean_abs, c.min_abs, c.problem, c.cosine,
                            c.max_rel, c.mean_rel)


def _array_kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "f" if value.is_floating_point() else "i"
    return np.asarray(value).dtype.kind


def merge_comparisons(items: list[TensorComparison]) -> TensorComparison:
    """One verdict per tensor over several steps: worst max, mean of means, smallest min."""
    first = items[0]
    problems = [c.problem for c in items if c.problem]
    return TensorComparison(first.name, all(c.exact for c in items), all(c.within for c in items),
                            max(c.max_abs for c in items), float(np.mean([c.mean_abs for c in items])),
                            min(c.min_abs for c in items), problems[0] if problems else None,
                            min(c.cosine for c in items), max(c.max_rel for c in items),
                            float(np.mean([c.mean_rel for c in items])))


def timing_stats(times_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(times_ms)
    return {"median": float(np.median(arr)), "mean": float(arr.mean()), "min": float(arr.min()),
            "max": float(arr.max()), "p90": float(np.percentile(arr, 90)), "runs": len(times_ms)}


# --- tier 0: integrity and spec conformance ---------------------------------------------------------------

def check_integrity(artifact_dir: Path, manifest: dict) -> Check:
    """Every manifest file present with its size and sha256; stage files and the spec listed at all."""
    start = time.perf_counter()
    problems, extras = [], []
    entries = manifest.get("files")
    if not isinstance(entries, list) or not entries:
        return Check("integrity/manifest", 0, "failed", f"{MANIFEST} lists no files; the drop is incomplete, "
                     "re-run the build", seconds=time.perf_counter() - start)
    listed = set()
    for entry in entries:
        rel = entry.get("path", "?")
        listed.add(rel)
        path = artifact_dir / rel
        if not path.is_file():
            problems.append(f"artifact {rel} is missing")
        elif path.stat().st_size != entry.get("size"):
            problems.append(f"artifact {rel} has {path.stat().st_size} bytes, the manifest says {entry.get('size')}")
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(f"artifact {rel} does not match its manifest sha256 (modified or corrupt)")
    if SPEC_FILE not in listed:
        problems.append(f"manifest does not list {SPEC_FILE}")
    for stage in manifest.get("stages", []):
        if stage.get("file") not in listed:
            problems.append(f"manifest does not list stage file {stage.get('file')} ({stage.get('name')})")
    for f in sorted(artifact_dir.rglob("*")):
        rel = f.relative_to(artifact_dir).as_posix()
        if f.is_file() and rel != MANIFEST and rel not in listed and not rel.startswith("validation/"):
            extras.append(rel)
    metrics = {"files_checked": len(entries), "problems": problems, "unlisted_files": extras}
    seconds = time.perf_counter() - start
    if problems:
        return Check("integrity/manifest", 0, "failed", "; ".join(problems) + "; re-run the build or restore the drop",
                     metrics, seconds=seconds)
    note = f" ({len(extras)} file(s) not in the manifest: {', '.join(extras[:3])})" if extras else ""
    return Check("integrity/manifest", 0, "passed", f"{len(entries)} files match their sha256{note}", metrics,
                 seconds=seconds)


class DimBindings:
    """Symbolic dims of the graph spec bound to sizes; the same name must mean the same size everywhere."""

    def __init__(self, fixed: dict[str, int] | None = None):
        self.values: dict[str, tuple[int, str]] = {k: (v, "manifest") for k, v in (fixed or {}).items()}

    def bind(self, name: str, value: int, where: str) -> str | None:
        if name == "key_dim":
            return None
        if name not in self.values:
            self.values[name] = (value, where)
            return None
        have, at = self.values[name]
        return None if have == value else f"{where}: dim {name} is {value} but {have} in {at}"

    def copy(self) -> DimBindings:
        other = DimBindings()
        other.values = dict(self.values)
        return other


def expected_dtypes(spec_dtype: str, precision_float: str, external: bool) -> set[str]:
    if spec_dtype != "float":
        return {spec_dtype}
    return {precision_float, "float32"} if external else {precision_float}


def onnx_interface(path: Path) -> tuple[list[tuple[str, str, list]], list[tuple[str, str, list]]]:
    """(name, dtype, dims) of a graph's real inputs and outputs; dims are ints or dim_param names."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def describe(v) -> tuple[str, str, list]:
        t = v.type.tensor_type
        return (v.name, ONNX_DTYPES.get(t.elem_type, f"onnx:{t.elem_type}"),
                [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim])

    return ([describe(v) for v in model.graph.input if v.name not in initializers],
            [describe(v) for v in model.graph.output])


def static_conformance(stage: StageSpec, path: Path, runner: StageRunner, precision_float: str,
                       bindings: DimBindings) -> list[str]:
    """What can be read without running: ONNX names/dtypes/ranks/dim names, TorchScript argument names."""
    issues = []
    if stage.format == "onnx":
        inputs, outputs = onnx_interface(path)
        for kind, have, want in (("inputs", inputs, stage.inputs), ("outputs", outputs, stage.outputs)):
            names = [h[0] for h in have]
            if names != [t.name for t in want]:
                issues.append(f"ONNX {kind} {names}, spec {[t.name for t in want]}")
                continue
            for (name, dtype, dims), t in zip(have, want, strict=True):
                ok = expected_dtypes(t.dtype, precision_float, t.source == "external")
                if dtype not in ok:
                    issues.append(f"{name} is {dtype} in the ONNX graph, spec wants {' or '.join(sorted(ok))}")
                if len(dims) != len(t.shape):
                    issues.append(f"{name} has rank {len(dims)}, spec {list(t.shape)} (rank {len(t.shape)})")
                    continue
                for i, (d, s) in enumerate(zip(dims, t.shape, strict=True)):
                    if isinstance(s, int):
                        if d != s:
                            issues.append(f"{name} dim {i} is {d!r}, spec {s}")
                    elif s in VARYING_DIMS and bindings.values.get(s, (None, ""))[1] != "manifest":
                        if d != s:  # a dim the build fixed (in the manifest's dims) is checked as a size below
                            issues.append(f"{name} dim {i} is {d!r}, spec has the symbolic dim {s!r} "
                                          "(a fixed size breaks other batches/prompts/views)")
                    elif isinstance(d, int) and d > 0:
                        issue = bindings.bind(s, d, f"{stage.name}/{name}")
                        if issue:
                            issues.append(issue)
                    elif d != s:
                        issues.append(f"{name} dim {i} is {d!r}, spec {s!r}")
    else:
        module = getattr(runner, "module", None)
        schema = getattr(getattr(module, "forward", None), "schema", None)
        if schema is None:
            issues.append("TorchScript module has no scripted forward")
            return issues
        args = [a.name for a in schema.arguments[1:]]
        if args != stage.input_names:
            issues.append(f"TorchScript forward takes {args}, spec {stage.input_names}")
        returns = str(schema.returns[0].type) if schema.returns else "None"
        pattern = any("*" in t.name for t in stage.outputs)
        want = "Dict" if pattern else ("Tensor" if len(stage.outputs) == 1 else f"tuple of {len(stage.outputs)}")
        got = ("Dict" if returns.startswith("Dict") else "Tensor" if returns == "Tensor"
               else f"tuple of {returns.count('Tensor')}" if returns.startswith(("(", "Tuple")) else returns)
        if got != want:
            issues.append(f"TorchScript forward returns {returns}, spec needs {want}")
    return issues


def dynamic_conformance(stage: StageSpec, feeds: Mapping[str, Any], outputs: Mapping[str, Any],
                        precision_float: str, bindings: DimBindings, action_dims: dict[str, int]) -> list[str]:
    """What one real run shows: every fed and produced tensor's dtype, rank and sizes against the spec."""
    issues = []
    specs = [(t, feeds.get(t.name), t.source == "external") for t in stage.inputs]
    for t in stage.outputs:
        if "*" in t.name:
            prefix = t.name.split("*")[0]
            names = [n for n in outputs if n.startswith(prefix)]
            if sorted(names) != sorted(action_dims):
                issues.append(f"outputs {sorted(names)}, the manifest's action keys are {sorted(action_dims)}")
            specs += [(dataclasses.replace(t, name=n), outputs[n], False) for n in names]
        else:
            specs.append((t, outputs.get(t.name), False))
    for t, value, external in specs:
        if value is None:
            issues.append(f"{t.name} was not produced/fed")
            continue
        dtype = _dtype_name(value)
        ok = expected_dtypes(t.dtype, precision_float, external)
        if dtype not in ok:
            issues.append(f"{t.name} is {dtype} at run time, spec wants {' or '.join(sorted(ok))}")
        shape = _shape(value)
        if len(shape) != len(t.shape):
            issues.append(f"{t.name} has shape {list(shape)}, spec {list(t.shape)}")
            continue
        for i, (d, s) in enumerate(zip(shape, t.shape, strict=True)):
            if isinstance(s, int) and d != s:
                issues.append(f"{t.name} dim {i} is {d}, spec {s}")
            elif s == "key_dim" and t.name in action_dims and d != action_dims[t.name]:
                issues.append(f"{t.name} has {d} joints, the metadata {action_dims[t.name]}")
            elif isinstance(s, str):
                issue = bindings.bind(s, d, f"{stage.name}/{t.name}")
                if issue:
                    issues.append(issue)
    return issues


# --- inputs -----------------------------------------------------------------------------------------------

@dataclass
class Sample:
    """One validation step: an observation, its seed, and the dataset's recorded actions when there are."""

    label: str
    episode: int | None
    step: int | None
    seed: int
    obs: Observation
    truth: dict[str, np.ndarray] | None = None


def dataset_steps(dataset, modality: PolicyInterface, num_steps: int, stride: int) -> list[tuple[int, int]]:
    """`num_steps` (episode, step) pairs at the suite's stride, a smaller stride when the dataset is short."""
    for s in range(stride, 0, -1):
        try:
            return list(dataset.iter_steps(modality, num_steps, stride=s))
        except InputError:
            if s == 1:
                raise
    raise AssertionError("unreachable")


def open_dataset(dataset_path: Path, modality: PolicyInterface, num_steps: int, stride: int
                 ) -> tuple[Any, list[tuple[int, int]]]:
    """The dataset and its (episode, step) pairs, opened before any check so a bad dataset is a usage error."""
    from gr00t_export.data.lerobot import LeRobotDataset

    dataset = LeRobotDataset(dataset_path)
    dataset.check_config(modality)
    return dataset, dataset_steps(dataset, modality, num_steps, stride)


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


def key_groups(modality: PolicyInterface, suite: Suite):
    from gr00t_export.pipeline.plots import KeyGroup

    groups = []
    for key in modality.action_keys:
        names = suite.joint_names.get(key) or list(modality.joint_names.get(key, ()))
        short = modality.short(key)
        dims = modality.action_dims[key]
        if len(names) != dims:
            names = [f"{short}[{j}]" for j in range(dims)]
        groups.append(KeyGroup(key, tuple(names), suite.units.get(key, "a.u.")))
    return groups


# --- tier 1 -----------------------------------------------------------------------------------------------

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


def accuracy_check(stage: StageSpec, comparisons: list[TensorComparison], tol: Tolerance, precision: str,
                   seconds: float, steps: int) -> Check:
    failed = [c for c in comparisons if not c.within]
    worst = max(comparisons, key=lambda c: c.max_abs)
    metrics = {"max_abs": worst.max_abs, "steps": steps, "tensors": [c.to_dict() for c in comparisons],
               "exact": all(c.exact for c in comparisons)}
    thresholds = tol.to_dict() | {"integer_tensors": "exact"}
    if failed:
        c = failed[0]
        why = c.problem or (f"max |diff| {_fmt(c.max_abs)} exceeds atol {tol.atol:g} + rtol {tol.rtol:g}·|twin|"
                            + (f" and cosine {c.cosine:.6f} < {tol.cosine_min:g}" if tol.cosine_min is not None else "")
                            if not tol.exact else f"not bitwise equal (max |diff| {_fmt(c.max_abs)})")
        return Check(f"accuracy/{stage.name}", 1, "failed", f"stage {stage.name} ({stage.file}) drifts from its "
                     f"PyTorch twin in {precision}: {c.name}: {why}", metrics, thresholds, seconds, stage.name)
    how = "bitwise equal" if metrics["exact"] else f"max |diff| {_fmt(worst.max_abs)} within tolerance"
    if tol.cosine_min is not None and not metrics["exact"]:
        how += f" (lowest cosine {min(c.cosine for c in comparisons):.6f})"
    return Check(f"accuracy/{stage.name}", 1, "passed", f"{how} on {steps} step(s)", metrics, thresholds, seconds,
                 stage.name)


def report_comparison(reporter: Reporter, stage: StageSpec, c: TensorComparison, tol: Tolerance) -> None:
    """Console lines in the shape people already grep for (TorchScript and ONNX validators differ)."""
    if stage.format == "onnx":
        reporter.line("Validating ONNX model accuracy...")
        reporter.line("Accuracy Comparison:")
        if c.problem:
            reporter.line(f"Mismatch in {c.name}: {c.problem}")
        reporter.line(f"Max difference: {_fmt(c.max_abs)}")
        reporter.line(f"Mean difference: {_fmt(c.mean_abs)}")
        reporter.line(f"Within tolerance: {c.within}")
        if tol.cosine_min is not None:
            reporter.line(f"Cosine similarity: {c.cosine:.6f} (accepted from {tol.cosine_min:g})")
        return
    reporter.line(f"comparing: {c.name}")
    if c.problem:
        reporter.line(f"The tensors {c.name} do not match: {c.problem}")
        return
    if c.exact:
        reporter.line(f"The tensors {c.name} are exactly equal!")
        return
    reporter.line(f"The tensors {c.name} are not exactly equal. Mean absolute difference: {_fmt(c.mean_abs)}")
    reporter.line(f"Maximum absolute difference for {c.name}: {_fmt(c.max_abs)}, Min diff is {_fmt(c.min_abs)}")
    if c.within:
        reporter.line(f"The tensors {c.name} are approximately equal (within tolerance).")
    else:
        reporter.line(f"The tensors {c.name} are NOT approximately equal (outside rtol={tol.rtol:g}, "
                      f"atol={tol.atol:g}{', exact required' if tol.exact else ''}).")


# --- tier 2 -----------------------------------------------------------------------------------------------

def determinism_issue(first: dict[str, dict[str, Any]], second: dict[str, dict[str, Any]], order: list[str]
                      ) -> tuple[str, str] | None:
    """(stage, output) of the first stage, in execution order, whose outputs differ between two runs."""
    for name in order:
        for out, a in first[name].items():
            b = second[name].get(out)
            if isinstance(a, torch.Tensor):
                same = isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
            else:
                same = a == b
            if not same:
                return name, out
    return None


def consistency_check(key: str, ref: np.ndarray, exp: np.ndarray, joint_names: tuple[str, ...],
                      joint_range: np.ndarray, limits: dict[str, float | None], precision: str) -> Check:
    """Reference vs exported actions of one key over all steps: (N, H, J) each."""
    joints = range(ref.shape[-1])
    per_joint = compare_outputs({str(j): exp[..., j] for j in joints}, {str(j): ref[..., j] for j in joints},
                                check_dtypes=False)
    whole = compare_outputs({key: exp}, {key: ref}, check_dtypes=False)[key]
    per_joint_max = np.array([per_joint[str(j)].max_abs for j in joints])
    per_joint_mean = np.array([per_joint[str(j)].mean_abs for j in joints])
    span = np.where(joint_range > 1e-12, joint_range, 1.0)
    frac = per_joint_max / span
    cosine = whole.cosine
    metrics = {
        "max_abs": whole.max_abs, "mean_abs": whole.mean_abs, "cosine": cosine, "max_rel": whole.max_rel,
        "worst_joint_range_frac": float(frac.max()),
        "reference_mean": float(ref.mean()), "exported_mean": float(exp.mean()),
        "reference_std": float(ref.std()), "exported_std": float(exp.std()),
        "joints": [{"name": n, "max_abs": float(m), "mean_abs": float(mm), "range": float(r), "range_frac": float(f)}
                   for n, m, mm, r, f in zip(joint_names, per_joint_max, per_joint_mean, joint_range, frac,
                                             strict=True)],
    }
    bad = []
    if limits.get("max_abs") is not None and metrics["max_abs"] > limits["max_abs"]:
        bad.append(f"max |diff| {_fmt(metrics['max_abs'])} > {limits['max_abs']:g}")
    if limits.get("mean_abs") is not None and metrics["mean_abs"] > limits["mean_abs"]:
        bad.append(f"mean |diff| {_fmt(metrics['mean_abs'])} > {limits['mean_abs']:g}")
    if limits.get("joint_range_frac") is not None:
        for j in np.flatnonzero(frac > limits["joint_range_frac"])[:3]:
            bad.append(f"joint {joint_names[j]} off by {frac[j]:.3g} of its range > {limits['joint_range_frac']:g}")
    if limits.get("cosine_min") is not None and cosine < limits["cosine_min"]:
        bad.append(f"cosine {cosine:.6f} < {limits['cosine_min']:g}")
    name = f"consistency/{key}"
    if bad:
        return Check(name, 2, "failed", f"{key} ({precision}) differs from the reference: " + "; ".join(bad),
                     metrics, dict(limits))
    return Check(name, 2, "passed", f"max |diff| {_fmt(metrics['max_abs'])}, mean {_fmt(metrics['mean_abs'])}, "
                 f"cosine {cosine:.6f}, worst joint {frac.max():.2g} of its range", metrics, dict(limits))


# --- reports ----------------------------------------------------------------------------------------------

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
        text = f"max {_fmt(m['max_abs'])}"
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


# --- the whole validation ---------------------------------------------------------------------------------

class _Run:
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


def _precision_float(precision: str, suite: Suite) -> str:
    return FLOAT_DTYPES.get(precision) or FLOAT_DTYPES.get(suite.reference_precision(precision), "float32")


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
        run = _Run(result, shown)
        shown.line(f"validating {artifact_dir} ({precision or 'unknown precision'}) with suite {suite_obj.path}")
        if not full:
            shown.line("no --model_path: checking integrity, spec conformance and determinism only "
                       "(per-module accuracy, reference consistency and python plots need --model_path)")
        torch_threads = torch.get_num_threads()
        try:
            if threads > 0:
                torch.set_num_threads(threads)
            _validate_checks(run, artifact_dir, manifest, manifest_error, modality, suite_obj, steps, plot_keys,
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


@dataclass
class _Exported:
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
class _Steps:
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


def _load_exported(run: _Run, artifact_dir: Path, manifest: Manifest, modality: PolicyInterface, suite: Suite,
                   threads: int) -> _Exported | None:
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
    return _Exported(runner, timed, precision, float_dtype, bindings, action_dims, static)


def _load_reference_checked(run: _Run, model_path: Path, eagle_path: Path | None, manifest: dict, suite: Suite
                            ) -> Reference:
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


def _compare_stages(exported: _Exported, reference: Reference, sample: Sample, suite: Suite, steps: _Steps) -> None:
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


def _run_steps(run: _Run, exported: _Exported, reference: Reference | None, samples: Iterator[Sample],
               modality: PolicyInterface, suite: Suite, per_module_steps: int, out_dir: Path, total: int,
               verbose: bool) -> _Steps:
    """One loop over the validation steps: tier 1 feeds, both policies' actions, determinism re-runs.

    Prints a line per iteration and side when `verbose` (as NVIDIA's export guide does), else one per
    PROGRESS_EVERY steps, so a CI log shows progress without 2 x num_steps lines."""
    keys = modality.action_keys
    steps = _Steps(reference={k: [] for k in keys}, exported={k: [] for k in keys}, truth={k: [] for k in keys},
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
                    _compare_stages(exported, reference, sample, suite, steps)
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


def _add_spec_checks(run: _Run, exported: _Exported, steps: _Steps) -> None:
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


def _add_accuracy_checks(run: _Run, exported: _Exported, reference: Reference | None, steps: _Steps, suite: Suite,
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


def _add_tier2_checks(run: _Run, exported: _Exported, reference: Reference | None, steps: _Steps, suite: Suite,
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


def _add_plots(run: _Run, exported: _Exported, reference: Reference | None, steps: _Steps, suite: Suite,
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


def _validate_checks(run: _Run, artifact_dir: Path, manifest: dict | None, manifest_error: str | None,
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
    exported = _load_exported(run, artifact_dir, manifest, modality, suite, threads)
    if exported is None:
        return
    reference = None if model_path is None else _load_reference_checked(run, model_path, eagle_path, manifest, suite)
    desc, samples = iter_samples(modality, dataset, pairs, num_steps, suite.seed)
    run.report.inputs["samples"] = desc
    if dataset is None:
        run.reporter.line("no --dataset_path: using the build's seeded synthetic observation with a new noise seed "
                          "per step")
    per_module_steps = min(suite.per_module_steps, num_steps)
    run.phase("integrity_and_loading")
    run.reporter.section("running the steps" + (f" (tier 1 on the first {per_module_steps})" if reference else ""))
    steps = _run_steps(run, exported, reference, samples, modality, suite, per_module_steps, out_dir, len(desc),
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


def _plots(run: _Run, groups, ref_actions, exp_actions, truth, plot_keys: list[str], precision: str, suite: Suite,
           out_dir: Path, labels: list[str], n: int) -> list[Path]:
    from gr00t_export.pipeline.plots import comparison_plot, overview_plots, series_stats

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
