"""Tier 0: is the drop what its manifest and graph_spec.yaml say? Every file's size and sha256 (before anything
is loaded: a TorchScript file is code), every stage's interface against the spec, statically from the files and
dynamically from one real run, and determinism (two runs of one input, bitwise equal)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gr00t_export.compare import dtype_name, shape_of
from gr00t_export.manifest import MANIFEST
from gr00t_export.pipeline.validate.report import Check
from gr00t_export.runtime.runner import StageRunner
from gr00t_export.spec import SPEC_FILE, StageSpec
from gr00t_export.util import sha256_file

VARYING_DIMS = {"batch", "num_images", "seq_len", "height", "width", "state_horizon", "raw_state_dim", "key_dim"}
ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64", 6: "int32", 2: "uint8", 11: "float64",
               9: "bool", 17: "float8e4m3fn"}


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
        dtype = dtype_name(value)
        ok = expected_dtypes(t.dtype, precision_float, external)
        if dtype not in ok:
            issues.append(f"{t.name} is {dtype} at run time, spec wants {' or '.join(sorted(ok))}")
        shape = shape_of(value)
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
