"""`gr00t-export pack`: one verified tarball per deployment target, with what to run there, in order.

The drop holds the artifacts the manifest lists (hash-checked first: a tampered or half-copied dir is refused),
`igg/` and `validation/` when present, the engine build plan and a README for the target. Engines themselves
are never packed: they only run on the GPU and TensorRT version that built them, so the target builds its own.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gr00t_export import __version__
from gr00t_export.errors import InputError
from gr00t_export.manifest import MANIFEST, Manifest
from gr00t_export.pipeline.engines import DEFAULT_WORKSPACE_MB, ENGINE_DIR, PLAN_SCRIPT, TARGETS, render_build_plan
from gr00t_export.util import ordinary_permissions, refuse_overlap

TARGET_README = "README_TARGET.md"
PACK_RECORD = "pack.json"  # what was packed, from which checkpoint, and whether it was validated
EXTRA_DIRS = ("igg", "validation")  # packed whole when present; not hashed by the manifest


def drop_name(manifest: Mapping[str, Any], precision: str, target: str) -> str:
    """`<model>-<embodiment>-<precision>-<target>`, model = the checkpoint dir's name."""
    model = Path(manifest["source"]["model_path"]).name or "model"
    return f"{model}-{manifest['embodiment_tag']}-{precision}-{target}"


