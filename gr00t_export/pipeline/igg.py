"""Stage 7 — emit config: the IGG execution-graph YAML that Isaac Deploy loads, for one artifact dir.

The file follows the LEAPP config-version 1.3 dialect (`models` / `pipeline` / `system information`),
written by our own emitter from the manifest and the graph spec, so no tracer or monkeypatching runs at
export time. Choices the schema cannot express, and how this emitter settles them:

- Static shapes only: every port gets the concrete shape of the build's profile (batch 1, the build's
  views, the `opt` prompt length). Ports whose size varies at run time also carry `symbolic_shape`.
- No string dtype: the Eagle tokenizer takes `List[str]`, which no LEAPP runtime can buffer, so it is a
  host-side `pre_graph` node; its outputs enter the graph as external inputs whose `source:` names it.
- Positional outputs: `InferenceManager` zips output names with what a node returns, and the postprocess
  artifact returns a dict, so the config points at `igg/postprocess_outputs.pt`, a traced adapter around
  that same module returning one tensor per action key in modality order.
- No in-tick loops: the Euler steps are unrolled inside `denoising_subgraph.onnx`; there is no
  `feedback_flow`, and `init_actions` is an external input fed fresh each tick.
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from gr00t_export import __version__
from gr00t_export.errors import InputError
from gr00t_export.families.base import PolicyInterface
from gr00t_export.manifest import Manifest
from gr00t_export.spec import SPEC_FILE, GraphSpec, load_graph_spec
from gr00t_export.util import save_torchscript, sha256_file

IGG_DIR = "igg"
CONFIG_VERSION = "1.3"
REPORT = Path("validation") / "validation_report.json"
POSTPROCESS_ADAPTER = "postprocess_outputs.pt"
LEAPP_DTYPES = ("float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "uint16",
                "uint32", "uint64", "bool")
VARYING_DIMS = ("batch", "num_images", "seq_len")
STATE_KIND = "state/joint/position"
ACTION_KIND = "target/joint/position"
TEMPORAL_AXIS = "__temporal_axis__"


class FlowList(list):
    """A list written in flow style (`[1, 3, 224, 224]`), as LEAPP writes shapes and port lists."""


def _flow_representer(dumper: yaml.SafeDumper, data: FlowList) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


yaml.SafeDumper.add_representer(FlowList, _flow_representer)


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def default_name(manifest: dict) -> str:
    return f"{Manifest(manifest).family}_{manifest['embodiment_tag']}_{manifest['precision']}"


def _rel(path: Path, yaml_dir: Path) -> str:
    """model_path as LEAPP writes it: relative to the YAML's folder, forward slashes."""
    import os

    return Path(os.path.relpath(path, yaml_dir)).as_posix()


# --- ports ---------------------------------------------------------------------------------------------

def profile_dims(manifest: dict) -> dict[str, int]:
    """The configured profile's concrete symbolic dims: opt batch, the build's views, the opt prompt length."""
    key = f"views_{manifest['views']}"
    prof = manifest.get("profiles", {}).get(key)
    if prof is None:
        raise InputError(f"manifest has no profile {key}; re-run `gr00t-export build` with this version")
    return {name: int(prof[name]["opt"]) for name in VARYING_DIMS}


def _resolve_shape(spec_shape: tuple, seen: list[int], dims: dict[str, int]) -> tuple[list[int], list | None]:
    """Concrete shape for the profile (symbolic dims from `dims`, widths from the export) and the symbolic one."""
    if len(spec_shape) != len(seen):
        return list(seen), None
    shape = [dims[d] if d in dims else int(s) for d, s in zip(spec_shape, seen, strict=True)]
    symbolic = [d if d in dims else int(s) for d, s in zip(spec_shape, seen, strict=True)]
    varies = any(d in ("num_images", "seq_len") for d in spec_shape)
    return shape, (symbolic if varies else None)


def _port(name: str, dtype: str, shape: list[int], symbolic: list | None = None, **extra: Any) -> dict[str, Any]:
    port: dict[str, Any] = {"name": name, "dtype": dtype, "shape": FlowList(shape), "type": "tensor"}
    port.update({k: v for k, v in extra.items() if v is not None})
    if symbolic is not None:
        port["symbolic_shape"] = FlowList(symbolic)
    return port


