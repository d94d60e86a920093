"""TensorRT engines at run time, through NVIDIA's Polygraphy: the engine runner behind the stage-runner interface.

Building engines is `gr00t_export.pipeline.engines`; this module only loads and runs them, so the runtime never
imports a compiler stage.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from gr00t_export.errors import InputError, ValidationFailure
from gr00t_export.spec import GraphSpec, StageSpec

ENGINE_DIR = "engines"
PLAN_SCRIPT = "build_engines.sh"
NO_TENSORRT = (f"TensorRT is not installed (pip install gr00t-export[tensorrt]); the on-target build plan is in "
               f"{ENGINE_DIR}/{PLAN_SCRIPT}")


def import_tensorrt(module: str = "tensorrt"):
    """The TensorRT Python module; `module` may list fallbacks ("tensorrt,tensorrt_rtx_bindings")."""
    names = [m.strip() for m in module.split(",") if m.strip()]
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise InputError(f"the {name} module is installed but needs {err.name}; reinstall TensorRT") from None
        except (ImportError, OSError) as err:
            raise InputError(f"the {name} module failed to load ({err}); check LD_LIBRARY_PATH points at the "
                             "TensorRT libraries") from None
    raise InputError(NO_TENSORRT)


def polygraphy_trt(trt_module: str = "tensorrt"):
    """(the TensorRT module, Polygraphy's TensorRT backend bound to it); InputError without TensorRT.

    Polygraphy chooses its TensorRT module once per process, when `polygraphy.backend.trt` is first imported:
    `tensorrt`, or with `config.USE_TENSORRT_RTX` the `tensorrt_rtx` module, which is how TensorRT-RTX's bindings
    (`tensorrt_rtx_bindings`, as the lent GPU has them) are handed to it."""
    trt = import_tensorrt(trt_module)
    from polygraphy import config

    rtx = trt.__name__ != "tensorrt"
    if "polygraphy.backend.trt" not in sys.modules:
        config.USE_TENSORRT_RTX = rtx
    elif config.USE_TENSORRT_RTX != rtx:
        raise InputError(f"this process already drives {'TensorRT-RTX' if config.USE_TENSORRT_RTX else 'TensorRT'} "
                         f"through Polygraphy; use {trt.__name__} from a fresh process")
    if rtx:
        sys.modules.setdefault("tensorrt_rtx", trt)
    from polygraphy.backend import trt as backend

    return trt, backend


@contextlib.contextmanager
def polygraphy_log(path: Path) -> Iterator[list[str]]:
    """Polygraphy's messages, TensorRT's verbose builder log among them, into `path` and nowhere else; yields the
    error lines (the latest 50 explain a failure)."""
    from polygraphy.logger import G_LOGGER

    class Errors(logging.Handler):
        def __init__(self):
            super().__init__(logging.ERROR)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())
            del self.lines[:-50]

    path.parent.mkdir(parents=True, exist_ok=True)
    python_logger = logging.getLogger("Polygraphy")
    errors, sink = Errors(), logging.FileHandler(path, mode="w")
    saved = G_LOGGER.use_python_logging_system, G_LOGGER.colors, python_logger.propagate, python_logger.level
    G_LOGGER.use_python_logging_system, G_LOGGER.colors = True, False
    python_logger.propagate = False
    python_logger.setLevel(1)
    python_logger.addHandler(sink)
    python_logger.addHandler(errors)
    try:
        with G_LOGGER.verbosity(G_LOGGER.EXTRA_VERBOSE):  # TensorRT's VERBOSE level arrives as EXTRA_VERBOSE
            yield errors.lines
    finally:
        python_logger.removeHandler(sink)
        python_logger.removeHandler(errors)
        sink.close()
        G_LOGGER.use_python_logging_system, G_LOGGER.colors, python_logger.propagate, level = saved
        python_logger.setLevel(level)


class TrtStageRunner:
    """One engine behind the runner interface, run by Polygraphy's `TrtRunner`; device-resident torch tensors in and
    out. Polygraphy enqueues on its own CUDA stream and synchronises it before returning, so torch's stream is
    synchronised first (the inputs are complete) and the outputs are copied out of Polygraphy's reused buffers."""

    def __init__(self, engine_path: str | Path, spec: StageSpec, device: str | torch.device = "cuda",
                 trt_module: str = "tensorrt"):
        from polygraphy.datatype import DataType
        from polygraphy.exception import PolygraphyException

        _, pg = polygraphy_trt(trt_module)
        self.spec, self.device = spec, torch.device(device)
        if self.device.type != "cuda":
            raise InputError(f"TensorRT engines run on CUDA; use --device cuda, not {self.device}")
        engine_path = Path(engine_path)
        log = Path(tempfile.gettempdir()) / f"gr00t_export_{spec.name}.engine.log"
        with polygraphy_log(log) as errors:
            try:
                self.runner = pg.TrtRunner(pg.EngineFromBytes(engine_path.read_bytes()), name=spec.name)
                self.runner.activate()
            except PolygraphyException as err:
                why = errors[-1].splitlines()[0] if errors else str(err) or "built by another TensorRT or GPU?"
                raise ValidationFailure(f"{engine_path} does not deserialize here ({why}); rebuild it on this "
                                        f"machine with {ENGINE_DIR}/{PLAN_SCRIPT}") from None
        inputs = self.runner.get_input_metadata()
        self.dtypes = {name: DataType.to_dtype(meta.dtype, "torch") for name, meta in inputs.items()}
        engine = self.runner.engine
        outputs = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)} - set(inputs)
        missing = (set(spec.input_names) ^ set(inputs)) | (set(spec.output_names) - outputs)
        if missing:
            self.close()
            raise ValidationFailure(f"{engine_path} I/O does not match stage {spec.name} ({sorted(missing)}); "
                                    "rebuild the engines from this build's ONNX")

    def infer(self, feeds: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        from polygraphy.exception import PolygraphyException

        inputs = {name: torch.as_tensor(feeds[name]).to(self.device, dtype).contiguous()
                  for name, dtype in self.dtypes.items()}
        torch.cuda.current_stream(self.device).synchronize()
        try:
            out = self.runner.infer(inputs, check_inputs=True, copy_outputs_to_host=False)
        except PolygraphyException as err:  # e.g. shapes outside the engine's profile
            raise ValidationFailure(f"stage {self.spec.name}: TensorRT cannot run inputs "
                                    f"{[tuple(t.shape) for t in inputs.values()]} ({str(err).splitlines()[0]}); "
                                    "rebuild the engines with a wider profile") from None
        return {name: out[name].clone() for name in self.spec.output_names}

    def close(self) -> None:
        if getattr(self, "runner", None) is not None and self.runner.is_active:
            self.runner.deactivate()

    def __del__(self) -> None:
        self.close()


def require_engines(artifact_dir: str | Path, graph_spec: GraphSpec, device: str, trt_module: str = "tensorrt"
                    ) -> None:
    """Before a trt runner loads anything: every engine present, a CUDA device, TensorRT importable."""
    missing = [f"{ENGINE_DIR}/{s.name}.engine" for s in graph_spec.stages
               if s.format == "onnx" and not (Path(artifact_dir) / ENGINE_DIR / f"{s.name}.engine").is_file()]
    if missing:
        raise InputError(f"backend trt needs {', '.join(missing)}; build the engines on this GPU: bash "
                         f"{ENGINE_DIR}/{PLAN_SCRIPT} (or gr00t-export engines DIR --precision fp16 --target local)")
    if not str(device).startswith("cuda"):
        raise InputError(f"backend trt runs TensorRT engines on CUDA; pass --device cuda, not {device}")
    polygraphy_trt(trt_module)


def trt_stage_runner(artifact_dir: str | Path, spec: StageSpec, device: str = "cuda",
                     trt_module: str = "tensorrt") -> TrtStageRunner:
    """`engines/<stage>.engine` as a runner; the error says how to build it when it is missing."""
    path = Path(artifact_dir) / ENGINE_DIR / f"{spec.name}.engine"
    if not path.is_file():
        raise InputError(f"backend trt needs {ENGINE_DIR}/{spec.name}.engine, which is missing; build the engines "
                         f"on this GPU: bash {ENGINE_DIR}/{PLAN_SCRIPT} (or gr00t-export engines DIR --target local)")
    return TrtStageRunner(path, spec, device, trt_module)
