"""Authorization as nats-server enforces it: what clients, the launcher and the embedded server
share (docs/security.md).

Three accounts: ``APP`` holds the services (each its own user and permissions) and JetStream;
``CLIENTS`` holds session clients, placed there by the auth service's callout with permissions for
one session, and sees only what ``APP`` exports to it (a session's camera, control, output and
events, the garment list/get); ``SYS`` is the server's own, where the auth service's second user
may only kick connections. Why a second account for clients: the server then applies that
account's limits (payload, subscriptions, connections) to every session client, and no JetStream
API, KV bucket or object store exists there to be reached, whatever a permission list says.

Also here: the session token's claims as a client may read them (the signature is checked by the
auth service alone), and the credentials a process connects with (``CHAMELEON_NATS_USER`` /
``CHAMELEON_NATS_PASSWORD`` for a service user, ``CHAMELEON_TOKEN`` for a session client).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.subjects import AUTH_EXPLAIN_SUBJECT, Channel, Subjects, validate_session_id

APP_ACCOUNT = "APP"
CLIENT_ACCOUNT = "CLIENTS"
SYSTEM_ACCOUNT = "SYS"
# where a refused client may ask why (``explain``): nothing there but the one request below
EXPLAIN_ACCOUNT = "EXPLAIN"

# nats-server's own subjects (not ours to choose): the callout request, and the system
# account's per-server request that disconnects one client.
AUTH_REQUEST_SUBJECT = "$SYS.REQ.USER.AUTH"
AUTH_QUEUE_GROUP = "auth"
# the server's own events on every client of an account connecting and leaving: how the auth
# service learns that a connection it admitted is gone (its connection limits count live ones)
CONNECT_EVENT = "$SYS.ACCOUNT.{account}.CONNECT"
DISCONNECT_EVENT = "$SYS.ACCOUNT.{account}.DISCONNECT"
CLIENT_INFO_HEADER = "Nats-Request-Info"  # the server's note of who sent a service request

# A client the server refused ("Authorization Violation", the callout's reason stays in the
# server's log) may connect once more with ``explain:<nonce>`` as its token: it lands in the
# ``EXPLAIN`` account, may only request the reason for a token and read the answer on its own
# inbox (``_INBOX_EXPLAIN.<nonce>``), and is disconnected after ``EXPLAIN_TTL_S``.
EXPLAIN_TOKEN_PREFIX = "explain:"
EXPLAIN_INBOX = "_INBOX_EXPLAIN"
EXPLAIN_TTL_S = 10

# Service users: one per service, each with the permissions of ``service_permissions``.
SERVICE_ROLES = ("auth", "ingest", "preprocess", "generator", "garments", "passthrough")
ADMIN_USER = "admin"  # operators' tools: `up`'s catalogue load, the demo's measuring client, tests
SYSTEM_USER = "auth-sys"  # the auth service's second connection, in SYS: kicks stopped sessions

ENV_USER = "CHAMELEON_NATS_USER"
ENV_PASSWORD = "CHAMELEON_NATS_PASSWORD"
ENV_TOKEN = "CHAMELEON_TOKEN"
# a deployment's keys file (``chameleon auth init``): a service user's password is read from it
# when the environment names the user but carries no password (compose mounts it read-only)
ENV_KEYS_FILE = "CHAMELEON_KEYS_FILE"

TOKEN_SCHEME = "cht1"  # the session token's version tag: ``cht1.<claims>.<signature>``


def kick_subject(server_id: str) -> str:
    """The system-account request that makes server ``server_id`` drop one client (by cid)."""
    return f"$SYS.REQ.SERVER.{server_id}.KICK"


def explain_inbox_prefix(nonce: str) -> str:
    """The reply inbox of one ``explain`` connection (the nonce is its own: no other reads it)."""
    return f"{EXPLAIN_INBOX}.{nonce}"


def session_inbox_prefix(session_id: str) -> str:
    """The reply-inbox prefix of a session client: it may subscribe under it and nowhere else, so
    one session never reads another's replies (JetStream acks, garment lists)."""
    return f"_INBOX_SESSION.{validate_session_id(session_id)}"


