"""Frame metadata carried in NATS headers, and the per-stage timing trace.

Frames travel as JPEG bytes; everything about them rides in headers so a stage can route, drop
or time a frame without touching the payload. Every stage appends ``<stage>.in`` and
``<stage>.out`` stamps (wall-clock nanoseconds) to one trace header, so any consumer can compute
per-stage time, hop time and glass-to-glass latency. Wall clocks must be NTP-synced when stages run
on different hosts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

FRAME_SCHEMA_VERSION = 1

H_SCHEMA = "Chameleon-Frame-Schema"
H_SESSION = "Chameleon-Session"
H_SEQ = "Chameleon-Seq"
H_CAPTURE_NS = "Chameleon-Capture-Ns"
H_WIDTH = "Chameleon-Width"
H_HEIGHT = "Chameleon-Height"
H_TRACE = "Chameleon-Trace"
H_GARMENT = "Chameleon-Garment"
H_EPOCH = "Chameleon-Epoch"  # the producing owner's epoch (docs/fleet.md)

MAX_TRACE_STAMPS = 32  # a frame that has been through more stages than this is misrouted
# Bounds of the integer headers: every value must survive msgpack (int64) and a JSON client
# (doubles: 2^53), and a frame side more than a JPEG can declare is a lie.
MAX_SEQ = 2**53 - 1
MAX_EPOCH = 2**53 - 1
MAX_NS = 2**63 - 1  # capture time and trace stamps: wall-clock nanoseconds as int64
MAX_FRAME_SIDE = 65_535
_DIGITS = re.compile(r"[0-9]{1,19}")  # plain decimal: no sign, spaces or underscores int() takes


class HeaderError(ValueError):
    """Frame headers missing or malformed."""


def now_ns() -> int:
    return time.time_ns()


@dataclass(frozen=True)
class Stamp:
    stage: str
    edge: str  # "in" or "out"
    ns: int


@dataclass
class FrameMeta:
    """Metadata of one frame. ``trace`` is ordered oldest first."""

    session_id: str
    seq: int
    capture_ns: int
    width: int
    height: int
    trace: list[Stamp] = field(default_factory=list)
    garment_id: str | None = None
    # the producing worker's ownership epoch of the session (docs/fleet.md): a receiver drops a
    # frame older than the newest epoch it has seen, so a replaced owner can never be shown
    epoch: int = 0

    def copy(self) -> FrameMeta:
        """An independent copy (its own trace list): one input may be published more than once."""
        return replace(self, trace=list(self.trace))

    # -- timing ---------------------------------------------------------------------------------
    def stamp(self, stage: str, edge: str, ns: int | None = None) -> FrameMeta:
        if edge not in ("in", "out"):
            raise ValueError(f"edge must be 'in' or 'out', not {edge!r}")
        if len(self.trace) >= MAX_TRACE_STAMPS:
            raise HeaderError(f"trace longer than {MAX_TRACE_STAMPS} stamps")
        self.trace.append(Stamp(stage, edge, now_ns() if ns is None else ns))
        return self

    def stage_ms(self) -> dict[str, float]:
        """Time spent inside each stage (its ``in`` to its ``out``)."""
        opened: dict[str, int] = {}
        spent: dict[str, float] = {}
        for s in self.trace:
            if s.edge == "in":
                opened[s.stage] = s.ns
            elif s.stage in opened:
                spent[s.stage] = (s.ns - opened.pop(s.stage)) / 1e6
        return spent

    def hop_ms(self) -> list[tuple[str, str, float]]:
        """Transport time between consecutive stages: ``(from, to, ms)`` for each out→in pair."""
        hops = []
        for prev, nxt in zip(self.trace, self.trace[1:], strict=False):
            if prev.edge == "out" and nxt.edge == "in":
                hops.append((prev.stage, nxt.stage, (nxt.ns - prev.ns) / 1e6))
        return hops

    def age_ms(self, at_ns: int | None = None) -> float:
        """Glass-to-glass age: now (or ``at_ns``) minus capture time."""
        return ((now_ns() if at_ns is None else at_ns) - self.capture_ns) / 1e6

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_headers(self) -> dict[str, str]:
        h = {
            H_SCHEMA: str(FRAME_SCHEMA_VERSION),
            H_SESSION: self.session_id,
            H_SEQ: str(self.seq),
            H_CAPTURE_NS: str(self.capture_ns),
            H_WIDTH: str(self.width),
            H_HEIGHT: str(self.height),
            H_TRACE: ";".join(f"{s.stage}.{s.edge}={s.ns}" for s in self.trace),
        }
        if self.garment_id is not None:
            h[H_GARMENT] = self.garment_id
        if self.epoch:
            h[H_EPOCH] = str(self.epoch)
        return h

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None) -> FrameMeta:
        if not headers:
            raise HeaderError("frame has no headers")
        try:
            version = int(headers.get(H_SCHEMA, "1"))
        except ValueError as exc:
            raise HeaderError(f"bad {H_SCHEMA}: {headers.get(H_SCHEMA)!r}") from exc
        if version != FRAME_SCHEMA_VERSION:
            raise HeaderError(f"unsupported frame schema version {version}")
        missing = [k for k in (H_SESSION, H_SEQ, H_CAPTURE_NS) if k not in headers]
        if missing:
            raise HeaderError(f"missing frame headers: {', '.join(missing)}")
        seq = _bounded_int(headers, H_SEQ, MAX_SEQ)
        capture = _bounded_int(headers, H_CAPTURE_NS, MAX_NS)
        width = _bounded_int(headers, H_WIDTH, MAX_FRAME_SIDE)
        height = _bounded_int(headers, H_HEIGHT, MAX_FRAME_SIDE)
        epoch = _bounded_int(headers, H_EPOCH, MAX_EPOCH)
        if capture == 0:
            raise HeaderError(f"{H_CAPTURE_NS} must be positive")
        return cls(
            session_id=headers[H_SESSION],
            seq=seq,
            capture_ns=capture,
            width=width,
            height=height,
            trace=_parse_trace(headers.get(H_TRACE, "")),
            garment_id=headers.get(H_GARMENT),
            epoch=epoch,
        )


def _bounded_int(headers: Mapping[str, str], name: str, maximum: int) -> int:
    """An integer header in ``0..maximum`` (absent: 0). A bigger one is refused here, once, instead
    of failing every later stage that packs it (msgpack stops at 2^64)."""
    raw = headers.get(name, "0")
    if not _DIGITS.fullmatch(raw) or int(raw) > maximum:
        raise HeaderError(f"{name} must be an integer in 0..{maximum}, not {raw[:32]!r}")
    return int(raw)


def _parse_trace(raw: str) -> list[Stamp]:
    if not raw:
        return []
    stamps = []
    for part in raw.split(";"):
        try:
            key, value = part.split("=", 1)
            stage, edge = key.rsplit(".", 1)
            if not _DIGITS.fullmatch(value) or int(value) > MAX_NS:
                raise ValueError(value)
            stamps.append(Stamp(stage, edge, int(value)))
        except ValueError as exc:
            raise HeaderError(f"bad trace entry {part[:80]!r}") from exc
        if edge not in ("in", "out"):
            raise HeaderError(f"bad trace edge in {part!r}")
    if len(stamps) > MAX_TRACE_STAMPS:
        raise HeaderError(f"trace longer than {MAX_TRACE_STAMPS} stamps")
    return stamps
