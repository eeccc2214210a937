"""A supervised process tree of services: an embedded nats-server or three-node cluster (unless a
URL is given) and one child process per service worker, each with its own health port; started in
dependency order, restarted when they exit or hang, stopped on exit.

A child's health port is reserved, not guessed: this process keeps a socket bound to a port the
kernel picked (so no other ``bind(0)`` or outgoing connection can be given it) until the child,
which binds the same port with ``SO_REUSEADDR`` as asyncio does on Linux, answers on it.

Supervision (``supervise_once``, one pass; ``chameleon up`` loops it): a child that exits is
started again after a back-off (0.5 s doubling to 10 s, back to 0.5 s once a child has stayed
healthy for 30 s), so a crash loop never spins; a child whose ``/healthz`` has not answered 200
for ``hang_timeout_s`` (after its first healthy answer; ``ready_timeout_s`` before it) is killed
with SIGKILL and started again: a wedged process serves nobody. Children are independent: one
dying never stops another.

Used by ``chameleon up`` (everything that exists), ``chameleon demo`` and the transport benchmark.

``secure`` (``up`` and ``demo`` by default; off for every other caller): the embedded server gets
accounts, one user per service and the auth callout (docs/security.md), the auth service starts
first, and each child connects as its own service user. The keys live in ``DATA_DIR/auth-keys.json``
(mode 0600, made on first use) so tokens minted by ``chameleon session create`` keep working.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from harness import probe
from harness.natsserver import EmbeddedCluster, EmbeddedNats, reserve_port
from runtime.logging import get_logger
from services.auth.keys import AuthKeys
from shared.auth import ADMIN_USER, ENV_TOKEN, SYSTEM_USER, NatsCredentials
from shared.subjects import DEFAULT_PREFIX, Subjects
from shared.tokens import DEFAULT_TTL_S, mint

log = get_logger("stack")

# Start order: the garment catalogue and the data path in pipeline order.
SERVICE_MODULES: dict[str, str] = {
    "auth": "services.auth.main",  # only in a secure stack, which starts it first
    "garments": "services.garments.main",
    "ingest": "services.ingest.main",
    "preprocess": "services.preprocess.main",
    "generator": "services.generator.main",
    "passthrough": "services.passthrough.main",
    "web": "services.web.main",  # the shopper page; its server gets a WebSocket listener
}
# Stateful stages: ``workers`` processes of each, among which sessions are placed (docs/fleet.md).
SCALED_SERVICES = ("preprocess", "generator")
MAX_JS_REPLICAS = 3
KEYS_FILE = "auth-keys.json"  # in the data dir, beside the JetStream store
# ``metrics_port_base``: service k of SERVICE_MODULES (in that order) serves its worker i's
# /metrics and /healthz on base + PORT_STRIDE * k + (i - 1), whichever services run: stable
# across restarts and runs, so a Prometheus outside the stack can scrape it
PORT_STRIDE = 10


class StackError(RuntimeError):
    """A service did not become healthy, or the stack cannot start as asked (a port taken)."""


def stable_port(base: int, name: str, index: int) -> int:
    """Worker ``index`` (from 1) of service ``name``'s health port under ``metrics_port_base``."""
    if not 1 <= index <= PORT_STRIDE:
        raise StackError(f"with a metrics port base, at most {PORT_STRIDE} workers per service")
    return base + PORT_STRIDE * list(SERVICE_MODULES).index(name) + index - 1


def stable_port_span() -> int:
    """How many ports from the base ``metrics_port_base`` may use."""
    return PORT_STRIDE * len(SERVICE_MODULES)


def reserve(port: int, what: str) -> socket.socket:
    """``reserve_port`` for one given port; a one-line ``StackError`` naming ``what`` (the flag that
    chooses it) when something else has it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        probe_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:  # SO_REUSEADDR lets us bind beside a listener: is anything listening there?
            probe_sock.settimeout(0.5)
            if probe_sock.connect_ex(("127.0.0.1", port)) == 0:
                raise OSError(f"something is listening on {port}")
        finally:
            probe_sock.close()
    except OSError:
        sock.close()
        raise StackError(f"port {port} is taken by another program: choose another with {what}") from None
    return sock


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def available_services() -> list[str]:
    """Every service whose module exists in this checkout. The pass-through stand-in only runs
    when there is no generator yet."""
    names = [n for n, m in SERVICE_MODULES.items() if _exists(m) and n != "auth"]
    if "generator" in names:
        names.remove("passthrough")
    return names


def default_data_dir() -> Path:
    """Where ``chameleon up`` keeps the embedded server's JetStream store across runs."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fashion-chameleon" / "nats"


