"""Settings from the environment: one prefix (``CHAMELEON_``), one dataclass per service.

A field ``foo_bar`` of a settings class reads ``CHAMELEON_FOO_BAR``; ``nats_url`` also honours the
conventional ``NATS_URL``. Nothing is read at import time: call ``from_env()`` in ``main``.

``CHAMELEON_FOO_BAR_FILE`` names a file holding the value instead (its trailing newline dropped):
how compose hands a container its secrets (``/run/secrets/<name>``) without putting them in the
environment, where ``docker inspect`` and every child process would see them.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

ENV_PREFIX = "CHAMELEON_"
FILE_SUFFIX = "_FILE"
S = TypeVar("S", bound="BaseSettings")


def read_secret_file(variable: str, path: str) -> str:
    """The value in ``path`` (``<variable>_FILE``), without its trailing newline."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except OSError as exc:
        raise SettingsError(f"{variable}{FILE_SUFFIX}={path!r}: cannot read it ({exc.strerror})") from None


def env_value(env: Mapping[str, str], variable: str) -> str | None:
    """``variable`` from ``env``, else the content of the file ``<variable>_FILE`` names, else None."""
    if variable in env:
        return env[variable]
    path = env.get(variable + FILE_SUFFIX)
    return read_secret_file(variable, path) if path else None


class SettingsError(ValueError):
    """An environment variable that cannot be parsed into its setting."""


def _parse(name: str, raw: str, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is not None and args:  # Optional[X]
        if raw == "":
            return None
        hint = args[0]
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        return raw
    except ValueError as exc:
        raise SettingsError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {hint}") from exc


@dataclass(frozen=True)
class BaseSettings:
    """Settings every service has."""

    nats_url: str = ""  # empty: the caller starts an embedded server; a comma-separated list: a cluster
    subject_prefix: str = "chameleon"
    log_level: str = "info"
    log_json: bool | None = None  # None: JSON when stderr is not a TTY
    metrics_port: int = 0  # 0: no metrics/health HTTP endpoint
    metrics_host: str = "127.0.0.1"
    summary_interval_s: float = 10.0  # one summary log line per session per interval
    drain_timeout_s: float = 5.0
    cv_threads: int = 1  # OpenCV threads per process: services already run in parallel processes
    nice: int = 0  # added to the process's niceness at start (0-19): a bulk stage yields to short ones
    worker_id: str = ""  # this worker's name in the fleet; empty: <hostname>-<pid>
    lease_s: float = 1.0  # a worker's lease: sessions move elsewhere this long after it stops renewing
    js_replicas: int = 1  # JetStream replicas of the streams and buckets this process creates (3: R3)
    # a process unhealthy (or its event loop stuck) this long exits, so a restart policy restarts it
    # (compose restarts exited containers, never unhealthy ones); 0: off (`chameleon up` supervises)
    watchdog_s: float = 0.0

    @property
    def nats_servers(self) -> list[str]:
        """The server URLs of ``nats_url`` (one, or a cluster's list): clients reconnect across them."""
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]

    @property
    def worker_name(self) -> str:
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"

    @classmethod
    def from_env(cls: type[S], env: Mapping[str, str] | None = None, **overrides: Any) -> S:
        env = os.environ if env is None else env
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env_value(env, ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, raw, hints[f.name])
            elif f.name == "nats_url" and env.get("NATS_URL"):
                values[f.name] = env["NATS_URL"]
        values.update(overrides)
        return cls(**values)

    @classmethod
    def env_doc(cls) -> list[tuple[str, str, Any]]:
        """(variable, type, default) for every setting: the source of docs/configuration.md."""
        hints = typing.get_type_hints(cls)
        return [
            (ENV_PREFIX + f.name.upper(), str(hints[f.name]).replace("typing.", ""), f.default)
            for f in dataclasses.fields(cls)
        ]
