"""compose.yaml run as compose would run it, without Docker: the same commands, the same
environments and the same secret files, as plain processes against a real nats-server of the
version compose runs. auth-init writes the keys, the server config and one file per secret; the
server loads that config; each service starts with its own secrets only (a secret it does not
mount is absent, as in its container) and becomes healthy as its own NATS user; the catalogue job
loads the garments as admin; `cli session create --json` tells a client the public URLs; the page
is told the WebSocket URL of the host it was loaded from, and the listener admits the page from
localhost and 127.0.0.1 and refuses any other origin.

What only Docker can show (images build, uids, read-only roots, published ports) is the docker
tier's (tests/e2e/test_compose_docker.py), skipped here with its reason."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import compose as cf
from harness import probe
from harness.natsserver import find_binary, reserve_port
from runtime.bus import connect
from shared.auth import NatsCredentials

pytestmark = pytest.mark.service
ROOT = Path(__file__).resolve().parents[2]
RUN = ("auth", "garments", "ingest", "preprocess", "generator", "web")  # every long-running service


def _free_port() -> int:
    s = reserve_port()
    port = s.getsockname()[1]
    s.close()
    return port


def _version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    return re.search(r"v(\d+\.\d+\.\d+)", out).group(1)  # type: ignore[union-attr]


class Deployment:
    def __init__(self, tmp: Path) -> None:
        self.compose = cf.load()
        self.services = cf.services(self.compose)
        self.secrets = tmp / "secrets"
        self.store = tmp / "data"
        self.ports = {
            "client": _free_port(),
            "monitor": _free_port(),
            "ws": _free_port(),
            "web": _free_port(),
        }
        self.url = f"nats://127.0.0.1:{self.ports['client']}"
        self.health: dict[str, int] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = tmp / "logs"
        self.logs.mkdir()

    def container_env(self, name: str) -> dict[str, str]:
        """What a container has on its own: the server at its address, its ports on loopback."""
        env = {"NATS_URL": self.url, "CHAMELEON_METRICS_HOST": "127.0.0.1"}
        if name in RUN:
            self.health[name] = _free_port()
            env["CHAMELEON_METRICS_PORT"] = str(self.health[name])
        if name == "web":
            env.update(
                CHAMELEON_WEB_HOST="127.0.0.1",
                CHAMELEON_WEB_PORT=str(self.ports["web"]),
                CHAMELEON_WEB_ROOT=str(ROOT / "web"),
                CHAMELEON_WS_URL=f"ws://{{host}}:{self.ports['ws']}",
            )
        return env

    def process(self, name: str, args: list[str] | None = None) -> cf.Process:
        svc = self.services[name]
        if args is not None:
            svc = cf.Service(name, {**svc.spec, "command": args})
        return cf.as_process(svc, self.compose, self.secrets, self.container_env(name))

    def auth_init(self) -> dict:
        cmd = list(self.services["auth-init"].command)
        swap = {
            "/secrets": str(self.secrets),
            "/data": str(self.store),
            "0.0.0.0:4222": f"127.0.0.1:{self.ports['client']}",
            "0.0.0.0:8222": f"127.0.0.1:{self.ports['monitor']}",
            "0.0.0.0:8443": f"127.0.0.1:{self.ports['ws']}",
        }
        cmd = [swap.get(a, a) for a in cmd]
        if os.geteuid() != 0:  # only root may give files away; the owners are checked statically
            cmd = [a for i, a in enumerate(cmd) if a != "--owner" and (i == 0 or cmd[i - 1] != "--owner")]
        process = cf.as_process(cf.Service("auth-init", {"command": cmd}), self.compose, self.secrets)
        done = subprocess.run(
            process.argv, env=process.env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    def start(self, name: str) -> None:
        p = self.process(name)
        if name == "nats":
            p.argv[0:0] = [find_binary()]
        log = open(self.logs / f"{name}.log", "wb")
        self.procs.append(subprocess.Popen(p.argv, env=p.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))

    def wait_healthy(self, name: str, port: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not probe.healthy(port):
            proc = self.procs[-1] if name == "nats" else None
            assert time.monotonic() < deadline, f"{name} not healthy: {self.log(name)}"
            assert proc is None or proc.poll() is None, f"{name} exited: {self.log(name)}"
            time.sleep(0.2)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        for proc in reversed(self.procs):  # services first, while their server is there to drain to
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = Deployment(tmp_path_factory.mktemp("compose"))
    try:
        d.written = d.auth_init()  # type: ignore[attr-defined]
        d.start("nats")
        d.wait_healthy("nats", d.ports["monitor"], 30)
        for name in RUN:
            d.start(name)
        for name in RUN:
            d.wait_healthy(name, d.health[name])
        yield d
    finally:
        d.stop()


def test_the_server_is_the_version_compose_runs() -> None:
    image = cf.services(cf.load())["nats"].spec["image"]
    assert image == f"nats:{_version(find_binary())}-alpine"


def test_auth_init_writes_one_file_per_secret_owned_by_its_reader(deployment: Deployment) -> None:
    written = deployment.written  # type: ignore[attr-defined]
    files = {Path(f).name for f in cf.secret_files(deployment.compose).values()}
    assert {p.name for p in deployment.secrets.iterdir()} >= files
    for name in files:
        mode = (deployment.secrets / name).stat().st_mode & 0o777
        assert mode == 0o440, f"{name}: {oct(mode)}"
    assert (deployment.secrets / "auth-keys.json").stat().st_mode & 0o077 == 0
    assert written["ws_origins"] == [
        "http://localhost:8080",
        "https://localhost",
        "http://127.0.0.1:8080",
        "https://127.0.0.1",
    ]
    if os.geteuid() == 0:  # the owners compose asked for
        owners = cf.owners(deployment.services["auth-init"].command)
        for name in files:
            st = (deployment.secrets / name).stat()
            assert (st.st_uid, st.st_gid) == owners[name], name
        assert (deployment.store.stat().st_uid, deployment.store.stat().st_gid) == owners["store"]


def test_each_service_runs_on_its_own_secrets(deployment: Deployment) -> None:
    for name in RUN:
        health = probe.get_json(deployment.health[name])
        assert health["status"] == "ok", (name, health)
        metrics = probe.get(deployment.health[name], "/metrics").decode()
        assert "process_resident_memory_bytes" in metrics, name
    # a password that is not in the keys refuses the connection, so healthy means: its own user
    with pytest.raises(Exception, match="Authorization"):
        asyncio.run(_connect(deployment.url, NatsCredentials("ingest", "wrong")))
    # and a service given none of its secrets does not start (as in a container without them)
    stray = deployment.process("ingest")
    stray.env["CHAMELEON_NATS_PASSWORD_FILE"] = str(deployment.secrets / "not-mounted-ingest_password")
    proc = subprocess.run(stray.argv, env=stray.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "CHAMELEON_NATS_PASSWORD_FILE" in proc.stderr


async def _connect(url: str, creds: NatsCredentials) -> None:
    nc = await connect(url, "probe", give_up_after_s=5, credentials=creds)
    await nc.close()


def test_the_catalogue_job_and_the_cli_as_compose_runs_them(deployment: Deployment) -> None:
    catalogue = deployment.process("catalogue")
    done = subprocess.run(
        catalogue.argv, env=catalogue.env, cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cli = deployment.process("cli", ["session", "create", "alice", "--json"])
    done = subprocess.run(cli.argv, env=cli.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    session = json.loads(done.stdout)
    # the public URLs, not the compose network's nats://nats:4222, and a WebSocket URL
    assert session["nats_url"] == "nats://localhost:4222" and session["ws_url"] == "ws://localhost:8443"
    asyncio.run(_connect(deployment.url, NatsCredentials(token=session["token"])))
    listing = deployment.process("cli", ["garments", "list", "--json"])
    done = subprocess.run(listing.argv, env=listing.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and len(done.stdout.splitlines()) >= 10, done.stderr


def _post(url: str, host: str) -> dict:
    req = urllib.request.Request(url, method="POST", headers={"Host": host})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def _upgrade(port: int, origin: str) -> int:
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
            ).encode()
        )
        return int(s.recv(200).split(b" ", 2)[1])


def test_the_page_works_from_localhost_and_127_0_0_1_alike(deployment: Deployment) -> None:
    web = f"http://127.0.0.1:{deployment.ports['web']}/api/session"
    ws = deployment.ports["ws"]
    for host in ("localhost", "127.0.0.1"):
        session = _post(web, f"{host}:8080")
        assert session["ws_servers"] == [f"ws://{host}:{ws}"], session
        assert session["token"]
        assert _upgrade(ws, f"http://{host}:8080") == 101, host
    assert _upgrade(ws, "http://evil.example:8080") == 403
    assert _post(web, "evil.example")["ws_servers"] == [f"ws://localhost:{ws}"]
