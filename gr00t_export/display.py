"""What the commands print: `console` (stderr: progress, notes, errors, so a result piped from stdout stays clean)
and `out_console` (stdout: results), and the rich tables of each command's result."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)
out_console = Console(width=None if sys.stdout.isatty() else 150)  # tables stay readable in CI logs


def print_actions(actions: dict[str, np.ndarray], title: str = "actions") -> None:
    """The actions table of `predict` and `client`: one row per key."""
    table = Table(title=title, title_justify="left")
    for col in ("key", "shape", "mean", "min", "max", "first step"):
        table.add_column(col)
    for key, value in actions.items():
        first = np.array2string(value.reshape(-1, value.shape[-1])[0], precision=3, max_line_width=60)
        table.add_row(key, str(value.shape), f"{value.mean():.4f}", f"{value.min():.4f}", f"{value.max():.4f}", first)
    out_console.print(table)


def print_build(result: Any) -> None:
    """`build`'s stage table (file, size, precision, interface, export check) and its slowest steps."""
    table = Table(title=f"{result.output} ({result.seconds:.1f} s)", title_justify="left")
    for col in ("stage", "file", "size", "precision", "inputs -> outputs", "check"):
        table.add_column(col)
    sizes = {f["path"]: f["size"] for f in result.manifest["files"]}
    for s in result.stages:
        size = sizes.get(s.file, 0) + sum(sizes.get(f, 0) for f in s.extra_files)
        io = ", ".join(i.name for i in s.inputs) + " -> " + ", ".join(o.name for o in s.outputs)
        check = f"[green]ok[/] {s.max_abs_diff:.1e}" if s.passed else f"[red]FAIL[/] {s.max_abs_diff:.1e}"
        table.add_row(s.name, s.file, f"{size / 2**20:.1f} MiB", s.precision if s.format == "onnx" else "torchscript",
                      io, check)
    out_console.print(table)
    slowest = sorted(result.step_seconds.items(), key=lambda kv: -kv[1])[:3]
    out_console.print("slowest steps: " + ", ".join(f"{label} {sec:.1f} s" for label, sec in slowest),
                      highlight=False, soft_wrap=True)


def print_drop(view: Any) -> None:
    """`inspect DIR`: the build, its stages, tensors, edges and IGG configs (a `tools.inspect.DropView`)."""
    from gr00t_export.tools.inspect import human_size

    m = view.manifest
    ops = "" if m.get("onnx_ops", "standard") == "standard" else f" ({m['onnx_ops']} ops)"
    out_console.print(f"[bold]{view.root}[/]  {view.graph.name}, {m.get('precision')}{ops}, embodiment "
                      f"{m.get('embodiment_tag')} ({m.get('modality_config', {}).get('name')}), {m.get('views')} "
                      f"view(s), gr00t-export {m.get('tool', {}).get('version')}", highlight=False)
    out_console.print(f"source: {m.get('source', {}).get('model_path')}  validation: {view.validation}",
                      highlight=False)
    stages = Table(title="stages (execution order)", title_justify="left")
    for col in ("#", "stage", "file", "format", "precision", "size", "sha256", "export check", "ms", "validation"):
        stages.add_column(col, overflow="fold")
    for i, s in enumerate(view.stages):
        check = "" if s.export_passed is None else f"{'ok' if s.export_passed else 'FAIL'} {s.export_diff:.1e}"
        fmt = s.format + (f" + {s.engine}" if s.engine else "")
        stages.add_row(str(i), s.name, s.file, fmt, s.precision if s.format == "onnx" else "-",
                       human_size(s.size_bytes), s.sha256[:12], check,
                       f"{view.timings_ms[s.name]:.1f}" if s.name in view.timings_ms else "", s.validation)
    out_console.print(stages)
    if view.timings_source:
        out_console.print(f"ms: per-stage wall time from {view.timings_source}", highlight=False)
    tensors = Table(title="tensors (shapes as exported)", title_justify="left")
    for col in ("stage", "", "tensor", "dtype", "shape", "from / to"):
        tensors.add_column(col, overflow="fold")
    for s in view.stages:
        for t in s.inputs:
            tensors.add_row(s.name, "in", t.name, t.dtype, str(t.shape), t.peer)
        for t in s.outputs:
            tensors.add_row(s.name, "out", t.name, t.dtype, str(t.shape), t.peer)
        tensors.add_section()
    out_console.print(tensors)
    out_console.print("[bold]edges[/]", highlight=False)
    for e in view.edges:
        out_console.print(f"  {e.src}/{e.src_port} -> {e.dst}/{e.dst_port}", highlight=False)
    for path, problems in view.igg_configs or [("igg/", ["no IGG config (re-run `gr00t-export build`)"])]:
        verdict = "[green]ok[/]" if not problems else f"[red]{len(problems)} problem(s)[/]: " + "; ".join(problems)
        out_console.print(f"IGG config {path}: {verdict}", highlight=False, soft_wrap=True)


