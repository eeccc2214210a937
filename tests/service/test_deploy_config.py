"""The deployment path of compose.yaml without Docker: ``chameleon auth init`` writes the keys and
the server config, a real nats-server runs that config, the auth service and a worker take
everything from the keys file (``CHAMELEON_KEYS_FILE`` plus their user name), and then the server
refuses a client without credentials and admits one with a token minted from that file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness.natsserver import find_binary, reserve_port
from runtime.bus import connect
from shared.auth import ENV_KEYS_FILE, ENV_USER, NatsCredentials
from shared.client import NatsRefused
from shared.tokens import mint

pytestmark = pytest.mark.service
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    s = reserve_port()
    port = s.getsockname()[1]
    s.close()
    return port


def _healthy(port: int, timeout_s: float = 60.0, path: str = "/healthz") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"nothing healthy on port {port}")


@pytest.fixture
def deployment(tmp_path: Path):
    client, http, ws = _free_port(), _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_URL", "CHAMELEON_"))}
    init = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "auth",
            "init",
            "--out",
            str(tmp_path / "secrets"),
            "--listen",
            f"127.0.0.1:{client}",
            "--http",
            f"127.0.0.1:{http}",
            "--websocket",
            f"127.0.0.1:{ws}",
            "--store-dir",
            str(tmp_path / "data"),
            "--ws-origin",
            "http://localhost:8080",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    written = json.loads(init.stdout.strip().splitlines()[-1])
    assert written["created"] is True
    keys_file = Path(written["keys_file"])
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"
    assert oct(Path(written["nats_conf"]).stat().st_mode & 0o777) == "0o440"  # its reader alone
    procs = [
        subprocess.Popen(
            [find_binary(), "-c", written["nats_conf"]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    ]
    try:
        _healthy(http)
        url = f"nats://127.0.0.1:{client}"
        for role in ("auth", "ingest"):
            port = _free_port()
            service_env = {
                **env,
                "NATS_URL": url,
                ENV_KEYS_FILE: str(keys_file),
                ENV_USER: role,
                "CHAMELEON_METRICS_PORT": str(port),
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", f"services.{role}.main"],
                    env=service_env,
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            _healthy(port)
        yield url, keys_file
    finally:  # the services first, while their server is there to drain to; nothing left behind
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_the_generated_config_runs_secured_with_keys_file_credentials(deployment) -> None:
    url, keys_file = deployment
    with pytest.raises(NatsRefused):
        await connect(url, "anonymous", give_up_after_s=5, credentials=NatsCredentials())
    seed = json.loads(keys_file.read_text())["token_seed"]
    nc = await connect(
        url, "page", give_up_after_s=5, credentials=NatsCredentials(token=mint(seed, "carol", 60))
    )
    try:
        assert nc.is_connected
    finally:
        await nc.close()
    admin = NatsCredentials.from_env({ENV_KEYS_FILE: str(keys_file), ENV_USER: "admin"})
    assert admin.password and admin.user == "admin"
    nc = await connect(url, "admin", give_up_after_s=5, credentials=admin)
    await nc.close()
    # a second init keeps the keys: tokens and passwords stay valid across `docker compose up`s
    again = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli.main", "auth", "init", "--out", str(keys_file.parent)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert json.loads(again.stdout.strip().splitlines()[-1])["created"] is False
    assert json.loads(keys_file.read_text())["token_seed"] == seed


def test_keys_file_credentials_need_the_user_in_the_file(tmp_path: Path) -> None:
    from shared.auth import KeysFileError

    (tmp_path / "k.json").write_text(json.dumps({"passwords": {"ingest": "pw"}}))
    env = {ENV_KEYS_FILE: str(tmp_path / "k.json"), ENV_USER: "ingest"}
    assert NatsCredentials.from_env(env).password == "pw"
    assert NatsCredentials.from_env({**env, "CHAMELEON_NATS_PASSWORD": "explicit"}).password == "explicit"
    with pytest.raises(KeysFileError, match="no password for user 'generator'"):
        NatsCredentials.from_env({**env, ENV_USER: "generator"})
    with pytest.raises(KeysFileError, match="not a readable keys file"):
        NatsCredentials.from_env({**env, ENV_KEYS_FILE: str(tmp_path / "missing.json")})
