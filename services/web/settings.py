"""Web service settings (``CHAMELEON_*``). ``chameleon up`` fills the token seed and the
WebSocket URL from its keys and its embedded server."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.settings import BaseSettings


@dataclass(frozen=True)
class WebSettings(BaseSettings):
    web_host: str = "127.0.0.1"
    web_port: int = 8080  # the page's port; 0: a free one (logged and shown on /healthz)
    web_root: str = ""  # the page's folder (index.html, style.css, dist/); empty: this checkout's web/
    # signs the session tokens the page hands out (the token key's seed); empty: NATS is open and
    # the page gets sessions without a token
    web_token_seed: str = field(default="", repr=False)
    # the NATS WebSocket URL(s) as a browser reaches them, comma-separated; ``{host}`` in one is
    # replaced by the host the page was loaded from when it is a public host (services/web/origins.py)
    ws_url: str = ""
    public_hosts: str = ""  # the deployment's host names (comma-separated); empty: localhost, 127.0.0.1
    web_session_ttl_s: float = 900.0  # a page's token lifetime; the page asks again before it ends
    web_sessions_per_minute: int = 30  # new sessions per client address and minute (429 beyond)
    web_sessions_total_per_minute: int = 600  # new sessions per minute from every address together
    web_fps: float = 15.0  # what the page publishes at
    web_width: int = 640
    web_height: int = 480
    # how far the page may shrink its frames to fit a slow uplink (docs/frontends.md): JPEG quality
    # first, down to the minimum, then the size, down to the minimum box
    web_min_width: int = 320
    web_min_height: int = 240
    web_jpeg_quality: float = 0.85
    web_min_jpeg_quality: float = 0.4
    web_demo_photo: str = ""  # the "demo feed" photo; empty: the sample bus.jpg from `chameleon media`
