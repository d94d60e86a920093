"""Runs an emitted IGG config through `leapp.InferenceManager` (run in the leapp venv by tests/test_igg.py).

usage: python tests/leapp_conformance.py CONFIG.yaml INPUTS.npz OUTPUTS.npz

INPUTS holds the graph's raw external values by `source` name (frames_<i>, raw_state, init_actions) and the
instruction strings. The host-side `pre_graph` tokenizer named in the YAML turns the strings into tensors;
every external input of the YAML is then fed by its `source:`. Each tensor passed is a private copy:
InferenceManager keeps references to what it is given and `reset()` zeroes them in place. Two ticks are run
on the same inputs (the second after `reset()`); OUTPUTS holds the first tick, plus `tick_diff`.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from leapp import InferenceManager


def main(config: str, inputs: str, outputs: str) -> None:
    path = Path(config)
    doc = yaml.safe_load(path.read_text())
    raw = np.load(inputs, allow_pickle=False)
    values: dict[str, torch.Tensor] = {k: torch.from_numpy(raw[k]) for k in raw.files if k != "instructions"}
    for node, spec in (doc.get("pre_graph") or {}).items():
        params = spec["parameters"]
        file = path.parent / params["model_path"]
        if hashlib.sha256(file.read_bytes()).hexdigest() != params["sha256sum"]:
            raise SystemExit(f"pre_graph {node}: {file} does not match its sha256sum")
        module = torch.jit.load(str(file), map_location="cpu")
        result = module([str(s) for s in raw["instructions"]])
        result = result if isinstance(result, tuple) else (result,)
        for port, value in zip(spec["outputs"], result, strict=True):
            values[f"{node}/{port['name']}"] = value

    manager = InferenceManager(str(path))
    ports = {f"{n}/{p['name']}": p for n, m in doc["models"].items() for p in m["inputs"]}

    def feeds() -> dict[str, torch.Tensor]:
        return {key: values[ports[key].get("source", key.split("/", 1)[1])].clone() for key in manager.inputs}

    first = {k: v.clone() for k, v in manager.run_policy(feeds()).items()}
    manager.reset()
    second = manager.run_policy(feeds())
    tick_diff = max(float((first[k] - second[k]).abs().max()) for k in first)
    np.savez(outputs, tick_diff=np.float64(tick_diff), **{k.split("/", 1)[1]: v.numpy() for k, v in first.items()})


if __name__ == "__main__":
    main(*sys.argv[1:4])