# -- credentials a process connects with ---------------------------------------------------------
@dataclass(frozen=True)
class NatsCredentials:
    """A service user (``user``/``password``) or a session client (``token``); empty: open mode."""

    user: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NatsCredentials:
        env = os.environ if env is None else env
        user, password = env.get(ENV_USER, ""), env.get(ENV_PASSWORD, "")
        if not password and env.get(ENV_PASSWORD + "_FILE"):  # compose: /run/secrets/<user>_password
            password = _read_secret(env[ENV_PASSWORD + "_FILE"])
        if user and not password and env.get(ENV_KEYS_FILE):
            passwords = read_keys_file(env[ENV_KEYS_FILE]).get("passwords", {})
            if not isinstance(passwords, dict) or user not in passwords:
                raise KeysFileError(f"{env[ENV_KEYS_FILE]} has no password for user {user!r}")
            password = str(passwords[user])
        return cls(user, password, env.get(ENV_TOKEN, ""))

    def connect_options(self) -> dict[str, Any]:
        """nats-py ``connect`` keyword arguments. A token client gets its session's inbox prefix:
        the permissions the auth service grants allow replies only there."""
        if self.user:
            return {"user": self.user, "password": self.password}
        if self.token:
            return {
                "token": self.token,
                "inbox_prefix": session_inbox_prefix(read_token(self.token).session_id),
            }
        return {}

    def env(self) -> dict[str, str]:
        """The environment that hands these credentials to a child process."""
        return {ENV_USER: self.user, ENV_PASSWORD: self.password, ENV_TOKEN: self.token}


class KeysFileError(ValueError):
    """A keys file that cannot be read, or lacks what a process needs from it."""


