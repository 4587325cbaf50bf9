"""The architecture, checked: every folder of Python is an installed package, imports only go down the layers
of :data:`LAYERS` (README.md, "Architecture"), no module imports itself back through others, and vulture finds
no dead code.

The source tree is mapped to import names the way pyproject.toml installs it (``adapters/`` is
``dna_vlm.adapters``, ``eval/`` is ``dna_vlm.eval``), so this reads the files, not an installed copy. Every
import counts, also those inside functions (lazy imports are still dependencies).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]

#: The layers, top to bottom. A module may import modules of its own part and of any LOWER layer; parts in
#: one layer (one tuple) are independent of each other. A part is a package or module name and everything
#: under it. `dna_vlm` itself (the facade in dna_vlm/__init__.py) is for users: nothing inside imports it.
LAYERS: list[tuple[str, ...]] = [
    ("dna_vlm.__main__",),
    ("dna_vlm.cli",),
    ("dna_vlm.eval.demo",),
    ("dna_vlm.eval.attribute", "dna_vlm.eval.inspection", "dna_vlm.eval.lmms"),
    ("dna_vlm.eval.probe",),
    ("dna_vlm.eval.logs", "dna_vlm.eval.stats", "dna_vlm.eval.report_files", "dna_vlm.eval.degrade"),
    ("dna_vlm.bench", "dna_vlm.tiny.pretrained"),  # the pretrained asset is built with dna_vlm.train
    ("dna_vlm.train",),
    ("dna_vlm.runs", "dna_vlm.tiny"),
    ("dna_vlm.data",),
    ("dna_vlm.video",),
    ("dna_vlm.checkpoint",),
    ("dna_vlm.patching",),
    ("dna_vlm.adapters",),
    ("dna_vlm.attention",),
    ("dna_vlm.kernel",),
    ("dna_vlm.kernel_triton",),
    ("dna_vlm.kernel_checks",),
    ("dna_vlm.options", "dna_vlm.files", "dna_vlm.errors", "dna_vlm.version"),
]
FACADES = ("dna_vlm", "dna_vlm.eval")  # package __init__s that only document or re-export


def source_modules() -> dict[str, Path]:
    """Import name -> file, for every .py file the package-dir mapping of pyproject.toml installs."""
    dirs = SETUPTOOLS["package-dir"]
    mods: dict[str, Path] = {}
    for pkg, folder in sorted(dirs.items(), key=lambda kv: len(kv[0])):  # deeper mappings win
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([pkg, *parts])] = path
    return mods


MODULES = source_modules()


def imports_of(path: Path) -> set[str]:
    """The project modules ``path`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.ImportFrom):
            RELATIVE.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return {m for m in out if m in MODULES}


RELATIVE: list[str] = []


GRAPH = {m: imports_of(p) for m, p in MODULES.items()}


def part_of(module: str) -> tuple[int, str]:
    """(layer index, part) of ``module``: the longest part of :data:`LAYERS` that is it or contains it."""
    best = None
    for i, layer in enumerate(LAYERS):
        for part in layer:
            if (module == part or module.startswith(part + ".")) and (
                best is None or len(part) > len(best[1])
            ):
                best = (i, part)
    if best is None:
        raise AssertionError(
            f"{module} is in no layer of tests/test_architecture.py LAYERS: add its part there"
        )
    return best


def test_imports_are_absolute():
    """Absolute ``dna_vlm.*`` imports only: the import names say where a module lives, whatever folder holds it."""
    assert not RELATIVE, f"relative imports: {RELATIVE}"


def test_every_folder_of_python_is_an_installed_package():
    """A folder missing from pyproject's ``packages`` would be left out of the wheel (and work only editable)."""
    folders = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    folders |= {m.rsplit(".", 1)[0] for m in MODULES if "." in m}
    assert sorted(folders) == sorted(SETUPTOOLS["packages"])


def test_every_module_is_in_a_layer():
    missing = [m for m in MODULES if m not in FACADES and not _safe_part(m)]
    assert not missing, f"modules in no layer of LAYERS: {missing}"


def _safe_part(m: str):
    try:
        return part_of(m)
    except AssertionError:
        return None


def test_imports_only_go_down_the_layers():
    bad = []
    for a, targets in GRAPH.items():
        for b in targets:
            if b in FACADES and a not in FACADES:
                bad.append(f"{a} imports the facade {b}: import the module that defines the name")
                continue
            if a in FACADES or b in FACADES:
                continue
            (la, pa), (lb, pb) = part_of(a), part_of(b)
            if pa != pb and la >= lb:
                what = "an independent part of its own layer" if la == lb else "a higher layer"
                bad.append(f"{a} ({pa}) imports {b} ({pb}): {what}")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles():
    """Tarjan's strongly connected components of the module graph: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checks_see_real_violations(monkeypatch):
    """The checks are not vacuous: an upward import and a cycle planted in the graph are both reported."""
    monkeypatch.setitem(GRAPH, "dna_vlm.kernel", GRAPH["dna_vlm.kernel"] | {"dna_vlm.patching"})
    with pytest.raises(AssertionError, match=r"dna_vlm.kernel \(dna_vlm.kernel\) imports dna_vlm.patching"):
        test_imports_only_go_down_the_layers()
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycles()


def test_no_dead_code():
    """vulture over the package, scripts and tests (tests count as users of the public API); the names it
    cannot see being used are listed, with why, in tests/vulture_whitelist.py."""
    vulture = shutil.which("vulture", path=str(Path(sys.executable).parent)) or shutil.which("vulture")
    assert vulture, 'vulture is not installed: pip install -e ".[dev]"'
    paths = ["dna_vlm", "adapters", "eval", "scripts", "tests", "tests/vulture_whitelist.py"]
    res = subprocess.run(
        [vulture, *paths, "--min-confidence", "60"], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0, (
        f"vulture found dead code (delete it, or whitelist it with a reason):\n{res.stdout}"
    )