def element_names(iface: PolicyInterface, keys: tuple[str, ...], kind: str) -> list[str]:
    """Joint names per key when the config lists them (and they fit), else `<key>_<i>`."""
    names: list[str] = []
    for key in keys:
        short = iface.short(key)
        dim = iface.state_dims[key] if kind == "state" else iface.action_dims[key]
        given = iface.joint_names.get(key)
        names += list(given) if given and len(given) == dim else [f"{short}_{i}" for i in range(dim)]
    return names


def onnx_interface(path: Path) -> tuple[list[str], int]:
    """Input order of an ONNX artifact (the order a runtime feeds it positionally) and its default opset."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return inputs, int(opset)


def _parameters(root: Path, yaml_dir: Path, rel_file: str, backend: str, opset: int | None = None
                ) -> dict[str, Any]:
    path = root / rel_file
    params: dict[str, Any] = {"model_path": _rel(path, yaml_dir), "md5sum": md5_file(path),
                              "sha256sum": sha256_file(path), "backend": backend, "warp_segments": 0}
    if opset is not None:
        params["opset_version"] = opset
    return params


def _engine_for(root: Path, stage: str) -> Path | None:
    """A TensorRT engine built for this stage (`engines/<stage>*.engine`), if the drop has one."""
    engines = sorted((root / "engines").glob("*.engine")) if (root / "engines").is_dir() else []
    for engine in engines:
        if engine.stem == stage or engine.stem.startswith((stage + "_", stage + ".")):
            return engine
    return None


def postprocess_adapter(root: Path, rel_file: str, keys: list[str]):
    """The postprocess TorchScript's dict output as positional tensors in `keys` (modality) order."""
    import torch

    inner = torch.jit.load(str(root / rel_file), map_location="cpu")

    class PositionalOutputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: torch.Tensor):  # the stage's inputs in spec order (N1.6: action_pred, raw_state)
            out = self.inner(*inputs)
            return out[keys[0]] if len(keys) == 1 else tuple(out[k] for k in keys)

    return PositionalOutputs().eval()


