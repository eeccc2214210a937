"""The embedded server's WebSocket listener, which browsers use: it is there when asked for, and a
browser on any page but the shopper page's origin is refused at the upgrade (403)."""

from __future__ import annotations

import socket

import pytest

from harness.natsserver import EmbeddedNats

pytestmark = pytest.mark.service
PAGE = "http://127.0.0.1:8080"


def _upgrade(port: int, origin: str | None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        request = (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            + (f"Origin: {origin}\r\n" if origin else "")
            + "\r\n"
        )
        s.sendall(request.encode())
        return s.recv(200).split(b"\r\n", 1)[0]


def test_websocket_listener_admits_the_page_origin_only(tmp_path) -> None:
    with EmbeddedNats(store_dir=tmp_path / "nats", websocket=True, websocket_origins=(PAGE,)) as server:
        assert server.ws_url == f"ws://127.0.0.1:{server.ws_port}" and server.ws_port != server.port
        assert _upgrade(server.ws_port, PAGE).startswith(b"HTTP/1.1 101")
        assert _upgrade(server.ws_port, "http://evil.example").startswith(b"HTTP/1.1 403")
        assert _upgrade(server.ws_port, None).startswith(b"HTTP/1.1 101")  # not a browser: no Origin
        port = server.ws_port
        server.restart()
        assert server.ws_port == port  # a restart keeps the URL the page was given


def test_no_websocket_unless_asked(tmp_path) -> None:
    with EmbeddedNats(store_dir=tmp_path / "nats") as server:
        assert server.ws_url == "" and "websocket {" not in (server.workdir / "nats.conf").read_text()
