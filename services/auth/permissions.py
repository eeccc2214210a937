"""What one session token allows, as the allow lists of its user JWT (pure).

Exactly the session's own subjects: publish its camera frames, its receiver reports and its
control events (a control publish is a JetStream publish: the stream stores it and acks to the
reply inbox; nothing else on the stream, no stream or consumer API), request the garment list
and one garment, and subscribe to its output, its events and its own reply inboxes. Everything
else is denied by nats-server, and the ``CLIENTS`` account it lands in has no JetStream, KV or
object store to reach anyway.
"""

from __future__ import annotations

import re

from shared.auth import Permissions, explain_inbox_prefix, session_inbox_prefix
from shared.subjects import AUTH_EXPLAIN_SUBJECT, Subjects

_NONCE = re.compile(r"^[A-Za-z0-9]{8,32}$")


def session_permissions(subjects: Subjects, session_id: str) -> Permissions:
    return Permissions(
        publish=(
            subjects.camera(session_id),
            subjects.feedback(session_id),
            subjects.control(session_id),
            subjects.garments("list"),
            subjects.garments("get"),
        ),
        subscribe=(
            subjects.output(session_id),
            subjects.events(session_id),
            f"{session_inbox_prefix(session_id)}.>",
        ),
    )


def session_user_name(session_id: str) -> str:
    """The name the server shows for a session's connections (connz, logs)."""
    return f"session:{session_id}"


def explain_permissions(nonce: str) -> Permissions:
    """A refused client asking why: the one request, and the answer on an inbox its nonce makes
    its own. ``ValueError`` for a nonce that is not 8-32 letters and digits."""
    if not _NONCE.match(nonce):
        raise ValueError("explain: the nonce must be 8-32 letters and digits")
    return Permissions(publish=(AUTH_EXPLAIN_SUBJECT,), subscribe=(f"{explain_inbox_prefix(nonce)}.>",))
