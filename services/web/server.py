"""The page's HTTP side: the built page, the demo photo, ``POST /api/session``, ``/healthz`` and
``/metrics``, served by aiohttp (request parsing is attack surface: a maintained parser with its
limits on lines, headers and fields, not one of ours).

Only files named in ``STATIC`` are ever served: no path from a request reaches the file system.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import HttpVersion10, web
from prometheus_client import Counter, generate_latest

from runtime.logging import RateLimitedLog, get_logger
from runtime.metrics import process_registry
from services.web import origins
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
MAX_HEADERS = 64  # a browser sends about 20

NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>FashionChameleon: page not built</title>
<h1>The page is not built</h1>
<p>The shopper page is JavaScript bundled with Node.js. Install Node.js 18 or newer and run
<code>make web</code> (or <code>cd web &amp;&amp; npm ci &amp;&amp; npm run build</code>), then reload.
Everything else (<code>chameleon camera</code>, <code>watch</code>, <code>swap</code>) works without it.</p>
"""


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


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UNMATCHED = "unmatched"  # the route label of every path that is no route: bounded, unlike paths


class WebMetrics:
    """The web service's metrics on prometheus_client, as every other service's: requests by
    route and status, sessions handed out and refused, and the process's own figures."""

    def __init__(self) -> None:
        self.registry = r = process_registry()
        self.requests = Counter(
            "chameleon_web_requests_total",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.errors = Counter(
            "chameleon_web_errors_total", "Requests that failed inside the service (answered 503)", registry=r
        )
        self.sessions_created = Counter(
            "chameleon_web_sessions_created_total", "Sessions (and tokens) handed to pages", registry=r
        )
        self.sessions_refused = Counter(
            "chameleon_web_sessions_refused_total",
            "Session requests refused, by reason",
            ["reason"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class WebServer:
    def __init__(
        self,
        root: Path,
        broker: SessionBroker,
        demo_photo: Path | None,
        public_hosts: tuple[str, ...] = (),
    ) -> None:
        self.root = root
        self.broker = broker
        self.demo_photo = demo_photo
        self.public_hosts = public_hosts
        self.requests = 0
        self.errors = 0
        self.prometheus = WebMetrics()
        self._csp: dict[str, str] = {}  # by the host the page was loaded from (a bounded set)
        self._lines = RateLimitedLog(log, 1.0, burst=5)
        self.app = web.Application(
            middlewares=[self._every_response], handler_args={"max_headers": MAX_HEADERS}
        )
        self.app.router.add_get("/healthz", self._health)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_route("*", "/api/session", self._session)
        self.app.router.add_route("*", "/demo.jpg", self._demo)
        for path in STATIC:
            self.app.router.add_route("*", path, self._static)
        self._runner: web.AppRunner | None = None

    @property
    def built(self) -> bool:
        return (self.root / "dist" / "app.js").is_file()

    async def listen(self, host: str, port: int) -> int:
        """Serve on ``host:port`` (0: a free port) as well; returns the port."""
        if self._runner is None:
            self._runner = web.AppRunner(self.app, access_log=None)
            await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def health(self) -> dict:
        return {
            "service": "web",
            "status": "ok",
            "page_built": self.built,
            "secure": self.broker.secure,
            "sessions_created": self.broker.created,
            "sessions_refused": self.broker.refused,
            "sessions_refused_by_scope": dict(self.broker.refused_by_scope),
        }

    def metrics(self) -> bytes:
        return self.prometheus.render()

    def host_of(self, request: web.Request) -> str:
        """The host to give this page in its URLs (``services.web.origins``)."""
        return origins.choose_host(origins.request_hostname(request.host), self.public_hosts)

    def csp_for(self, host: str) -> str:
        if host not in self._csp:
            self._csp[host] = content_security_policy(",".join(origins.ws_urls(self.broker.ws_url, host)))
        return self._csp[host]

    # -- routes ------------------------------------------------------------------------------------
    @web.middleware
    async def _every_response(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Counted, the page's security headers on every answer, and a bug costs one request
        (a 503), never the server."""
        self.requests += 1
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED
        security = {
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": self.csp_for(self.host_of(request)),
        }
        try:
            if request.version < HttpVersion10:  # a bare "GET /" line: no client of ours speaks 0.9
                raise web.HTTPBadRequest(text="bad request\n")
            response = await handler(request)
        except web.HTTPException as exc:  # 404 and the like: answers too
            exc.headers.update(security)
            self.prometheus.requests.labels(route, str(exc.status)).inc()
            raise
        except Exception as exc:
            self.errors += 1
            self.prometheus.errors.inc()
            self._lines.exception("request_failed", key="error", error=f"{type(exc).__name__}: {exc}")
            response = web.Response(status=503, text="internal error\n")
        response.headers.update(security)
        self.prometheus.requests.labels(route, str(response.status)).inc()
        return response

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(self.health())

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics(), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _session(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return web.Response(status=405, text="POST only\n", headers={"Allow": "POST"})
        client = request.remote or "unknown"
        try:
            session = self.broker.create(client)
        except RateLimited as exc:
            self.prometheus.sessions_refused.labels("rate_limited").inc()
            self._lines.warning("session_rate_limited", key=exc.scope, client=client, scope=exc.scope)
            body = {"error": "rate_limited", "scope": exc.scope, "retry_after_s": round(exc.retry_after_s, 1)}
            return web.json_response(body, status=429, headers={"Retry-After": f"{exc.retry_after_s:.0f}"})
        self.prometheus.sessions_created.inc()
        servers = origins.ws_urls(self.broker.ws_url, self.host_of(request))
        session.update(ws_url=",".join(servers), ws_servers=servers)  # as this page's browser reaches them
        log.info("session_created", session_id=session["session_id"], client=client)
        return web.json_response(session, headers={"Cache-Control": "no-store"})

    async def _demo(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return _get_only()
        if self.demo_photo is None or not self.demo_photo.is_file():
            return web.Response(status=404, text="not found\n")
        return web.Response(body=self.demo_photo.read_bytes(), content_type="image/jpeg")

    async def _static(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return _get_only()
        name = STATIC[request.path]
        if name == "index.html" and not self.built:
            return web.Response(status=503, text=NOT_BUILT, content_type="text/html")
        file = self.root / name
        if not file.is_file():
            return web.Response(status=404, text="not found\n")
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        textual = ctype.startswith("text/") or ctype.endswith(("javascript", "json"))
        return web.Response(
            body=file.read_bytes(),
            content_type=ctype,
            charset="utf-8" if textual else None,
            headers={"Cache-Control": "no-cache"},
        )


def _get_only() -> web.Response:
    return web.Response(status=405, text="GET only\n", headers={"Allow": "GET, HEAD"})
