"""The validation suite: steps, seeds, per-stage tolerances and consistency thresholds, plot settings.

A suite file is laid over `resources/validation/default.yaml`, so it names only what it changes; every mistake in
it is an InputError naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gr00t_export.errors import InputError
from gr00t_export.spec import PRECISIONS


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
