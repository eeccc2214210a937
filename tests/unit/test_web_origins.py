"""The page is told the WebSocket URL its browser can use: the host it loaded the page from, when
that is one of the deployment's public hosts (localhost and 127.0.0.1 alike), else the first one;
and the web service's metrics come from prometheus_client with routes and statuses."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.web import origins
from services.web.server import WebServer
from services.web.sessions import SessionBroker

pytestmark = pytest.mark.unit


def test_hosts_and_urls() -> None:
    assert origins.parse_hosts(" Shop.Example.com, localhost ,shop.example.com,") == (
        "shop.example.com",
        "localhost",
    )
    assert origins.request_hostname("127.0.0.1:8080") == "127.0.0.1"
    assert origins.request_hostname("[::1]:8080") == "::1"
    assert origins.request_hostname("LOCALHOST") == "localhost"
    assert origins.choose_host("127.0.0.1", ()) == "127.0.0.1"
    assert origins.choose_host("localhost", ()) == "localhost"
    assert origins.choose_host("evil.example", ()) == "localhost"  # never echo a Host header
    public = ("shop.example.com", "localhost")
    assert origins.choose_host("localhost", public) == "localhost"
    assert origins.choose_host("10.1.2.3", public) == "shop.example.com"
    assert origins.ws_urls("ws://{host}:8443, wss://{host}/nats", "localhost") == [
        "ws://localhost:8443",
        "wss://localhost/nats",
    ]
    assert origins.ws_urls("ws://127.0.0.1:4333", "localhost") == ["ws://127.0.0.1:4333"]
    assert origins.page_origins(("localhost", "127.0.0.1"), 8080) == [
        "http://localhost:8080",
        "https://localhost",
        "http://127.0.0.1:8080",
        "https://127.0.0.1",
    ]


def _request(url: str, host: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def test_the_session_names_the_host_the_page_came_from(tmp_path: Path) -> None:
    root = tmp_path / "web"
    (root / "dist").mkdir(parents=True)
    (root / "index.html").write_text("<title>page</title>")
    (root / "dist" / "app.js").write_text("1")
    broker = SessionBroker(ws_url="ws://{host}:8443", subject_prefix="chameleon", per_minute=100)
    server = WebServer(root, broker, None, public_hosts=("localhost", "127.0.0.1"))
    port = await server.listen("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    try:
        for host in ("localhost", "127.0.0.1"):
            status, headers, body = await asyncio.to_thread(
                _request, base + "/api/session", f"{host}:8080", "POST"
            )
            session = json.loads(body)
            assert status == 200 and session["ws_url"] == f"ws://{host}:8443", session
            assert session["ws_servers"] == [f"ws://{host}:8443"]
            _, headers, _ = await asyncio.to_thread(_request, base + "/", f"{host}:8080")
            assert f"connect-src 'self' ws://{host}:8443;" in headers["Content-Security-Policy"]
        _, _, body = await asyncio.to_thread(_request, base + "/api/session", "attacker.example", "POST")
        assert json.loads(body)["ws_url"] == "ws://localhost:8443"
        await asyncio.to_thread(_request, base + "/nothing-here", "localhost")

        _, headers, text = await asyncio.to_thread(_request, base + "/metrics", "localhost")
        families = {f.name: f for f in text_string_to_metric_families(text.decode())}
        assert "process_resident_memory_bytes" in families and "process_open_fds" in families
        requests = families["chameleon_web_requests"]
        assert requests.documentation  # HELP, as every prometheus_client metric has
        by_label = {
            (s.labels["route"], s.labels["status"]): s.value
            for s in requests.samples
            if s.name.endswith("_total")
        }
        assert by_label[("/api/session", "200")] == 3
        assert by_label[("/", "200")] == 2
        assert by_label[("unmatched", "404")] == 1  # paths are no label: bounded
        created = families["chameleon_web_sessions_created"].samples[0]
        assert created.value == 3
    finally:
        await server.close()