def _target_readme(name: str, manifest: Mapping[str, Any], precision: str, target: str, validation: bool,
                   status: Mapping[str, Any]) -> str:
    machine = "Jetson AGX Thor (JetPack 7: TensorRT and trtexec included)" if target == "thor" else "the GPU machine"
    warning = [] if status["status"] == "validated" else [
        f"**Warning: this build is {status['status']}** ({status['why']}); it was packed with --allow-unvalidated "
        f"(see `{PACK_RECORD}`).", ""]
    return "\n".join([
        f"# {name}",
        "",
        *warning,
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
        "   python -c \"from gr00t_export.pipeline.engines import compare_backends; print(compare_backends('.'))\"",
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


def validation_status(root: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Whether this build was validated against its checkpoint: `validation/validation_report.json` must be a full
    report (with --model_path), passed, and made for this very manifest."""
    path = root / "validation" / "validation_report.json"
    status = {"status": "not validated", "report": None, "why": "no validation/validation_report.json (built "
              "with --no-validate or without --dataset_path)"}
    if not path.is_file():
        return status
    try:
        report = json.loads(path.read_text())
    except ValueError:
        return status | {"why": f"{path.relative_to(root)} is not readable JSON"}
    if not isinstance(report, dict) or report.get("manifest_sha256") != manifest.get("manifest_sha256"):
        return status | {"why": "the validation report is not for this build's manifest"}
    status["report"] = str(path.relative_to(root))
    if report.get("mode") != "full":
        return status | {"why": "validated without --model_path: accuracy against the checkpoint was never checked"}
    if not report.get("passed"):
        failures = report.get("summary", {}).get("failures") or ["?"]
        return status | {"status": "failed validation", "why": f"first failure: {failures[0]}"}
    return {"status": "validated", "report": str(path.relative_to(root)), "why": "full validation passed"}


def _existing_drop_source(path: Path, name: str) -> str | None:
    """The checkpoint fingerprint of an earlier drop at `path`, or None if `path` is not a gr00t-export drop."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = tar.next()  # the manifest is the first member of every drop
            if member is None or member.name != f"{name}/{MANIFEST}":
                return None
            data = json.loads(tar.extractfile(member).read())
    except (OSError, tarfile.TarError, ValueError, AttributeError):
        return None
    tool = data.get("tool") if isinstance(data, dict) else None
    if not isinstance(tool, dict) or tool.get("name") != "gr00t-export":
        return None
    return str(data.get("source", {}).get("fingerprint_sha256"))


def check_drop_target(out: Path, name: str, manifest: Mapping[str, Any], force: bool, root: Path) -> None:
    """A drop replaces only an earlier drop of the same checkpoint, or with --force another gr00t-export drop."""
    refuse_overlap(out, {"ARTIFACT_DIR": root}, "drop")
    if not out.exists() and not out.is_symlink():
        return
    source = _existing_drop_source(out, name) if out.is_file() else None
    if source is None:
        raise InputError(f"{out} exists and is not a gr00t-export drop; move it or pass another --dist "
                         "(nothing was changed)")
    if source != manifest["source"]["fingerprint_sha256"] and not force:
        raise InputError(f"{out} is a drop of another checkpoint (fingerprint {source[:12]}, this build's "
                         f"{manifest['source']['fingerprint_sha256'][:12]}); pass --force to replace it or another "
                         "--dist (nothing was changed)")


def pack(artifact_dir: str | Path, target: str = "thor", precision: str | None = None, dist_dir: str | Path = "dist",
         workspace_mb: int = DEFAULT_WORKSPACE_MB, force: bool = False, allow_unvalidated: bool = False) -> Path:
    """Writes `dist/<model>-<embodiment>-<precision>-<target>.tar.gz` atomically; returns its path.

    precision: the engines' (fp16 | fp8); default the build's own. A build that was not validated against its
    checkpoint (or failed) is refused unless `allow_unvalidated`, which `pack.json` in the drop records. An existing
    drop of the same name is replaced when it comes from the same checkpoint, or with `force` from another one;
    a file there that is no drop is never replaced.
    """
    root = Path(artifact_dir)
    if target not in TARGETS:
        raise InputError(f"unknown --target {target!r}; use {' or '.join(TARGETS)}")
    if not root.is_dir():
        raise InputError(f"artifact dir {root} does not exist; run `gr00t-export build` first")
    manifest = Manifest.read(root)
    for rel in manifest.files:
        manifest.verify_file(root, rel)  # refuses a tampered or incomplete drop before anything is written
    validation = validation_status(root, manifest)
    if validation["status"] != "validated" and not allow_unvalidated:
        raise InputError(f"{root} has not passed a full validation ({validation['status']}: {validation['why']}); "
                         f"run `gr00t-export validate {root} --model_path CKPT --dataset_path DS` first, or pass "
                         "--allow-unvalidated (recorded in the drop)")
    precision = precision or manifest["precision"]
    plan = render_build_plan(root, precision, target, workspace_mb)
    name = drop_name(manifest, precision, target)
    dist = Path(dist_dir)
    out = dist / f"{name}.tar.gz"
    check_drop_target(out, name, manifest, force, root)

    members: dict[str, Path] = {MANIFEST: root / MANIFEST}
    members |= {e["path"]: root / e["path"] for e in manifest["files"]}
    for extra in EXTRA_DIRS:
        if (root / extra).is_dir():
            members |= {str(f.relative_to(root)): f for f in sorted((root / extra).rglob("*")) if f.is_file()}
    record = {"tool": {"name": "gr00t-export", "version": __version__}, "packed_unix": int(time.time()),
              "source": manifest["source"], "manifest_sha256": manifest.get("manifest_sha256"),
              "precision": precision, "target": target,
              "validation": validation | {"allow_unvalidated": allow_unvalidated}}

    dist.mkdir(parents=True, exist_ok=True)
    tmp = dist / f".{out.name}.tmp-{os.getpid()}"
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=1, dereference=True) as tar:
            for rel, path in members.items():
                tar.add(path, arcname=f"{name}/{rel}", recursive=False)
            for rel, text in plan.items():
                _add_text(tar, f"{name}/{rel}", text, 0o755 if rel.endswith(".sh") else 0o644)
            _add_text(tar, f"{name}/{PACK_RECORD}", json.dumps(record, indent=2) + "\n")
            _add_text(tar, f"{name}/{TARGET_README}", _target_readme(name, manifest, precision, target,
                                                                     (root / "validation").is_dir(), validation))
        ordinary_permissions(tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
