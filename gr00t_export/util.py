"""Small shared helpers: all-or-nothing output dirs, progress bars, file hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rich import get_console
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from gr00t_export.errors import InputError


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yields a temp sibling of `out`; renamed onto `out` only if the block finishes.

    An interrupted or failed run leaves no dir that looks complete, only a `.<name>.tmp-<pid>` that a
    re-run removes.
    """
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise InputError(f"output {out} exists and is not empty; pass --force to replace it or choose another dir")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        tmp.rename(out)


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Rich progress bar; yields `advance(n)`. Piped (a CI log, where a live bar prints nothing), a plain line on
    stdout at each tenth of the work instead, with the seconds elapsed (at most one a second, and the last); stdout,
    so that a failing command's stderr stays its one error line."""
    if not enabled:
        yield lambda n: None
        return
    if get_console().is_terminal:  # where Progress draws by default
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n: progress.advance(task, n)
        return
    start, done, tenth, last = time.perf_counter(), 0, 0, 0.0

    def advance(n: int) -> None:
        nonlocal done, tenth, last
        done += n
        now = time.perf_counter() - start
        if total > 0 and done * 10 // total > tenth and (done >= total or now - last >= 1.0):
            tenth, last = min(10, done * 10 // total), now
            print(f"{description}: {tenth * 10}% ({now:.1f} s)", flush=True)

    yield advance


@contextlib.contextmanager
def step_progress(title: str, console: Console) -> Iterator[Callable[[str], None]]:
    """`on_step(label)` for a job of named steps: a spinner on `console` when it is a terminal; else one plain line
    per step on stdout with the seconds since the job started (a CI log never sits silent through a long step),
    then a `done` line. stdout, so that a failing command's stderr stays its one error line."""
    start = time.perf_counter()
    if console.is_terminal:
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(title, total=None)
            yield lambda label: progress.update(task, description=f"{title}: {label}")
        return

    def line(label: str) -> None:
        print(f"{title} [{time.perf_counter() - start:7.1f} s] {label}", flush=True)

    yield line
    line("done")


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
