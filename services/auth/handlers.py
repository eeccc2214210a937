"""The auth service's NATS side: answers nats-server's auth callout, and ends stopped sessions.

- ``$SYS.REQ.USER.AUTH`` (queue group ``auth``): every connect attempt that is not a configured
  service user. A valid session token gets a user JWT for that session alone, placed in the
  ``CLIENTS`` account and expiring with the token (the server disconnects it then), unless its
  session or its address already holds the most live connections allowed; anything else gets an
  error, and the server refuses the connection. A token ``explain:<nonce>`` (a refused client
  asking why) gets ten seconds in the ``EXPLAIN`` account, where it may only ask the next one.
- ``_CHAMELEON.auth.explain``: the reason a token is refused from the asking client's address
  (the server tells the client only "Authorization Violation").
- ``$SYS.ACCOUNT.{CLIENTS,EXPLAIN}.{CONNECT,DISCONNECT}`` (the system user): which admitted
  connections are up and which have gone, so the limits count live connections only.
- ``<p>.*.control``: a ``stop`` revokes the session's tokens issued so far and kicks its connected
  clients through the system account (``$SYS.REQ.SERVER.<id>.KICK``), so their reconnects are
  refused too. Every running replica hears each stop on the subject at once.
- the control stream, through the durable consumer ``auth_stops`` that the replicas share: every
  stop stored there reaches one of them, also one published while no auth service ran, and is
  applied with its stored time.
- the KV bucket ``<P>_REVOKED`` (session -> when; entries expire with the longest token
  lifetime): every applied stop is kept there, and every replica watches it, from its start
  (a restart forgets no stop) and on (a stop another replica took from the stream is applied
  here too, and kicks what this replica admitted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import nats.errors
import nkeys
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from runtime import revocations
from runtime.bus import connect
from runtime.jetstream import control_stream
from runtime.logging import RateLimitedLog, get_logger
from runtime.service import ServiceContext
from services.auth.authorizer import Authorizer, Connection, ConnectionLimits
from services.auth.callout import AuthRequest, CalloutError, decode_request, response_jwt, user_jwt
from services.auth.permissions import explain_permissions, session_permissions, session_user_name
from services.auth.settings import AuthSettings
from shared.auth import (
    AUTH_QUEUE_GROUP,
    AUTH_REQUEST_SUBJECT,
    CLIENT_ACCOUNT,
    CLIENT_INFO_HEADER,
    CONNECT_EVENT,
    DISCONNECT_EVENT,
    EXPLAIN_ACCOUNT,
    EXPLAIN_TOKEN_PREFIX,
    EXPLAIN_TTL_S,
    NatsCredentials,
    SessionLimits,
    kick_subject,
)
from shared.control import control_for
from shared.subjects import AUTH_EXPLAIN_SUBJECT, Channel
from shared.tokens import TokenError, keypair, verify_key

log = get_logger("auth")

STOPS_CONSUMER = "auth_stops"  # the replicas' shared durable consumer of the control stream
STOPS_BATCH = 64


class AuthHandlers:
    def __init__(
        self, ctx: ServiceContext, settings: AuthSettings, limits: SessionLimits | None = None
    ) -> None:
        if not settings.auth_issuer_seed or not settings.auth_token_public_key:
            raise ValueError(
                "auth: CHAMELEON_AUTH_ISSUER_SEED and CHAMELEON_AUTH_TOKEN_PUBLIC_KEY are required"
            )
        self.ctx = ctx
        self.settings = settings
        self.limits = limits or SessionLimits()
        self.issuer: nkeys.KeyPair = keypair(settings.auth_issuer_seed)
        verify_key(settings.auth_token_public_key, nkeys.PREFIX_BYTE_OPERATOR)  # a typo fails at start
        self.authorizer = Authorizer(
            settings.auth_token_public_key,
            ConnectionLimits(settings.max_connections_per_session, settings.max_connections_per_address),
        )
        self.kicked = 0
        self.explained = 0
        self._subs: list[Subscription] = []
        self._sys: NATS | None = None
        self._revocations: KeyValue | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._stops: JetStreamContext.PullSubscription | None = None
        self._tasks: list[asyncio.Task] = []
        self._refusals = RateLimitedLog(log, 1.0, burst=5)

    async def start(self) -> None:
        nc, subjects = self.ctx.nc, self.ctx.subjects
        if self.settings.auth_sys_user:
            creds = NatsCredentials(
                user=self.settings.auth_sys_user, password=self.settings.auth_sys_password
            )
            self._sys = await connect(self.settings.nats_url, "auth-sys", credentials=creds)
            for account in (CLIENT_ACCOUNT, EXPLAIN_ACCOUNT):
                for event, cb in ((CONNECT_EVENT, self.on_connect_event), (DISCONNECT_EVENT, self.on_left)):
                    await self._sys.subscribe(event.format(account=account), cb=cb)
            await self._sys.flush()
        else:  # nothing says when a connection leaves: counting would lock sessions out for good
            self.authorizer.limits = None
            log.warning("connection_limits_off", reason="no system user (CHAMELEON_AUTH_SYS_USER)")
        await self._restore_revocations()
        self._subs = [
            await nc.subscribe(AUTH_REQUEST_SUBJECT, queue=AUTH_QUEUE_GROUP, cb=self.on_request),
            await nc.subscribe(AUTH_EXPLAIN_SUBJECT, queue=AUTH_QUEUE_GROUP, cb=self.on_explain),
            await nc.subscribe(subjects.all_sessions(Channel.CONTROL), cb=self.on_control),
        ]
        await self._follow_stored_stops()

    async def _restore_revocations(self) -> None:
        """Read the stops kept in the bucket, then keep watching it (``_follow_bucket``). Without
        JetStream (an external server configured so) the service still runs, with stops kept in
        memory only, and says so."""
        try:
            self._revocations = await revocations.open_bucket(
                self.ctx.nc.jetstream(timeout=5), self.ctx.subjects, self.settings.js_replicas
            )
            self._watcher = await self._revocations.watchall()
            restored = 0
            while (entry := await self._watcher.updates(timeout=10)) is not None:  # None: all read
                restored += self._apply_kept(entry) is not None
            log.info("revocations_restored", sessions=restored)
            self._tasks.append(asyncio.create_task(self._follow_bucket(self._watcher)))
        except Exception as exc:
            self._revocations = None
            log.warning("revocations_not_persisted", error=f"{type(exc).__name__}: {exc}")

    def _apply_kept(self, entry: KeyValue.Entry) -> list[Connection] | None:
        """A stop from the bucket: the connections it covers, None if the entry is not a stop."""
        at = revocations.stopped_at(entry.value) if entry.operation is None else None  # not a delete
        return None if at is None else self.authorizer.revoke(entry.key, at)

    async def _follow_bucket(self, watcher: KeyValue.KeyWatcher) -> None:
        """Stops another replica kept (one it took from the stream): apply them here, and kick
        the connections this replica admitted on tokens they cover."""
        async for entry in watcher:
            if entry is None:
                continue
            for connection in self._apply_kept(entry) or []:
                await self._kick(entry.key, connection)

    async def _follow_stored_stops(self) -> None:
        """Bind the shared durable consumer of the control stream (created on first use, from the
        stream's start) and apply the stops it delivers in the background."""
        if self._revocations is None:
            return  # no JetStream: the subject alone
        js = self.ctx.nc.jetstream(timeout=5)
        subjects = self.ctx.subjects
        try:
            await control_stream(js, subjects, max(1, self.settings.js_replicas))
            self._stops = await js.pull_subscribe(
                subjects.all_sessions(Channel.CONTROL),
                durable=STOPS_CONSUMER,
                stream=subjects.control_stream,
                config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL),
            )
        except Exception as exc:
            log.warning("stored_stops_not_followed", error=f"{type(exc).__name__}: {exc}")
            return
        self._tasks.append(asyncio.create_task(self._take_stored_stops(self._stops)))

    async def _take_stored_stops(self, psub: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                msgs = await psub.fetch(batch=STOPS_BATCH, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except Exception as exc:  # a stream between leaders, a reconnect: try again shortly
                self._refusals.warning("stored_stops_fetch_failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                await self._apply_stop(msg.subject, msg.data, msg.metadata.timestamp.timestamp())
                with contextlib.suppress(Exception):
                    await msg.ack()

    async def _keep_revocation(self, session_id: str, at: float) -> None:
        if self._revocations is None:
            return
        try:
            await revocations.keep(self._revocations, session_id, at)
        except Exception as exc:  # kept in memory: lost only if this service restarts before expiry
            log.warning(
                "revocation_not_persisted", session_id=session_id, error=f"{type(exc).__name__}: {exc}"
            )

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        with contextlib.suppress(Exception):
            if self._watcher is not None:
                await self._watcher.stop()
        with contextlib.suppress(Exception):
            if self._stops is not None:
                await self._stops.unsubscribe()
        self._watcher = self._stops = None
        if self._sys is not None:  # bounded: a drain that hangs must not keep the process alive
            try:
                await asyncio.wait_for(self._sys.drain(), self.settings.drain_timeout_s)
            except Exception:
                with contextlib.suppress(Exception):
                    await self._sys.close()
            self._sys = None

    def health(self) -> dict:
        a = self.authorizer
        return {
            "admitted": a.admitted_total,
            "refused": a.refused_total,
            "refused_for_limits": dict(a.refused_for_limits),
            "connections": len(a.ledger),
            "explained": self.explained,
            "kicked": self.kicked,
        }

    async def on_request(self, msg: Msg) -> None:
        try:
            request = decode_request(msg.data)
        except CalloutError as exc:  # not from a server: nothing to answer it with
            self._refusals.warning("auth_request_invalid", error=str(exc))
            return
        now = time.time()
        if request.token.startswith(EXPLAIN_TOKEN_PREFIX):
            await self._admit_explain(msg, request, now)
            return
        try:
            claims = self.authorizer.authorize(request.token, now, request.host)
        except TokenError as exc:
            self._refusals.info(
                "auth_refused", reason=str(exc), client=request.client_name, host=request.host
            )
            await msg.respond(response_jwt(self.issuer, request, error=str(exc)))
            return
        jwt = user_jwt(
            self.issuer,
            request,
            self.settings.auth_client_account,
            session_user_name(claims.session_id),
            session_permissions(self.ctx.subjects, claims.session_id),
            claims.expires_at,
            max_payload=self.limits.max_payload,
            max_subscriptions=self.limits.max_subscriptions,
        )
        self.authorizer.admitted(claims, request.server_id, request.client_id, now, request.host)
        log.info(
            "auth_admitted", session_id=claims.session_id, client=request.client_name, cid=request.client_id
        )
        await msg.respond(response_jwt(self.issuer, request, jwt=jwt))

    async def _admit_explain(self, msg: Msg, request: AuthRequest, now: float) -> None:
        """A refused client asking why: ten seconds in the ``EXPLAIN`` account, allowed only to
        ask (``on_explain``) and to read the answer on its own inbox."""
        nonce = request.token[len(EXPLAIN_TOKEN_PREFIX) :]
        expires = int(now) + EXPLAIN_TTL_S
        try:
            permissions = explain_permissions(nonce)
            self.authorizer.admit_explain(request.server_id, request.client_id, request.host, now, expires)
        except (TokenError, ValueError) as exc:
            self._refusals.info("explain_refused", reason=str(exc), host=request.host)
            await msg.respond(response_jwt(self.issuer, request, error=str(exc)))
            return
        jwt = user_jwt(self.issuer, request, EXPLAIN_ACCOUNT, "explain", permissions, expires)
        await msg.respond(response_jwt(self.issuer, request, jwt=jwt))

    async def on_explain(self, msg: Msg) -> None:
        """Why the token in the request is refused from the asking client's address (the
        server's note of the requester, ``Nats-Request-Info``): ``{"auth_error": reason}``, an
        empty reason when it would be admitted now."""
        if not msg.reply:
            return
        host = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            host = str(json.loads((msg.headers or {}).get(CLIENT_INFO_HEADER, "{}")).get("host") or "")
        token = msg.data[:4096].decode("utf-8", "replace").strip()
        reason = self.authorizer.explain(token, time.time(), host)
        self.explained += 1
        await msg.respond(json.dumps({"auth_error": reason}).encode())

    async def on_connect_event(self, msg: Msg) -> None:
        server_id, client_id = _event_client(msg.data)
        if server_id:
            self.authorizer.connected(server_id, client_id)

    async def on_left(self, msg: Msg) -> None:
        server_id, client_id = _event_client(msg.data)
        if server_id:
            self.authorizer.disconnected(server_id, client_id)

    async def on_control(self, msg: Msg) -> None:
        """A ``stop`` on a session's control subject (the subject names the session: only its own
        clients and the services may publish there) ends its clients' access."""
        await self._apply_stop(msg.subject, msg.data, time.time())

    async def _apply_stop(self, subject: str, data: bytes, at: float) -> None:
        """Revoke the session's tokens issued until ``at`` (when the stop was heard, or stored),
        keep the stop in the bucket and kick the connections it covers. A stop heard twice (on
        the subject and from the stream) is applied once: the later time wins, nothing is kicked
        twice, and it is logged and kept only when it changed something."""
        # a stop naming another session is refused by the generator (session_mismatch): not a stop
        control = control_for(self.ctx.subjects, subject, data)
        if control is None or control.action != "stop":
            return
        session_id = control.session_id
        before = self.authorizer.revoked.get(session_id)
        connections = self.authorizer.revoke(session_id, at)
        if before is not None and before >= at and not connections:
            return
        log.info("session_revoked", session_id=session_id, connections=len(connections), at=round(at, 3))
        await self._keep_revocation(session_id, max(at, before or 0.0))
        for connection in connections:
            await self._kick(session_id, connection)

    async def _kick(self, session_id: str, connection: Connection) -> None:
        if self._sys is None:
            return
        try:
            reply = await self._sys.request(
                kick_subject(connection.server_id),
                json.dumps({"cid": connection.client_id}).encode(),
                timeout=self.settings.auth_kick_timeout_s,
            )
            error = json.loads(reply.data or b"{}").get("error")
        except Exception as exc:  # a kick that fails leaves the client until its token expires
            error = str(exc) or type(exc).__name__
        if error:  # typically: that client had already gone
            log.info("kick_failed", session_id=session_id, cid=connection.client_id, error=str(error))
        else:
            self.kicked += 1


def _event_client(data: bytes) -> tuple[str, int]:
    """``(server id, client id)`` of a server's connect or disconnect event; ``("", 0)`` if unreadable."""
    try:
        event = json.loads(data)
        return str(event["server"]["id"]), int(event["client"]["id"])
    except (ValueError, KeyError, TypeError):
        return "", 0
