"""The deployment under a real Docker engine: the images build (CPU torch), auth-init writes the
secrets, `docker compose up --wait` brings every service to healthy, the page answers on
127.0.0.1:8080, the cli mints a token that names the public URLs, a container cannot read
another's secret, and nothing is published beyond 127.0.0.1 (the monitor not at all).

Skipped, with the reason, where there is no Docker engine (conftest.py): this machine has the
docker client but no engine. tests/service/test_compose_run.py runs the same commands,
environments and secret files as plain processes, and tests/unit/test_compose.py reads the rest."""

from __future__ import annotations

import json
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.docker]
ROOT = Path(__file__).resolve().parents[2]
BUILD_S = 1800  # torch, MediaPipe and OpenCV wheels on a cold cache


def _compose(
    project: str, *args: str, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["docker", "compose", "-p", project, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert proc.returncode == 0, f"docker compose {' '.join(args)}:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def project() -> Iterator[str]:
    name = f"chameleon-test-{uuid.uuid4().hex[:8]}"
    _compose(name, "build", timeout=BUILD_S)
    try:
        _compose(name, "run", "--rm", "auth-init")
        _compose(name, "up", "-d", "--wait", "--wait-timeout", "600", timeout=700)
        yield name
    finally:
        _compose(name, "down", "-v", "--remove-orphans", check=False)


def test_every_service_is_healthy_and_the_page_answers(project: str) -> None:
    ps = [
        json.loads(line) for line in _compose(project, "ps", "--format", "json").stdout.splitlines() if line
    ]
    running = {p["Service"]: p for p in ps}
    for name in ("nats", "auth", "ingest", "garments", "preprocess", "generator", "web"):
        assert running[name]["Health"] == "healthy", running.get(name)
    with urllib.request.urlopen("http://127.0.0.1:8080/healthz", timeout=5) as r:
        assert json.loads(r.read())["status"] == "ok"


def test_the_cli_mints_a_token_with_the_public_urls(project: str) -> None:
    out = _compose(
        project, "--profile", "tools", "run", "--rm", "cli", "session", "create", "alice", "--json"
    )
    session = json.loads(out.stdout.strip().splitlines()[-1])
    assert session["nats_url"] == "nats://localhost:4222" and session["ws_url"] == "ws://localhost:8443"


def test_secrets_stay_apart_and_ports_stay_on_loopback(project: str) -> None:
    assert (
        _compose(project, "exec", "-T", "ingest", "cat", "/run/secrets/issuer_seed", check=False).returncode
        != 0
    )
    assert (
        _compose(project, "exec", "-T", "auth", "cat", "/run/secrets/issuer_seed", check=False).returncode
        == 0
    )
    uid = _compose(project, "exec", "-T", "ingest", "id", "-u").stdout.strip()
    assert uid == "10002"
    assert _compose(project, "port", "nats", "4222").stdout.strip() == "127.0.0.1:4222"
    assert _compose(project, "port", "nats", "8222", check=False).stdout.strip() in ("", ":0")
