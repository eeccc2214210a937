"""The control plane on JetStream: one stream captures every session's control subject, so a
swap is never lost — not while the generator restarts, not while a client reconnects.

Publishers set ``Nats-Msg-Id`` to the event id, so a retried publish is stored once (the
stream's duplicate window); consumers also skip event ids they already applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from shared.errors import CodedError
from shared.headers import now_ns
from shared.schemas import Control, SchemaError
from shared.subjects import Channel, InvalidSessionId, Subjects

CONTROL_MAX_AGE_S = 24 * 3600
CONTROL_DUPLICATE_WINDOW_S = 120
PUBLISH_TIMEOUT_S = 5.0  # nats-py's own default for a JetStream request


async def ensure_control_stream(js: JetStreamContext, subjects: Subjects, replicas: int = 1) -> str:
    """Create the control stream if missing, else bring it to this config (idempotent; every
    publisher and consumer calls it).

    Its replicas only ever grow: a client run without ``CHAMELEON_JS_REPLICAS`` must not shrink
    an R3 stream. An update the servers refuse (say, more replicas than nodes) leaves the stream
    as it is, which a process must still start with: the refusal is returned ("" when none) for
    the caller to log. A stream that cannot be made at all raises ``APIError``."""
    config = StreamConfig(
        name=subjects.control_stream,
        subjects=[subjects.all_sessions(Channel.CONTROL)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=CONTROL_MAX_AGE_S,
        max_msgs_per_subject=10_000,
        duplicate_window=CONTROL_DUPLICATE_WINDOW_S,
        num_replicas=replicas,
    )
    try:
        await js.add_stream(config)
        return ""
    except APIError as exc:  # it exists with another config, or it cannot be made at all
        try:
            current = await js.stream_info(config.name)
        except NotFoundError:
            raise exc from None
    config.num_replicas = max(replicas, current.config.num_replicas or 1)
    try:
        await js.update_stream(config)
    except APIError as exc:
        return (
            f"stream {config.name} kept at {current.config.num_replicas} replicas "
            f"(asked {config.num_replicas}): {exc}"
        )
    return ""


def read_control(subjects: Subjects, subject: str, data: bytes) -> Control:
    """The control message ``data`` received on ``subject``: decoded, checked, and naming the
    session its subject names. Only the subject says whose a message is (a session's token may
    publish on its own subject, whatever session the message names), so every service reads
    control through here. Raises ``InvalidSessionId`` (no session in the subject), ``SchemaError``
    (not a control message) or ``CodedError("session_mismatch")`` carrying its event id."""
    session_id = subjects.session_of(subject)
    control = Control.decode(data)
    if control.session_id != session_id:
        raise CodedError(
            "session_mismatch",
            "control session_id differs from its subject",
            event_id=control.event_id,
            action=control.action,
        )
    return control


def control_for(subjects: Subjects, subject: str, data: bytes) -> Control | None:
    """``read_control`` for a service that only follows control (ingest, preprocess, auth): a
    message that is not valid for its subject is not for it (the generator answers it): None."""
    try:
        return read_control(subjects, subject, data)
    except (InvalidSessionId, SchemaError, CodedError):
        return None


def new_event_id() -> str:
    return uuid.uuid4().hex


async def publish_control(
    nc: NATS,
    subjects: Subjects,
    control: Control,
    replicas: int = 1,
    timeout_s: float = PUBLISH_TIMEOUT_S,
    ensure_stream: bool = True,
    deadline_s: float = 15.0,
) -> int:
    """Store a control event durably; returns its stream sequence. Each JetStream request waits at
    most ``timeout_s`` (``nats.errors.TimeoutError``), and a publish that timed out is sent again
    with the same event id until ``deadline_s`` (a cluster electing a new stream leader): a caller
    never hangs, and the event is stored once. ``ensure_stream`` False: publish only, as a session
    client must (its token allows the publish and nothing of the stream API; the generator creates
    the stream)."""
    js = nc.jetstream(timeout=timeout_s)
    subject, payload = subjects.control(control.session_id), control.encode()
    headers = {"Nats-Msg-Id": control.event_id}
    deadline = time.monotonic() + max(deadline_s, timeout_s)
    ensured = False
    while True:
        try:
            return (await js.publish(subject, payload, headers=headers)).seq
        except nats.js.errors.NoStreamResponseError:
            # no stream answers: none exists yet (a fresh deployment: create it, once), or its
            # leader was just lost (a new one is elected within seconds: try again). The stream is
            # not checked before every publish: one more request per swap, one more to time out.
            if ensure_stream and not ensured:
                ensured = True
                with contextlib.suppress(Exception):
                    await ensure_control_stream(js, subjects, replicas)
                    continue
        except nats.errors.TimeoutError:
            pass  # a stream between leaders; the same event id again is stored once
        if time.monotonic() + timeout_s > deadline:
            raise nats.errors.TimeoutError
        await asyncio.sleep(0.2)


def swap(session_id: str, garment_id: str, event_id: str | None = None) -> Control:
    return Control(
        action="swap",
        session_id=session_id,
        event_id=event_id or new_event_id(),
        published_ns=now_ns(),
        garment_id=garment_id,
    )


def start(
    session_id: str,
    garment_id: str | None = None,
    backend: str = "auto",
    width: int = 0,
    height: int = 0,
    fps: float = 0.0,
) -> Control:
    return Control(
        action="start",
        session_id=session_id,
        event_id=new_event_id(),
        published_ns=now_ns(),
        garment_id=garment_id,
        backend=backend,
        width=width,
        height=height,
        fps=fps,
    )


def stop(session_id: str) -> Control:
    return Control(action="stop", session_id=session_id, event_id=new_event_id(), published_ns=now_ns())