def save_postprocess_adapter(root: Path, rel_file: str, keys: list[str], examples: list[tuple[list[int], str]],
                             out: Path) -> None:
    """Traced, not scripted: a script cannot return a tuple whose length is only known at export time.
    `examples`: (shape, dtype) of each input of the stage, in order."""
    import torch

    inputs = tuple(torch.zeros(shape, dtype=getattr(torch, dtype)) for shape, dtype in examples)
    traced = torch.jit.trace(postprocess_adapter(root, rel_file, keys), inputs, check_trace=False, strict=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_torchscript(traced, out)  # a full disk is an OSError, not libtorch's abort


# --- timings -------------------------------------------------------------------------------------------

def measure_stage_timings(artifact_dir: Path, runs: int = 5, warmup: int = 2) -> dict[str, float]:
    """Median ms per stage, each stage re-run on the feeds it received in one full CPU pass of the drop.

    The warm-up runs matter: TorchScript's profiling executor re-optimises a graph on its first calls.
    """
    import torch

    from gr00t_export.families.base import make_noise, synthetic_observation
    from gr00t_export.runtime.runner import ExportedGr00tRunner

    runner = ExportedGr00tRunner(artifact_dir, device="cpu")
    raw = runner.reader(synthetic_observation(runner.interface))
    trace: dict[str, dict[str, Any]] = {}
    runner.run_raw(raw, make_noise((raw.batch, *runner.interface.noise_shape), None, 0), trace)  # also the warm-up
    timings: dict[str, float] = {}
    with torch.no_grad():
        for name, feeds in trace.items():
            for _ in range(warmup):
                runner.stages[name].infer(feeds)
            samples = []
            for _ in range(max(runs, 1)):
                start = time.perf_counter()
                runner.stages[name].infer(feeds)
                samples.append((time.perf_counter() - start) * 1e3)
            timings[name] = round(statistics.median(samples), 3)
    return timings


def _read_timings(path: Path) -> tuple[dict | None, str | None]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None, None
    return (data.get("stage_timings_ms"), data.get("source")) if isinstance(data, dict) else (None, None)


def stage_timings(root: Path, timings: dict | None, measure: bool, previous: Path | None = None
                  ) -> tuple[dict, str]:
    """Per-stage ms and their origin: given, the validation report, the sidecar already there (a re-emit keeps
    its build-time measurement), a fresh CPU run of the drop, or none."""
    if timings is not None:
        return dict(timings), "given"
    found, _ = _read_timings(root / REPORT)
    if found:
        return found, "validation_report"
    if previous is not None:
        found, origin = _read_timings(previous)
        if found and origin in ("measured_cpu", "given"):
            return found, origin
    if measure:
        return measure_stage_timings(root), "measured_cpu"
    return {}, "none"


# --- the config ----------------------------------------------------------------------------------------

def _system_information(manifest: dict) -> dict[str, str]:
    """The build's library versions (the ones that wrote the artifacts) and this machine."""
    import torch

    libs = manifest.get("libraries", {})
    try:
        os_name = platform.freedesktop_os_release().get("PRETTY_NAME", platform.platform())
    except OSError:
        os_name = platform.platform()
    return {
        "cuda version": str(torch.version.cuda),
        "gr00t-export version": manifest.get("tool", {}).get("version", __version__),
        "leapp config version": CONFIG_VERSION,
        "onnx version": libs.get("onnx", ""),
        "onnxruntime version": libs.get("onnxruntime", ""),
        "os": os_name,
        "python version": libs.get("python", platform.python_version()),
        "torch version": libs.get("torch", ""),
    }


def _dump(section: str, body: Any, sort_keys: bool) -> str:
    return yaml.safe_dump({section: body}, sort_keys=sort_keys, default_flow_style=False, width=120,
                          allow_unicode=True)


def igg_document(root: Path, yaml_dir: Path, manifest: dict, graph: GraphSpec, frequency_hz: float,
                 timings_file: str, adapter: Path, prefer_engines: bool = True) -> dict[str, Any]:
    """The config as plain data (models in execution order); files are hashed as they are now."""
    iface = Manifest(manifest).interface
    dims = profile_dims(manifest)
    seen = {s["name"]: s for s in manifest["stages"]}
    period_ms = round(1000.0 / frequency_hz, 3)
    pre_graph = [s for s in graph.stages if any(t.dtype == "string" for t in s.inputs)]  # host-side, not tensors
    pre_outputs = {f"{s.name}/{t.name}" for s in pre_graph for t in s.outputs}

    def ports(stage, direction: str) -> dict[str, dict[str, Any]]:
        specs = {t.name: t for t in (stage.inputs if direction == "inputs" else stage.outputs)}
        out: dict[str, dict[str, Any]] = {}
        for t in seen[stage.name][direction]:
            tspec = specs.get(t["name"])
            shape, symbolic = _resolve_shape(tspec.shape, t["shape"], dims) if tspec else (t["shape"], None)
            if tspec is None and shape:  # postprocess's per-key outputs: batch is the profile's
                shape = [dims["batch"], *shape[1:]]
            out[t["name"]] = _port(t["name"], t["dtype"], shape, symbolic)
        return out

    models: dict[str, Any] = {}
    data_flow: dict[str, list[str]] = {}
    externals: dict[str, list[str]] = {}
    for stage in graph.stages:
        if stage in pre_graph:
            continue
        ins, outs = ports(stage, "inputs"), ports(stage, "outputs")
        sources = {t.name: t.source for t in stage.inputs}
        file = seen[stage.name].get("file", stage.file)  # the manifest's: an fp8 build may point elsewhere
        opset = None
        order = list(ins)
        if stage.format == "onnx":
            order, opset = onnx_interface(root / file)
            missing = [n for n in order if n not in ins]
            if missing:
                raise InputError(f"{stage.file} takes inputs {missing} the manifest does not describe; "
                                 "re-run `gr00t-export build`")
        for name in order:
            src = sources.get(name, "external")
            port = ins[name]
            if name.startswith("frames_"):  # one camera each, at its own resolution
                port["camera"] = iface.video_keys[int(name.rsplit("_", 1)[1])]
            if name == "raw_state":
                port["kind"] = STATE_KIND
                axes: list[Any] = [None] * (len(port["shape"]) - 1)
                if iface.state_horizon > 1:
                    axes[1] = TEMPORAL_AXIS
                    port["temporal_period_ms"] = period_ms
                port["element_names"] = FlowList([*axes, element_names(iface, iface.state_keys, "state")])
            if src == "external" or src in pre_outputs:
                externals.setdefault(stage.name, []).append(name)
                port["source"] = name if src == "external" else src
            else:
                data_flow.setdefault(src, []).append(f"{stage.name}/{name}")
                port["source"] = src
        if stage.name == "postprocess":
            for key in iface.action_keys:
                port = outs[key]
                port["kind"] = ACTION_KIND
                port["element_names"] = FlowList([None, TEMPORAL_AXIS, element_names(iface, (key,), "action")])
                port["temporal_period_ms"] = period_ms
            outs = {k: outs[k] for k in iface.action_keys}
            params = _parameters(root, yaml_dir, _rel(adapter, root), "jit")
            params["wraps"] = _rel(root / file, yaml_dir)
        elif stage.format == "onnx":
            engine = _engine_for(root, stage.name) if prefer_engines else None
            params = _parameters(root, yaml_dir, file, "onnx", opset)
            if engine is not None:
                onnx_params = params
                params = _parameters(root, yaml_dir, _rel(engine, root), "trt", opset)
                params["onnx_model_path"] = onnx_params["model_path"]
                params["onnx_sha256sum"] = onnx_params["sha256sum"]
        else:
            params = _parameters(root, yaml_dir, file, "jit")
        models[stage.name] = {"inputs": [ins[n] for n in order], "outputs": list(outs.values()),
                              "parameters": params}

    consumed = set(data_flow)
    outputs = {name: FlowList([o["name"] for o in node["outputs"] if f"{name}/{o['name']}" not in consumed])
               for name, node in models.items()}
    configs: dict[str, Any] = {
        "action_horizon": int(manifest["model"]["action_horizon"]),
        "denoising_steps": int(Manifest(manifest).denoising_steps),
        "embodiment_tag": manifest["embodiment_tag"],
        "frequency": float(frequency_hz),
        "modality_config": iface.name,
        "precision": manifest["precision"],
        "pre_graph": FlowList([s.name for s in pre_graph]),
        "profile": {"name": f"views_{manifest['views']}", **dims},
        "timings_file": timings_file,
        "views": int(manifest["views"]),
    }
    pipeline = {
        "configs": configs,
        "data_flow": {k: FlowList(v) for k, v in data_flow.items()},
        "inputs": {k: FlowList(v) for k, v in externals.items()},
        "outputs": {k: v for k, v in outputs.items() if v},
    }
    doc: dict[str, Any] = {"models": models, "pipeline": pipeline}
    if pre_graph:
        doc["pre_graph"] = {s.name: _pre_graph_node(root, yaml_dir, s, seen[s.name], dims, data_flow_targets(
            graph, s.name)) for s in pre_graph}
    doc["system information"] = _system_information(manifest)
    return doc


def data_flow_targets(graph: GraphSpec, producer: str) -> dict[str, list[str]]:
    return {src.split("/", 1)[1]: dst for src, dst in graph.edges().items() if src.split("/", 1)[0] == producer}


def _pre_graph_node(root: Path, yaml_dir: Path, stage, seen: dict, dims: dict[str, int],
                    feeds: dict[str, list[str]]) -> dict[str, Any]:
    """A host-side node: same shape as a model node, plus `feeds` (which graph inputs its outputs fill)."""
    specs = {t.name: t for t in (*stage.inputs, *stage.outputs)}
    inputs = []
    for t in seen["inputs"]:
        if t["dtype"] == "string":
            # List[str] of one instruction per batch sample: not a tensor, so outside `models`.
            inputs.append({"name": t["name"], "dtype": "string", "shape": FlowList([dims["batch"]]), "type": "list",
                           "source": t["name"]})
        else:
            shape, symbolic = _resolve_shape(specs[t["name"]].shape, t["shape"], dims)
            inputs.append(_port(t["name"], t["dtype"], shape, symbolic, source=t["name"]))
    outputs = []
    for t in seen["outputs"]:
        shape, symbolic = _resolve_shape(specs[t["name"]].shape, t["shape"], dims)
        outputs.append(_port(t["name"], t["dtype"], shape, symbolic))
    params = _parameters(root, yaml_dir, stage.file, "jit")
    params["runs_on"] = "host"
    return {"inputs": inputs, "outputs": outputs, "parameters": params,
            "feeds": {k: FlowList(v) for k, v in feeds.items()}}


def render_igg_yaml(doc: dict[str, Any]) -> str:
    """One YAML document in LEAPP's layout: models (execution order), pipeline (sorted), then the rest."""
    parts = [_dump("models", doc["models"], sort_keys=False), _dump("pipeline", doc["pipeline"], sort_keys=True)]
    if "pre_graph" in doc:
        parts.append(_dump("pre_graph", doc["pre_graph"], sort_keys=False))
    parts.append(_dump("system information", doc["system information"], sort_keys=True))
    return "\n".join(parts)


def emit_igg_config(artifact_dir: str | Path, name: str | None = None, frequency_hz: float = 20.0,
                    timings: dict | None = None, measure_timings: bool = True, prefer_engines: bool = True,
                    manifest: Manifest | None = None) -> Path:
    """Writes `igg/<name>.yaml` (+ `<name>_timings.json` and the postprocess adapter); returns the YAML path.

    Timings come from `timings`, else `validation/validation_report.json`'s `stage_timings_ms`, else one
    CPU run of the drop (`measure_timings`); the sidecar records which. The files written are hashed into the
    drop's manifest (`manifest`, the build's own, else the one on disk).
    """
    root = Path(artifact_dir)
    if not root.is_dir():
        raise InputError(f"artifact dir {root} does not exist; run `gr00t-export build` first")
    if not frequency_hz > 0:
        raise InputError(f"frequency must be > 0 Hz, got {frequency_hz}")
    manifest = manifest if manifest is not None else Manifest.read(root)
    graph = load_graph_spec(root / SPEC_FILE, views=manifest.views)
    name = name or default_name(manifest)
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise InputError(f"config name {name!r} must be a plain file name (no folders); pick another --name")
    yaml_dir = root / IGG_DIR
    yaml_dir.mkdir(exist_ok=True)
    adapter = yaml_dir / POSTPROCESS_ADAPTER
    post = next(s for s in manifest["stages"] if s["name"] == "postprocess")
    examples = [([1, *t["shape"][1:]], t["dtype"]) for t in post["inputs"]]
    keys = list(manifest.interface.action_keys)
    save_postprocess_adapter(root, post.get("file", graph.stage("postprocess").file), keys, examples, adapter)

    timings_path = yaml_dir / f"{name}_timings.json"
    found, origin = stage_timings(root, timings, measure_timings, timings_path)
    timings_path.write_text(json.dumps({
        "source": origin,
        "note": {"given": "passed to emit_igg_config", "validation_report": str(REPORT),
                 "measured_cpu": "median of 5 runs per stage (after 2 warm-up runs) on the CPU of the machine that "
                                 "emitted the config: onnxruntime + TorchScript, not the deployment target",
                 "none": "no validation report and measuring was off"}[origin],
        "unit": "ms",
        "stage_timings_ms": found,
    }, indent=2) + "\n")

    doc = igg_document(root, yaml_dir, manifest, graph, frequency_hz, timings_path.name, adapter, prefer_engines)
    path = yaml_dir / f"{name}.yaml"
    path.write_text(render_igg_yaml(doc))
    manifest.add_files(root, [adapter, timings_path, path])
    return path


# --- reading and checking ------------------------------------------------------------------------------

def load_igg_config(path: str | Path) -> dict[str, Any]:
    """The config as plain data; InputError when it is unreadable or lacks a top-level section."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as err:
        raise InputError(f"cannot read IGG config {path} ({err.strerror}); check the path") from None
    except yaml.YAMLError as err:
        raise InputError(f"IGG config {path} is not valid YAML ({' '.join(str(err).split())})") from None
    missing = [k for k in ("models", "pipeline", "system information") if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise InputError(f"IGG config {path} lacks {', '.join(missing)}; re-emit it with `gr00t-export build`")
    return doc


def _split(key: str) -> tuple[str, str]:
    node, _, port = str(key).partition("/")
    return node, port


def _check_files(yaml_dir: Path, where: str, params: dict, problems: list[str]) -> None:
    for field in ("model_path", "md5sum", "sha256sum", "backend"):
        if field not in params:
            problems.append(f"{where}: parameters lack {field}")
    if "model_path" not in params:
        return
    path = yaml_dir / params["model_path"]
    if not path.is_file():
        problems.append(f"{where}: model_path {params['model_path']} does not exist")
        return
    if "sha256sum" in params and sha256_file(path) != params["sha256sum"]:
        problems.append(f"{where}: {params['model_path']} does not match its sha256sum (modified or replaced)")
    elif "md5sum" in params and md5_file(path) != params["md5sum"]:
        problems.append(f"{where}: {params['model_path']} does not match its md5sum")


def check_igg_config(path: str | Path) -> list[str]:
    """Problems with a config (empty when it is sound): a DAG in execution order, every input fed exactly
    once, every output routed, edges joining ports of one shape and dtype, files present and hashes equal."""
    path = Path(path)
    try:
        doc = load_igg_config(path)
    except InputError as err:
        return [str(err)]
    yaml_dir = path.parent
    problems: list[str] = []
    models = doc["models"] or {}
    pipeline = doc["pipeline"] or {}
    order = list(models)
    ins = {n: {p["name"]: p for p in (m.get("inputs") or [])} for n, m in models.items()}
    outs = {n: {p["name"]: p for p in (m.get("outputs") or [])} for n, m in models.items()}
    for node, model in models.items():
        for port in (*ins[node].values(), *outs[node].values()):
            if port.get("dtype") not in LEAPP_DTYPES:
                problems.append(f"{node}/{port.get('name')}: dtype {port.get('dtype')!r} is not a LEAPP dtype")
            shape = port.get("shape")
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                problems.append(f"{node}/{port.get('name')}: shape {shape!r} is not a list of concrete sizes")
        _check_files(yaml_dir, f"models.{node}", model.get("parameters") or {}, problems)
    for node, model in (doc.get("pre_graph") or {}).items():
        _check_files(yaml_dir, f"pre_graph.{node}", model.get("parameters") or {}, problems)

    fed: dict[str, list[str]] = {f"{n}/{i}": [] for n in models for i in ins[n]}
    routed = set()
    after: dict[str, set[str]] = {n: set() for n in models}
    for src, targets in (pipeline.get("data_flow") or {}).items():
        s_node, s_port = _split(src)
        if s_port not in outs.get(s_node, {}):
            problems.append(f"data_flow source {src} is not an output of a model")
            continue
        routed.add(src)
        for dst in targets or []:
            d_node, d_port = _split(dst)
            if d_port not in ins.get(d_node, {}):
                problems.append(f"data_flow target {dst} (from {src}) is not an input of a model")
                continue
            fed[dst].append(src)
            after[s_node].add(d_node)
            a, b = outs[s_node][s_port], ins[d_node][d_port]
            if a.get("dtype") != b.get("dtype") or a.get("shape") != b.get("shape"):
                problems.append(f"edge {src} -> {dst} joins {a.get('dtype')} {a.get('shape')} to "
                                f"{b.get('dtype')} {b.get('shape')}")
            if order.index(d_node) <= order.index(s_node):
                problems.append(f"edge {src} -> {dst} points backwards: {d_node} runs before {s_node} "
                                "(models must be in execution order)")
    for src, targets in (pipeline.get("feedback_flow") or {}).items():
        routed.add(src)
        for dst in targets or []:
            if dst in fed:
                fed[dst].append(f"feedback {src}")
    for node, names in (pipeline.get("inputs") or {}).items():
        for name in names or []:
            key = f"{node}/{name}"
            if key not in fed:
                problems.append(f"pipeline input {key} is not an input of a model")
            else:
                fed[key].append("external")
    for key, by in fed.items():
        if not by:
            problems.append(f"input {key} is fed by nothing (no data_flow edge, not a pipeline input)")
        elif len(by) > 1:
            problems.append(f"input {key} is fed more than once ({', '.join(by)})")
    for node, names in (pipeline.get("outputs") or {}).items():
        for name in names or []:
            if name not in outs.get(node, {}):
                problems.append(f"pipeline output {node}/{name} is not an output of a model")
            routed.add(f"{node}/{name}")
    for node in models:
        for name in outs[node]:
            if f"{node}/{name}" not in routed:
                problems.append(f"output {node}/{name} goes nowhere (no edge, not a pipeline output)")
    problems += _cycles(after)
    timings = (pipeline.get("configs") or {}).get("timings_file")
    if timings and not (yaml_dir / timings).is_file():
        problems.append(f"timings_file {timings} does not exist")
    return problems


def _cycles(after: dict[str, set[str]]) -> list[str]:
    """Kahn's algorithm over the data_flow edges: whatever never reaches in-degree 0 sits on a cycle."""
    indegree = {n: 0 for n in after}
    for targets in after.values():
        for t in targets:
            indegree[t] += 1
    ready = [n for n, d in indegree.items() if d == 0]
    while ready:
        node = ready.pop()
        for t in after[node]:
            indegree[t] -= 1
            if indegree[t] == 0:
                ready.append(t)
    stuck = sorted(n for n, d in indegree.items() if d > 0)
    return [f"data_flow has a cycle through {', '.join(stuck)}; the graph must be a DAG"] if stuck else []
