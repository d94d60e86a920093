"""`gr00t-export inspect`: what is in an artifact dir, read from its own files, for a person.

`describe_drop()` gathers the stage graph (execution order, edges, external inputs/outputs), each stage's
tensors as seen at export, sizes, precisions, hashes and the validation verdict; `render_graph_png()`
draws that graph with matplotlib. Nothing here loads a model, so inspecting is instant and safe.

`describe_file()` reads one model file instead: an .onnx file's interface, opsets, op counts and initializer
sizes from its protobuf (external weights are never read), or a TorchScript .pt's forward schema, parameters
and buffers (that one is loaded, on the CPU, because the user named it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from gr00t_export.errors import InputError
from gr00t_export.manifest import Manifest
from gr00t_export.spec import SPEC_FILE, GraphSpec, load_graph_spec

REPORT = Path("validation") / "validation_report.json"
FORMAT_LABEL = {"torchscript": "TorchScript", "onnx": "ONNX", "trt": "TensorRT"}
DTYPE_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "int64": "i64",
               "uint8": "u8", "string": "str"}


@dataclass
class Tensor:
    name: str
    dtype: str
    shape: list[int | str]  # symbolic dims by name
    peer: str = ""  # inputs: "external" or "stage/output"; outputs: consumers, comma separated, or "output"

    @property
    def short(self) -> str:
        return f"{DTYPE_SHORT.get(self.dtype, self.dtype)} [{', '.join(str(d) for d in self.shape)}]"


@dataclass
class StageView:
    name: str
    file: str
    format: str
    precision: str
    size_bytes: int
    sha256: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    export_diff: float | None
    export_passed: bool | None
    engine: str | None = None
    validation: str = "not validated"


@dataclass
class Edge:
    src: str
    src_port: str
    dst: str
    dst_port: str


@dataclass
class DropView:
    root: Path
    manifest: dict
    graph: GraphSpec
    stages: list[StageView]
    edges: list[Edge]
    validation: str
    igg_configs: list[tuple[str, list[str]]] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    timings_source: str = ""

    def stage(self, name: str) -> StageView:
        return next(s for s in self.stages if s.name == name)


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def validation_status(root: Path) -> tuple[str, dict[str, str]]:
    """Overall verdict and per-stage verdicts from validation/validation_report.json, if validation ran."""
    path = root / REPORT
    if not path.is_file():
        return "not validated", {}
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return f"unreadable report ({REPORT})", {}
    per_stage: dict[str, str] = {}
    for check in report.get("checks", []):
        stage, status = check.get("stage"), check.get("status")
        if stage and status:
            if status == "failed" or per_stage.get(stage) == "failed":
                per_stage[stage] = "failed"
            elif status == "passed" or stage not in per_stage:
                per_stage[stage] = status
    summary = report.get("summary", {})
    counts = ", ".join(f"{summary[k]} {k}" for k in ("passed", "failed", "skipped") if k in summary)
    verdict = "passed" if report.get("passed") else "FAILED"
    mode = report.get("mode")
    return f"{verdict}{f' ({mode})' if mode else ''}{f': {counts}' if counts else ''}", per_stage


def describe_drop(artifact_dir: str | Path) -> DropView:
    root = Path(artifact_dir)
    if not root.is_dir():
        raise InputError(f"artifact dir {root} does not exist; run `gr00t-export build` first")
    manifest = Manifest.read(root)
    graph = load_graph_spec(root / SPEC_FILE, views=manifest.views)
    files = {f["path"]: f for f in manifest.get("files", [])}
    seen = {s["name"]: s for s in manifest.get("stages", [])}
    overall, per_stage = validation_status(root)
    edges = [Edge(*src.split("/", 1), *dst.split("/", 1)) for src, dsts in graph.edges().items() for dst in dsts]
    consumers: dict[str, list[str]] = {}
    for e in edges:
        consumers.setdefault(f"{e.src}/{e.src_port}", []).append(f"{e.dst}/{e.dst_port}")
    stages = []
    for spec in graph.stages:
        s = seen.get(spec.name, {})
        sources = {t.name: t.source or "external" for t in spec.inputs}
        inputs = [Tensor(t["name"], t["dtype"], t["shape"], sources.get(t["name"], "external"))
                  for t in s.get("inputs", [])]
        outputs = [Tensor(t["name"], t["dtype"], t["shape"],
                          ", ".join(consumers.get(f"{spec.name}/{t['name']}", [])) or "output")
                   for t in s.get("outputs", [])]
        entry = files.get(spec.file, {})
        extra = sum(files.get(f, {}).get("size", 0) for f in s.get("extra_files", []))
        engine = root / "engines" / f"{spec.name}.engine"
        stages.append(StageView(
            name=spec.name, file=spec.file, format=spec.format,
            precision=s.get("precision", manifest.get("precision", "")) if spec.format == "onnx" else "fp32",
            size_bytes=entry.get("size", 0) + extra, sha256=entry.get("sha256", ""), inputs=inputs, outputs=outputs,
            export_diff=s.get("max_abs_diff"), export_passed=s.get("passed"),
            engine=engine.relative_to(root).as_posix() if engine.is_file() else None,
            validation=per_stage.get(spec.name, "not validated" if overall == "not validated" else "no check")))
    view = DropView(root=root, manifest=manifest, graph=graph, stages=stages, edges=edges, validation=overall)
    igg = root / "igg"
    if igg.is_dir():
        from gr00t_export.pipeline.igg import check_igg_config

        view.igg_configs = [(p.relative_to(root).as_posix(), check_igg_config(p)) for p in sorted(igg.glob("*.yaml"))]
    view.timings_ms, view.timings_source = stage_timings(root)
    return view


def stage_timings(root: Path) -> tuple[dict[str, float], str]:
    """Per-stage ms: the validation report's, else an IGG timings sidecar's (CPU, measured at build)."""
    sources = [root / REPORT, *sorted((root / "igg").glob("*_timings.json"))] if (root / "igg").is_dir() else [
        root / REPORT]
    for path in sources:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        found = data.get("stage_timings_ms") if isinstance(data, dict) else None
        if found:
            origin = "validation report" if path.name == REPORT.name else f"{path.name} ({data.get('source', '?')})"
            return {k: float(v) for k, v in found.items() if isinstance(v, int | float)}, origin
    return {}, ""


# --- one model file ------------------------------------------------------------------------------------

SUB_BYTE_BITS = {"INT2": 2, "UINT2": 2, "INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4}  # packed in storage


@dataclass
class OnnxFileView:
    """An .onnx file's interface and contents, read without its external weights."""

    path: Path
    size_bytes: int
    ir_version: int
    producer: str
    opsets: dict[str, int]  # domain ("ai.onnx" for the default one) -> version
    inputs: list[Tensor]
    outputs: list[Tensor]
    op_counts: dict[str, int]  # "Op" (default domain) or "domain.Op", subgraphs included, most frequent first
    initializers: int
    initializer_bytes: int  # external data included
    external_files: dict[str, int]  # location -> bytes its tensors take there
    missing_external: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> int:
        return sum(self.op_counts.values())


