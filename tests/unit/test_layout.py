"""The layout as a contract (docs/architecture.md, "Layout"):

- ``shared/`` (the contract) imports nothing of ours; ``runtime/`` only ``shared/``;
- a service imports ``shared/``, ``runtime/`` and itself, never another service, ``harness/`` or a
  tool, so a worker loads only what serves;
- the CLI and the tools never import each other (both import ``harness/``, which imports neither);
- no import loop anywhere.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "runtime", "harness", "services", "tools")
KNOWN_LOOPS: list[list[str]] = []  # none: any import loop fails


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a file imports (``from a.b import c`` counts as ``a.b`` and ``a.b.c``),
    at its top or inside a function alike."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def forbidden(where: tuple[str, ...], module: str) -> bool:
    """Whether the file at ``where`` (its path's parts from the root) may not import ``module``."""
    names = module.split(".")
    top = where[0]
    if top == "shared":
        return names[0] in ("runtime", "harness", "services", "tools")
    if top == "runtime":
        return names[0] in ("harness", "services", "tools")
    if top in ("harness", "tools"):
        return names[:2] == ["services", "cli"] or (top == "harness" and names[0] == "tools")
    if top == "services" and len(where) > 2:
        own = where[1]
        if own == "cli":  # the CLI knows every service, and no tool
            return names[0] == "tools"
        other_service = names[0] == "services" and len(names) > 1 and names[1] != own
        return names[0] in ("tools", "harness") or other_service
    return False


def violations(root: Path) -> list[str]:
    """``file: module`` for each import that crosses a boundary the layout forbids."""
    bad: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            where = path.relative_to(root).parts
            bad += [f"{'/'.join(where)}: {m}" for m in sorted(imported_modules(path)) if forbidden(where, m)]
    return bad


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports. ``from pkg import mod`` is an edge to ``pkg.mod``
    alone: a package's ``__init__`` that imports its own modules is no loop."""
    files = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            files[name.removesuffix(".__init__")] = path

    def ours(module: str) -> str:
        while module and module not in files:
            module = module.rpartition(".")[0]
        return module

    def targets(path: Path) -> set[str]:
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(ours(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in files else ours(node.module))
        return found

    return {name: {m for m in targets(path) if m and m != name} for name, path in files.items()}


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while (w := stack.pop()) != v:
                group.append(w)
            if group:
                loops.append(sorted([v, *group]))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(loops)


def test_imports_respect_the_layout() -> None:
    assert violations(ROOT) == []


def test_no_import_loop() -> None:
    assert [loop for loop in import_loops(import_graph(ROOT)) if loop not in KNOWN_LOOPS] == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    for folder, text in {
        "services/generator/x.py": "from services.garments.client import GarmentClient\n",
        "services/ingest/y.py": "import tools.bench\nfrom harness.stack import Stack\n",
        "services/cli/z.py": "from services.generator import handlers\n",  # allowed: the CLI
        "services/cli/t.py": "def f():\n    from tools.bench import fuzz\n",  # inside a function too
        "services/preprocess/ok.py": "from services.preprocess import pose\nfrom shared import body\n",
        "shared/w.py": "from services import generator\n",
        "shared/v.py": "from runtime.bus import connect\n",
        "runtime/u.py": "from shared.subjects import Subjects\nimport tools.samples\n",
        "harness/h.py": "from services.cli import main\nfrom runtime.bus import connect\n",
        "tools/bench/b.py": "from services.cli.demo import run\nfrom harness.stack import Stack\n",
    }.items():
        (tmp_path / folder).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / folder).write_text(text)
    assert violations(tmp_path) == [
        "shared/v.py: runtime.bus",
        "shared/v.py: runtime.bus.connect",
        "shared/w.py: services",
        "shared/w.py: services.generator",
        "runtime/u.py: tools.samples",
        "harness/h.py: services.cli",
        "harness/h.py: services.cli.main",
        "services/cli/t.py: tools.bench",
        "services/cli/t.py: tools.bench.fuzz",
        "services/generator/x.py: services.garments.client",
        "services/generator/x.py: services.garments.client.GarmentClient",
        "services/ingest/y.py: harness.stack",
        "services/ingest/y.py: harness.stack.Stack",
        "services/ingest/y.py: tools.bench",
        "tools/bench/b.py: services.cli.demo",
        "tools/bench/b.py: services.cli.demo.run",
    ]


def test_the_check_sees_an_import_loop(tmp_path: Path) -> None:
    for folder, text in {
        "tools/a.py": "from tools import b\n",
        "tools/b.py": "def f():\n    import tools.c\n",  # inside a function counts too
        "tools/c.py": "from tools.a import x\n",
        "tools/d.py": "from tools import a\n",  # imports the loop, is not part of it
        "tools/e/__init__.py": "from tools.e.f import y\n",  # a package importing its own module
        "tools/e/f.py": "from tools.e import g\n",
        "tools/e/g.py": "y = 1\n",
    }.items():
        (tmp_path / folder).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / folder).write_text(text)
    assert import_loops(import_graph(tmp_path)) == [["tools.a", "tools.b", "tools.c"]]


@pytest.mark.parametrize("service", ["generator", "preprocess", "ingest", "garments"])
def test_a_worker_loads_only_what_serves(service: str) -> None:
    """Importing a service's entry point and handlers loads no other service, no tool and nothing
    of the harness."""
    code = (
        f"import sys, services.{service}.main, services.{service}.handlers\n"
        "mods = sorted(m for m in sys.modules if m.startswith(('services.', 'tools', 'harness')))\n"
        "print('\\n'.join(mods))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    foreign = [m for m in out.stdout.split() if not m.startswith(f"services.{service}") and m != "services"]
    assert foreign == []
