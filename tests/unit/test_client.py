"""The thin client (``shared/client.py``): what it loads, the headers of a camera frame, and the
epoch filter every viewer applies. Against real services it runs in
tests/service/test_frontend_examples.py and behind ``chameleon camera/watch/swap``."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.client import EpochFilter, camera_frame
from shared.headers import FrameMeta

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
CLIENT_DEPENDENCIES = {"nats", "msgpack", "numpy"}  # what `pip install fashion-chameleon` brings


def test_the_client_loads_nothing_but_nats_msgpack_numpy_and_the_contract() -> None:
    """What importing the client adds to what its three dependencies load themselves (nats-py
    loads aiohttp when it is installed, for WebSockets: that is nats-py's, not ours)."""
    code = (
        "import sys, msgpack, nats, nats.aio.client, nats.errors, nats.js, numpy\n"
        "before = set(sys.modules)\n"
        "import shared.client\n"
        "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    added = {m for m in out.stdout.split() if not m.startswith("_")} - set(sys.stdlib_module_names)
    assert added - CLIENT_DEPENDENCIES == {"shared"}


def test_a_camera_frame_carries_the_documented_headers() -> None:
    headers = camera_frame("alice", 7, 640, 480, capture_ns=1_700_000_000_000_000_000).to_headers()
    assert headers["Chameleon-Session"] == "alice"
    assert headers["Chameleon-Seq"] == "7"
    assert headers["Chameleon-Capture-Ns"] == "1700000000000000000"
    assert (headers["Chameleon-Width"], headers["Chameleon-Height"]) == ("640", "480")
    assert headers["Chameleon-Trace"] == "camera.out=1700000000000000000"


@dataclass
class _Msg:
    headers: dict[str, str] | None
    data: bytes = b"jpeg"


def _frame(seq: int, epoch: int) -> _Msg:
    meta = FrameMeta(session_id="alice", seq=seq, capture_ns=1, width=2, height=2, epoch=epoch)
    return _Msg(meta.to_headers())


def test_the_epoch_filter_drops_a_replaced_owners_frames_and_bad_headers() -> None:
    epochs = EpochFilter()
    taken = [epochs.take(_frame(seq, epoch)) for seq, epoch in ((0, 5), (1, 5), (2, 4), (3, 7), (4, 5))]
    assert [f.meta.seq if f else None for f in taken] == [0, 1, None, 3, None]
    assert (epochs.epoch, epochs.stale_epoch) == (7, 2)
    assert epochs.take(_Msg({"Chameleon-Seq": "x"})) is None
    assert epochs.take(_Msg(None)) is None
    assert epochs.bad == 2
    kept = epochs.take(_frame(5, 7), keep_bytes=False)
    assert kept is not None and kept.jpeg == b""