@dataclass
class TorchScriptFileView:
    """A TorchScript archive's forward signature, parameters and buffers."""

    path: Path
    size_bytes: int
    type_name: str
    forward_args: list[tuple[str, str]]  # (name, type), self excluded
    forward_returns: list[str]
    parameters: int
    parameter_bytes: int
    buffers: int
    buffer_bytes: int
    tensor_dtypes: dict[str, int]  # dtype -> number of parameters and buffers


def _onnx_dtype(elem_type: int) -> str:
    import onnx

    if elem_type == onnx.TensorProto.STRING:
        return "string"
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, ValueError, TypeError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _onnx_value(value) -> Tensor:
    """A graph input/output: dtype and shape, symbolic dims by name, unknown ones as `?`."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return Tensor(value.name, kind or "unknown", [])
    tensor = value.type.tensor_type
    shape: list = []
    if tensor.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
    else:
        shape = ["?"]  # rank unknown
    return Tensor(value.name, _onnx_dtype(tensor.elem_type), shape)


def _initializer_bytes(tensor) -> tuple[int, str | None]:
    """(bytes, external location or None) of an initializer, from its header: weights are never read."""
    import math

    import onnx

    count = math.prod(tensor.dims)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        info = {entry.key: entry.value for entry in tensor.external_data}
        if "length" in info:
            return int(info["length"]), info.get("location")
        return _packed_bytes(tensor.data_type, count), info.get("location")
    if tensor.raw_data:
        return len(tensor.raw_data), None
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(v) for v in tensor.string_data), None
    return _packed_bytes(tensor.data_type, count), None


def _packed_bytes(data_type: int, count: int) -> int:
    import onnx

    bits = SUB_BYTE_BITS.get(onnx.TensorProto.DataType.Name(data_type))
    if bits:
        return -(-count * bits // 8)
    try:
        return count * onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return 0


def _count_ops(graph, counts: dict[str, int]) -> None:
    import onnx

    for node in graph.node:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[op] = counts.get(op, 0) + 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _count_ops(attr.g, counts)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _count_ops(sub, counts)


def describe_onnx_file(path: str | Path) -> OnnxFileView:
    """The interface, opsets, op counts and initializer sizes of one .onnx file; external weights stay on disk."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends: all mean "not an ONNX model"
        raise InputError(f"{path} is not a readable ONNX model ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'no detail'}); check the file") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise InputError(f"{path} is not an ONNX model (no IR version or graph); check the file")
    graph = model.graph
    op_counts: dict[str, int] = {}
    _count_ops(graph, op_counts)
    total, external = 0, {}
    for tensor in graph.initializer:
        nbytes, location = _initializer_bytes(tensor)
        total += nbytes
        if location is not None:
            external[location] = external.get(location, 0) + nbytes
    for sparse in graph.sparse_initializer:
        total += sum(_initializer_bytes(t)[0] for t in (sparse.values, sparse.indices))
    initializer_names = {t.name for t in graph.initializer}
    return OnnxFileView(
        path=path, size_bytes=path.stat().st_size, ir_version=int(model.ir_version),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        opsets={(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        inputs=[_onnx_value(v) for v in graph.input if v.name not in initializer_names],
        outputs=[_onnx_value(v) for v in graph.output],
        op_counts=dict(sorted(op_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        initializers=len(graph.initializer) + len(graph.sparse_initializer), initializer_bytes=total,
        external_files=external,
        missing_external=sorted(loc for loc in external if not (path.parent / loc).is_file()),
    )


def describe_torchscript_file(path: str | Path) -> TorchScriptFileView:
    """Forward schema, parameters and buffers of a TorchScript archive (loaded on the CPU: the user asked for it)."""
    import zipfile

    import torch

    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path} is not a TorchScript archive (not a zip file); inspect reads files written by "
                         "torch.jit.save")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as err:
        raise InputError(f"{path} is not a TorchScript archive ({str(err).strip().splitlines()[0]}); inspect reads "
                         "files written by torch.jit.save, not torch.save checkpoints") from None
    forward = getattr(module, "forward", None)
    schema = getattr(forward, "schema", None)
    args = [(a.name, a.type.annotation_str) for a in schema.arguments[1:]] if schema is not None else []
    returns = [r.type.annotation_str for r in schema.returns] if schema is not None else []
    params, buffers = list(module.parameters()), list(module.buffers())
    dtypes: dict[str, int] = {}
    for t in (*params, *buffers):
        name = str(t.dtype).removeprefix("torch.")
        dtypes[name] = dtypes.get(name, 0) + 1
    return TorchScriptFileView(
        path=path, size_bytes=path.stat().st_size, type_name=module.original_name,
        forward_args=args, forward_returns=returns,
        parameters=len(params), parameter_bytes=sum(t.numel() * t.element_size() for t in params),
        buffers=len(buffers), buffer_bytes=sum(t.numel() * t.element_size() for t in buffers), tensor_dtypes=dtypes,
    )


def describe_file(path: str | Path) -> OnnxFileView | TorchScriptFileView:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} is not a file; pass an artifact dir or one .onnx / .pt file")
    if path.suffix == ".onnx":
        return describe_onnx_file(path)
    if path.suffix == ".pt":
        return describe_torchscript_file(path)
    raise InputError(f"cannot inspect {path.name}: give an artifact dir, an .onnx file or a TorchScript .pt file")


# --- the PNG -------------------------------------------------------------------------------------------

COL_W, ROW_H = 4.4, 2.0  # layout grid, inches
BOX_W, BOX_H = 2.95, 1.12
PILL_W, PILL_H = 1.75, 0.42
LANE = 0.13  # vertical gap between parallel edges leaving one stage
FILL = {"torchscript": "#fde3c8", "onnx": "#d6e6fb", "trt": "#d5f0d5"}
EDGE_COLOUR = {"passed": "#2e8b3a", "failed": "#c62828"}
Point = tuple[float, float]


@dataclass
class Layout:
    pos: dict[str, Point]  # stage centre
    ext_in: dict[str, Point]  # "stage/input" -> pill centre
    ext_out: dict[str, Point]  # "stage/output" -> pill centre


def layout(view: DropView) -> Layout:
    """Layered left to right: column = longest path from a source, the longest chain on row 0, other stages in
    rows below; inputs of first-column stages enter from the left, inputs of later stages from above."""
    order = [s.name for s in view.stages]
    pred: dict[str, set[str]] = {n: set() for n in order}
    for e in view.edges:
        pred[e.dst].add(e.src)
    col: dict[str, int] = {}
    chain: dict[str, list[str]] = {}
    for n in order:  # execution order is topological
        col[n] = max((col[p] + 1 for p in pred[n]), default=0)
        chain[n] = [*max((chain[p] for p in pred[n]), key=len, default=[]), n]
    spine = set(max(chain.values(), key=len))
    succ_col: dict[str, int] = {n: len(order) for n in order}
    for e in view.edges:
        succ_col[e.src] = min(succ_col[e.src], col[e.dst])
    row: dict[str, int] = {n: 0 for n in spine}
    used: dict[int, set[int]] = {}
    for n in spine:
        used.setdefault(col[n], set()).add(0)
    # nearest consumers first: their climbs to row 0 are short and never cross the longer runs below them
    for n in sorted(order, key=lambda n: (succ_col[n], order.index(n))):
        if n not in row:
            r = -1
            while r in used.setdefault(col[n], set()):
                r -= 1
            row[n] = r
            used[col[n]].add(r)
    pos = {n: (col[n] * COL_W, row[n] * ROW_H) for n in order}
    ext_in: dict[str, Point] = {}
    for s in view.stages:
        external = [t for t in s.inputs if t.peer == "external"]
        for k, t in enumerate(external):
            x, y = pos[s.name]
            if col[s.name] == 0:
                ext_in[f"{s.name}/{t.name}"] = (x - COL_W + (BOX_W - PILL_W) / 2, y - k * (PILL_H + 0.25))
            else:
                ext_in[f"{s.name}/{t.name}"] = (x + (k - (len(external) - 1) / 2) * (PILL_W + 0.3), y + ROW_H * 0.85)
    ext_out: dict[str, Point] = {}
    for s in view.stages:
        outs = [t for t in s.outputs if t.peer == "output"]
        for k, t in enumerate(outs):
            x, y = pos[s.name]
            ext_out[f"{s.name}/{t.name}"] = (x + COL_W - (BOX_W - PILL_W) / 2,
                                             y - (k - (len(outs) - 1) / 2) * (PILL_H + 0.22))
    return Layout(pos, ext_in, ext_out)


@dataclass
class Route:
    points: list[Point]
    label: str
    label_at: Point


def routes(view: DropView, lay: Layout) -> list[Route]:
    """Orthogonal routes: same row -> straight; across rows -> along the source's row, then up (or down) into
    the consumer's bottom (top), entry points spread so lower sources enter further right and never cross."""
    pairs: dict[tuple[str, str], list[str]] = {}
    for e in view.edges:
        t = next((o for o in view.stage(e.src).outputs if o.name == e.src_port), None)
        port = e.src_port if e.src_port == e.dst_port else f"{e.src_port} → {e.dst_port}"
        pairs.setdefault((e.src, e.dst), []).append(f"{port}  {t.short}" if t else port)
    pos = lay.pos
    single = {k: v for k, v in pairs.items() if len(v) == 1 and pos[k[0]][1] == pos[k[1]][1]}
    for k, (text,) in single.items():  # a short hop between boxes: name over shape, to fit the gap
        pairs[k] = [text.replace("  ", "\n", 1)]
    incoming: dict[str, list[str]] = {}
    for src, dst in pairs:
        if pos[src][1] != pos[dst][1]:
            incoming.setdefault(dst, []).append(src)
    entry: dict[tuple[str, str], float] = {}
    for dst, srcs in incoming.items():
        srcs.sort(key=lambda s: (-pos[s][1], pos[s][0]))  # higher rows enter left
        for k, src in enumerate(srcs):
            entry[(src, dst)] = pos[dst][0] - BOX_W * 0.3 + (BOX_W * 0.6) * (k / max(len(srcs) - 1, 1))
    leaving: dict[str, list[str]] = {}
    for src, dst in pairs:
        if (src, dst) in entry:
            leaving.setdefault(src, []).append(dst)
    out: list[Route] = []
    for (src, dst), labels in pairs.items():
        (sx, sy), (dx, dy) = pos[src], pos[dst]
        label = "\n".join(labels)
        a = (sx + BOX_W / 2 + 0.06, sy)
        if (src, dst) not in entry:
            b = (dx - BOX_W / 2 - 0.06, dy)
            out.append(Route([a, b], label, ((a[0] + b[0]) / 2, sy)))
            continue
        siblings = sorted(leaving[src], key=lambda d: entry[(src, d)])
        k = siblings.index(dst)
        up = 1 if dy > sy else -1  # the sibling entering first takes the lane nearest its consumer
        lane = sy + up * ((len(siblings) - 1) * LANE / 2 - k * LANE)
        ex = entry[(src, dst)]
        ey = dy - BOX_H / 2 - 0.08 if dy > sy else dy + BOX_H / 2 + 0.08
        start = (a[0], lane)
        prev = a[0] if k == 0 else entry[(src, siblings[k - 1])]
        shift = 0.0 if len(siblings) == 1 else (0.24 + 0.1 * label.count("\n")) * (up if k == 0 else -up)
        out.append(Route([start, (ex, lane), (ex, ey)], label, ((prev + ex) / 2 + 0.1, lane + shift)))
    return out


def _box_text(s: StageView) -> tuple[str, str]:
    fmt = FORMAT_LABEL.get(s.format, s.format)
    prec = s.precision if s.format == "onnx" else ""
    detail = " · ".join(x for x in (fmt, prec, human_size(s.size_bytes)) if x)
    check = (f"export Δ {s.export_diff:.1e}" if s.export_diff is not None else "")
    lines = [s.file, detail, f"sha256 {s.sha256[:12]}", f"{check} · {s.validation}" if check else s.validation]
    if s.engine:
        lines.insert(2, f"engine {s.engine}")
    return s.name, "\n".join(lines)


def render_graph_png(view: DropView, out: str | Path, dpi: int = 100) -> Path:
    """The execution graph: a box per stage, labelled arrows per tensor, external inputs and outputs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

    lay = layout(view)
    pos = lay.pos
    points = [*pos.values(), *lay.ext_in.values(), *lay.ext_out.values()]
    x0, x1 = min(x for x, _ in points) - BOX_W / 2 - 0.3, max(x for x, _ in points) + BOX_W / 2 + 0.3
    y0, y1 = min(y for _, y in points) - BOX_H / 2 - 0.8, max(y for _, y in points) + BOX_H / 2 + 0.9
    fig = plt.figure(figsize=(x1 - x0, y1 - y0), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.axis("off")

    def box(x: float, y: float, w: float, h: float, fill: str, edge: str, lw: float, pad: float = 0.06,
            ls: str = "-") -> None:
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle=f"round,pad={pad}", fc=fill, ec=edge,
                                    lw=lw, ls=ls, zorder=2))

    def label(x: float, y: float, text: str, colour: str) -> None:
        ax.text(x, y, text, ha="center", va="center", fontsize=7.4, zorder=4, linespacing=1.2,
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colour, "lw": 0.6})

    def polyline(pts: list[Point], colour: str, lw: float = 1.3, ls: str = "-") -> None:
        if len(pts) > 2:
            xs, ys = zip(*pts[:-1], strict=True)
            ax.plot(xs, ys, color=colour, lw=lw, ls=ls, zorder=1, solid_capstyle="butt")
        ax.add_patch(FancyArrowPatch(pts[-2], pts[-1], arrowstyle="-|>", mutation_scale=13, lw=lw, ls=ls,
                                     color=colour, zorder=1, shrinkA=0, shrinkB=0))

    for s in view.stages:
        x, y = pos[s.name]
        fill = FILL["trt"] if s.engine else FILL.get(s.format, "#eeeeee")
        box(x, y, BOX_W, BOX_H, fill, EDGE_COLOUR.get(s.validation, "#555555"), 1.8)
        title, body = _box_text(s)
        ax.text(x, y + BOX_H / 2 - 0.18, title, ha="center", va="center", fontsize=10.5, weight="bold", zorder=3)
        ax.text(x, y - 0.12, body, ha="center", va="center", fontsize=7.6, family="monospace", zorder=3,
                linespacing=1.3)

    for r in routes(view, lay):
        polyline(r.points, "#37474f")
        label(*r.label_at, r.label, "#37474f")

    grey, green = "#78909c", "#43a047"
    for key, (x, y) in lay.ext_in.items():
        stage, name = key.split("/", 1)
        t = next(i for i in view.stage(stage).inputs if i.name == name)
        box(x, y, PILL_W, PILL_H, "#eceff1", grey, 1.0, pad=0.12, ls="--")
        ax.text(x, y, f"{name}\n{t.short}", ha="center", va="center", fontsize=7.6, zorder=3, linespacing=1.15)
        sx, sy = pos[stage]
        if abs(y - sy) < BOX_H / 2:  # beside its stage: enter from the left
            polyline([(x + PILL_W / 2 + 0.12, y), (sx - BOX_W / 2 - 0.08, y)], grey, 1.1, "--")
        else:  # above its stage: enter from the top
            polyline([(x, y - PILL_H / 2 - 0.12), (x, sy + BOX_H / 2 + 0.08)], grey, 1.1, "--")
    for key, (x, y) in lay.ext_out.items():
        stage, name = key.split("/", 1)
        t = next(o for o in view.stage(stage).outputs if o.name == name)
        box(x, y, PILL_W, PILL_H, "#e8f5e9", green, 1.0, pad=0.12)
        ax.text(x, y, f"{name}\n{t.short}", ha="center", va="center", fontsize=7.6, zorder=3, linespacing=1.15)
        sx, sy = pos[stage]
        polyline([(sx + BOX_W / 2 + 0.06, sy), (x - PILL_W / 2 - 0.14, y)], green, 1.0)

    m = view.manifest
    modality = m.get("modality_config", {}).get("name", "?")
    parts = [f"{view.graph.name}: {view.root.name}", m.get("precision", "?"),
             f"{m.get('embodiment_tag', '?')} / {modality}", f"{m.get('views', '?')} view(s)",
             f"validation: {view.validation}"]
    ax.text(x0 + 0.25, y1 - 0.3, "   ·   ".join(parts), ha="left", va="center", fontsize=11.5, weight="bold")
    legend = [Patch(fc=FILL["torchscript"], ec="#555555", label="TorchScript stage"),
              Patch(fc=FILL["onnx"], ec="#555555", label="ONNX stage"),
              Patch(fc=FILL["trt"], ec="#555555", label="TensorRT engine"),
              Patch(fc="#eceff1", ec=grey, ls="--", label="external input (fed each tick)"),
              Patch(fc="#e8f5e9", ec=green, label="policy output"),
              Patch(fc="white", ec=EDGE_COLOUR["passed"], lw=1.8, label="stage validated"),
              Patch(fc="white", ec=EDGE_COLOUR["failed"], lw=1.8, label="stage failed validation")]
    ax.legend(handles=legend, loc="lower left", ncol=len(legend), fontsize=8.5, frameon=False,
              bbox_to_anchor=(0.005, 0.0), handlelength=1.6)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, facecolor="white")
    plt.close(fig)
    return out
