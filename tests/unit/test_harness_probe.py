"""``harness.probe``: the one health probe (services, nats-server's monitor) and the one poll."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import probe

pytestmark = pytest.mark.unit

ANSWERS = {
    "/ok": (200, json.dumps({"status": "ok", "sessions": 2}).encode()),
    "/unhealthy": (503, json.dumps({"status": "unhealthy"}).encode()),
    "/wrong": (200, json.dumps({"status": "starting"}).encode()),
    "/junk": (200, b"<html>"),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = ANSWERS[self.path.replace("/healthz", "") or "/ok"]
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_healthy_means_200_and_status_ok(server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    assert probe.healthy(server)
    assert probe.get_json(server, "/ok") == {"status": "ok", "sessions": 2}
    for path in ("/unhealthy", "/wrong", "/junk"):
        monkeypatch.setitem(ANSWERS, "/ok", ANSWERS[path])
        assert not probe.healthy(server), path
    with pytest.raises(OSError):
        probe.get(server, "/unhealthy")


def test_nothing_listening_is_not_healthy(server: int) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert not probe.healthy(port, timeout_s=0.5)


def test_wait_for_and_until() -> None:
    calls = []

    def third_time() -> bool:
        calls.append(1)
        return len(calls) >= 3

    assert asyncio.run(probe.wait_for(third_time, 1.0)) and len(calls) == 3
    assert not asyncio.run(probe.wait_for(lambda: False, 0.05))
    with pytest.raises(AssertionError, match="state: 'the state'"):
        asyncio.run(probe.until(lambda: False, 0.05, what=lambda: "the state"))
