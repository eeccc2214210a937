"""Where the page's browser reaches NATS, worked out from the host it loaded the page from (pure).

One setting names the deployment's public host names (``CHAMELEON_PUBLIC_HOSTS``, e.g.
``localhost,127.0.0.1`` or ``shop.example.com``); the WebSocket URL is a template
(``ws://{host}:8443``) filled with the host the browser used when that host is one of them, else
with the first. Why: a page loaded from ``127.0.0.1`` that is told ``ws://localhost:8443`` (or the
other way round) makes a cross-origin connection the server refuses, and a real hostname must never
be answered with a loopback address. nats-server's ``allowed_origins`` come from the same list
(``page_origins``), so what the page is told and what the server admits cannot differ.
"""

from __future__ import annotations

from urllib.parse import urlsplit

HOST_PLACEHOLDER = "{host}"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1")


def parse_hosts(value: str) -> tuple[str, ...]:
    """``"a, B ,a"`` -> ``("a", "b")``: lower-case, without blanks and repeats, in order."""
    seen: list[str] = []
    for part in value.split(","):
        host = part.strip().lower()
        if host and host not in seen:
            seen.append(host)
    return tuple(seen)


def request_hostname(host_header: str | None) -> str:
    """The host name of an HTTP ``Host`` header (``[::1]:8080`` -> ``::1``), lower-case."""
    if not host_header:
        return ""
    return (urlsplit(f"//{host_header.strip()}").hostname or "").lower()


def choose_host(requested: str, public_hosts: tuple[str, ...]) -> str:
    """The host to put in the URLs: the one the browser used when it is a public one (or any
    loopback name when none is configured), else the first public host."""
    allowed = public_hosts or LOOPBACK_HOSTS
    return requested if requested in allowed else allowed[0]


def fill(template: str, host: str) -> str:
    """``template`` with ``{host}`` replaced (a URL without the placeholder is returned as is)."""
    return template.replace(HOST_PLACEHOLDER, host)


def ws_urls(template: str, host: str) -> list[str]:
    """The WebSocket URL(s) of ``template`` (comma-separated) for a page given ``host``."""
    return [fill(u.strip(), host) for u in template.split(",") if u.strip()]


def page_origins(public_hosts: tuple[str, ...], web_port: int, https: bool = True) -> list[str]:
    """Every origin the page can have: ``http://<host>:<web_port>`` for each public host, and
    ``https://<host>`` (TLS terminated in front, on 443) with ``https``."""
    origins = []
    for host in public_hosts or LOOPBACK_HOSTS:
        origins.append(f"http://{host}:{web_port}" if web_port != 80 else f"http://{host}")
        if https:
            origins.append(f"https://{host}")
    return origins
