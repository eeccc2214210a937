"""The shopper page's web service: ``python -m services.web.main`` (docs/frontends.md).

It serves the page and hands out sessions; it never touches NATS itself (the browser connects to
the nats-server WebSocket listener directly), so it has no ``handlers.py`` and no NATS user.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
from pathlib import Path

from runtime.logging import configure_logging, get_logger
from services.web.origins import parse_hosts
from services.web.server import WebServer
from services.web.sessions import SessionBroker
from services.web.settings import WebSettings
from shared.auth import ENV_KEYS_FILE, read_keys_file

log = get_logger("web")
CHECKOUT_WEB = Path(__file__).resolve().parents[2] / "web"
INSTALLED_WEB = Path(sys.prefix) / "share" / "fashion-chameleon" / "web"  # from the wheel's data files


def page_root(settings: WebSettings) -> Path:
    """``CHAMELEON_WEB_ROOT``, else this checkout's ``web/``, else the page installed with the wheel."""
    if settings.web_root:
        return Path(settings.web_root)
    if (CHECKOUT_WEB / "index.html").is_file() or not (INSTALLED_WEB / "index.html").is_file():
        return CHECKOUT_WEB
    return INSTALLED_WEB


def demo_photo(settings: WebSettings) -> Path | None:
    if settings.web_demo_photo:
        return Path(settings.web_demo_photo)
    from runtime.media import sample_photo

    try:
        return sample_photo("bus.jpg")
    except Exception:  # no media cache: the page hides its demo feed
        return None


async def serve(settings: WebSettings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    broker = SessionBroker(
        ws_url=settings.ws_url,
        subject_prefix=settings.subject_prefix,
        token_seed=settings.web_token_seed,
        ttl_s=settings.web_session_ttl_s,
        per_minute=settings.web_sessions_per_minute,
        total_per_minute=settings.web_sessions_total_per_minute,
        fps=settings.web_fps,
        width=settings.web_width,
        height=settings.web_height,
        min_width=settings.web_min_width,
        min_height=settings.web_min_height,
        jpeg_quality=settings.web_jpeg_quality,
        min_jpeg_quality=settings.web_min_jpeg_quality,
    )
    server = WebServer(page_root(settings), broker, demo_photo(settings), parse_hosts(settings.public_hosts))
    port = await server.listen(settings.web_host, settings.web_port)
    if settings.metrics_port:
        await server.listen(settings.metrics_host, settings.metrics_port)
    if not settings.ws_url:
        log.warning("no_ws_url", hint="set CHAMELEON_WS_URL: the page cannot reach NATS without it")
    if not server.built:
        log.warning("page_not_built", hint="install Node.js and run `make web`")
    log.info(
        "web_started",
        url=f"http://{settings.web_host}:{port}/",
        secure=broker.secure,
        page_built=server.built,
    )
    try:
        await stop.wait()
    finally:
        await server.close()


def main() -> None:
    settings = WebSettings.from_env()
    if os.environ.get(ENV_KEYS_FILE) and not settings.web_token_seed:  # compose: the mounted keys file
        seed = str(read_keys_file(os.environ[ENV_KEYS_FILE]).get("token_seed", ""))
        settings = dataclasses.replace(settings, web_token_seed=seed)
    configure_logging(settings.log_level, settings.log_json, service="web")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
