"""JetStream assets, got or created in one place (the control stream, the session state, the
garment index and store). Every process that needs one calls these at start, so whichever starts
first makes it and the others find it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue
from nats.js.object_store import ObjectStore

from runtime.logging import get_logger
from shared.control import ensure_control_stream
from shared.subjects import Subjects

log = get_logger("control")
T = TypeVar("T")


async def control_stream(
    js: JetStreamContext, subjects: Subjects, replicas: int = 1, deadline_s: float | None = None
) -> None:
    """The control stream, made or brought to ``replicas``; an update the servers refuse is logged
    and the stream used as it is (a process must still start). Asked again while JetStream does
    not answer yet, as ``key_value`` does."""
    refused = await until_answered(
        lambda: ensure_control_stream(js, subjects, replicas),
        START_DEADLINE_S if deadline_s is None else deadline_s,
        log,
        "jetstream_not_ready",
        stream=subjects.control_stream,
    )
    if refused:
        log.warning("control_stream_update_failed", stream=subjects.control_stream, error=refused)


NOT_YET = (  # JetStream not answering yet: a cluster still forming or electing, a loaded machine
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)
START_DEADLINE_S = 60.0


async def until_answered(
    ask: Callable[[], Awaitable[T]], deadline_s: float, logger: Any, event: str, **fields: Any
) -> T:
    """``ask()``, asked again every 0.5 s while JetStream does not answer yet (``NOT_YET``: a
    cluster still electing, a loaded machine), each time a warning ``event``; after
    ``deadline_s`` its error. A process that gave up on its first timeout exited at start."""
    give_up = time.monotonic() + deadline_s
    while True:
        try:
            return await ask()
        except NOT_YET as exc:
            if time.monotonic() > give_up:
                raise
            logger.warning(event, error=str(exc) or type(exc).__name__, **fields)
            await asyncio.sleep(0.5)


async def key_value(
    js: JetStreamContext, config: KeyValueConfig, deadline_s: float = START_DEADLINE_S
) -> KeyValue:
    """The KV bucket ``config.bucket``, created with ``config`` if it does not exist. A JetStream
    that does not answer yet (a three-node cluster starting while every service makes its buckets
    at once) is asked again until ``deadline_s``: a process that gave up on its first timeout
    exited at start, and a benchmark with it."""

    async def get_or_create() -> KeyValue:
        try:
            return await js.key_value(config.bucket)
        except BucketNotFoundError:
            return await js.create_key_value(config)

    return await until_answered(get_or_create, deadline_s, log, "jetstream_not_ready", bucket=config.bucket)


async def object_store(js: JetStreamContext, config: ObjectStoreConfig) -> ObjectStore:
    """The object store ``config.bucket``, created with ``config`` if it does not exist."""
    try:
        return await js.object_store(config.bucket)
    except (BucketNotFoundError, NotFoundError):
        # nats-py overwrites ``config.bucket`` with its ``bucket`` argument, so pass both
        return await js.create_object_store(config.bucket, config=config)


async def leader_get(js: JetStreamContext, bucket: str, key: str) -> KeyValue.Entry | None:
    """The newest value of ``key`` as the bucket's stream leader has it (None: no such key, or
    deleted). Never a direct get, which any replica may answer, a lagging follower included,
    whatever the bucket was created with (``nats kv add`` turns direct gets on): the reads that
    decide an owner change or resume a session must see every acknowledged write (docs/fleet.md,
    "Reads on a cluster"). With no leader (an election) it raises, rather than answer stale."""
    stream, subject = Subjects.kv_stream(bucket), Subjects.kv_stream_subject(bucket, key)
    try:
        msg = await js.get_msg(stream, subject=subject, direct=False)
    except NotFoundError:
        return None
    if msg.headers and msg.headers.get(KV_OP) in (KV_DEL, KV_PURGE):
        return None
    return KeyValue.Entry(
        bucket=bucket, key=key, value=msg.data, revision=msg.seq, delta=None, created=None, operation=None
    )
