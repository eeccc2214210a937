"""The Python client of docs/frontends.md (examples/python_client.py, on the thin client module
``shared.client``) runs against real services: its frames come back, its events arrive."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from harness.stack import Stack
from shared.control import ensure_control_stream
from shared.subjects import Subjects

pytestmark = pytest.mark.service
ROOT = Path(__file__).resolve().parents[2]


async def _control_stream(nats_url: str) -> None:
    nc = NATS()
    await nc.connect(nats_url)
    await ensure_control_stream(nc.jetstream(), Subjects())  # the generator's job in a full stack
    await nc.close()


def test_the_documented_python_client_works(nats_url: str, tmp_path: Path, bus_photo) -> None:
    import cv2

    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), bus_photo)
    asyncio.run(_control_stream(nats_url))
    with Stack(["ingest", "passthrough"], nats_url=nats_url, log_dir=tmp_path / "logs"):
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "python_client.py"),
                "--nats",
                nats_url,
                "--session",
                "example-1",
                "--image",
                str(photo),
                "--frames",
                "20",
                "--fps",
                "20",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # a frame the link had no room for is dropped, never queued (its acknowledgements come late on a
    # loaded machine even on loopback): every frame was sent or dropped, and most were sent
    assert result["frames_sent"] + result["frames_dropped_by_link"] == 20
    assert result["frames_sent"] >= 16
    assert result["frames_received"] >= 15, result
    assert 0 < result["latency_ms_p50"] < 2000
