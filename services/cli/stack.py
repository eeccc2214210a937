"""A process tree of services: an embedded nats-server (unless a URL is given) and one child
process per service, each with its own health port; started in dependency order, stopped on exit.

A child's health port is reserved, not guessed: this process keeps a socket bound to a port the
kernel picked (so no other ``bind(0)`` or outgoing connection can be given it) until the child,
which binds the same port with ``SO_REUSEADDR`` as asyncio does on Linux, answers on it.

Used by ``chameleon up`` (everything that exists), ``chameleon demo`` and the transport benchmark.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from shared.natsserver import EmbeddedNats

# Start order: the garment catalogue and the data path in pipeline order.
SERVICE_MODULES: dict[str, str] = {
    "garments": "services.garments.main",
    "ingest": "services.ingest.main",
    "preprocess": "services.preprocess.main",
    "generator": "services.generator.main",
    "passthrough": "services.passthrough.main",
}


class StackError(RuntimeError):
    """A service did not become healthy."""


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def available_services() -> list[str]:
    """Every service whose module exists in this checkout. The pass-through stand-in only runs
    when there is no generator yet."""
    names = [n for n, m in SERVICE_MODULES.items() if _exists(m)]
    if "generator" in names:
        names.remove("passthrough")
    return names


def reserve_port() -> socket.socket:
    """A loopback socket bound, never listening, to a port the kernel picked: the reservation
    lasts until it is closed, and a child may listen on the port meanwhile (``SO_REUSEADDR``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    health_port: int
    log: IO[bytes] | None
    reservation: socket.socket | None = None  # holds health_port until the child serves it

    def release_port(self) -> None:
        if self.reservation is not None:
            self.reservation.close()
            self.reservation = None


@dataclass
class Stack:
    services: list[str]
    nats_url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None  # None: children log to this process's stderr
    ready_timeout_s: float = 90.0
    nats: EmbeddedNats | None = None
    children: list[Child] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.nats_url or (self.nats.url if self.nats else "")

    def start(self) -> Stack:
        if not self.nats_url:
            self.nats = EmbeddedNats().start()
        try:
            for name in self.services:
                self._spawn(name)
            for child in self.children:
                self._wait_healthy(child)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str) -> None:
        if name not in SERVICE_MODULES:
            raise StackError(f"unknown service {name!r}; known: {', '.join(SERVICE_MODULES)}")
        reservation = reserve_port()
        port = reservation.getsockname()[1]
        env = {
            **os.environ,
            **self.env,
            "NATS_URL": self.url,
            "CHAMELEON_NATS_URL": self.url,
            "CHAMELEON_METRICS_PORT": str(port),
        }
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"{name}.log", "ab")  # closed in stop()
        proc = subprocess.Popen(
            [sys.executable, "-m", SERVICE_MODULES[name]],
            env=env,
            stdout=log or None,
            stderr=subprocess.STDOUT if log else None,
        )
        self.children.append(Child(name, proc, port, log, reservation))

    def _wait_healthy(self, child: Child) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"http://127.0.0.1:{child.health_port}/healthz"
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise StackError(f"service {child.name} exited with code {child.proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200 and json.loads(resp.read()).get("status") == "ok":
                        child.release_port()  # the child listens on it now
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
            time.sleep(0.1)
        raise StackError(f"service {child.name} not healthy after {self.ready_timeout_s:.0f} s")

    def health(self) -> dict[str, dict]:
        out = {}
        for c in self.children:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{c.health_port}/healthz", timeout=1) as r:
                    out[c.name] = json.loads(r.read())
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError) as exc:
                out[c.name] = {"status": "unreachable", "error": str(exc)}
        return out

    def stop(self, timeout_s: float = 10.0) -> None:
        for c in reversed(self.children):
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for c in reversed(self.children):
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()
            c.release_port()
            if c.log:
                c.log.close()
        self.children.clear()
        if self.nats is not None:
            self.nats.close()
            self.nats = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
