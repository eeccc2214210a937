"""Print the requirements of pyproject.toml (the base list and the extras named as arguments), one
per line, torch left out: the Dockerfile installs them before the code is copied, so a change to the
code does not reinstall them, and torch comes first from the index its build argument names.

    python scripts/requirements.py serve gpu > requirements.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parents[1]


def requirements(extras: list[str], pyproject: Path = HERE / "pyproject.toml") -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    found = list(project["dependencies"])
    for extra in extras:
        found += project["optional-dependencies"][extra]
    return [r for r in dict.fromkeys(found) if not r.lower().startswith("torch")]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
