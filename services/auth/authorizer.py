"""The auth service's decisions, without the bus (pure): which token opens a connection, which
sessions are stopped, which connections to drop when one stops, and how many connections one
session and one address may hold.

Why a revocation time rather than a token list: a ``stop`` ends the session, so every token for it
issued until then must stop working (the connected clients are kicked, and their reconnects must
fail), while a token minted after the stop opens the session anew, as a later ``start`` does.

Why connection limits here and not in the server: nats-server limits connections per account only
(``CLIENTS``: 1,024 for every session client together), so one token could take them all and lock
every shopper out. The callout sees every connect; the server's ``$SYS`` events say when each one
leaves; so the live connections of each session and each address are counted here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from shared.auth import TokenClaims
from shared.tokens import MAX_TTL_S, TokenError, verify

ENV_PER_SESSION = "CHAMELEON_MAX_CONNECTIONS_PER_SESSION"
ENV_PER_ADDRESS = "CHAMELEON_MAX_CONNECTIONS_PER_ADDRESS"
EXPLAIN_PER_ADDRESS = 4  # refused clients asking why, live at once from one address
EXPLAIN_GROUP = ""  # the ledger group of explain connections (no session id is empty)


@dataclass(frozen=True)
class Connection:
    """One admitted connection: where it is, whose it is, and until when it may stay."""

    server_id: str
    client_id: int
    expires_at: int
    issued_at: float = 0.0  # of its token: a stop learned late kicks only what it covers
    session_id: str = ""
    host: str = ""
    admitted_at: float = 0.0

    @property
    def key(self) -> tuple[str, int]:
        return (self.server_id, self.client_id)


@dataclass(frozen=True)
class ConnectionLimits:
    """Live connections one session and one client address may hold (0: no limit).
    ``confirm_s``: an admission the server never reports as connected (it refused the client
    after the callout, say at its account limit) stops counting after this long."""

    per_session: int = 4
    per_address: int = 64
    confirm_s: float = 10.0


class ConnectionLedger:
    """Connections by ``(server id, client id)``, counted by group (a session) and by address.

    An entry comes in when the callout admits a connection, is confirmed by the server's connect
    event and leaves with its disconnect event; one never confirmed leaves after ``confirm_s``."""

    def __init__(self, confirm_s: float = 10.0) -> None:
        self.confirm_s = confirm_s
        self.entries: dict[tuple[str, int], Connection] = {}
        self.unconfirmed: dict[tuple[str, int], float] = {}  # key -> admitted at
        self.by_group: dict[str, dict[tuple[str, int], None]] = {}  # insertion-ordered sets
        self.by_host: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, connection: Connection) -> None:
        self.remove(connection.key)  # a cid reused by a restarted server: the newer one counts
        key = connection.key
        self.entries[key] = connection
        self.unconfirmed[key] = connection.admitted_at
        self.by_group.setdefault(connection.session_id, {})[key] = None
        self.by_host[connection.host] += 1

    def confirm(self, key: tuple[str, int]) -> bool:
        """The server says the connection is up; False for one this ledger does not hold."""
        return self.unconfirmed.pop(key, None) is not None or key in self.entries

    def remove(self, key: tuple[str, int]) -> Connection | None:
        connection = self.entries.pop(key, None)
        if connection is None:
            return None
        self.unconfirmed.pop(key, None)
        group = self.by_group.get(connection.session_id)
        if group is not None:
            group.pop(key, None)
            if not group:
                del self.by_group[connection.session_id]
        self.by_host[connection.host] -= 1
        if self.by_host[connection.host] <= 0:
            del self.by_host[connection.host]
        return connection

    def prune(self, now: float) -> None:
        """Forget admissions never confirmed within ``confirm_s``."""
        stale = [k for k, at in self.unconfirmed.items() if now - at > self.confirm_s]
        for key in stale:
            self.remove(key)

    def prune_group(self, group: str, now: float) -> None:
        """Forget a group's connections whose token has expired (the server dropped them; its
        event may not have come)."""
        for key in list(self.by_group.get(group, ())):
            if self.entries[key].expires_at <= now:
                self.remove(key)

    def count(self, group: str) -> int:
        return len(self.by_group.get(group, ()))

    def of(self, group: str) -> list[Connection]:
        return [self.entries[k] for k in self.by_group.get(group, ())]


@dataclass
class Authorizer:
    token_public: str
    limits: ConnectionLimits | None = None  # None: nothing counted (no way to learn disconnects)
    revoked: dict[str, float] = field(default_factory=dict)  # session -> when it was stopped
    admitted_total: int = 0
    refused_total: int = 0
    refused_for_limits: Counter[str] = field(default_factory=Counter)  # "session" / "address"
    ledger: ConnectionLedger = field(default_factory=ConnectionLedger)
    explaining: ConnectionLedger = field(default_factory=ConnectionLedger)  # explain connections

    def __post_init__(self) -> None:
        if self.limits is not None:
            self.ledger.confirm_s = self.explaining.confirm_s = self.limits.confirm_s

    @property
    def connections(self) -> dict[str, list[Connection]]:
        """Session -> its admitted connections, in the order they were admitted."""
        return {group: self.ledger.of(group) for group in self.ledger.by_group}

    def check(self, token: str, now: float, host: str = "", *, counted: bool = False) -> TokenClaims:
        """The claims of a token that may open one more connection from ``host`` now;
        ``TokenError`` with the reason (safe to send back) otherwise."""
        if not token:
            raise TokenError("no token")
        claims = verify(self.token_public, token, now)
        stopped = self.revoked.get(claims.session_id)
        if stopped is not None and claims.issued_at <= stopped:
            raise TokenError(f"session {claims.session_id} was stopped")
        self._check_limits(claims.session_id, host, now, counted)
        return claims

    def authorize(self, token: str, now: float, host: str = "") -> TokenClaims:
        """``check``, with the refusal counted."""
        try:
            return self.check(token, now, host, counted=True)
        except TokenError:
            self.refused_total += 1
            raise

    def _check_limits(self, session_id: str, host: str, now: float, counted: bool) -> None:
        limits = self.limits
        if limits is None:
            return
        self.ledger.prune(now)
        self.ledger.prune_group(session_id, now)
        held = self.ledger.count(session_id)
        if limits.per_session and held >= limits.per_session:
            self.refused_for_limits["session"] += counted
            raise TokenError(
                f"session {session_id} already has {held} connections, the most one session may hold "
                f"({ENV_PER_SESSION}={limits.per_session}): close one first"
            )
        from_host = self.ledger.by_host.get(host, 0)
        if limits.per_address and from_host >= limits.per_address:
            self.refused_for_limits["address"] += counted
            raise TokenError(
                f"address {host or '?'} already has {from_host} connections, the most one address "
                f"may hold ({ENV_PER_ADDRESS}={limits.per_address})"
            )

    def admitted(
        self, claims: TokenClaims, server_id: str, client_id: int, now: float, host: str = ""
    ) -> Connection:
        """Remember a connection: it counts against the limits, and a ``stop`` can kick it."""
        self.admitted_total += 1
        self.ledger.prune_group(claims.session_id, now)
        connection = Connection(
            server_id, client_id, claims.expires_at, claims.issued_at, claims.session_id, host, now
        )
        self.ledger.add(connection)
        return connection

    def connected(self, server_id: str, client_id: int) -> bool:
        """The server's connect event: the admission took."""
        key = (server_id, client_id)
        return self.ledger.confirm(key) or self.explaining.confirm(key)

    def disconnected(self, server_id: str, client_id: int) -> Connection | None:
        """The server's disconnect event: the connection no longer counts."""
        key = (server_id, client_id)
        return self.ledger.remove(key) or self.explaining.remove(key)

    # -- why a connect was refused ---------------------------------------------------------------
    def admit_explain(self, server_id: str, client_id: int, host: str, now: float, expires_at: int) -> None:
        """Let a refused client connect to ask why (``EXPLAIN`` account): a few at once per address,
        so asking is never a way around the limits. ``TokenError`` when that address has its share."""
        self.explaining.prune(now)
        self.explaining.prune_group(EXPLAIN_GROUP, now)
        held = self.explaining.by_host.get(host, 0)
        if held >= EXPLAIN_PER_ADDRESS:
            self.refused_total += 1
            raise TokenError(f"address {host or '?'} already has {held} explain connections")
        self.explaining.add(Connection(server_id, client_id, expires_at, now, EXPLAIN_GROUP, host, now))

    def explain(self, token: str, now: float, host: str = "") -> str:
        """Why a connect with ``token`` from ``host`` is refused now; empty when it would be admitted.
        A bad signature names this deployment's token key (public): a token minted with other
        keys (another data dir) shows as such."""
        try:
            self.check(token, now, host)
        except TokenError as exc:
            if str(exc) == "bad token signature":
                return f"bad token signature: this deployment's token key is {self.token_public}"
            return str(exc)
        return ""

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
        covered = [c for c in self.ledger.of(session_id) if c.issued_at <= at]
        for c in covered:
            self.ledger.remove(c.key)
        return [c for c in covered if c.expires_at > at]
