"""Every NATS subject in the system is built here and nowhere else.

Layout: ``<prefix>.<session>.<channel>`` for everything that belongs to one session, so a single
permission ``<prefix>.<session>.>`` authorises a client for exactly its own session.
Service-level subjects live under ``<prefix>._svc.`` — session ids must start with an
alphanumeric character, so ``_svc`` can never collide with a session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

DEFAULT_PREFIX = "chameleon"
SERVICE_TOKEN = "_svc"
# Where a client the server refused asks the auth service why (docs/security.md, "Why a connect
# was refused"). Outside every prefix: the client asks before it knows anything of the deployment.
AUTH_EXPLAIN_SUBJECT = "_CHAMELEON.auth.explain"
_SESSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class InvalidSessionId(ValueError):
    """A session id that cannot be used as a single NATS subject token."""


class Channel(str, Enum):
    """Per-session channels. Data plane first, then control plane."""

    CAMERA = "camera"  # raw JPEG frames from a camera client
    INGESTED = "ingested"  # validated, normalised JPEG frames
    CONDITIONING = "cond"  # pose + masks per frame (msgpack)
    OUTPUT = "out"  # generated JPEG frames
    CONTROL = "control"  # start / swap / stop (msgpack, JetStream-backed)
    EVENTS = "events"  # status, errors, swap_applied (msgpack)
    FEEDBACK = "feedback"  # the viewer's receiver reports: what its downlink carries (msgpack)


def validate_session_id(session_id: str) -> str:
    """Return ``session_id`` if usable as a subject token, else raise InvalidSessionId."""
    if not isinstance(session_id, str) or not _SESSION_RE.match(session_id):
        raise InvalidSessionId(
            f"invalid session id {session_id!r}: 1-64 chars of [A-Za-z0-9_-], starting with a letter or digit"
        )
    return session_id


@dataclass(frozen=True)
class Subjects:
    """Subject builder bound to one prefix (``CHAMELEON_SUBJECT_PREFIX``)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(f"invalid subject prefix {self.prefix!r}")

    # -- per session -------------------------------------------------------------------------
    def session(self, session_id: str, channel: Channel) -> str:
        return f"{self.prefix}.{validate_session_id(session_id)}.{channel.value}"

    def camera(self, session_id: str) -> str:
        return self.session(session_id, Channel.CAMERA)

    def ingested(self, session_id: str) -> str:
        return self.session(session_id, Channel.INGESTED)

    def conditioning(self, session_id: str) -> str:
        return self.session(session_id, Channel.CONDITIONING)

    def output(self, session_id: str) -> str:
        return self.session(session_id, Channel.OUTPUT)

    def control(self, session_id: str) -> str:
        return self.session(session_id, Channel.CONTROL)

    def events(self, session_id: str) -> str:
        return self.session(session_id, Channel.EVENTS)

    def feedback(self, session_id: str) -> str:
        return self.session(session_id, Channel.FEEDBACK)

    def session_permission(self, session_id: str) -> str:
        """The one subject pattern a per-session credential needs."""
        return f"{self.prefix}.{validate_session_id(session_id)}.>"

    # -- wildcards for services that serve every session ----------------------------------------
    def all_sessions(self, channel: Channel) -> str:
        return f"{self.prefix}.*.{channel.value}"

    def session_of(self, subject: str) -> str:
        """Extract and validate the session token of a per-session subject."""
        head = self.prefix + "."
        if not subject.startswith(head):
            raise InvalidSessionId(f"subject {subject!r} is outside prefix {self.prefix!r}")
        token = subject[len(head) :].split(".", 1)[0]
        return validate_session_id(token)

    # -- service level ---------------------------------------------------------------------------
    def service(self, service: str, verb: str) -> str:
        return f"{self.prefix}.{SERVICE_TOKEN}.{service}.{verb}"

    def garments(self, verb: str) -> str:
        """Garment service request/reply: ``encode``, ``get``, ``list``."""
        return self.service("garments", verb)

    # -- JetStream names (derived from the prefix so two deployments never share them) ----------
    @property
    def stream_token(self) -> str:
        return self.prefix.replace(".", "_").replace("-", "_").upper()

    @property
    def control_stream(self) -> str:
        return f"{self.stream_token}_CONTROL"

    @property
    def session_bucket(self) -> str:
        return f"{self.stream_token}_SESSIONS"

    @property
    def worker_bucket(self) -> str:
        """The fleet registry: one lease per worker (docs/fleet.md)."""
        return f"{self.stream_token}_WORKERS"

    @property
    def owner_bucket(self) -> str:
        """Session ownership: one record per (stage, session) (docs/fleet.md)."""
        return f"{self.stream_token}_OWNERS"

    @staticmethod
    def control_consumer(stage: str, worker_id: str) -> str:
        """The consumer of every session's control subject that one worker of ``stage`` reads
        (it applies what its own sessions get; a new owner reads a session's earlier control from
        the stream itself, docs/fleet.md)."""
        return f"{stage}-{validate_session_id(worker_id)}"

    @property
    def revocation_bucket(self) -> str:
        """Stopped sessions (session -> when), so the auth service refuses their older tokens
        after its own restart too (docs/security.md)."""
        return f"{self.stream_token}_REVOKED"

    @property
    def garment_bucket(self) -> str:
        return f"{self.stream_token}_GARMENTS"

    @property
    def garment_objects(self) -> str:
        return f"{self.stream_token}_GARMENT_BLOBS"

    # -- inside a KV bucket's stream (named by JetStream, spelled here so no caller spells it) ----
    @staticmethod
    def kv_stream(bucket: str) -> str:
        """The stream that backs KV bucket ``bucket``, for stream-level reads (per-key state)."""
        return f"KV_{bucket}"

    @staticmethod
    def kv_stream_subject(bucket: str, key: str) -> str:
        """The stream subject of ``key`` in KV bucket ``bucket``; ``key`` may end in a wildcard
        (``id.>``) to filter, or be a bare key prefix (``id.``) to strip from listed subjects."""
        return f"$KV.{bucket}.{key}"
