"""Stage 4 — optimise: check, simplify and (above 2 GB) externalise an exported ONNX graph.

Simplification (onnxslim) is kept only if the simplified graph still computes the same outputs on the
real example inputs; otherwise the checked original is kept and the reason recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper

from gr00t_export.compare import compare_outputs

TWO_GB = 2**31 - 2**20  # protobuf's limit, with headroom
EXTERNAL_ABOVE = TWO_GB - (256 << 20)  # weights past this leave the .onnx (graph structure needs room too)
EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay inside the .onnx even then
PAGE = 4096  # external tensors start on page boundaries, so they can be memory-mapped
# onnxslim holds several copies of a graph in memory; above this the build skips it (a 3B build must stay
# under 16 GiB) and leaves graph optimisation to onnxruntime / TensorRT, which do the same folding at load.
SIMPLIFY_MAX_BYTES = 1 << 30


@dataclass
class OptimizeReport:
    simplified: bool
    nodes_before: int
    nodes_after: int
    note: str = ""
    fused_norms: int = 0  # residual add + norm pairs written as one onnxruntime kernel


def _weight_bytes(model: onnx.ModelProto) -> int:
    # ByteSize() itself fails above 2 GB, so count the tensors' payloads
    return sum(len(t.raw_data) for t in _tensors(model))


def save_onnx(model: onnx.ModelProto, path: Path, external: bool | None = None,
              source_dir: Path | None = None) -> bool:
    """The one writer of ONNX graphs with weights: `path`, plus `<name>.onnx_data` when the weights go outside.

    Outside (`external=None`: when the model already keeps tensors outside, or its weights pass
    `EXTERNAL_ABOVE`) means every tensor of `EXTERNAL_MIN_BYTES` or more, initializers and Constant values, in one
    file at page-aligned offsets (onnxruntime memory-maps them), written with ordinary file permissions (onnx's
    own writer makes it owner-only). Tensors already outside are streamed from their files under `source_dir`,
    one at a time, so a 3B graph is never loaded whole; tensors in memory are moved (their raw data is cleared).
    Returns whether external data was written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _external_file(path)
    if external is None:
        external = _has_external(model) or _weight_bytes(model) > EXTERNAL_ABOVE
    if not external:
        data.unlink(missing_ok=True)
        onnx.save_model(model, str(path))
        return False
    tmp = data.with_name(f".{data.name}.tmp-{os.getpid()}")
    offset = 0
    try:
        with open(tmp, "wb") as out:
            for tensor in _tensors(model):
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    payload = _read_external(tensor, source_dir)
                elif len(tensor.raw_data) >= EXTERNAL_MIN_BYTES:
                    payload = tensor.raw_data
                else:
                    continue
                pad = (-offset) % PAGE
                out.write(b"\0" * pad)
                offset += pad
                out.write(payload)
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
                del tensor.external_data[:]
                for key, value in (("location", data.name), ("offset", offset), ("length", len(payload))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, str(value)
                offset += len(payload)
        os.replace(tmp, data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    onnx.save_model(model, str(path))
    return True


def _read_external(tensor: onnx.TensorProto, source_dir: Path | None) -> bytes:
    info = {e.key: e.value for e in tensor.external_data}
    if source_dir is None:
        raise ValueError(f"tensor {tensor.name} is stored in {info.get('location')}; pass source_dir")
    with open(source_dir / info["location"], "rb") as fh:
        fh.seek(int(info.get("offset", 0)))
        return fh.read(int(info["length"])) if "length" in info else fh.read()


def share_identical_initializers(model: onnx.ModelProto) -> int:
    """Merges byte-identical initializers into one; returns how many copies were dropped.

    onnxslim's constant folding turns each unrolled Euler step's `Transpose(W)` of a shared DiT weight into
    its own initializer, so without this the denoising graph stores every such weight once per step.
    """
    graph = model.graph
    io_names = {v.name for v in (*graph.input, *graph.output)}
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    keep = []
    for init in graph.initializer:
        if init.name in io_names or init.data_location == onnx.TensorProto.EXTERNAL:
            keep.append(init)
            continue
        data = onnx.numpy_helper.to_array(init).tobytes()
        key = (init.data_type, tuple(init.dims), hashlib.sha256(data).digest())
        if key in first:
            rename[init.name] = first[key]
        else:
            first[key] = init.name
            keep.append(init)
    if not rename:
        return 0

    def rewire(g: onnx.GraphProto) -> None:
        for node in g.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
            for attr in node.attribute:
                for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                    rewire(sub)

    rewire(graph)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return len(rename)


def fuse_residual_norms(model: onnx.ModelProto) -> int:
    """Pre-norm residual blocks as onnxruntime's `SkipLayerNormalization`; returns how many were fused.

    `LayerNorm(x + (y + b))`, where `y + b` is a linear layer's bias add and `x` the residual stream, becomes one
    kernel that adds, normalises and also returns the sum (its 4th output), which the next residual add reads.
    onnxruntime's own fusion skips exactly this case: it only fuses when the sum has no other consumer, which is
    never true in a pre-norm transformer. Only the proto changes (no initializer is read or written), so this
    runs on 3B graphs whose weights stay in their external file. Both operands of the residual add must depend
    on a graph input: constant ones (position embeddings) may broadcast, which the fused kernel does not.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    vectors = {t.name for t in graph.initializer if len(t.dims) == 1}
    graph_outputs = {o.name for o in graph.output}
    constant = {t.name: True for t in graph.initializer}

    def is_constant(name: str) -> bool:
        """True when the value depends on no graph input (iterative: these graphs are thousands of nodes deep)."""
        stack = [name]
        while stack:
            top = stack[-1]
            node = producer.get(top)
            if top in constant or node is None:
                constant.setdefault(top, False)  # no producer and no initializer: a graph input
                stack.pop()
                continue
            pending = [i for i in node.input if i and i not in constant]
            if pending:
                stack.extend(pending)
                continue
            constant[top] = all(constant[i] for i in node.input if i)
            stack.pop()
        return constant[name]

    def bias_add(name: str) -> tuple[onnx.NodeProto, str, str] | None:
        """(node, matmul output, bias) when `name` is a 1-D bias add that only the residual add reads."""
        node = producer.get(name)
        if not _is_onnx_op(node, "Add") or consumers.get(name) != 1:
            return None
        for y, b in (node.input, reversed(node.input)):
            if b in vectors and not is_constant(y):
                return node, y, b
        return None

    removed: set[str] = set()  # first output names of the nodes folded into a fused one
    fused: dict[str, onnx.NodeProto] = {}
    for ln in graph.node:
        axis = next((a.i for a in ln.attribute if a.name == "axis"), -1)
        if not _is_onnx_op(ln, "LayerNormalization") or axis != -1:
            continue
        add = producer.get(ln.input[0])
        if not _is_onnx_op(add, "Add") or add.output[0] in removed or any(is_constant(i) for i in add.input):
            continue
        beta = ln.input[2] if len(ln.input) > 2 else ""
        inputs = [*add.input, ln.input[1], beta]
        for branch, residual in (add.input, reversed(add.input)):
            found = bias_add(branch)
            if found is not None:
                node, y, bias = found
                inputs = [y, residual, ln.input[1], beta, bias]
                removed.add(node.output[0])
                break
        total = add.output[0]
        keeps_sum = consumers.get(total, 0) > 1 or total in graph_outputs
        eps = next((a.f for a in ln.attribute if a.name == "epsilon"), 1e-5)
        fused[ln.output[0]] = onnx.helper.make_node(
            "SkipLayerNormalization", inputs, [ln.output[0], *(["", "", total] if keeps_sum else [])],
            name=f"{ln.name}/skip_fused", domain="com.microsoft", epsilon=eps)
        removed.add(total)
    if fused:
        nodes = [fused.get(n.output[0], n) for n in graph.node if n.output[0] not in removed]
        del graph.node[:]
        graph.node.extend(topological_order(nodes, graph))
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return len(fused)


def _is_onnx_op(node: onnx.NodeProto | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx")


def unname_statistics(model: onnx.ModelProto) -> int:
    """The skip norms' mean / inverse-std outputs (1, 2: training statistics) left unnamed where nothing reads them,
    as the spec allows, so no runtime computes or keeps them; returns how many."""
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    unnamed = 0
    for node in model.graph.node:
        if node.domain == "com.microsoft" and node.op_type in ("SkipLayerNormalization",
                                                                "SkipSimplifiedLayerNormalization"):
            for i in (1, 2):
                if i < len(node.output) and node.output[i] and node.output[i] not in read:
                    node.output[i] = ""
                    unnamed += 1
    return unnamed


def fuse_onnxruntime_norms(path: Path) -> int:
    """`fuse_residual_norms` on a saved graph, rewriting only its proto (external weights stay where they are)."""
    model = onnx.load(str(path), load_external_data=False)
    fused = fuse_residual_norms(model)
    if unname_statistics(model) or fused:
        onnx.save_model(model, str(path))
    return fused


def topological_order(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """`nodes` reordered by onnx-graphsurgeon so every input is produced before it is read (nodes at one depth keep
    their order). Only names are read, never weights: external ones stay in their file (a 1 GiB graph sorts in
    45 MiB of memory)."""
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.logger import G_LOGGER

    skeleton = onnx.helper.make_model(onnx.helper.make_graph(nodes, graph.name, list(graph.input), []))
    with G_LOGGER.suppress(G_LOGGER.ERROR):
        ordered = gs.import_onnx(skeleton).toposort()
        return list(gs.export_onnx(ordered, do_type_check=False).graph.node)


def _tensors(model: onnx.ModelProto):
    """Every tensor a graph stores: initializers and the values of Constant nodes (the exporter externalises both)."""
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def _has_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(model))


def consolidate(src: Path, dst: Path) -> None:
    """Copies a graph whose weights sit in many external files (the exporter's >2 GB output) into `dst` with
    a single `<name>.onnx_data`, streaming tensor by tensor instead of loading the model."""
    save_onnx(onnx.load(str(src), load_external_data=False), dst, source_dir=src.parent)


def check(path: Path) -> None:
    onnx.checker.check_model(str(path), full_check=True)


def run_onnx(path: Path, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(output_names, {k: v for k, v in feeds.items() if k in names})


# A rewritten graph may round differently by a few units in the last place of its output type (other kernels,
# another summation order); that is not drift. Per output: |new - old| <= atol + ULP_SLACK * eps(dtype) * |old|.
ULP_SLACK = 4


def rounding_excess(reference: list[np.ndarray], candidate: list[np.ndarray], atol: float) -> tuple[float, float]:
    """(max |diff|, worst |diff| / allowed) over all outputs; the candidate matches while the ratio is <= 1."""
    def rtol(ref: np.ndarray) -> float:
        return ULP_SLACK * float(np.finfo(ref.dtype).eps) if np.issubdtype(ref.dtype, np.floating) else 0.0

    names = [str(i) for i in range(len(reference))]
    if len(candidate) != len(reference):
        raise ValueError(f"{len(candidate)} outputs where {len(reference)} were expected")
    comparisons = compare_outputs(dict(zip(names, candidate, strict=True)), dict(zip(names, reference, strict=True)),
                                  atol=atol, rtol={n: rtol(r) for n, r in zip(names, reference, strict=True)})
    return (max((c.max_abs for c in comparisons.values()), default=0.0),
            max((c.tolerance_ratio for c in comparisons.values()), default=0.0))


def optimize(src: Path, dst: Path, feeds: dict[str, np.ndarray], output_names: list[str], atol: float,
             simplify: bool = True, fuse_norms: bool = False) -> OptimizeReport:
    """With `fuse_norms` (the onnxruntime dialect), residual norms fused in `src` first; then the full checker on
    `src`, and onnxslim into `dst` if its outputs stay within `atol` plus rounding (`rounding_excess`) of `src`'s."""
    fused = fuse_onnxruntime_norms(src) if fuse_norms else 0
    return dataclasses.replace(_check_and_simplify(src, dst, feeds, output_names, atol, simplify), fused_norms=fused)


def _check_and_simplify(src: Path, dst: Path, feeds: dict[str, np.ndarray], output_names: list[str], atol: float,
                        simplify: bool) -> OptimizeReport:
    check(src)
    size = src.stat().st_size + (_external_file(src).stat().st_size if _external_file(src).exists() else 0)
    if not simplify or size > SIMPLIFY_MAX_BYTES:
        nodes = len(onnx.load(str(src), load_external_data=False).graph.node)
        move_onnx(src, dst)
        why = "simplification disabled" if not simplify else f"graph of {size / 2**30:.1f} GiB: left to the runtime"
        return OptimizeReport(False, nodes, nodes, why)
    model = onnx.load(str(src))
    before = len(model.graph.node)
    try:
        import onnxslim

        slim = onnxslim.slim(model)
        del model
        share_identical_initializers(slim)
        tmp = dst.with_name(dst.stem + ".slim.onnx")
        save_onnx(slim, tmp)
        after = len(slim.graph.node)
        del slim
        check(tmp)
        reference = run_onnx(src, feeds, output_names)
        diff, ratio = rounding_excess(reference, run_onnx(tmp, feeds, output_names), atol)
        if ratio > 1:
            raise ValueError(f"simplified graph drifts by {diff:.3g}, {ratio:.3g}x its tolerance "
                             f"(atol {atol:g} + {ULP_SLACK} ulp of the output type)")
        move_onnx(tmp, dst)
        return OptimizeReport(True, before, after, f"onnxslim, max diff {diff:.3g}")
    except Exception as err:  # noqa: BLE001 - any simplifier failure falls back to the checked graph
        for leftover in dst.parent.glob(dst.stem + ".slim.onnx*"):
            leftover.unlink()
        _copy_onnx(src, dst)
        return OptimizeReport(False, before, before, f"kept unsimplified: {err}")


def _copy_onnx(src: Path, dst: Path) -> None:
    if _external_file(src).exists():
        save_onnx(onnx.load(str(src)), dst)
    else:
        shutil.copyfile(src, dst)


def move_onnx(src: Path, dst: Path) -> None:
    """Renames a graph and its external data without loading the weights (only the small proto is rewritten)."""
    data = _external_file(src)
    if not data.exists():
        src.rename(dst)
        return
    model = onnx.load(str(src), load_external_data=False)
    for tensor in _tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = _external_file(dst).name
    data.rename(_external_file(dst))
    onnx.save_model(model, str(dst))
    src.unlink()


def _external_file(path: Path) -> Path:
    return path.with_name(path.name + "_data")