def print_model_file(view: Any) -> None:
    """`inspect FILE`: one .onnx (interface, opsets, op counts, initializers) or TorchScript .pt (forward schema,
    parameters and buffers)."""
    from gr00t_export.tools.inspect import OnnxFileView, human_size

    if isinstance(view, OnnxFileView):
        opsets = ", ".join(f"{domain} {version}" for domain, version in view.opsets.items())
        out_console.print(f"[bold]{view.path}[/]  ONNX IR {view.ir_version}, {human_size(view.size_bytes)}, "
                          f"producer {view.producer or '?'}; opsets: {opsets}", highlight=False, soft_wrap=True)
        io = Table(title="inputs and outputs", title_justify="left")
        for col in ("", "name", "dtype", "shape"):
            io.add_column(col, overflow="fold")
        for kind, tensors in (("in", view.inputs), ("out", view.outputs)):
            for t in tensors:  # Text: "[batch, seq_len, 64]" is not rich markup
                io.add_row(kind, Text(t.name), Text(t.dtype), Text("[" + ", ".join(str(d) for d in t.shape) + "]"))
        out_console.print(io)
        ops = Table(title=f"{view.nodes} nodes by op type", title_justify="left")
        ops.add_column("op")
        ops.add_column("count", justify="right")
        for op, count in view.op_counts.items():
            ops.add_row(op, str(count))
        out_console.print(ops)
        external = "; ".join(f"{loc} ({human_size(n)}{', MISSING' if loc in view.missing_external else ''})"
                             for loc, n in view.external_files.items())
        out_console.print(f"initializers: {view.initializers}, {human_size(view.initializer_bytes)}"
                          + (f"; external data: {external}" if external else " (all inside the .onnx)"),
                          highlight=False, soft_wrap=True, markup=False)
        return
    out_console.print(f"[bold]{view.path}[/]  TorchScript {view.type_name}, {human_size(view.size_bytes)}",
                      highlight=False, soft_wrap=True)
    out_console.print(Text(f"forward({', '.join(f'{n}: {k}' for n, k in view.forward_args)}) -> "
                           + ", ".join(view.forward_returns)), soft_wrap=True)
    args = Table(title="forward schema", title_justify="left")
    args.add_column("argument", overflow="fold")
    args.add_column("type", overflow="fold")
    for name, kind in view.forward_args:
        args.add_row(Text(name), Text(kind))  # "List[str]" is not rich markup
    for i, kind in enumerate(view.forward_returns):
        args.add_row(f"return {i}" if len(view.forward_returns) > 1 else "return", Text(kind))
    out_console.print(args)
    dtypes = ", ".join(f"{n} {d}" for d, n in view.tensor_dtypes.items())
    out_console.print(f"parameters: {view.parameters} ({human_size(view.parameter_bytes)}); buffers: {view.buffers} "
                      f"({human_size(view.buffer_bytes)})" + (f"; tensors by dtype: {dtypes}" if dtypes else ""),
                      highlight=False, soft_wrap=True, markup=False)


def print_bench(results: Any, device_name: str, iters: int) -> None:
    """`bench`'s latency table (median ms per stage and backend, ratios) and, when profiled, its kernel table."""
    from gr00t_export.tools.bench import kernel_rows, table_rows, timeline_rows

    header, rows = table_rows(results)
    table = Table(title=f"latency in ms on {device_name} ({iters} iterations, median)", title_justify="left")
    for col in header:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    out_console.print(table)
    for title, (header, rows) in (("CUDA kernels per call (CUPTI trace)", kernel_rows(results)),
                                  ("one whole tick on the GPU, ms (CUPTI trace; medians)", timeline_rows(results))):
        if rows:
            profiled = Table(title=title, title_justify="left")
            for col in header:
                profiled.add_column(col)
            for row in rows:
                profiled.add_row(*row)
            out_console.print(profiled)


def print_engines(reports: list, title: str) -> None:
    """`engines`' table: one row per engine with its build time, size and log."""
    table = Table(title=title, title_justify="left")
    for col in ("engine", "from", "build", "size", "log"):
        table.add_column(col)
    for r in reports:
        status = f"[green]ok[/] {r.seconds:.1f} s" if r.ok else "[red]FAILED[/]"
        table.add_row(r.engine, r.onnx, status, f"{r.size_bytes / 2**20:.1f} MiB" if r.ok else "", r.log)
    out_console.print(table)


def print_grid(cells: list, device_name: str, iters: int) -> None:
    """`bench --grid`: one row per (batch, views, backend) cell."""
    from gr00t_export.tools.grid import grid_rows

    table = Table(title=f"one tick for batch x views, ms on {device_name} ({iters} iterations)", title_justify="left")
    header, rows = grid_rows(cells)
    for col in header:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    out_console.print(table)
