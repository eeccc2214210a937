"""Command-line clients give up in bounded time: against a port where no NATS listens, and against
a cluster that lost its JetStream quorum, each ``chameleon`` command exits non-zero with one line
naming the server instead of retrying forever. Real subprocesses, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from harness.natsserver import EmbeddedCluster, reserve_port
from runtime.bus import connect
from shared.client import NatsUnavailable

pytestmark = pytest.mark.service

ROOT = Path(__file__).resolve().parents[2]
START_SLACK_S = 10.0  # interpreter start and imports on a loaded two-core machine
NEVER_S = 60.0  # a command still running after this is retrying forever


@pytest.fixture
def closed_url() -> Iterator[str]:
    """A loopback port that refuses connections: bound by us, never listening."""
    sock = reserve_port()
    try:
        yield f"nats://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def _chameleon(args: list[str], url: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NATS_URL", "CHAMELEON_NATS_URL", "CHAMELEON_CONNECT_TIMEOUT_S")
    }
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=ROOT,
        env={**clean, "NATS_URL": url, **env},
        capture_output=True,
        text=True,
        timeout=NEVER_S,
    )
    return proc, time.monotonic() - started


def test_swap_gives_up_on_an_unreachable_server_after_5_s(closed_url: str) -> None:
    proc, took = _chameleon(["swap", "--session", "s1", "--garment", "tee-red-solid"], closed_url)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"chameleon swap: NATS at {closed_url} unreachable after 5 s"]
    assert proc.stdout == ""
    assert 5.0 <= took < 5.0 + START_SLACK_S


@pytest.mark.parametrize("command", ["watch", "garments", "camera"])
def test_every_nats_command_takes_its_bound_from_the_environment(
    command: str, closed_url: str, tmp_path: Path
) -> None:
    photo = tmp_path / "frame.png"
    cv2.imwrite(str(photo), np.full((48, 64, 3), 128, np.uint8))
    args = {
        "watch": ["watch", "--session", "s1"],
        "garments": ["garments", "list"],
        "camera": ["camera", "--session", "s1", "--image", str(photo), "--frames", "1"],
    }[command]
    proc, took = _chameleon(args, closed_url, CHAMELEON_CONNECT_TIMEOUT_S="1")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"chameleon {command}: NATS at {closed_url} unreachable after 1 s"
    )
    assert 1.0 <= took < 1.0 + START_SLACK_S


def test_swap_gives_up_when_jetstream_cannot_store_it(nats_cluster: EmbeddedCluster) -> None:
    """The server answers but JetStream has lost its quorum: the publish is bounded too."""
    nats_cluster.kill_node(1)
    nats_cluster.kill_node(2)
    url = nats_cluster.nodes[0].url
    proc, took = _chameleon(["swap", "--session", "s1", "--garment", "tee-red-solid", "--timeout", "2"], url)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"chameleon swap: JetStream at {url} did not store the swap within 2 s")
    )
    assert 2.0 <= took < 2.0 + START_SLACK_S


async def test_connect_names_every_url_it_tried(closed_url: str) -> None:
    other = reserve_port()
    try:
        urls = [closed_url, f"nats://127.0.0.1:{other.getsockname()[1]}"]
        started = time.monotonic()
        with pytest.raises(NatsUnavailable) as raised:
            await connect(", ".join(urls), "timeout-test", give_up_after_s=0.5)
        assert 0.5 <= time.monotonic() - started < 3.0
        assert raised.value.urls == urls
        assert str(raised.value) == f"NATS at {','.join(urls)} unreachable after 0.5 s"
    finally:
        other.close()