@dataclass
class Child:
    """One service worker process and what supervision knows about it."""

    name: str  # the service
    worker_id: str  # <service>-<i>: CHAMELEON_WORKER_ID of the process
    proc: subprocess.Popen[bytes]
    health_port: int
    log: IO[bytes] | None
    reservation: socket.socket | None = None  # holds health_port until the child serves it
    started_at: float = field(default_factory=time.monotonic)
    healthy_at: float | None = None  # last 200 from /healthz since this process started
    healthy_since: float | None = None  # start of the current run of healthy answers
    restarts: int = 0
    backoff_s: float = 0.0  # the next restart's delay; 0: the stack's minimum
    restart_at: float | None = None  # set while an exited child waits for its restart

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
    workers: int = 1  # processes of each SCALED_SERVICES service
    data_dir: Path | None = None  # the embedded server's JetStream store, kept; None: temporary
    nats_cluster: int = 1  # embedded servers: 1, or a JetStream cluster of that many nodes
    hang_timeout_s: float = 5.0
    restart_min_s: float = 0.5
    restart_max_s: float = 10.0
    healthy_reset_s: float = 30.0  # healthy this long: the back-off starts again from the minimum
    secure: bool = False  # authorization on: service users, auth callout, the auth service
    keys: AuthKeys | None = None  # secure: given, else DATA_DIR/auth-keys.json, else fresh ones
    web_port: int = 0  # the page's port when "web" runs; 0: a free one (``web_url`` says which)
    web_host: str = "127.0.0.1"
    metrics_port_base: int = 0  # 0: each child's health port is a free one; else ``stable_port``
    nats: EmbeddedNats | EmbeddedCluster | None = None
    children: list[Child] = field(default_factory=list)

    _web_reservation: socket.socket | None = None

    @property
    def url(self) -> str:
        return self.nats_url or (self.nats.url if self.nats else "")

    @property
    def ws_url(self) -> str:
        """The embedded server's WebSocket URL(s) for browsers; ``CHAMELEON_WS_URL`` with an
        external server (empty: none known)."""
        if self.nats is not None:
            return self.nats.ws_url
        return self.env.get("CHAMELEON_WS_URL") or os.environ.get("CHAMELEON_WS_URL", "")

    @property
    def web_url(self) -> str:
        """The page's URL; empty when the web service is not part of this stack."""
        if "web" not in self.services or not self.web_port:
            return ""
        return f"http://{self.web_host}:{self.web_port}/"

    def start(self) -> Stack:
        unknown = [n for n in self.services if n not in SERVICE_MODULES]
        if unknown:
            raise StackError(f"unknown service {unknown[0]!r}; known: {', '.join(SERVICE_MODULES)}")
        if self.secure and self.nats_url:
            raise StackError("a secure stack configures its own embedded server: unset NATS_URL")
        auth = None
        if self.secure:
            if self.keys is None and self.data_dir is not None:
                self.keys = AuthKeys.load_or_create(self.data_dir / KEYS_FILE)
            elif self.keys is None:  # a temporary store: keys as short-lived as the server
                self.keys = AuthKeys.generate()
            auth = self.keys.server_auth(self.subjects)
        websocket = "web" in self.services
        if websocket and not self.web_port:  # held until the web service listens on it
            self._web_reservation = reserve_port()
            self.web_port = self._web_reservation.getsockname()[1]
        elif websocket:
            self._web_reservation = reserve(self.web_port, "--web-port (0: a free one)")
        # browsers may reach the WebSocket listener from the page only, not from any site they
        # visit; the page is the same whether the browser calls this machine localhost or 127.0.0.1
        origins = (
            tuple(
                f"http://{h}:{self.web_port}"
                for h in dict.fromkeys((self.web_host, "localhost", "127.0.0.1"))
            )
            if websocket
            else ()
        )
        if not self.nats_url:
            if self.nats_cluster > 1:
                self.nats = EmbeddedCluster(
                    self.nats_cluster,
                    store_dir=self.data_dir,
                    auth=auth,
                    websocket=websocket,
                    websocket_origins=origins,
                ).start()
            else:
                self.nats = EmbeddedNats(
                    store_dir=self.data_dir, auth=auth, websocket=websocket, websocket_origins=origins
                ).start()
        names = (["auth"] if self.secure else []) + [n for n in self.services if n != "auth"]
        try:
            for name in names:
                count = max(1, self.workers) if name in SCALED_SERVICES else 1
                for i in range(1, count + 1):
                    self.children.append(self._spawn(name, f"{name}-{i}"))
            for child in self.children:
                self._wait_healthy(child)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def subjects(self) -> Subjects:
        prefix = self.env.get("CHAMELEON_SUBJECT_PREFIX") or os.environ.get("CHAMELEON_SUBJECT_PREFIX")
        return Subjects(prefix or DEFAULT_PREFIX)

    @property
    def admin_credentials(self) -> NatsCredentials | None:
        """What this process's own tools connect with (catalogue load, the demo's measuring
        client): the admin user when secure; None (the environment's) otherwise."""
        return self.keys.credentials(ADMIN_USER) if self.secure and self.keys else None

    def session_credentials(self, session_id: str, ttl_s: float = DEFAULT_TTL_S) -> NatsCredentials | None:
        """A token for one session when secure, as ``chameleon session create`` mints it."""
        if not (self.secure and self.keys):
            return None
        return NatsCredentials(token=mint(self.keys.token_seed, session_id, ttl_s))

    def _auth_env(self, name: str) -> dict[str, str]:
        """A secure child's credentials (and the auth service's keys); none when open. A session
        token in this process's environment is never handed to a service."""
        if not (self.secure and self.keys):
            return {ENV_TOKEN: ""}
        if name == "web":  # no NATS user: it only mints session tokens, with the token key
            return {ENV_TOKEN: "", "CHAMELEON_WEB_TOKEN_SEED": self.keys.token_seed}
        env = self.keys.credentials(name).env()
        if name == "auth":
            env.update(
                CHAMELEON_AUTH_ISSUER_SEED=self.keys.issuer_seed,
                CHAMELEON_AUTH_TOKEN_PUBLIC_KEY=self.keys.token_public,
                CHAMELEON_AUTH_SYS_USER=SYSTEM_USER,
                CHAMELEON_AUTH_SYS_PASSWORD=self.keys.passwords[SYSTEM_USER],
            )
        return env

    def _child_env(self, name: str, worker_id: str, port: int) -> dict[str, str]:
        stack_env: dict[str, str] = {}
        if isinstance(self.nats, EmbeddedCluster):
            stack_env["CHAMELEON_JS_REPLICAS"] = str(min(MAX_JS_REPLICAS, self.nats.size))
        if name == "ingest":  # sessions are placed only on the stateful stages this stack runs
            stack_env["CHAMELEON_ADMIT_STAGES"] = ",".join(s for s in SCALED_SERVICES if s in self.services)
        if name == "web":
            stack_env.update(
                CHAMELEON_WEB_HOST=self.web_host,
                CHAMELEON_WEB_PORT=str(self.web_port),
                CHAMELEON_WS_URL=self.ws_url,
            )
        return {
            **os.environ,
            **stack_env,
            **self.env,
            **self._auth_env(name),
            "NATS_URL": self.url,
            "CHAMELEON_NATS_URL": self.url,
            "CHAMELEON_METRICS_PORT": str(port),
            "CHAMELEON_WORKER_ID": worker_id,
        }

    def _log_file(self, name: str, worker_id: str) -> IO[bytes] | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        several = name in SCALED_SERVICES and self.workers > 1
        return open(self.log_dir / f"{worker_id if several else name}.log", "ab")  # closed in stop()

    def _popen(
        self, name: str, worker_id: str, port: int, log_file: IO[bytes] | None
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", SERVICE_MODULES[name]],
            env=self._child_env(name, worker_id, port),
            stdout=log_file or None,
            stderr=subprocess.STDOUT if log_file else None,
        )

    def _reserve_health_port(self, name: str, worker_id: str) -> socket.socket:
        if not self.metrics_port_base:
            return reserve_port()
        index = int(worker_id.rsplit("-", 1)[1])
        return reserve(stable_port(self.metrics_port_base, name, index), "--metrics-port-base")

    def _spawn(self, name: str, worker_id: str) -> Child:
        reservation = self._reserve_health_port(name, worker_id)
        port = reservation.getsockname()[1]
        log_file = self._log_file(name, worker_id)
        proc = self._popen(name, worker_id, port, log_file)
        return Child(name, worker_id, proc, port, log_file, reservation)

    def _respawn(self, child: Child) -> None:
        """Start an exited child again, on a freshly reserved port (its old one may be taken), or
        its stable one under ``metrics_port_base``."""
        child.release_port()
        child.reservation = self._reserve_health_port(child.name, child.worker_id)
        child.health_port = child.reservation.getsockname()[1]
        child.proc = self._popen(child.name, child.worker_id, child.health_port, child.log)
        child.started_at = time.monotonic()
        child.healthy_at = child.healthy_since = child.restart_at = None
        child.restarts += 1
        log.info("service_restarted", worker=child.worker_id, restarts=child.restarts, port=child.health_port)

    def _probe(self, child: Child, timeout_s: float = 1.0) -> bool:
        return probe.healthy(child.health_port, timeout_s)

    def _wait_healthy(self, child: Child) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise StackError(f"service {child.worker_id} exited with code {child.proc.returncode}")
            if self._probe(child):
                child.healthy_at = child.healthy_since = time.monotonic()
                child.release_port()  # the child listens on it now
                if child.name == "web":
                    self._release_web_port()
                return
            time.sleep(0.1)
        raise StackError(f"service {child.worker_id} not healthy after {self.ready_timeout_s:.0f} s")

    def _schedule_restart(self, child: Child, now: float) -> None:
        delay = child.backoff_s or self.restart_min_s
        child.backoff_s = min(delay * 2, self.restart_max_s)
        child.restart_at = now + delay
        child.release_port()

    def supervise_once(self) -> list[str]:
        """One supervision pass over every child; returns what it did (``"<worker> exited"``,
        ``"<worker> hung"``, ``"<worker> restarted"``) for the caller to report."""
        actions: list[str] = []
        for child in self.children:
            now = time.monotonic()
            if child.restart_at is not None:
                if now >= child.restart_at:
                    try:
                        self._respawn(child)
                    except StackError as exc:  # its stable port is taken meanwhile: try again later
                        self._schedule_restart(child, now)
                        actions.append(f"{child.worker_id} not restarted: {exc}")
                        continue
                    actions.append(f"{child.worker_id} restarted")
                continue
            code = child.proc.poll()
            if code is not None:
                self._schedule_restart(child, now)
                log.warning(
                    "service_exited", worker=child.worker_id, code=code, restart_in_s=child.restart_at - now
                )
                actions.append(f"{child.worker_id} exited")
                continue
            if self._probe(child):
                child.healthy_at = now
                child.release_port()
                child.healthy_since = child.healthy_since or now
                if now - child.healthy_since >= self.healthy_reset_s:
                    child.backoff_s = 0.0
                continue
            child.healthy_since = None
            since = child.healthy_at if child.healthy_at is not None else child.started_at
            allowed = self.hang_timeout_s if child.healthy_at is not None else self.ready_timeout_s
            if now - since > allowed:
                child.proc.kill()  # SIGKILL works on a stopped (SIGSTOP) process too
                child.proc.wait()
                self._schedule_restart(child, now)
                log.warning(
                    "service_hung",
                    worker=child.worker_id,
                    unhealthy_s=round(now - since, 1),
                    restart_in_s=child.restart_at - now,
                )
                actions.append(f"{child.worker_id} hung")
        return actions

    def health(self) -> dict[str, dict]:
        out = {}
        for c in self.children:
            try:
                out[c.worker_id] = probe.get_json(c.health_port)
            except (OSError, ValueError) as exc:
                out[c.worker_id] = {"status": "unreachable", "error": str(exc)}
        return out

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every child (SIGTERM, SIGKILL after ``timeout_s``) and the embedded server; a
        JetStream store in ``data_dir`` stays where it is."""
        for c in reversed(self.children):
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
                c.proc.send_signal(signal.SIGCONT)  # a stopped child handles SIGTERM only when resumed
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
        self._release_web_port()
        if self.nats is not None:
            self.nats.close()  # removes the store only when it made a temporary one
            self.nats = None

    def _release_web_port(self) -> None:
        if self._web_reservation is not None:
            self._web_reservation.close()
            self._web_reservation = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
