"""compose.yaml read as compose reads it, for the tests that check it and the one that runs it
without Docker: ``${VAR:-default}`` interpolated, YAML merge keys resolved, each service's
command, environment, secrets and user; and a service turned into the plain process compose would
start (its secrets where ``/run/secrets/<name>`` would be, its command run by this interpreter).

Only what this project's compose file uses of the format is understood; anything else is left
as it is written."""

from __future__ import annotations

import itertools
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "compose.yaml"
SECRETS_MOUNT = "/run/secrets/"
_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``${VAR}`` and ``${VAR:-default}`` in every string, as compose does before it runs anything."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def load(path: Path = COMPOSE_FILE, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file, interpolated with ``env`` (default: none set, so every default applies)."""
    return interpolate(yaml.safe_load(path.read_text()), {} if env is None else env)


def raw(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file as written (``${...}`` kept), for checks on the expressions themselves."""
    return yaml.safe_load(path.read_text())


@dataclass
class Service:
    """One service of the file, as its container would be started."""

    name: str
    spec: dict[str, Any]

    @property
    def command(self) -> list[str]:
        entry = self.spec.get("entrypoint") or []
        return [*entry, *(self.spec.get("command") or [])]

    @property
    def env(self) -> dict[str, str]:
        return {k: str(v) for k, v in (self.spec.get("environment") or {}).items()}

    @property
    def secrets(self) -> list[str]:
        return [s if isinstance(s, str) else s["source"] for s in self.spec.get("secrets") or []]

    @property
    def user(self) -> tuple[int, int] | None:
        text = self.spec.get("user")
        if text is None:
            return None
        uid, _, gid = str(text).partition(":")
        return int(uid), int(gid or uid)

    @property
    def profiles(self) -> list[str]:
        return list(self.spec.get("profiles") or [])

    @property
    def published(self) -> list[str]:
        return [str(p) for p in self.spec.get("ports") or []]


def services(compose: dict[str, Any]) -> dict[str, Service]:
    return {name: Service(name, spec) for name, spec in compose["services"].items()}


def secret_files(compose: dict[str, Any]) -> dict[str, str]:
    """Secret name -> the file (relative to the compose file) it is made from."""
    return {name: spec["file"] for name, spec in compose.get("secrets", {}).items()}


def owners(command: list[str]) -> dict[str, tuple[int, int]]:
    """``--owner NAME=UID:GID`` of ``chameleon auth init``'s command line."""
    found = {}
    for flag, value in itertools.pairwise(command):
        if flag == "--owner":
            name, _, ids = value.partition("=")
            uid, _, gid = ids.partition(":")
            found[name] = (int(uid), int(gid or uid))
    return found


@dataclass
class Process:
    """A service as a plain process: what compose would exec, with what it would see."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def as_process(
    service: Service,
    compose: dict[str, Any],
    secrets_dir: Path,
    env_overrides: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
) -> Process:
    """``service`` as compose would run it, on this machine: ``python`` and ``chameleon`` run by
    this interpreter, every ``/run/secrets/<name>`` the service mounts read from ``secrets_dir``
    (the file compose would mount), a secret it does not mount pointing nowhere, and
    ``env_overrides`` for what a container has on its own (addresses, ports)."""
    files = secret_files(compose)

    def secret_path(text: str) -> str:
        if not text.startswith(SECRETS_MOUNT):
            return text
        name = text[len(SECRETS_MOUNT) :]
        if name not in service.secrets:
            return str(secrets_dir / f"not-mounted-{name}")  # as absent as in the container
        return str(secrets_dir / Path(files[name]).name)

    argv = [secret_path(a) for a in service.command]
    if argv and argv[0] == "python":
        argv[0] = sys.executable
    elif argv and argv[0] == "chameleon":
        argv[:1] = [sys.executable, "-m", "services.cli.main"]
    env = {k: v for k, v in (os.environ if base_env is None else base_env).items() if not _ours(k)}
    env.update({k: secret_path(v) for k, v in service.env.items()})
    env.update(env_overrides or {})
    return Process(argv, env)


def _ours(variable: str) -> bool:
    """What a container's environment would not inherit from this process."""
    return variable.startswith(("CHAMELEON_", "NATS_URL", "GF_"))
