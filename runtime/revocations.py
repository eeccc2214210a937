"""Stopped sessions, kept where every auth replica reads them: the KV bucket ``<P>_REVOKED``
(session -> when it was stopped, epoch seconds; entries expire with the longest token lifetime).

The auth service keeps every stop it applies. The generator keeps each stop it ends a session
on, before it purges that session's control history from the stream: so a stop published while
no auth service runs reaches the next one even though the stream no longer holds it
(docs/security.md, "Stop")."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import APIError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from runtime.jetstream import key_value, leader_get
from shared.subjects import Subjects
from shared.tokens import MAX_TTL_S


def bucket_config(subjects: Subjects, replicas: int = 1) -> KeyValueConfig:
    return KeyValueConfig(
        bucket=subjects.revocation_bucket, history=1, ttl=MAX_TTL_S, replicas=max(1, replicas), direct=False
    )


async def open_bucket(js: JetStreamContext, subjects: Subjects, replicas: int = 1) -> KeyValue:
    """The bucket, created on first use by whichever service gets there first."""
    return await key_value(js, bucket_config(subjects, replicas))


async def keep(kv: KeyValue, session_id: str, at: float, attempts: int = 5) -> None:
    """Keep a stop, never replacing a later one (a stop heard twice, by the generator and by an
    auth replica, carries two times): compare-and-set against the leader's copy."""
    js = kv._js  # nats-py keeps the KeyValue's context private
    bucket = kv._name
    for _ in range(attempts):
        entry = await leader_get(js, bucket, session_id)
        current = stopped_at(entry.value) if entry is not None else None
        if current is not None and current >= at:
            return
        try:
            if entry is None:
                await kv.create(session_id, repr(at).encode())
            else:
                await kv.update(session_id, repr(at).encode(), last=entry.revision)
            return
        except (KeyWrongLastSequenceError, APIError) as exc:
            if isinstance(exc, APIError) and exc.err_code not in (10071, 10164):
                raise
            continue  # someone kept one meanwhile: read again
    raise RuntimeError(f"revocation of {session_id} not kept: the key kept changing")


def stopped_at(value: bytes | None) -> float | None:
    """The stop's time in a bucket entry, None for anything else (a delete marker, junk)."""
    try:
        return float(value.decode()) if value else None
    except (UnicodeDecodeError, ValueError):
        return None
