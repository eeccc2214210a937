"""The web service: sessions it hands out, its rate limit, what it serves and refuses, over real
HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

import nkeys
import pytest

from services.web.server import WebServer, content_security_policy
from services.web.sessions import RateLimited, SessionBroker, TokenBucket
from shared.auth import read_token
from shared.subjects import validate_session_id
from shared.tokens import new_seed, public_key, verify

pytestmark = pytest.mark.unit
WS = "ws://127.0.0.1:4333"


def broker(seed: str = "", per_minute: int = 30) -> SessionBroker:
    return SessionBroker(
        ws_url=WS, subject_prefix="chameleon", token_seed=seed, ttl_s=60, per_minute=per_minute
    )


def test_secure_sessions_get_a_token_for_that_session_only() -> None:
    seed = new_seed(nkeys.PREFIX_BYTE_OPERATOR)
    b = broker(seed)
    a, c = b.create("10.0.0.1", now=1000.0), b.create("10.0.0.1", now=1000.0)
    assert a["session_id"] != c["session_id"]
    validate_session_id(a["session_id"])
    claims = verify(public_key(seed), a["token"], now=1001.0)
    assert claims.session_id == a["session_id"] and claims.expires_at == 1060
    assert a["ws_servers"] == [WS] and a["subject_prefix"] == "chameleon"
    assert a["expires_at"].endswith("Z") and read_token(a["token"]).session_id == a["session_id"]


def test_open_sessions_have_no_token() -> None:
    s = broker().create("10.0.0.1")
    assert s["token"] is None and s["expires_at"] is None and not broker().secure


def test_sessions_are_rate_limited_per_address() -> None:
    b = broker(per_minute=3)
    for _ in range(3):
        b.create("10.0.0.1")
    with pytest.raises(RateLimited) as exc:
        b.create("10.0.0.1")
    assert 0 < exc.value.retry_after_s <= 20
    b.create("10.0.0.2")  # another visitor is not affected
    assert (b.created, b.refused) == (4, 1)


def test_sessions_are_rate_limited_in_total_and_a_refused_visitor_spends_nothing() -> None:
    b = SessionBroker(ws_url=WS, subject_prefix="chameleon", per_minute=2, total_per_minute=5)
    for client in ("10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2"):
        b.create(client)
    for _ in range(10):  # over its own limit: refused, and the total is not charged for it
        with pytest.raises(RateLimited) as own:
            b.create("10.0.0.1")
        assert own.value.scope == "address"
    b.create("10.0.0.3")  # the fifth of the minute
    with pytest.raises(RateLimited) as total:
        b.create("10.0.0.4")  # a new visitor, but every address together has had its share
    assert total.value.scope == "total" and 0 < total.value.retry_after_s <= 12
    assert b.refused_by_scope == {"address": 10, "total": 1}


def test_token_bucket_refills() -> None:
    bucket = TokenBucket(per_minute=60)
    for _ in range(60):
        assert bucket.take("a", 0.0) == 0
    assert bucket.take("a", 0.0) > 0
    assert bucket.take("a", 1.01) == 0  # one a second


def test_content_security_policy_names_the_websocket_origins() -> None:
    csp = content_security_policy("ws://127.0.0.1:4333, wss://nats.example.com/ws")
    connect = next(p for p in csp.split(";") if p.strip().startswith("connect-src"))
    assert connect.split()[1:] == ["'self'", "ws://127.0.0.1:4333", "wss://nats.example.com"]
    assert "script-src 'self'" in csp


def _page_root(tmp_path: Path, built: bool) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "index.html").write_text("<!doctype html><title>page</title>")
    (tmp_path / "style.css").write_text("body{}")
    if built:
        (tmp_path / "dist").mkdir()
        (tmp_path / "dist" / "app.js").write_text("console.log(1)")
    (tmp_path.parent / "secret.txt").write_text("secret")
    return tmp_path


def _fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def _serve(root: Path, b: SessionBroker) -> tuple[WebServer, str]:
    server = WebServer(root, b, demo_photo=None)
    port = await server.listen("127.0.0.1", 0)
    return server, f"http://127.0.0.1:{port}"


async def test_serves_the_page_sessions_and_health_over_http(tmp_path: Path) -> None:
    server, base = await _serve(_page_root(tmp_path / "web", built=True), broker(per_minute=2))
    try:
        status, headers, body = await asyncio.to_thread(_fetch, base + "/")
        assert status == 200 and b"<title>page" in body and headers["Content-Type"].startswith("text/html")
        assert "connect-src 'self' ws://127.0.0.1:4333" in headers["Content-Security-Policy"]
        status, _, body = await asyncio.to_thread(_fetch, base + "/app.js")
        assert status == 200 and body == b"console.log(1)"
        for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/dist/../../secret.txt", "/web/index.html"):
            assert (await asyncio.to_thread(_fetch, base + path))[0] == 404, path
        status, headers, body = await asyncio.to_thread(_fetch, base + "/api/session", "POST")
        assert status == 200 and json.loads(body)["ws_url"] == WS
        assert headers["Cache-Control"] == "no-store"
        assert (await asyncio.to_thread(_fetch, base + "/api/session"))[0] == 405
        await asyncio.to_thread(_fetch, base + "/api/session", "POST")
        status, headers, body = await asyncio.to_thread(_fetch, base + "/api/session", "POST")
        assert (
            status == 429 and int(headers["Retry-After"]) >= 1 and json.loads(body)["error"] == "rate_limited"
        )
        status, _, body = await asyncio.to_thread(_fetch, base + "/healthz")
        health = json.loads(body)
        assert status == 200 and health["page_built"] and health["sessions_created"] == 2
        assert health["sessions_refused"] == 1
        status, _, body = await asyncio.to_thread(_fetch, base + "/metrics")
        assert b"chameleon_web_sessions_created_total 2" in body
    finally:
        await server.close()


async def test_an_unbuilt_page_says_how_to_build_it(tmp_path: Path) -> None:
    server, base = await _serve(_page_root(tmp_path / "web", built=False), broker())
    try:
        status, _, body = await asyncio.to_thread(_fetch, base + "/")
        assert status == 503 and b"make web" in body
    finally:
        await server.close()


async def test_garbage_requests_get_400_and_the_server_goes_on(tmp_path: Path) -> None:
    server, base = await _serve(_page_root(tmp_path / "web", built=True), broker())
    port = int(base.rsplit(":", 1)[1])
    try:
        for junk in (
            b"\x00\xff garbage\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 4000 + b"\r\n",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(junk)
            await writer.drain()
            reply = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert reply.startswith(b"HTTP/") and reply.split(b" ", 2)[1] == b"400", reply[:60]
        assert (await asyncio.to_thread(_fetch, base + "/healthz"))[0] == 200
    finally:
        await server.close()


async def test_a_failing_route_costs_one_request_not_the_server(tmp_path: Path) -> None:
    server, base = await _serve(_page_root(tmp_path / "web", built=True), broker())

    def broken() -> dict:
        raise RuntimeError("a bug")

    healthy = server.health
    try:
        server.health = broken  # type: ignore[method-assign]
        status, headers, body = await asyncio.to_thread(_fetch, base + "/healthz")
        assert status == 503 and body == b"internal error\n" and "Content-Security-Policy" in headers
        server.health = healthy  # type: ignore[method-assign]
        assert (await asyncio.to_thread(_fetch, base + "/healthz"))[0] == 200
        assert server.errors == 1
    finally:
        await server.close()


def test_the_page_comes_from_the_checkout_else_from_the_wheel(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from services.web import main
    from services.web.settings import WebSettings

    checkout, installed = tmp_path / "checkout", _page_root(tmp_path / "share" / "web", built=True)
    monkeypatch.setattr(main, "CHECKOUT_WEB", checkout)
    monkeypatch.setattr(main, "INSTALLED_WEB", installed)
    assert main.page_root(WebSettings()) == installed  # installed from a wheel: no checkout beside it
    _page_root(checkout, built=False)
    assert main.page_root(WebSettings()) == checkout
    assert main.page_root(WebSettings(web_root=str(tmp_path))) == tmp_path
