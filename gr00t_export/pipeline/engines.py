"""Stage 5 — build engines: TensorRT plans for the three ONNX stages (vit, llm, denoising_subgraph).

An engine is specific to the GPU and the TensorRT version that built it, so the x86 host never ships one: it
writes `engines/build_engines.sh` (the `trtexec` commands, NVIDIA's flags) for the target, and builds through
Polygraphy's TensorRT loaders (and runs through its `TrtRunner`) only on a machine that will run the engines.

Every network is strongly typed (`--stronglyTyped`, `STRONGLY_TYPED`), fp16 graphs included. The precision is
then the ONNX graph's own: fp16 tensors stay fp16, the ops the exporter keeps in fp32 around explicit Casts
(RMSNorm, sinusoid tables, masks) stay fp32, and FP8 comes only from
the Q/DQ nodes. With the weakly typed `--fp16` TensorRT may re-choose any layer's precision, so the engine
would not compute what onnxruntime validated. NVIDIA's build_engine.sh builds all engines this way, and
TensorRT-RTX (and TensorRT 11) know no other mode.

Profiles come from the manifest: batch 1..max_batch, `num_images` = batch x views (the ViT input and the LLM's
vit_embeds, so a 2-view build never gets a 1-view profile: NVIDIA #358/#380), `seq_len` measured with the
build's tokenizer for that view count; model widths from `model.config`.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import onnx
import torch

from gr00t_export import __version__
from gr00t_export.compare import compare_outputs
from gr00t_export.errors import InputError, ValidationFailure
from gr00t_export.manifest import Manifest
from gr00t_export.runtime.tensorrt import ENGINE_DIR, PLAN_SCRIPT, polygraphy_log, polygraphy_trt
from gr00t_export.spec import SPEC_FILE, GraphSpec, load_graph_spec
from gr00t_export.util import current_umask

Shape = tuple[int, ...]
Profile = tuple[Shape, Shape, Shape]  # (min, opt, max)

PLAN_README = "README.md"
TIMING_CACHE = f"{ENGINE_DIR}/timing.cache"
BUILD_REPORT = f"{ENGINE_DIR}/build_report.json"
TARGETS = ("thor", "local")
ENGINE_PRECISIONS = ("fp16", "fp8")  # what the CLI offers; the build's own fp32/bf16 is accepted too
FP8_SUFFIX = "_fp8"  # eagle2/vit.onnx -> eagle2/vit_fp8.onnx (NVIDIA's naming)
DEFAULT_WORKSPACE_MB = 4096
POINTS = ("min", "opt", "max")
_ONNX_FLOAT = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}


# --------------------------------------------------------------------------------------------- profiles


def _points(prof: Mapping[str, Any], dim: str, where: str) -> dict[str, int]:
    try:
        values = {p: int(prof[dim][p]) for p in POINTS}
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{where} has no min/opt/max for {dim!r}; re-run `gr00t-export build`") from None
    if not 1 <= values["min"] <= values["opt"] <= values["max"]:
        raise ValidationFailure(f"{where} {dim} is not 1 <= min <= opt <= max ({values}); re-run the build")
    return values


def engine_profiles(manifest: Mapping[str, Any], graph_spec: GraphSpec, views: int | None = None
                    ) -> dict[str, dict[str, Profile]]:
    """(min, opt, max) shapes of every input of every ONNX stage, for the build's view count.

    `num_images` is derived as batch x views and the manifest's own figure must agree; the prompt must hold
    views x tokens_per_image image tokens even at its shortest. Either failing means a profile made for
    another view count, which TensorRT would reject at run time (NVIDIA #358).
    """
    views = int(views if views is not None else manifest["views"])
    where = f"manifest profiles.views_{views}"
    prof = manifest.get("profiles", {}).get(f"views_{views}")
    if prof is None:
        have = ", ".join(sorted(manifest.get("profiles", {}))) or "none"
        raise InputError(f"the manifest has no TensorRT profile for {views} view(s) (has: {have}); add {views} to "
                         "the graph spec's profiles.views and re-run `gr00t-export build`")
    batch, seq = _points(prof, "batch", where), _points(prof, "seq_len", where)
    images = {p: batch[p] * views for p in POINTS}
    if "num_images" in prof and _points(prof, "num_images", where) != images:
        raise ValidationFailure(f"{where} num_images {prof['num_images']} is not batch x {views} views {images}; "
                                "re-run `gr00t-export build`")
    widths = {k: int(v) for k, v in manifest["model"]["dims"].items()}  # the graph spec's named model widths
    tokens = widths.get("tokens_per_image", 0)
    if seq["min"] < views * tokens:
        raise ValidationFailure(f"{where} seq_len min {seq['min']} cannot hold {views} x {tokens} image tokens; "
                                "the profile was made for fewer views, re-run `gr00t-export build`")
    symbols = {"batch": batch, "num_images": images, "seq_len": seq}
    out: dict[str, dict[str, Profile]] = {}
    for stage in graph_spec.stages:
        if stage.format != "onnx":
            continue
        shapes: dict[str, Profile] = {}
        for t in stage.inputs:
            per_point = []
            for p in POINTS:
                dims = []
                for d in t.shape:
                    if isinstance(d, int):
                        dims.append(d)
                    elif d in symbols:
                        dims.append(symbols[d][p])
                    elif d in widths:
                        dims.append(widths[d])
                    else:
                        raise InputError(f"graph spec dim {d!r} of {stage.name}/{t.name} has no value in the "
                                         "manifest; the graph spec and this version disagree, reinstall")
                per_point.append(tuple(dims))
            shapes[t.name] = (per_point[0], per_point[1], per_point[2])
        out[stage.name] = shapes
    return out


# --------------------------------------------------------------------------------------------- engine graphs


@dataclass
class EngineGraph:
    """The ONNX file one engine is built from, as the plan and the builder use it."""

    stage: str
    onnx: str  # relative to the artifact dir
    files: list[str]  # the .onnx and its external data, relative
    io_precision: str  # fp32 | fp16 | bf16, from the graph's float inputs
    qdq_nodes: int

    @property
    def kind(self) -> str:
        return f"FP8 Q/DQ ({self.qdq_nodes} Q/DQ nodes), {self.io_precision} I/O" if self.qdq_nodes else \
            f"{self.io_precision} (strongly typed from the ONNX types)"


def fp8_graph_file(stage_file: str) -> str:
    path = Path(stage_file)
    return str(path.with_name(path.stem + FP8_SUFFIX + path.suffix))


def _inspect_onnx(path: Path) -> tuple[dict[str, tuple[int, list[int | str]]], int, list[str]]:
    """Input (elem type, dims), the Q/DQ node count and the external data files; weights are not read."""
    model = onnx.load(str(path), load_external_data=False)
    inputs = {}
    for i in model.graph.input:
        tt = i.type.tensor_type
        inputs[i.name] = (tt.elem_type, [d.dim_param or d.dim_value for d in tt.shape.dim])
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    data = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    return inputs, qdq, data


def _check_against_profile(graph: EngineGraph, inputs: dict, profiles: dict[str, Profile]) -> None:
    """The plan's profile must name exactly the graph's inputs and keep its fixed dims (spec drift guard)."""
    if set(inputs) != set(profiles):
        raise ValidationFailure(f"{graph.onnx} inputs {sorted(inputs)} differ from the graph spec's "
                                f"{sorted(profiles)}; re-run `gr00t-export build`")
    for name, (_, dims) in inputs.items():
        lo, opt, hi = profiles[name]
        if len(dims) != len(lo):
            raise ValidationFailure(f"{graph.onnx} input {name} has rank {len(dims)}, the profile {len(lo)}")
        for i, d in enumerate(dims):
            if isinstance(d, int) and d > 0 and not lo[i] == opt[i] == hi[i] == d:
                raise ValidationFailure(f"{graph.onnx} input {name} dim {i} is fixed at {d} but the profile gives "
                                        f"{lo[i]}/{opt[i]}/{hi[i]}; the manifest config and the graph disagree")


def engine_graphs(artifact_dir: Path, manifest: Manifest, graph_spec: GraphSpec, precision: str,
                  profiles: dict[str, dict[str, Profile]]) -> dict[str, EngineGraph]:
    """Which ONNX file each engine is built from, checked against the manifest hashes and the profiles.

    fp16/fp32/bf16: the stage graphs, which must be of that precision (strongly typed: the engine cannot be
    other than its graph). fp8: the stage graphs of an fp8 build (quantised in place), or, in an fp16 build,
    `<stem>_fp8.onnx` beside a stage graph where the manifest lists one; at least one graph must hold Q/DQ.
    """
    built = manifest["precision"]
    if manifest.get("onnx_ops", "standard") != "standard":
        raise InputError(f"this build's graphs use onnxruntime's fused kernels (--onnx_ops {manifest['onnx_ops']}), "
                         "which TensorRT cannot parse; rebuild with `gr00t-export build --onnx_ops standard`")
    if precision not in (*ENGINE_PRECISIONS, "fp32", "bf16"):
        raise InputError(f"unknown engine precision {precision!r}; use fp16 or fp8")
    if precision == "fp8" and built not in ("fp8", "fp16"):
        raise InputError(f"fp8 engines need an fp8 build (or FP8 copies of an fp16 one), this one is {built}; re-run "
                         "`gr00t-export build --precision fp8 --dataset_path DS`")
    if precision != "fp8" and precision != built:
        raise InputError(f"engines in {precision} need a {precision} build, this one is {built} (strongly typed "
                         f"engines keep the ONNX types); re-run `gr00t-export build --precision {precision}`")
    files = {f["path"]: f for f in manifest["files"]}
    out: dict[str, EngineGraph] = {}
    for stage in (s for s in graph_spec.stages if s.format == "onnx"):
        rel = stage.file
        if precision == "fp8":
            fp8 = fp8_graph_file(stage.file)
            if fp8 in files:
                rel = fp8
            elif (artifact_dir / fp8).exists():
                raise InputError(f"{fp8} is not recorded in manifest.json, so its hash cannot be checked; write "
                                 "FP8 graphs through gr00t-export so the manifest lists them")
        if rel not in files:
            raise ValidationFailure(f"manifest lists no {rel}; the drop is incomplete, re-run the build")
        inputs, qdq, data = _inspect_onnx(artifact_dir / rel)
        floats = {_ONNX_FLOAT[t] for t, _ in inputs.values() if t in _ONNX_FLOAT}
        graph = EngineGraph(stage.name, rel, [rel], "/".join(sorted(floats)) or built, qdq)
        for name in data:
            data_rel = str(Path(rel).parent / name)
            if data_rel not in files:
                raise ValidationFailure(f"manifest lists no {data_rel} (external data of {rel}); re-run the build")
            graph.files.append(data_rel)
        for f in graph.files:
            manifest.verify_file(artifact_dir, f)
        _check_against_profile(graph, inputs, profiles[stage.name])
        out[stage.name] = graph
    if precision == "fp8" and not any(g.qdq_nodes for g in out.values()):
        raise InputError("no FP8 graph in this build (no Q/DQ nodes in its ONNX stages); build with `gr00t-export "
                         "build --precision fp8 --dataset_path DS`, or use --precision fp16")
    return out


# --------------------------------------------------------------------------------------------- the build plan


def _shape_arg(flag: str, shapes: Mapping[str, Shape]) -> str:
    return f"--{flag}=" + ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())


def trtexec_args(graph: EngineGraph, profiles: Mapping[str, Profile], workspace_mb: int) -> list[str]:
    """The trtexec flags of one engine build, paths relative to the artifact dir."""
    args = [f"--onnx={graph.onnx}", f"--saveEngine={ENGINE_DIR}/{graph.stage}.engine"]
    for i, flag in enumerate(("minShapes", "optShapes", "maxShapes")):
        args.append(_shape_arg(flag, {name: prof[i] for name, prof in profiles.items()}))
    args += ["--stronglyTyped", f"--timingCacheFile={TIMING_CACHE}", f"--memPoolSize=workspace:{workspace_mb}M",
             "--verbose"]
    return args


def _drop_label(manifest: Mapping[str, Any]) -> str:
    model = Path(manifest["source"]["model_path"]).name
    return (f"{model} ({manifest['embodiment_tag']}, {manifest['views']} view(s), max batch "
            f"{manifest['max_batch']})")


def _render_script(manifest: Mapping[str, Any], graphs: dict[str, EngineGraph], profiles: dict, precision: str,
                   target: str, workspace_mb: int) -> str:
    alt = f"gr00t-export engines . --precision {precision} --target local --workspace {workspace_mb}"
    files = {f["path"]: f["sha256"] for f in manifest["files"]}
    hashes = "\n".join(f"{files[f]}  {f}" for g in graphs.values() for f in g.files)
    lines = [
        "#!/usr/bin/env bash",
        f"# TensorRT engines for {_drop_label(manifest)}: precision {precision}, target {target}.",
        f"# Written by gr00t-export {__version__}. Run it on the machine that will execute the engines (an engine",
        "# is specific to its GPU and TensorRT version):  bash engines/build_engines.sh",
        "#",
        "# Every engine is strongly typed: the precision is the ONNX graph's (fp16 tensors, fp32 where the export",
        "# casts explicitly, FP8 only through Q/DQ nodes), as NVIDIA's build_engine.sh does; no --fp16/--fp8 flags.",
        "#",
        "# Same engines through the TensorRT Python API (pip install gr00t-export[tensorrt] on this machine):",
        f"#   {alt}",
        "# or: BUILDER=gr00t-export bash engines/build_engines.sh",
        "#",
        "# Environment: TRTEXEC=/path/to/trtexec; SKIP_TIMING=1 builds without the latency run that follows each",
        "# build; CHECK_HASHES=0 skips the sha256 check of the ONNX files against manifest.json.",
        "set -euo pipefail",
        'cd "$(dirname "${BASH_SOURCE[0]}")/.."  # the artifact dir: every path below is relative to it',
        "",
        'if [[ "${BUILDER:-trtexec}" == "gr00t-export" ]]; then',
        "  if ! command -v gr00t-export >/dev/null; then",
        '    echo "error: gr00t-export is not installed here; pip install gr00t-export[tensorrt], or run without'
        ' BUILDER to use trtexec" >&2',
        "    exit 2",
        "  fi",
        f"  exec {alt}",
        "fi",
        "",
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || true)}"',
        'if [[ -z "$TRTEXEC" && -x /usr/src/tensorrt/bin/trtexec ]]; then',
        "  TRTEXEC=/usr/src/tensorrt/bin/trtexec  # JetPack installs it here, off PATH",
        "fi",
        'if [[ -z "$TRTEXEC" || ! -x "$TRTEXEC" ]]; then',
        '  echo "error: trtexec not found; install TensorRT (JetPack: /usr/src/tensorrt/bin/trtexec) or set'
        ' TRTEXEC=/path/to/trtexec" >&2',
        "  exit 2",
        "fi",
        "",
        'if [[ "${CHECK_HASHES:-1}" == "1" ]] && command -v sha256sum >/dev/null; then',
        "  if ! sha256sum --check --quiet <<'SHA256'",
        hashes,
        "SHA256",
        "  then",
        '    echo "error: the ONNX files above differ from manifest.json; restore the drop" >&2',
        "    exit 1",
        "  fi",
        "fi",
        "",
        f"mkdir -p {ENGINE_DIR}",
        'if [[ "${SKIP_TIMING:-0}" == "1" ]]; then',
        "  TIMING=(--skipInference)",
        "else",
        "  TIMING=(--useCudaGraph --separateProfileRun --noDataTransfers)",
        "fi",
        "",
        "build_engine() {  # build_engine STAGE TRTEXEC_ARGS...: verbose log in engines/STAGE.build.log",
        "  local stage=$1",
        "  shift",
        f'  local log={ENGINE_DIR}/"$stage".build.log start=$SECONDS',
        f'  echo "building {ENGINE_DIR}/$stage.engine (log: $log)"',
        '  if ! "$TRTEXEC" "$@" "${TIMING[@]}" >"$log" 2>&1; then',
        '    echo "error: building $stage failed; the end of $log:" >&2',
        '    tail -n 25 "$log" >&2',
        "    exit 1",
        "  fi",
        f'  echo "  $stage: $((SECONDS - start)) s, $(du -h {ENGINE_DIR}/"$stage".engine | cut -f1)"',
        "}",
    ]
    for stage, graph in graphs.items():
        lines += ["", f"# {stage}: {graph.onnx} — {graph.kind}", f"build_engine {stage} \\"]
        args = trtexec_args(graph, profiles[stage], workspace_mb)
        lines += [f"  {shlex.quote(a)}" + (" \\" if i < len(args) - 1 else "") for i, a in enumerate(args)]
    lines += ["", f'echo "engines are in {ENGINE_DIR}/; next: validate them against onnxruntime (README_TARGET.md)"',
              ""]
    return "\n".join(lines)


def _render_readme(manifest: Mapping[str, Any], graphs: dict[str, EngineGraph], profiles: dict, precision: str,
                   target: str, workspace_mb: int) -> str:
    machine = "the Jetson AGX Thor" if target == "thor" else "this GPU machine"
    rows = []
    for stage in graphs:
        for name, (lo, opt, hi) in profiles[stage].items():
            rows.append(f"| {stage} | {name} | {'x'.join(map(str, lo))} | {'x'.join(map(str, opt))} | "
                        f"{'x'.join(map(str, hi))} |")
    return "\n".join([
        f"# TensorRT engines — {_drop_label(manifest)}, {precision}",
        "",
        f"Engines are built on {machine}, never shipped: a plan only runs on the GPU model and TensorRT version",
        "that built it. Run, from the artifact dir, in order:",
        "",
        "1. `bash engines/build_engines.sh` — checks the ONNX hashes, then builds "
        + ", ".join(f"`{ENGINE_DIR}/{s}.engine`" for s in graphs)
        + " with trtexec (verbose log per engine in `engines/<stage>.build.log`, shared `engines/timing.cache`,"
        + f" workspace {workspace_mb} MiB). Each build is followed by a trtexec latency run at the opt shapes "
        + "(`SKIP_TIMING=1` to skip it). Re-runs reuse the timing cache and are much faster.",
        f"   Same engines through the Python API: `gr00t-export engines . --precision {precision} --target local`.",
        "2. Validate the engines against onnxruntime on one observation (README_TARGET.md, step 3).",
        "3. Run: `gr00t-export serve . --backend trt --device cuda`.",
        "",
        "Graphs (every engine strongly typed, `--stronglyTyped`: the precision is the graph's own):",
        "",
        *[f"- {s}: `{g.onnx}` — {g.kind}" for s, g in graphs.items()],
        "",
        "Optimisation profiles (one per engine; `num_images` = batch x views, `seq_len` from the tokenizer):",
        "",
        "| engine | input | min | opt | max |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ])


def render_build_plan(artifact_dir: str | Path, precision: str, target: str = "thor",
                      workspace_mb: int = DEFAULT_WORKSPACE_MB) -> dict[str, str]:
    """The plan files (`engines/build_engines.sh`, `engines/README.md`) as text, keyed by relative path."""
    root = Path(artifact_dir)
    if target not in TARGETS:
        raise InputError(f"unknown --target {target!r}; use {' or '.join(TARGETS)}")
    if workspace_mb < 1:
        raise InputError(f"--workspace must be a positive number of MiB, got {workspace_mb}")
    if not root.is_dir():
        raise InputError(f"artifact dir {root} does not exist; run `gr00t-export build` first")
    manifest = Manifest.read(root)
    graph = load_graph_spec(manifest.verify_file(root, SPEC_FILE))
    profiles = engine_profiles(manifest, graph)
    graphs = engine_graphs(root, manifest, graph, precision, profiles)
    return {f"{ENGINE_DIR}/{PLAN_SCRIPT}": _render_script(manifest, graphs, profiles, precision, target, workspace_mb),
            f"{ENGINE_DIR}/{PLAN_README}": _render_readme(manifest, graphs, profiles, precision, target, workspace_mb)}


def _write_atomic(path: Path, data: bytes | memoryview, executable: bool = False) -> None:
    """Written beside `path`, then renamed; the mode of an ordinary file under the umask (mkstemp makes 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, (0o777 if executable else 0o666) & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_build_plan(artifact_dir: str | Path, precision: str, target: str = "thor",
                     workspace_mb: int = DEFAULT_WORKSPACE_MB) -> Path:
    """Writes `engines/build_engines.sh` and `engines/README.md` into the artifact dir; returns the script."""
    root = Path(artifact_dir)
    for rel, text in render_build_plan(root, precision, target, workspace_mb).items():
        _write_atomic(root / rel, text.encode(), executable=rel.endswith(".sh"))
    return root / ENGINE_DIR / PLAN_SCRIPT


# --------------------------------------------------------------------------------------------- TensorRT API


class BuildCheck(NamedTuple):
    ok: bool
    seconds: float
    errors: list[str]


def _build(trt_module: str, onnx_path: Path, profiles: Mapping[str, Profile], workspace_mb: int, log_path: Path,
           cache_path: Path | None = None, engine_path: Path | None = None) -> tuple[BuildCheck, int]:
    """Parse -> profile -> serialise one strongly typed engine with Polygraphy's loaders; (check, engine bytes).

    The log gets the builder's messages; the timing cache is read and merged back when given; the engine is
    written atomically (never a half-written plan beside the log)."""
    from polygraphy.exception import PolygraphyException

    trt, pg = polygraphy_trt(trt_module)
    start = time.perf_counter()
    with polygraphy_log(log_path) as errors:
        try:
            # TensorRT-RTX networks are always strongly typed and have no flag for it
            typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
            builder, network, parser = pg.NetworkFromOnnxPath(str(onnx_path), strongly_typed=typed)()
        except PolygraphyException as err:  # the parser's errors are in the log and in `errors`
            return BuildCheck(False, time.perf_counter() - start, list(errors) or [str(err)]), 0
        except Exception as err:  # the bindings raise TypeError/RuntimeError when CUDA cannot initialise
            raise InputError(f"TensorRT cannot create a builder ({err}): no usable CUDA GPU here; build on the "
                             f"target with {ENGINE_DIR}/{PLAN_SCRIPT}") from None
        inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
        unknown = sorted(set(profiles) - set(inputs))
        unset = sorted(n for n, shape in inputs.items() if -1 in shape and n not in profiles)
        if unknown or unset:
            msg = f"profile names inputs the network lacks: {unknown}" if unknown else \
                f"dynamic inputs without a profile: {unset}"
            return BuildCheck(False, time.perf_counter() - start, [msg]), 0
        profile = pg.Profile()
        for name, (lo, opt, hi) in profiles.items():
            profile.add(name, min=lo, opt=opt, max=hi)
        cache = cache_path if cache_path is not None and cache_path.is_file() else None
        config = pg.CreateConfig(profiles=[profile], load_timing_cache=str(cache) if cache else None,
                                 memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_mb << 20})
        try:
            serialized = pg.EngineBytesFromNetwork((builder, network, parser), config,
                                                   save_timing_cache=str(cache_path) if cache_path else None)()
        except PolygraphyException as err:
            return BuildCheck(False, time.perf_counter() - start, list(errors) or [str(err)]), 0
        seconds = time.perf_counter() - start
    if engine_path is not None:
        _write_atomic(engine_path, memoryview(serialized))
    return BuildCheck(True, seconds, []), int(serialized.nbytes)


@dataclass
class EngineReport:
    stage: str
    onnx: str
    engine: str
    precision: str
    ok: bool
    seconds: float
    size_bytes: int
    log: str
    errors: list[str] = field(default_factory=list)
    profiles: dict[str, list[list[int]]] = field(default_factory=dict)
    trt_module: str = ""
    trt_version: str = ""


def _require_gpu() -> None:
    if torch.version.cuda is not None and not torch.cuda.is_available():
        raise InputError(f"no CUDA GPU is visible (torch.cuda.is_available() is False); TensorRT builds on the GPU "
                         f"that runs the engines: run {ENGINE_DIR}/{PLAN_SCRIPT} on the target")


def build_engines(artifact_dir: str | Path, precision: str, workspace_mb: int = DEFAULT_WORKSPACE_MB,
                  trt_module: str = "tensorrt", log: Callable[[str], None] = print) -> list[EngineReport]:
    """Builds `engines/<stage>.engine` for the ONNX stages here, with the TensorRT Python API.

    The plan is written first (so the trtexec route is there whatever happens), then every engine is built
    even if one fails; `engines/build_report.json` records all of them. Raises InputError without TensorRT
    or without a GPU.
    """
    root = Path(artifact_dir)
    write_build_plan(root, precision, "local", workspace_mb)
    trt, _ = polygraphy_trt(trt_module)
    _require_gpu()
    manifest = Manifest.read(root)
    graph = load_graph_spec(root / SPEC_FILE)
    profiles = engine_profiles(manifest, graph)
    graphs = engine_graphs(root, manifest, graph, precision, profiles)
    reports = []
    for stage, g in graphs.items():
        engine, log_rel = f"{ENGINE_DIR}/{stage}.engine", f"{ENGINE_DIR}/{stage}.build.log"
        log(f"building {engine} from {g.onnx} ({g.kind})")
        check, size = _build(trt_module, root / g.onnx, profiles[stage], workspace_mb, root / log_rel,
                             root / TIMING_CACHE, root / engine)
        if not check.ok:
            (root / engine).unlink(missing_ok=True)  # never leave an engine from an older build beside the log
        log(f"  {stage}: {'ok' if check.ok else 'FAILED'} in {check.seconds:.1f} s"
            + (f", {size / 2**20:.1f} MiB" if check.ok else f": {check.errors[0] if check.errors else ''}"))
        reports.append(EngineReport(stage, g.onnx, engine, precision, check.ok, round(check.seconds, 3), size,
                                    log_rel, check.errors[:20],
                                    {n: [list(s) for s in p] for n, p in profiles[stage].items()},
                                    trt.__name__, getattr(trt, "__version__", "")))
    _write_atomic(root / BUILD_REPORT, json.dumps([asdict(r) for r in reports], indent=2).encode())
    return reports


def _find_artifact_dir(onnx_path: Path) -> Path:
    for parent in list(onnx_path.resolve().parents)[:4]:
        if (parent / "manifest.json").is_file():
            return parent
    raise InputError(f"no manifest.json above {onnx_path}; pass profiles= explicitly")


def profiles_for_onnx(onnx_path: str | Path) -> dict[str, Profile]:
    """The profile of the stage an ONNX file belongs to (`<stem>_fp8.onnx` maps to its stage), from its build."""
    path = Path(onnx_path)
    root = _find_artifact_dir(path)
    rel = str(path.resolve().relative_to(root))
    manifest = Manifest.read(root)
    graph = load_graph_spec(root / SPEC_FILE)
    for stage in graph.stages:
        if stage.format == "onnx" and rel in (stage.file, fp8_graph_file(stage.file)):
            return engine_profiles(manifest, graph)[stage.name]
    raise InputError(f"{rel} is not an ONNX stage of the graph spec in {root}; pass profiles= explicitly")


def check_engine_build(onnx_path: str | Path, profiles: Mapping[str, Profile] | None = None,
                       trt_module: str = "tensorrt,tensorrt_rtx_bindings", workspace_mb: int = DEFAULT_WORKSPACE_MB,
                       log_path: str | Path | None = None) -> BuildCheck:
    """Parse + build one ONNX graph and throw the engine away: `(ok, seconds, errors)`.

    For proving a graph builds where engines cannot run (TensorRT-RTX on Hopper). `profiles=None` takes the
    stage's profile from the build the file sits in. The builder log goes to `log_path` (default: a temp file).
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise InputError(f"ONNX file {path} not found")
    profiles = profiles if profiles is not None else profiles_for_onnx(path)
    polygraphy_trt(trt_module)
    log_file = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"gr00t_export_{path.stem}.build.log"
    check, _ = _build(trt_module, path, profiles, workspace_mb, log_file)
    return check


def compare_backends(artifact_dir: str | Path, candidate: tuple[str, str] = ("trt", "cuda"),
                     reference: tuple[str, str] = ("ort", "cpu"), reference_dir: str | Path | None = None,
                     seed: int = 0) -> dict[str, dict[str, float]]:
    """Same observation and noise through two (backend, device) runners: max |diff| and cosine per action key.

    reference_dir: another build to compare against (e.g. fp8 engines vs the fp16 build); default the same dir.
    """
    from gr00t_export.families.base import synthetic_observation
    from gr00t_export.runtime.runner import ExportedGr00tRunner

    ref = ExportedGr00tRunner(reference_dir or artifact_dir, device=reference[1], backend=reference[0])
    cand = ExportedGr00tRunner(artifact_dir, device=candidate[1], backend=candidate[0])
    obs = synthetic_observation(ref.interface)
    comparisons = compare_outputs(cand.get_action(obs, seed=seed), ref.get_action(obs, seed=seed), check_dtypes=False)
    return {key: {"max_abs_diff": c.max_abs, "cosine": c.cosine, "max_rel": c.max_rel}
            for key, c in comparisons.items()}
