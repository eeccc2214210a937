"""Every expected mistake is one line on stderr and a non-zero exit, never a traceback: a missing
``--image`` or ``--video``, no webcam, no NATS_URL, a page port something else holds (with the flag
to use), a second ``up`` on a data dir in use, credentials that cannot do what the command needs, a
secret file that is not there. Real subprocesses, as a person runs them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.natsserver import EmbeddedNats

pytestmark = pytest.mark.service
ROOT = Path(__file__).resolve().parents[2]
NEVER_S = 60.0


def _chameleon(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_URL", "CHAMELEON_"))}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=NEVER_S,
    )


def _one_line(proc: subprocess.CompletedProcess[str], *, contains: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert contains in lines[0], lines[0]
    return lines[0]


URL = {"NATS_URL": "nats://127.0.0.1:9"}  # never reached: each mistake is found before connecting


def test_missing_inputs_and_no_webcam(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.jpg")
    _one_line(
        _chameleon(["camera", "--session", "a", "--image", missing], **URL),
        contains=f"chameleon camera: --image {missing}: no such file",
    )
    _one_line(
        _chameleon(["camera", "--session", "a", "--video", str(tmp_path)], **URL),
        contains="--video",
    )
    _one_line(
        _chameleon(["camera", "--session", "a", "--webcam", "63"], **URL),
        contains="cannot open webcam 63",
    )
    _one_line(_chameleon(["demo", "--video", missing]), contains=f"--video {missing}: no such file")
    _one_line(_chameleon(["watch", "--session", "a"]), contains="set NATS_URL")


def test_wrong_credentials_for_the_command(tmp_path: Path) -> None:
    import nkeys

    from shared.tokens import mint, new_seed

    token = mint(new_seed(nkeys.PREFIX_BYTE_OPERATOR), "alice", 60)
    _one_line(
        _chameleon(["garments", "add", str(tmp_path / "x.png")], CHAMELEON_TOKEN=token, **URL),
        contains="needs the admin user",
    )
    _one_line(
        _chameleon(["swap", "--session", "bob", "--garment", "g", "--token", token], **URL),
        contains="the token is for session 'alice', not 'bob'",
    )
    _one_line(
        _chameleon(
            ["garments", "list"],
            CHAMELEON_NATS_USER="ingest",
            CHAMELEON_NATS_PASSWORD_FILE=str(tmp_path / "absent"),
            **URL,
        ),
        contains="CHAMELEON_NATS_PASSWORD_FILE",
    )


def test_a_busy_page_port_names_the_flag(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _chameleon(
            ["up", "--data-dir", str(tmp_path / "d"), "--web-port", str(port), "--no-catalogue"]
        )
    _one_line(proc, contains=f"port {port} is taken by another program: choose another with --web-port")


def test_a_second_up_on_a_data_dir_in_use(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with EmbeddedNats(store_dir=store):  # the first `up`'s server holds the store
        proc = _chameleon(["up", "--data-dir", str(store), "--web-port", "0", "--no-catalogue"])
    _one_line(proc, contains=f"{store} is in use by another `chameleon up`")