def _read_secret(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except OSError as exc:
        raise KeysFileError(f"{ENV_PASSWORD}_FILE={path!r}: cannot read it ({exc.strerror})") from None


def read_keys_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON of a deployment's keys file (``services/auth/keys.py`` writes it): its seeds and
    passwords. Readable by the deployment's processes only (mode 0600, their user)."""
    try:
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
    except (OSError, ValueError) as exc:
        raise KeysFileError(f"{path}: not a readable keys file ({exc})") from None
    if not isinstance(body, dict):
        raise KeysFileError(f"{path}: not a keys file")
    return body


# -- the session token, as its holder may read it ------------------------------------------------
class TokenFormatError(ValueError):
    """Not a session token of this format (says nothing about its signature)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenFormatError(f"bad base64: {exc}") from None


@dataclass(frozen=True)
class TokenClaims:
    """What a session token says: the one session it opens, when it was issued (Unix seconds, to the
    millisecond: a session stopped and restarted within a second must tell its tokens apart) and
    when it expires, and its id. Signed by the token key (``shared/tokens.py``)."""

    session_id: str
    issued_at: float
    expires_at: int
    token_id: str

    def encode(self) -> bytes:
        claims = {"sid": self.session_id, "iat": self.issued_at, "exp": self.expires_at, "jti": self.token_id}
        return json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> TokenClaims:
        try:
            obj = json.loads(raw)
            claims = cls(str(obj["sid"]), float(obj["iat"]), int(obj["exp"]), str(obj["jti"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenFormatError(f"bad token claims: {exc}") from None
        try:
            validate_session_id(claims.session_id)
        except ValueError as exc:
            raise TokenFormatError(str(exc)) from None
        return claims


def split_token(token: str) -> tuple[str, TokenClaims, bytes]:
    """``(signed part, claims, signature)`` of ``cht1.<claims>.<signature>``; checks the shape only."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != TOKEN_SCHEME:
        raise TokenFormatError(f"not a {TOKEN_SCHEME} session token")
    return f"{parts[0]}.{parts[1]}", TokenClaims.decode(b64url_decode(parts[1])), b64url_decode(parts[2])


def read_token(token: str) -> TokenClaims:
    """The claims of a token, unverified: what a client needs (its session, its expiry)."""
    return split_token(token)[1]


# -- the embedded server's authorization config ---------------------------------------------------
@dataclass(frozen=True)
class Permissions:
    """Allow lists of one user (nats-server denies everything else); ``allow_responses``: it may
    answer requests it received whatever their reply subject."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    allow_responses: bool = False


@dataclass(frozen=True)
class ConfigUser:
    """A user written into the server's config. ``permissions`` None: unrestricted (the admin)."""

    name: str
    password: str = field(repr=False)
    account: str = APP_ACCOUNT
    permissions: Permissions | None = None


@dataclass(frozen=True)
class SessionLimits:
    """What the server enforces on every session client (the ``CLIENTS`` account's limits).
    ``max_payload`` matches ingest's default frame cap; a client publishing more is disconnected."""

    max_payload: int = 2 * 1024 * 1024
    max_subscriptions: int = 16
    max_connections: int = 1024  # all session clients together; per session and address: the auth service
    max_explain_connections: int = 64  # refused clients asking why, all together


@dataclass(frozen=True)
class ServerAuth:
    """Accounts, users and the auth callout block of an embedded server (``EmbeddedNats(auth=)``).

    ``issuer`` is the public account nkey whose signature the server accepts on the callout's
    user JWTs; the auth service holds its seed."""

    issuer: str
    users: tuple[ConfigUser, ...]
    prefix: str = Subjects().prefix
    limits: SessionLimits = SessionLimits()

    def config_lines(self) -> list[str]:
        s = Subjects(self.prefix)
        to_clients = [s.all_sessions(Channel.OUTPUT), s.all_sessions(Channel.EVENTS)]
        services = [s.all_sessions(Channel.CONTROL), s.garments("get"), s.garments("list")]
        from_clients = [s.all_sessions(Channel.CAMERA), s.all_sessions(Channel.FEEDBACK)]
        lim = self.limits
        lines = ["accounts {", f"  {APP_ACCOUNT} {{", "    jetstream: enabled"]
        lines += self._users(APP_ACCOUNT)
        lines.append("    exports: [")
        lines += [f"      {{stream: {_q(x)}}}" for x in to_clients]
        lines += [f"      {{service: {_q(x)}}}" for x in [*services, AUTH_EXPLAIN_SUBJECT]]
        lines.append("    ]")
        lines.append("    imports: [")
        lines += [f"      {{stream: {{account: {CLIENT_ACCOUNT}, subject: {_q(x)}}}}}" for x in from_clients]
        lines += ["    ]", "  }", f"  {CLIENT_ACCOUNT} {{"]
        lines.append(
            f"    limits: {{max_payload: {lim.max_payload}, max_subscriptions: {lim.max_subscriptions}, "
            f"max_connections: {lim.max_connections}}}"
        )
        lines.append("    exports: [")
        lines += [f"      {{stream: {_q(x)}}}" for x in from_clients]
        lines.append("    ]")
        lines.append("    imports: [")
        lines += [f"      {{stream: {{account: {APP_ACCOUNT}, subject: {_q(x)}}}}}" for x in to_clients]
        lines += [f"      {{service: {{account: {APP_ACCOUNT}, subject: {_q(x)}}}}}" for x in services]
        lines += ["    ]", "  }", f"  {EXPLAIN_ACCOUNT} {{"]
        lines.append(
            f"    limits: {{max_payload: 4096, max_subscriptions: 2, "
            f"max_connections: {lim.max_explain_connections}}}"
        )
        # share: the auth service sees the asking client's address (``Nats-Request-Info``)
        lines.append(
            f"    imports: [{{service: {{account: {APP_ACCOUNT}, subject: {_q(AUTH_EXPLAIN_SUBJECT)}}}, "
            "share: true}]"
        )
        lines += ["  }", f"  {SYSTEM_ACCOUNT} {{"]
        lines += self._users(SYSTEM_ACCOUNT)
        lines += ["  }", "}", f"system_account: {SYSTEM_ACCOUNT}"]
        auth_users = ", ".join(_q(u.name) for u in self.users)
        lines += [
            "authorization {",
            "  auth_callout {",
            f"    issuer: {_q(self.issuer)}",
            f"    auth_users: [{auth_users}]",
            f"    account: {APP_ACCOUNT}",
            "  }",
            "}",
        ]
        return lines

    def _users(self, account: str) -> list[str]:
        users = [u for u in self.users if u.account == account]
        if not users:
            return []
        out = ["    users: ["]
        for u in users:
            perms = ""
            if u.permissions is not None:
                p = u.permissions
                perms = (
                    f", permissions: {{publish: {_allow(p.publish)}, subscribe: {_allow(p.subscribe)}"
                    + (", allow_responses: true" if p.allow_responses else "")
                    + "}"
                )
            out.append(f"      {{user: {_q(u.name)}, password: {_q(u.password)}{perms}}}")
        out.append("    ]")
        return out


def _q(text: str) -> str:
    """A quoted config string: JSON quoting is valid NATS config, and ``$`` inside quotes is not a
    variable reference."""
    return json.dumps(text)


def _allow(items: tuple[str, ...]) -> str:
    """An allow list; an empty one is written as deny-all, since nats-server reads a missing allow
    list as "everything"."""
    if not items:
        return '{deny: [">"]}'
    return "{allow: [" + ", ".join(_q(i) for i in items) + "]}"


# -- what each service user may do ----------------------------------------------------------------
def _stream_use(stream: str, direct: bool = True) -> list[str]:
    """Read a stream and run consumers on it: stream info, API gets (KV reads; direct gets, which
    any replica may answer, only where ``direct``), consumers (KV watches, object reads, a durable
    control consumer), acks and flow control in both of the server's reply formats (v1
    ``$JS.ACK.<stream>``, v2 ``$JS.ACK.<domain>.<hash>.<stream>``)."""
    api = "$JS.API"
    gets = [f"{api}.DIRECT.GET.{stream}", f"{api}.DIRECT.GET.{stream}.>"] if direct else []
    return [
        f"{api}.STREAM.INFO.{stream}",
        f"{api}.STREAM.MSG.GET.{stream}",
        *gets,
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"{api}.CONSUMER.INFO.{stream}.>",
        f"{api}.CONSUMER.DELETE.{stream}.>",
        f"{api}.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
        f"$JS.ACK.*.*.{stream}.>",
        f"$JS.FC.{stream}.>",
        f"$JS.FC.*.*.{stream}.>",
    ]


def _stream_own(stream: str, purge: bool = False) -> list[str]:
    """Create a stream or bring it to this process's config (every process ensures what it uses)."""
    own = [f"$JS.API.STREAM.CREATE.{stream}", f"$JS.API.STREAM.UPDATE.{stream}"]
    return [*own, f"$JS.API.STREAM.PURGE.{stream}"] if purge else own


def _kv(bucket: str, write: bool = True, direct: bool = True) -> list[str]:
    stream = Subjects.kv_stream(bucket)
    return [*_stream_use(stream, direct), *_stream_own(stream), *([f"$KV.{bucket}.>"] if write else [])]


def _fleet_kv(bucket: str) -> list[str]:
    """A bucket whose reads decide ownership or resume a session (leases, owners, session state,
    stops): no direct gets, so every read the server lets through is the leader's (docs/fleet.md,
    "Reads on a cluster"); watches and compare-and-set writes as usual."""
    return _kv(bucket, direct=False)


def service_permissions(role: str, subjects: Subjects) -> Permissions:
    """The allow lists of service user ``role``. What none has: deleting a stream or bucket; what
    only the garment service has: writing the garment index and object store."""
    s = subjects
    fleet = [*_fleet_kv(s.worker_bucket), *_fleet_kv(s.owner_bucket)]
    js_base = ["$JS.API.INFO", "$JS.API.STREAM.NAMES"]
    events = s.all_sessions(Channel.EVENTS)
    inbox = "_INBOX.>"
    if role == "auth":  # answers the callout; keeps stopped sessions in its own bucket; reads
        # the control stream's stops through its own durable consumer (docs/security.md)
        control = [*_stream_use(s.control_stream), *_stream_own(s.control_stream)]
        return Permissions(
            publish=(*js_base, *_fleet_kv(s.revocation_bucket), *control),
            subscribe=(AUTH_REQUEST_SUBJECT, AUTH_EXPLAIN_SUBJECT, s.all_sessions(Channel.CONTROL), inbox),
            allow_responses=True,
        )
    if role == "ingest":
        return Permissions(
            publish=(s.all_sessions(Channel.INGESTED), events, *js_base, *fleet),
            subscribe=(s.all_sessions(Channel.CAMERA), s.all_sessions(Channel.CONTROL), inbox),
        )
    if role == "preprocess":  # lists the catalogue: each session's garment region by its category
        return Permissions(
            publish=(s.all_sessions(Channel.CONDITIONING), events, s.garments("list"), *js_base, *fleet),
            subscribe=(s.all_sessions(Channel.INGESTED), s.all_sessions(Channel.CONTROL), inbox),
        )
    if role == "generator":
        control = [*_stream_use(s.control_stream), *_stream_own(s.control_stream, purge=True)]
        return Permissions(
            publish=(
                s.all_sessions(Channel.OUTPUT),
                events,
                s.garments("get"),
                s.garments("list"),
                *js_base,
                *control,
                *_fleet_kv(s.session_bucket),
                *_fleet_kv(s.revocation_bucket),  # keeps a stop before purging the session's history
                *fleet,
            ),
            # the viewers' receiver reports: a session's output quality (services/generator/downlink.py)
            subscribe=(s.all_sessions(Channel.CONDITIONING), s.all_sessions(Channel.FEEDBACK), inbox),
        )
    if role == "garments":
        objects = f"OBJ_{s.garment_objects}"
        blobs = [*_stream_use(objects), *_stream_own(objects, purge=True), f"$O.{s.garment_objects}.>"]
        return Permissions(
            publish=(events, *js_base, *_kv(s.garment_bucket), *blobs),
            subscribe=(s.service("garments", ">"), inbox),
            allow_responses=True,
        )
    if role == "passthrough":
        return Permissions(
            publish=(s.all_sessions(Channel.OUTPUT), events),
            subscribe=(s.all_sessions(Channel.INGESTED), inbox),
        )
    raise ValueError(f"unknown service role {role!r}; known: {', '.join(SERVICE_ROLES)}")


def system_permissions() -> Permissions:
    """The auth service's system-account user: kick a client, read the answer, and hear session
    and explain clients connect and leave (the connection limits count live ones); nothing else."""
    events = [
        event.format(account=account)
        for account in (CLIENT_ACCOUNT, EXPLAIN_ACCOUNT)
        for event in (CONNECT_EVENT, DISCONNECT_EVENT)
    ]
    return Permissions(publish=(kick_subject("*"),), subscribe=("_INBOX.>", *events))


def server_auth(
    issuer: str, passwords: Mapping[str, str], subjects: Subjects, limits: SessionLimits | None = None
) -> ServerAuth:
    """The server config for the whole fleet: every service role, the admin and the system user,
    with the passwords in ``passwords`` (keyed by user name)."""
    users = [
        ConfigUser(r, passwords[r], APP_ACCOUNT, service_permissions(r, subjects)) for r in SERVICE_ROLES
    ]
    users.append(ConfigUser(ADMIN_USER, passwords[ADMIN_USER], APP_ACCOUNT, None))
    users.append(ConfigUser(SYSTEM_USER, passwords[SYSTEM_USER], SYSTEM_ACCOUNT, system_permissions()))
    return ServerAuth(issuer, tuple(users), subjects.prefix, limits or SessionLimits())
