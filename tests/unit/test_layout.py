"""The layout as a contract: services depend on ``shared/``, ``runtime/`` and themselves only,
``runtime/`` on ``shared/``, ``shared/`` on nothing of ours, and offline tools stay off the serving
path."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = ("cli",)  # the CLI dispatches to every service and tool: its job is to know them all


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a file imports (``from a.b import c`` counts as ``a.b`` and ``a.b.c``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def violations(root: Path) -> list[str]:
    """``file: module`` for each import that crosses a boundary the layout forbids."""
    bad: list[str] = []
    for path in sorted((root / "services").rglob("*.py")):
        parts = path.relative_to(root / "services").parts
        if len(parts) < 2 or parts[0] in ENTRY_POINTS:
            continue
        own = parts[0]
        for mod in sorted(imported_modules(path)):
            names = mod.split(".")
            if names[0] == "tools" or (names[0] == "services" and len(names) > 1 and names[1] != own):
                bad.append(f"{path.relative_to(root)}: {mod}")
    for package, foreign in (
        ("shared", ("services", "tools", "runtime")),
        ("runtime", ("services", "tools")),
    ):
        for path in sorted((root / package).rglob("*.py")):
            for mod in sorted(imported_modules(path)):
                if mod.split(".")[0] in foreign:
                    bad.append(f"{path.relative_to(root)}: {mod}")
    return bad


def test_services_import_only_shared_and_themselves() -> None:
    assert violations(ROOT) == []


def test_the_check_sees_a_cross_service_import(tmp_path: Path) -> None:
    for folder, text in {
        "services/generator/x.py": "from services.garments.client import GarmentClient\n",
        "services/ingest/y.py": "import tools.bench\n",
        "services/cli/z.py": "from services.generator import handlers\n",  # allowed: the CLI
        "services/preprocess/ok.py": "from services.preprocess import pose\nfrom shared import body\n",
        "shared/w.py": "from services import generator\n",
        "shared/v.py": "from runtime.bus import connect\n",
        "runtime/u.py": "from shared.subjects import Subjects\nimport tools.samples\n",
    }.items():
        (tmp_path / folder).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / folder).write_text(text)
    assert violations(tmp_path) == [
        "services/generator/x.py: services.garments.client",
        "services/generator/x.py: services.garments.client.GarmentClient",
        "services/ingest/y.py: tools.bench",
        "shared/v.py: runtime.bus",
        "shared/v.py: runtime.bus.connect",
        "shared/w.py: services",
        "shared/w.py: services.generator",
        "runtime/u.py: tools.samples",
    ]


@pytest.mark.parametrize("service", ["generator", "preprocess", "ingest", "garments"])
def test_a_worker_loads_only_what_serves(service: str) -> None:
    """Importing a service's entry point and handlers loads no other service and no tool."""
    code = (
        f"import sys, services.{service}.main, services.{service}.handlers\n"
        "mods = sorted(m for m in sys.modules if m.startswith(('services.', 'tools')))\n"
        "print('\\n'.join(mods))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    foreign = [m for m in out.stdout.split() if not m.startswith(f"services.{service}") and m != "services"]
    assert foreign == []
