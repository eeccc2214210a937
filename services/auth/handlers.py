"""The auth service's NATS side: answers nats-server's auth callout, and ends stopped sessions.

- ``$SYS.REQ.USER.AUTH`` (queue group ``auth``): every connect attempt that is not a configured
  service user. A valid session token gets a user JWT for that session alone, placed in the
  ``CLIENTS`` account and expiring with the token (the server disconnects it then); anything else
  gets an error, and the server refuses the connection.
- ``<p>.*.control``: a ``stop`` revokes the session's tokens issued so far and kicks its connected
  clients through the system account (``$SYS.REQ.SERVER.<id>.KICK``), so their reconnects are
  refused too. The stop is also kept in the KV bucket ``<P>_REVOKED`` (entries expire with the
  longest token lifetime), which the service reads at start: a restart forgets no stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import nkeys
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import KeyValueConfig
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from services.auth.authorizer import Authorizer, Connection
from services.auth.callout import CalloutError, decode_request, response_jwt, user_jwt
from services.auth.permissions import session_permissions, session_user_name
from services.auth.settings import AuthSettings
from shared.auth import AUTH_QUEUE_GROUP, AUTH_REQUEST_SUBJECT, NatsCredentials, SessionLimits, kick_subject
from shared.bus import connect
from shared.jetstream import key_value
from shared.logging import RateLimitedLog, get_logger
from shared.schemas import Control, SchemaError
from shared.service import ServiceContext
from shared.subjects import Channel, InvalidSessionId
from shared.tokens import MAX_TTL_S, TokenError, keypair, verify_key

log = get_logger("auth")


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
        self.authorizer = Authorizer(settings.auth_token_public_key)
        self.kicked = 0
        self._subs: list[Subscription] = []
        self._sys: NATS | None = None
        self._revocations: KeyValue | None = None
        self._refusals = RateLimitedLog(log, 1.0, burst=5)

    async def start(self) -> None:
        nc, subjects = self.ctx.nc, self.ctx.subjects
        if self.settings.auth_sys_user:
            creds = NatsCredentials(
                user=self.settings.auth_sys_user, password=self.settings.auth_sys_password
            )
            self._sys = await connect(self.settings.nats_url, "auth-sys", credentials=creds)
        await self._restore_revocations()
        self._subs = [
            await nc.subscribe(AUTH_REQUEST_SUBJECT, queue=AUTH_QUEUE_GROUP, cb=self.on_request),
            await nc.subscribe(subjects.all_sessions(Channel.CONTROL), cb=self.on_control),
        ]

    async def _restore_revocations(self) -> None:
        """Read the stops kept in the bucket. Without JetStream (an external server configured
        so) the service still runs, with stops kept in memory only, and says so."""
        config = KeyValueConfig(
            bucket=self.ctx.subjects.revocation_bucket,
            history=1,
            ttl=MAX_TTL_S,
            replicas=max(1, self.settings.js_replicas),
        )
        try:
            self._revocations = await key_value(self.ctx.nc.jetstream(timeout=5), config)
            try:
                keys = await self._revocations.keys()
            except NoKeysError:
                keys = []
            for key in keys:
                with contextlib.suppress(KeyNotFoundError, ValueError):
                    entry = await self._revocations.get(key)
                    self.authorizer.restore(key, float((entry.value or b"0").decode()))
            log.info("revocations_restored", sessions=len(keys))
        except Exception as exc:
            self._revocations = None
            log.warning("revocations_not_persisted", error=f"{type(exc).__name__}: {exc}")

    async def _keep_revocation(self, session_id: str, at: float) -> None:
        if self._revocations is None:
            return
        try:
            await self._revocations.put(session_id, repr(at).encode())
        except Exception as exc:  # kept in memory: lost only if this service restarts before expiry
            log.warning(
                "revocation_not_persisted", session_id=session_id, error=f"{type(exc).__name__}: {exc}"
            )

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        if self._sys is not None:  # bounded: a drain that hangs must not keep the process alive
            try:
                await asyncio.wait_for(self._sys.drain(), self.settings.drain_timeout_s)
            except Exception:
                with contextlib.suppress(Exception):
                    await self._sys.close()
            self._sys = None

    def health(self) -> dict:
        a = self.authorizer
        return {"admitted": a.admitted_total, "refused": a.refused_total, "kicked": self.kicked}

    async def on_request(self, msg: Msg) -> None:
        try:
            request = decode_request(msg.data)
        except CalloutError as exc:  # not from a server: nothing to answer it with
            self._refusals.warning("auth_request_invalid", error=str(exc))
            return
        now = time.time()
        try:
            claims = self.authorizer.authorize(request.token, now)
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
        self.authorizer.admitted(claims, request.server_id, request.client_id, now)
        log.info(
            "auth_admitted", session_id=claims.session_id, client=request.client_name, cid=request.client_id
        )
        await msg.respond(response_jwt(self.issuer, request, jwt=jwt))

    async def on_control(self, msg: Msg) -> None:
        """A ``stop`` on a session's control subject (the subject names the session: only its own
        clients and the services may publish there) ends its clients' access."""
        try:
            session_id = self.ctx.subjects.session_of(msg.subject)
            control = Control.decode(msg.data)
        except (InvalidSessionId, SchemaError):
            return
        # a stop naming another session is refused by the generator (session_mismatch): not a stop
        if control.action != "stop" or control.session_id != session_id:
            return
        now = time.time()
        connections = self.authorizer.revoke(session_id, now)
        log.info("session_revoked", session_id=session_id, connections=len(connections))
        await self._keep_revocation(session_id, now)
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
