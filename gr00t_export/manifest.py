"""`manifest.json`: what a build is (family, precision, stages, interface) and the sha256 of every file in it.

Read, written, sealed and verified here and nowhere else. A TorchScript file is code, so nothing of a drop is
loaded before its hash matches; the seal (`manifest_sha256`) makes a hand-edited manifest fail like a modified
artifact.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gr00t_export import __version__
from gr00t_export.errors import InputError, ValidationFailure
from gr00t_export.families.base import PolicyInterface
from gr00t_export.util import sha256_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def library_versions() -> dict[str, str]:
    import numpy
    import onnx
    import onnxruntime
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}
    try:
        import onnxslim

        versions["onnxslim"] = onnxslim.__version__
    except ImportError:
        pass
    return versions


def file_entry(root: Path, path: Path) -> dict[str, Any]:
    return {"path": path.relative_to(root).as_posix(), "sha256": sha256_file(path), "size": path.stat().st_size}


class Manifest(dict):
    """The manifest's JSON object, with typed access to the fields the tools act on."""

    @classmethod
    def new(cls, body: dict[str, Any]) -> Manifest:
        """A manifest for a build about to be written: `body` plus the tool's name, version and libraries."""
        base = {"format_version": FORMAT_VERSION, "tool": {"name": "gr00t-export", "version": __version__},
                "libraries": library_versions(), "created_unix": int(time.time())}
        return cls(json.loads(json.dumps(base | body)))  # plain JSON types only, so the seal is stable

    @classmethod
    def read(cls, root: Path) -> Manifest:
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise InputError(f"{root} has no {MANIFEST}, so it is not a complete gr00t-export build; "
                             "re-run `gr00t-export build`")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValidationFailure(f"{path} is not valid JSON ({err}); the drop was edited or truncated") from None
        if not isinstance(data, dict):
            raise ValidationFailure(f"{path} is not a JSON object; the drop was edited or truncated")
        return cls(data)

    # --- typed fields -------------------------------------------------------------------------------------

    @property
    def family(self) -> str:
        return self.get("family", "gr00t_n1_5")  # builds before families were recorded were all N1.5

    @property
    def precision(self) -> str:
        return self["precision"]

    @property
    def views(self) -> int:
        return int(self["views"])

    @property
    def interface(self) -> PolicyInterface:
        if "interface" not in self:
            raise ValidationFailure(f"{MANIFEST} has no policy interface (written by an older gr00t-export); "
                                    "re-run the build")
        return PolicyInterface.from_dict(self["interface"])

    @property
    def denoising_steps(self) -> int | None:
        """The Euler steps the denoising graph has unrolled."""
        steps = self.get("model", {}).get("denoising_steps")
        return steps if isinstance(steps, int) and not isinstance(steps, bool) else None

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return {f["path"]: f for f in self.get("files", [])}

    # --- seal and files -----------------------------------------------------------------------------------

    def seal(self) -> str:
        """sha256 of the canonical JSON, less `files` (each file carries its own sha256) and the seal itself.

        It guards against edits and corruption, not forgery: whoever rewrites the manifest can recompute it.
        """
        body = {k: v for k, v in self.items() if k not in ("files", "manifest_sha256")}
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def write(self, root: Path) -> Manifest:
        """Lists and hashes every file under `root` (but the manifest), seals, writes `root/manifest.json`."""
        root = Path(root)
        self["files"] = [file_entry(root, f) for f in sorted(root.rglob("*"))
                         if f.is_file() and f.relative_to(root).as_posix() != MANIFEST]
        self["manifest_sha256"] = self.seal()
        self._save(root)
        return self

    def add_files(self, root: Path, paths: Iterable[Path]) -> None:
        """Hashes (re)written files into the list of an existing drop; the seal stays valid (it excludes files)."""
        entries = self.files
        for f in paths:
            entry = file_entry(Path(root), f)
            entries[entry["path"]] = entry
        self["files"] = [entries[k] for k in sorted(entries)]
        self._save(Path(root))

    def _save(self, root: Path) -> None:
        tmp = root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self, indent=2))
        tmp.replace(root / MANIFEST)

    def verify_seal(self, root: Path) -> None:
        """Manifests written before the seal existed carry none and are taken as they are."""
        want = self.get("manifest_sha256")
        if want is not None and want != self.seal():
            raise ValidationFailure(f"{Path(root) / MANIFEST} was edited after the build (it no longer matches its "
                                    "manifest_sha256); re-run the build or restore the drop")

    def verify_file(self, root: Path, rel: str) -> Path:
        """The file's path once its size and sha256 match the manifest (checked before anything loads it)."""
        entry = self.files.get(rel)
        if entry is None:
            raise ValidationFailure(f"manifest lists no {rel}; the drop is incomplete, re-run the build")
        path = Path(root) / entry["path"]
        if not path.is_file():
            raise ValidationFailure(f"artifact {entry['path']} is missing; re-run the build or restore the drop")
        if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            raise ValidationFailure(f"artifact {entry['path']} does not match its manifest sha256 (modified or "
                                    "corrupt); re-run the build or restore the drop")
        return path
