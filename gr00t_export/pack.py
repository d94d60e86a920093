"""`gr00t-export pack`: one verified tarball per deployment target, with what to run there, in order.

The drop holds the artifacts the manifest lists (hash-checked first: a tampered or half-copied dir is refused),
`igg/` and `validation/` when present, the engine build plan and a README for the target. Engines themselves
are never packed: they only run on the GPU and TensorRT version that built them, so the target builds its own.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gr00t_export.engines import DEFAULT_WORKSPACE_MB, ENGINE_DIR, PLAN_SCRIPT, TARGETS, render_build_plan
from gr00t_export.errors import InputError
from gr00t_export.runner import MANIFEST, read_manifest, verify_file

TARGET_README = "README_TARGET.md"
EXTRA_DIRS = ("igg", "validation")  # packed whole when present; not hashed by the manifest


def drop_name(manifest: Mapping[str, Any], precision: str, target: str) -> str:
    """`<model>-<embodiment>-<precision>-<target>`, model = the checkpoint dir's name."""
    model = Path(manifest["source"]["model_path"]).name or "model"
    return f"{model}-{manifest['embodiment_tag']}-{precision}-{target}"


def _target_readme(name: str, manifest: Mapping[str, Any], precision: str, target: str, validation: bool) -> str:
    machine = "Jetson AGX Thor (JetPack 7: TensorRT and trtexec included)" if target == "thor" else "the GPU machine"
    return "\n".join([
        f"# {name}",
        "",
        f"GR00T N1.5 policy `{Path(manifest['source']['model_path']).name}`, "
        f"embodiment `{manifest['embodiment_tag']}`, "
        f"{manifest['views']} camera view(s), max batch {manifest['max_batch']}; ONNX stages exported in "
        f"{manifest['precision']}, engines planned in {precision}. Run on the {machine}, in order:",
        "",
        "1. Unpack, and install the runtime (Python 3.10-3.12, a CUDA build of torch; TensorRT's Python module only "
        "for step 2's alternative):",
        "   ```",
        f"   tar -xzf {name}.tar.gz && cd {name}",
        "   pip install 'gr00t-export[tensorrt]'",
        "   ```",
        f"2. Build the engines on this machine (never copied from another GPU): `bash {ENGINE_DIR}/{PLAN_SCRIPT}`",
        f"   (trtexec; what it builds and why is in `{ENGINE_DIR}/README.md`). Or, through the Python API:",
        f"   `gr00t-export engines . --precision {precision} --target local`.",
        "3. Validate: the same observation and noise through the engines and through onnxruntime (CPU):",
        "   ```",
        "   python -c \"from gr00t_export.engines import compare_backends; print(compare_backends('.'))\"",
        "   ```",
        "   Expect cosine > 0.99 per action key (fp16; a little lower for fp8). The export-time checks are in "
        "`manifest.json` (`stages`)" + (" and in `validation/`." if validation else "."),
        "4. Run: `gr00t-export serve . --backend trt --device cuda` (Isaac-GR00T's ZeroMQ protocol, port 5555;",
        "   add `--host 0.0.0.0 --api_token TOKEN` for robots on the network). Latency: "
        "`gr00t-export bench . --backends ort,trt --device cuda`.",
        "",
        "Integrity: every file `manifest.json` lists was hash-checked when this drop was packed; the runner and the",
        "engine build plan check them again before use.",
        "",
    ])


def _add_text(tar: tarfile.TarFile, arcname: str, text: str, mode: int = 0o644) -> None:
    data = text.encode()
    info = tarfile.TarInfo(arcname)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def pack(artifact_dir: str | Path, target: str = "thor", precision: str | None = None, dist_dir: str | Path = "dist",
         workspace_mb: int = DEFAULT_WORKSPACE_MB) -> Path:
    """Writes `dist/<model>-<embodiment>-<precision>-<target>.tar.gz` atomically; returns its path.

    precision: the engines' (fp16 | fp8); default the build's own.
    """
    root = Path(artifact_dir)
    if target not in TARGETS:
        raise InputError(f"unknown --target {target!r}; use {' or '.join(TARGETS)}")
    if not root.is_dir():
        raise InputError(f"artifact dir {root} does not exist; run `gr00t-export build` first")
    manifest = read_manifest(root)
    for entry in manifest["files"]:
        verify_file(root, entry)  # refuses a tampered or incomplete drop before anything is written
    precision = precision or manifest["precision"]
    plan = render_build_plan(root, precision, target, workspace_mb)
    name = drop_name(manifest, precision, target)

    members: dict[str, Path] = {MANIFEST: root / MANIFEST}
    members |= {e["path"]: root / e["path"] for e in manifest["files"]}
    for extra in EXTRA_DIRS:
        if (root / extra).is_dir():
            members |= {str(f.relative_to(root)): f for f in sorted((root / extra).rglob("*")) if f.is_file()}

    dist = Path(dist_dir)
    dist.mkdir(parents=True, exist_ok=True)
    out = dist / f"{name}.tar.gz"
    tmp = dist / f".{out.name}.tmp-{os.getpid()}"
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=1, dereference=True) as tar:
            for rel, path in members.items():
                tar.add(path, arcname=f"{name}/{rel}", recursive=False)
            for rel, text in plan.items():
                _add_text(tar, f"{name}/{rel}", text, 0o755 if rel.endswith(".sh") else 0o644)
            _add_text(tar, f"{name}/{TARGET_README}", _target_readme(name, manifest, precision, target,
                                                                     (root / "validation").is_dir()))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
