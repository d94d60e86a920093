#!/usr/bin/env python3
"""The package's import graph, function-local imports included: prints each cycle (strongly connected component
of more than one module) and each import of a model family's module from outside that family; exits 1 on either.

usage: python .ci/import_graph.py [PACKAGE_DIR]   (default: gr00t_export next to this folder)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_graph(root: Path) -> dict[str, set[str]]:
    mods: dict[str, Path] = {}
    for f in root.rglob("*.py"):
        name = ".".join(f.relative_to(root.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        package = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*parts, base] if base else parts)
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            graph[m] |= {t for t in targets if t in mods and t != m}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively; those of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def family_leaks(graph: dict[str, set[str]], package: str) -> list[str]:
    """Imports of `<package>.families.<family>.*` from any module outside that family (the registry's lazy
    `importlib` lookup is not an import statement)."""
    prefix = f"{package}.families."
    leaks = []
    for m, targets in graph.items():
        for t in targets:
            if t.startswith(prefix) and t.count(".") >= 3:
                family = t.split(".")[2]
                if not m.startswith(f"{prefix}{family}") and t != f"{prefix}base":
                    leaks.append(f"{m} -> {t}")
    return sorted(leaks)


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "gr00t_export"
    graph = module_graph(root)
    found, leaks = cycles(graph), family_leaks(graph, root.name)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} import edges (function-local imports counted)")
    for c in found:
        print("cycle:", " <-> ".join(c))
    for leak in leaks:
        print("family module imported from outside its family:", leak)
    if not found and not leaks:
        print("no import cycle; no module outside a family imports that family's modules")
    return 1 if found or leaks else 0


if __name__ == "__main__":
    sys.exit(main())
