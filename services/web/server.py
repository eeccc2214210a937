"""The page's HTTP side: the built page, the demo photo, ``POST /api/session``, ``/healthz`` and
``/metrics``. Plain asyncio (one request per connection), like the services' health endpoint: the
page is a handful of static files, so a framework would add a dependency and nothing else.

Only files named in ``STATIC`` are ever served: no path from a request reaches the file system.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from runtime.logging import RateLimitedLog, get_logger
from services.web.sessions import RateLimited, SessionBroker

log = get_logger("web")

# request path -> file under the page's root
STATIC = {
    "/": "index.html",
    "/index.html": "index.html",
    "/style.css": "style.css",
    "/app.js": "dist/app.js",
    "/app.js.map": "dist/app.js.map",
}
MAX_HEADER_BYTES = 16 * 1024
READ_TIMEOUT_S = 10.0
REASONS = {
    200: "OK",
    204: "No Content",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    400: "Bad Request",
    503: "Service Unavailable",
}

NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>FashionChameleon: page not built</title>
<h1>The page is not built</h1>
<p>The shopper page is JavaScript bundled with Node.js. Install Node.js 18 or newer and run
<code>make web</code> (or <code>cd web &amp;&amp; npm ci &amp;&amp; npm run build</code>), then reload.
Everything else (<code>chameleon camera</code>, <code>watch</code>, <code>swap</code>) works without it.</p>
"""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def content_security_policy(ws_url: str) -> str:
    """Scripts, styles and images from this origin only; connections to this origin and the NATS
    WebSocket servers the sessions name, nowhere else."""
    origins = []
    for url in ws_url.split(","):
        parts = urlsplit(url.strip())
        if parts.scheme in ("ws", "wss") and parts.netloc:
            origins.append(f"{parts.scheme}://{parts.netloc}")
    connect = " ".join(["'self'", *origins])
    return (
        f"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        f"media-src 'self' blob: mediastream:; connect-src {connect}; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )


class WebServer:
    def __init__(self, root: Path, broker: SessionBroker, demo_photo: Path | None) -> None:
        self.root = root
        self.broker = broker
        self.demo_photo = demo_photo
        self.requests = 0
        self.errors = 0
        self._csp = content_security_policy(broker.ws_url)
        self._lines = RateLimitedLog(log, 1.0, burst=5)
        self._servers: list[asyncio.base_events.Server] = []

    @property
    def built(self) -> bool:
        return (self.root / "dist" / "app.js").is_file()

    async def listen(self, host: str, port: int) -> int:
        server = await asyncio.start_server(self._handle, host, port)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers.clear()

    def health(self) -> dict:
        return {
            "service": "web",
            "status": "ok",
            "page_built": self.built,
            "secure": self.broker.secure,
            "sessions_created": self.broker.created,
            "sessions_refused": self.broker.refused,
        }

    def metrics(self) -> bytes:
        lines = [
            "# TYPE chameleon_web_requests_total counter",
            f"chameleon_web_requests_total {self.requests}",
            "# TYPE chameleon_web_errors_total counter",
            f"chameleon_web_errors_total {self.errors}",
            "# TYPE chameleon_web_sessions_created_total counter",
            f"chameleon_web_sessions_created_total {self.broker.created}",
            "# TYPE chameleon_web_sessions_refused_total counter",
            f"chameleon_web_sessions_refused_total {self.broker.refused}",
        ]
        return ("\n".join(lines) + "\n").encode()

    # -- routing -----------------------------------------------------------------------------------
    def route(self, method: str, path: str, client: str) -> Response:
        path = path.split("?", 1)[0]
        if path == "/healthz":
            return Response(200, json.dumps(self.health()).encode(), "application/json")
        if path == "/metrics":
            return Response(200, self.metrics(), "text/plain; version=0.0.4")
        if path == "/api/session":
            if method != "POST":
                return Response(405, b"POST only\n", headers={"Allow": "POST"})
            try:
                session = self.broker.create(client)
            except RateLimited as exc:
                self._lines.warning("session_rate_limited", key="rate", client=client)
                body = json.dumps({"error": "rate_limited", "retry_after_s": round(exc.retry_after_s, 1)})
                return Response(
                    429, body.encode(), "application/json", {"Retry-After": f"{exc.retry_after_s:.0f}"}
                )
            log.info("session_created", session_id=session["session_id"], client=client)
            return Response(
                200, json.dumps(session).encode(), "application/json", {"Cache-Control": "no-store"}
            )
        if method not in ("GET", "HEAD"):
            return Response(405, b"GET only\n", headers={"Allow": "GET, HEAD"})
        if path == "/demo.jpg" and self.demo_photo is not None and self.demo_photo.is_file():
            return Response(200, self.demo_photo.read_bytes(), "image/jpeg")
        name = STATIC.get(path)
        if name is None:
            return Response(404, b"not found\n")
        if name == "index.html" and not self.built:
            return Response(503, NOT_BUILT.encode(), "text/html; charset=utf-8")
        file = self.root / name
        if not file.is_file():
            return Response(404, b"not found\n")
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript") or ctype.endswith("json"):
            ctype += "; charset=utf-8"
        return Response(200, file.read_bytes(), ctype, {"Cache-Control": "no-cache"})

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else "unknown"
        method = "GET"
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            if len(head) > MAX_HEADER_BYTES:
                raise ValueError("header too large")
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                response = Response(400, b"bad request\n")
            else:
                method = parts[0]
                response = self.route(method, parts[1], client)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            response = Response(400, b"bad request\n")
        except (TimeoutError, ConnectionError):
            writer.close()
            return
        except Exception as exc:  # a bug here must cost one request, never the server
            self.errors += 1
            self._lines.error("request_failed", key="error", error=f"{type(exc).__name__}: {exc}")
            response = Response(503, b"internal error\n")
        self.requests += 1
        headers = {
            "Content-Type": response.content_type,
            "Content-Length": str(len(response.body)),
            "Connection": "close",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": self._csp,
            **response.headers,
        }
        reason = REASONS.get(response.status, "OK")
        head_out = f"HTTP/1.1 {response.status} {reason}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        try:
            writer.write(head_out.encode("latin-1") + b"\r\n" + (b"" if method == "HEAD" else response.body))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
