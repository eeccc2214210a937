"""Sessions for the page (pure): a fresh session id and, when NATS is secured, a token that opens
that session and nothing else; rate-limited per client address so one visitor cannot mint
sessions in a loop, and in total, so many addresses together cannot either (each token may hold
a few connections: docs/security.md).

Why this service mints rather than asking the auth service: minting and verifying are kept apart
(docs/security.md). The process that reads untrusted connect requests (auth) holds only the public
key; whoever hands out sessions holds the seed, as ``chameleon session create`` does.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from shared.auth import read_token
from shared.tokens import mint


class RateLimited(Exception):
    """Too many sessions from one address (``scope`` "address") or from all together ("total");
    ``retry_after_s`` says when the next one is possible."""

    def __init__(self, retry_after_s: float, scope: str = "address") -> None:
        super().__init__(f"too many sessions ({scope}): retry in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s
        self.scope = scope


@dataclass
class TokenBucket:
    """``rate`` per minute with a burst of ``rate``, per key; keys idle a minute are forgotten."""

    per_minute: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (tokens, at)

    def take(self, key: str, now: float, consume: bool = True) -> float:
        """0 when allowed (a token is taken unless ``consume`` is False), else the seconds until a
        token is there."""
        rate = self.per_minute / 60.0
        tokens, at = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate if rate > 0 else 60.0
        self._buckets[key] = (tokens - 1.0 if consume else tokens, now)
        if len(self._buckets) > 10_000:  # forget the full, idle ones
            self._buckets = {
                k: v for k, v in self._buckets.items() if now - v[1] < 60.0 or v[0] < self.per_minute
            }
        return 0.0


@dataclass
class SessionBroker:
    """What ``POST /api/session`` answers: everything a page needs to open its session."""

    ws_url: str
    subject_prefix: str
    token_seed: str = field(default="", repr=False)
    ttl_s: float = 900.0
    per_minute: int = 30  # per client address
    total_per_minute: int = 600  # from every address together
    fps: float = 15.0
    width: int = 640
    height: int = 480
    min_width: int = 320  # the page's link fitting stays within these (docs/frontends.md)
    min_height: int = 240
    jpeg_quality: float = 0.85
    min_jpeg_quality: float = 0.4
    created: int = 0
    refused: int = 0
    refused_by_scope: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._limit = TokenBucket(self.per_minute)
        self._total = TokenBucket(self.total_per_minute)

    @property
    def secure(self) -> bool:
        return bool(self.token_seed)

    def create(self, client: str, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        clock = time.monotonic()
        # both limits are checked before either is charged: a refused visitor spends nobody's share
        for scope, bucket, key in (("address", self._limit, client), ("total", self._total, "*")):
            wait = bucket.take(key, clock, consume=False)
            if wait > 0:
                self.refused += 1
                self.refused_by_scope[scope] = self.refused_by_scope.get(scope, 0) + 1
                raise RateLimited(wait, scope)
        self._limit.take(client, clock)
        self._total.take("*", clock)
        session_id = f"web-{secrets.token_hex(8)}"
        token, expires = None, None
        if self.token_seed:
            token = mint(self.token_seed, session_id, self.ttl_s, now)
            expires = datetime.fromtimestamp(read_token(token).expires_at, timezone.utc)
        self.created += 1
        return {
            "session_id": session_id,
            "ws_url": self.ws_url,
            "ws_servers": [u.strip() for u in self.ws_url.split(",") if u.strip()],
            "token": token,
            "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ") if expires else None,
            "subject_prefix": self.subject_prefix,
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "min_width": min(self.min_width, self.width),
            "min_height": min(self.min_height, self.height),
            "jpeg_quality": self.jpeg_quality,
            "min_jpeg_quality": min(self.min_jpeg_quality, self.jpeg_quality),
        }
