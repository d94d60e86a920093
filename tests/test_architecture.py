"""The package's structure, as issue 17 set it: no import cycle (function-local imports counted), no module outside a
model family imports that family's modules, no module over 800 lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_no_import_cycle_and_families_stay_behind_their_interface():
    proc = subprocess.run([sys.executable, str(REPO / ".ci" / "import_graph.py"), str(REPO / "gr00t_export")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no import cycle" in proc.stdout


def test_import_graph_finds_a_cycle_and_a_leak(tmp_path: Path):
    """The checker itself: a two-module cycle and a generic module importing a family's module are reported."""
    pkg = tmp_path / "pkg"
    (pkg / "families" / "fam").mkdir(parents=True)
    for init in (pkg, pkg / "families", pkg / "families" / "fam"):
        (init / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg import b\n")
    (pkg / "b.py").write_text("from pkg.a import f\n")
    (pkg / "families" / "fam" / "model.py").write_text("")
    (pkg / "c.py").write_text("from pkg.families.fam.model import *\n")
    proc = subprocess.run([sys.executable, str(REPO / ".ci" / "import_graph.py"), str(pkg)], capture_output=True,
                          text=True)
    assert proc.returncode == 1
    assert "cycle: pkg.a <-> pkg.b" in proc.stdout
    assert "pkg.c -> pkg.families.fam.model" in proc.stdout


def test_no_module_over_800_lines():
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines())
             for p in (REPO / "gr00t_export").rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 800} == {}
