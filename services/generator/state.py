"""What outlives a generator worker: each session's state in the KV bucket ``<P>_SESSIONS`` (the
garment in effect, the ids of the control events applied, the swap not yet shown), so a restarted
or new owner resumes it; and the stops kept in ``<P>_REVOKED`` for the auth service, before a
stopped session's control history is purged (docs/security.md, "Stop").

A state is written with a plain ``put``: one owner per session (docs/fleet.md) is the only writer."""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from runtime import revocations
from runtime.jetstream import key_value, leader_get
from runtime.logging import RateLimitedLog, get_logger
from services.generator.lifecycle import ServedSession, StoredSession
from shared.schemas import SchemaError, SessionState
from shared.subjects import Subjects

log = get_logger("generator")
SAVE_DEADLINE_S = 15.0
NO_LEADER = (  # the bucket's stream is between leaders (a node lost): seconds, then it answers
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


class SessionStore:
    def __init__(self, kv: KeyValue, revoked: KeyValue | None, js: JetStreamContext, bucket: str) -> None:
        self.kv = kv
        self.revoked = revoked
        self.js, self.bucket = js, bucket
        self._lines = RateLimitedLog(log, burst=3)

    @classmethod
    async def open(cls, js: JetStreamContext, subjects: Subjects, replicas: int) -> SessionStore:
        kv = await key_value(
            js,
            KeyValueConfig(
                bucket=subjects.session_bucket,
                history=1,
                storage=StorageType.FILE,
                replicas=replicas,
                direct=False,  # read from the leader (``load``)
            ),
        )
        try:  # where a stop is kept for the auth service: its history here is purged on stop
            revoked = await revocations.open_bucket(js, subjects, replicas)
        except Exception as exc:  # an auth-less deployment may not allow it: stops still end sessions
            log.warning("revocations_not_kept", error=f"{type(exc).__name__}: {exc}")
            revoked = None
        return cls(kv, revoked, js, subjects.session_bucket)

    async def load(self, sid: str) -> StoredSession | None:
        """The session as stored, read from the bucket's leader: a new owner after a failover
        must see the garment, applied ids and swap time the last owner acknowledged, not a
        follower's older copy; None when there is none, or it cannot be read (logged)."""
        try:
            entry = await leader_get(self.js, self.bucket, sid)
        except Exception as exc:
            log.warning("session_state_unavailable", error=str(exc) or type(exc).__name__)
            return None
        if entry is None or not entry.value:
            return None
        try:
            return StoredSession(SessionState.decode(entry.value))
        except SchemaError as exc:
            log.warning("session_state_corrupt", error=str(exc))
            return None

    async def save(self, served: ServedSession) -> None:
        """Store the session's state; a put that times out (the bucket's leader lost, a new one
        being elected: seconds) is tried again for up to ``SAVE_DEADLINE_S``. A control event is
        acknowledged only after this, so a crash before it means redelivery."""
        state = served.next_state().encode()
        deadline = time.monotonic() + SAVE_DEADLINE_S
        while True:
            try:
                await self.kv.put(served.session_id, state)
                return
            except NO_LEADER:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def save_quietly(self, served: ServedSession) -> None:
        """Off the frame path (a swap answered): a failure is logged, the next change stores it."""
        try:
            await self.save(served)
        except Exception as exc:
            log.warning("session_state_not_saved", session_id=served.session_id, error=str(exc))

    async def forget(self, sid: str) -> None:
        with contextlib.suppress(Exception):  # a state left behind is overwritten by the next start
            await self.kv.delete(sid)

    async def keep_stop(self, sid: str, at: float) -> None:
        """Keep the stop in the revocation bucket before the session's control history (the stop
        included) is purged: the auth service reads stops from the bucket as well as from the
        stream, so one published while no auth service ran still revokes the session's tokens."""
        if self.revoked is None:
            return
        try:
            await revocations.keep(self.revoked, sid, at)
        except Exception as exc:
            self._lines.warning("revocation_not_kept", session_id=sid, error=f"{type(exc).__name__}: {exc}")
