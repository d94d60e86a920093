"""Stage 4 — optimise: check, simplify and (above 2 GB) externalise an exported ONNX graph.

Simplification (onnxslim) is kept only if the simplified graph still computes the same outputs on the
real example inputs; otherwise the checked original is kept and the reason recorded.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

TWO_GB = 2**31 - 2**20  # protobuf's limit, with headroom


@dataclass
class OptimizeReport:
    simplified: bool
    nodes_before: int
    nodes_after: int
    note: str = ""


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """One `.onnx`, plus one `<name>.onnx_data` when the weights exceed protobuf's 2 GB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + "_data")
    if data.exists():
        data.unlink()
    if model.ByteSize() > TWO_GB or _has_external(model):
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def _has_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def check(path: Path) -> None:
    onnx.checker.check_model(str(path), full_check=True)


def run_onnx(path: Path, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(output_names, {k: v for k, v in feeds.items() if k in names})


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
               for x, y in zip(a, b, strict=True))


def optimize(src: Path, dst: Path, feeds: dict[str, np.ndarray], output_names: list[str], atol: float,
             simplify: bool = True) -> OptimizeReport:
    """Full checker on `src`, then onnxslim into `dst` if it keeps the outputs within `atol` of `src`'s."""
    check(src)
    model = onnx.load(str(src))
    before = len(model.graph.node)
    if not simplify:
        _copy_onnx(src, dst)
        return OptimizeReport(False, before, before, "simplification disabled")
    try:
        import onnxslim

        slim = onnxslim.slim(model)
        del model
        tmp = dst.with_name(dst.stem + ".slim.onnx")
        save_onnx(slim, tmp)
        after = len(slim.graph.node)
        del slim
        check(tmp)
        reference = run_onnx(src, feeds, output_names)
        diff = _max_diff(reference, run_onnx(tmp, feeds, output_names))
        if diff > atol:
            raise ValueError(f"simplified graph drifts by {diff:.3g} > {atol:g}")
        _move_onnx(tmp, dst)
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


def _move_onnx(src: Path, dst: Path) -> None:
    """Renames a graph and its external data; the data file name is baked into the graph, so re-save."""
    if _external_file(src).exists():
        save_onnx(onnx.load(str(src)), dst)
        _external_file(src).unlink()
        src.unlink()
    else:
        src.rename(dst)


def _external_file(path: Path) -> Path:
    return path.with_name(path.name + "_data")
