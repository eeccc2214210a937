"""The auth service's decisions, without the bus (pure): which token opens a connection, which
sessions are stopped, which connections to drop when one stops.

Why a revocation time rather than a token list: a ``stop`` ends the session, so every token for it
issued until then must stop working (the connected clients are kicked, and their reconnects must
fail), while a token minted after the stop opens the session anew, as a later ``start`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.auth import TokenClaims
from shared.tokens import MAX_TTL_S, TokenError, verify


@dataclass(frozen=True)
class Connection:
    """One admitted connection: where it is, and until when it may stay."""

    server_id: str
    client_id: int
    expires_at: int
    issued_at: float = 0.0  # of its token: a stop learned late kicks only what it covers


@dataclass
class Authorizer:
    token_public: str
    revoked: dict[str, float] = field(default_factory=dict)  # session -> when it was stopped
    connections: dict[str, list[Connection]] = field(default_factory=dict)  # session -> admitted
    admitted_total: int = 0
    refused_total: int = 0

    def authorize(self, token: str, now: float) -> TokenClaims:
        """The claims of a token that may connect now; ``TokenError`` with the reason otherwise."""
        try:
            if not token:
                raise TokenError("no token")
            claims = verify(self.token_public, token, now)
            stopped = self.revoked.get(claims.session_id)
            if stopped is not None and claims.issued_at <= stopped:
                raise TokenError(f"session {claims.session_id} was stopped")
        except TokenError:
            self.refused_total += 1
            raise
        return claims

    def admitted(self, claims: TokenClaims, server_id: str, client_id: int, now: float) -> None:
        """Remember a connection so a ``stop`` can kick it; forgets the expired ones."""
        self.admitted_total += 1
        kept = [c for c in self.connections.get(claims.session_id, []) if c.expires_at > now]
        kept.append(Connection(server_id, client_id, claims.expires_at, claims.issued_at))
        self.connections[claims.session_id] = kept

    def revoke(self, session_id: str, at: float) -> list[Connection]:
        """Stop a session: its tokens issued until ``at`` are refused from here on. Returns the
        connections to kick: those admitted on such a token. ``at`` is the stop's time, which is
        earlier than now for a stop learned late (from the control stream after a restart, or
        from another replica); a later stop is never undone by an earlier one, and a connection
        on a token minted after the stop (the session opened anew) stays."""
        at = max(at, self.revoked.get(session_id, 0.0))
        self.revoked[session_id] = at
        horizon = at - MAX_TTL_S  # no token issued before this is still valid: forget its stop
        self.revoked = {s: t for s, t in self.revoked.items() if t > horizon}
        covered, kept = [], []
        for c in self.connections.pop(session_id, []):
            (covered if c.issued_at <= at else kept).append(c)
        if kept:
            self.connections[session_id] = kept
        return [c for c in covered if c.expires_at > at]
