"""Small shared helpers: all-or-nothing outputs that never touch what gr00t-export did not write, progress
bars, file hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gr00t_export import __version__
from gr00t_export.errors import InputError

TOOL_NAME = "gr00t-export"
MARKER = ".gr00t-export.json"  # in the checkpoints and datasets the tool makes (builds carry manifest.json)
Inputs = Mapping[str, "str | Path | None"]


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (setting it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_permissions(root: Path) -> None:
    """Gives every file under `root` the mode of a file created under the umask (0644 under umask 022).

    Some writers create their files 0600 (safetensors, onnx external data, mkstemp): a runtime running as
    another user could not read those. Executables (owner x bit) keep x.
    """
    mask = current_umask()
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for path in paths:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        full = 0o777 if stat.S_ISDIR(mode) or mode & stat.S_IXUSR else 0o666
        os.chmod(path, full & ~mask)


def refuse_overlap(out: str | Path, inputs: Inputs, label: str = "output") -> None:
    """InputError when `out` is, contains or lies inside one of the command's inputs (symlinks resolved)."""
    target = Path(out).expanduser().resolve()
    for name, given in inputs.items():
        if given is None:
            continue
        source = Path(given).expanduser().resolve()
        if target == source:
            relation = "is"
        elif source in target.parents:
            relation = "lies inside"
        elif target in source.parents:
            relation = "contains"
        else:
            continue
        raise InputError(f"{label} {out} {relation} the input {name} {given}; choose a path outside every input "
                         "(nothing was changed)")


def file_input(value: str | Path | None) -> Path | None:
    """An option that names either a built-in or a file (e.g. --modality_config): the file, when it is one."""
    return Path(value) if value is not None and Path(value).is_file() else None


def output_kind(path: Path) -> str | None:
    """What gr00t-export wrote at `path`: "build" (our manifest.json), "validation" (our validation_report.json),
    the kind in our marker file, or None (not ours)."""
    for name, kind in (("manifest.json", "build"), ("validation_report.json", "validation"), (MARKER, None)):
        try:
            data = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        tool = data.get("tool") if isinstance(data, dict) else None
        if isinstance(tool, dict) and tool.get("name") == TOOL_NAME:
            return kind or str(data.get("kind"))
    return None


def write_marker(root: Path, kind: str) -> None:
    """No timestamp: a checkpoint or dataset made twice with the same seed stays byte-identical."""
    (root / MARKER).write_text(json.dumps({"tool": {"name": TOOL_NAME, "version": __version__}, "kind": kind},
                                          indent=2) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_siblings(out: Path) -> None:
    """Temp dirs of earlier runs (`.<name>.tmp-<pid>`, `.<name>.old-<pid>`) whose process is gone."""
    for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*"):
        for stale in out.parent.glob(pattern):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
                continue  # another run writing the same output right now
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def check_replaceable(out: Path, force: bool, kind: str) -> None:
    """The one rule for an existing output: replace only an empty folder or, with --force, our own `kind`."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise InputError(f"output {out} exists and is a file, not a gr00t-export {kind}; choose another path "
                         "(--force replaces only gr00t-export's own outputs)")
    if not any(out.iterdir()):
        return
    found = output_kind(out)
    if found != kind:
        what = "was not written by gr00t-export" if found is None else f"is a gr00t-export {found}, not a {kind}"
        raise InputError(f"output {out} exists, is not empty and {what}; choose another dir "
                         "(--force replaces only an empty dir or an earlier gr00t-export output of the same kind)")
    if not force:
        raise InputError(f"output {out} exists and is not empty (an earlier gr00t-export {kind}); pass --force to "
                         "replace it or choose another dir")


def check_output_dir(out: str | Path, force: bool = False, inputs: Inputs | None = None, kind: str = "build") -> Path:
    """Both refusals of `atomic_output_dir`, for commands that want them before any slow work; returns `out`."""
    out = Path(out).expanduser().resolve()
    refuse_overlap(out, inputs or {})
    check_replaceable(out, force, kind)
    return out


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, force: bool = False, inputs: Inputs | None = None, kind: str = "build"
                      ) -> Iterator[Path]:
    """Yields a temp sibling of `out`; renamed onto `out` only if the block finishes.

    Before anything is written: `out` must not be, contain or lie inside an input, and an existing non-empty `out`
    is replaced only with `force` and only when it is an earlier gr00t-export output of the same `kind` (a build's
    manifest.json, or the marker file other kinds get). An interrupted or failed run leaves no dir that looks
    complete, only a `.<name>.tmp-<pid>` that a re-run removes. Every file gets ordinary (umask) permissions.
    """
    out = check_output_dir(out, force, inputs, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if kind not in ("build", "validation"):  # those two are recognised by their own manifest / report
            write_marker(tmp, kind)
        ordinary_permissions(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        tmp.rename(out)


def check_output_file(out: str | Path, inputs: Inputs | None = None, ours: Callable[[Path], bool] | None = None,
                      what: str = "output") -> Path:
    """The refusals of `atomic_output_file`, for commands that want them before any slow work; returns `out`."""
    out = Path(out).expanduser()
    refuse_overlap(out, inputs or {}, label=what)
    if out.is_dir():
        raise InputError(f"{what} {out} is a directory; give a file path")
    if out.exists() and (ours is None or not ours(out)):
        raise InputError(f"{what} {out} exists and was not written by this gr00t-export command; choose another "
                         "path (a file gr00t-export did not write is never replaced)")
    return out


@contextlib.contextmanager
def atomic_output_file(out: str | Path, inputs: Inputs | None = None, ours: Callable[[Path], bool] | None = None,
                       what: str = "output") -> Iterator[Path]:
    """Yields a temp path beside the file `out`; moved onto `out` only if the block finishes.

    Refused before anything is written: `out` is or lies inside an input, or `out` exists and `ours(out)` does
    not recognise it as an earlier output of the same command (a file gr00t-export did not write is never replaced).
    """
    out = check_output_file(out, inputs, ours, what)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        ordinary_permissions(tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Rich progress bar on stderr; yields `advance(n)`."""
    if not enabled:
        yield lambda n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def save_torchscript(module, path: str | Path) -> None:
    """`torch.jit.save` into memory, then one Python write.

    libtorch's file writer aborts the whole process (std::terminate, no cleanup) when a write fails, e.g. on
    a full disk or a file-size limit; written from Python, the same failure is an OSError (ENOSPC/EFBIG) that
    the CLI reports in one line after the partial output is removed.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    Path(path).write_bytes(buffer.getbuffer())


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()
