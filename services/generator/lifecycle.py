"""The sessions of one generator worker: start, swap, stop, idle, dedupe, and what a swap reports.
Pure: no bus, no asyncio.

Every decision of the control path lives here, so it is unit-tested with plain objects; the
control module only fetches what a decision needs (the garment, the stored state) and publishes
what it returns. A swap reads as methods of the served session: ``is_duplicate``,
``is_stale_swap``, ``swap``, ``next_state``. A ``ServedSession`` holds the session's renderer
(which owns the KV cache or the warp history), the garment in effect, the swap being measured,
and the input metadata the renderer's (possibly chunked) output is matched back to; a
``StoredSession`` is one this worker does not serve but finds in the state store (after a restart
or an idle gap), and answers the same two questions.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from services.generator.downlink import OutputQuality
from services.generator.rendering import FrameInput, Garment, Renderer
from shared.errors import CodedError
from shared.headers import FrameMeta
from shared.schemas import Control, SessionState

APPLIED_EVENTS_KEPT = 64
PENDING_META_KEPT = 64


@dataclass
class PendingSwap:
    """A swap in effect in the renderer whose first output frame has not been published yet."""

    event_id: str
    garment_id: str
    published_ns: int  # the client published it
    received_ns: int  # it reached this worker
    started_ns: int  # this worker started applying it
    applied_ns: int  # the renderer draws the new garment from now on

    def applied_event(self, first_seq: int, shown_ns: int) -> dict[str, object]:
        """The ``swap_applied`` event's data once the first frame with the garment is out."""
        return {
            "event_id": self.event_id,
            "garment_id": self.garment_id,
            "latency_ms": round((shown_ns - self.published_ns) / 1e6, 2),
            "first_seq": first_seq,
            "apply_ms": round((self.applied_ns - self.published_ns) / 1e6, 2),
            "delivery_ms": round((self.received_ns - self.published_ns) / 1e6, 2),
            "wait_ms": round((self.started_ns - self.received_ns) / 1e6, 2),
        }


class ControlMemory:
    """What tells a new control event from one already applied (redelivered, retried) or from a
    swap delivered late: the ids of the newest applied events, and when the swap in effect was
    published."""

    applied_events: list[str]
    swap_published_ns: int
    control_seq: int  # the control stream's sequence of the last message applied

    def is_duplicate(self, event_id: str) -> bool:
        return event_id in self.applied_events

    def is_stale_swap(self, control: Control) -> bool:
        """A swap published before the one in effect: it arrives late (redelivered after the
        worker it was delivered to died) and must not replace the newer garment."""
        return control.action == "swap" and control.published_ns < self.swap_published_ns


@dataclass
class StoredSession(ControlMemory):
    """A session this worker does not serve, as its stored state has it."""

    state: SessionState
    applied_events: list[str] = field(init=False)
    swap_published_ns: int = field(init=False)
    control_seq: int = field(init=False)

    def __post_init__(self) -> None:
        self.applied_events = list(self.state.applied_events)
        self.swap_published_ns = self.state.swap_published_ns
        self.control_seq = self.state.control_seq

    @property
    def garment_id(self) -> str:
        return self.state.garment_id


@dataclass
class ServedSession(ControlMemory):
    session_id: str
    garment: Garment
    backend: str
    swap_published_ns: int = 0  # when the swap in effect was published (0: none yet)
    control_seq: int = 0  # the control stream's sequence of the last message applied
    renderer: Renderer | None = None
    in_flight: list[Renderer] = field(default_factory=list)  # renderers drawing on a worker thread
    pending_swap: PendingSwap | None = None
    applied_events: list[str] = field(default_factory=list)
    metas: OrderedDict[int, FrameMeta] = field(default_factory=OrderedDict)
    frames_rendered: int = 0
    # the newest input and its metadata as it arrived: a swap re-renders it at once, so the new
    # garment shows without waiting for the next camera frame
    last_input: FrameInput | None = None
    last_meta: FrameMeta | None = None
    output_quality: OutputQuality | None = None  # fitted to the viewer's downlink, once it reports

    def remember_event(self, event_id: str) -> None:
        self.applied_events.append(event_id)
        del self.applied_events[:-APPLIED_EVENTS_KEPT]

    def remember_meta(self, meta: FrameMeta) -> None:
        """Keep an input's metadata until the renderer outputs that frame (chunks come later)."""
        self.metas[meta.seq] = meta
        while len(self.metas) > PENDING_META_KEPT:
            self.metas.popitem(last=False)

    def take_meta(self, seq: int) -> FrameMeta | None:
        return self.metas.pop(seq, None)

    def keep_latest(self, inp: FrameInput, meta: FrameMeta) -> None:
        self.last_input, self.last_meta = inp, meta

    def take_latest(self) -> tuple[FrameInput, FrameMeta] | None:
        """The newest input for a re-render, once: the next camera frame brings a fresh one."""
        if self.last_input is None or self.last_meta is None:
            return None
        meta, self.last_meta = self.last_meta, None
        return self.last_input, meta

    def use(self, renderer: Renderer) -> Renderer | None:
        """Draw with ``renderer`` from now on; returns the one it replaces when nothing is drawing
        with it (the caller closes it), else None: the frame in flight closes it when it ends."""
        old, self.renderer = self.renderer, renderer
        if old is None or old is renderer or old in self.in_flight:
            return None
        return old

    def frame_published(self, garment_id: str, seq: int, shown_ns: int) -> dict[str, object] | None:
        """Count an output frame; the ``swap_applied`` data when it is the swap's first frame."""
        self.frames_rendered += 1
        pending = self.pending_swap
        if pending is None or garment_id != pending.garment_id:
            return None
        self.pending_swap = None
        return pending.applied_event(seq, shown_ns)

    def swap(
        self,
        control: Control,
        garment: Garment,
        renderer: Renderer | None,
        received_ns: int,
        started_ns: int,
    ) -> tuple[Renderer | None, PendingSwap | None]:
        """Put a swap in effect: ``renderer`` is what ``Renderer.swap`` returned (None when the
        session has no renderer yet: its first frame opens one on ``garment``). Returns a renderer
        the caller must close (see ``use``) and the earlier swap this one replaced before any frame
        showed it (the caller answers it ``swap_superseded``)."""
        stale = self.use(renderer) if renderer is not None else None
        replaced = self.pending_swap
        self.garment = garment
        self.swap_published_ns = max(self.swap_published_ns, control.published_ns)
        self.pending_swap = PendingSwap(
            control.event_id,
            garment.garment_id,
            control.published_ns,
            received_ns,
            started_ns,
            time.time_ns(),
        )
        self.remember_event(control.event_id)
        return stale, replaced

    def next_state(self) -> SessionState:
        """The durable record after a change: the garment in effect, the applied ids, the swap
        not yet shown."""
        return SessionState(
            session_id=self.session_id,
            garment_id=self.garment.garment_id,
            backend=self.backend,
            applied_events=self.applied_events,
            updated_ns=time.time_ns(),
            swap_published_ns=self.swap_published_ns,
            pending_event_id=self.pending_swap.event_id if self.pending_swap else "",
            control_seq=self.control_seq,
        )

    def close(self) -> None:
        """Free the renderer now, or, while a frame is drawing with it, when that frame ends."""
        if self.renderer is not None and self.renderer not in self.in_flight:
            self.renderer.close()
        self.renderer = None


def superseded(controls: list[Control | None]) -> dict[int, str]:
    """Swaps that a newer swap of the same batch makes pointless: index -> the newer event id.

    Swaps that queued while no worker served the session (a restart, a failover) arrive
    together; only the newest is rendered, the older ones are acknowledged as superseded, so no
    stale garment flashes on screen. A start or stop between two swaps keeps the earlier one."""
    out: dict[int, str] = {}
    newer: str | None = None
    for i in range(len(controls) - 1, -1, -1):
        control = controls[i]
        if control is None:
            continue
        if control.action == "swap":
            if newer is not None:
                out[i] = newer
            else:
                newer = control.event_id
        else:
            newer = None
    return out


class SessionTable:
    """The sessions this worker serves, with its capacity."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._sessions: dict[str, ServedSession] = {}

    def get(self, session_id: str) -> ServedSession | None:
        return self._sessions.get(session_id)

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._sessions.values()))

    def open(
        self,
        session_id: str,
        garment: Garment,
        backend: str,
        state: SessionState | None = None,
        previous: ServedSession | None = None,
    ) -> ServedSession:
        """Serve a session: fresh, from its stored state (a restart of this worker), or replacing
        ``previous`` (a ``start`` on a running session keeps its idempotency memory)."""
        if session_id not in self._sessions and len(self._sessions) >= self.max_sessions:
            raise CodedError("at_capacity", f"this worker runs {len(self._sessions)} sessions, its maximum")
        served = ServedSession(session_id, garment, backend)
        if state is not None:
            served.applied_events = list(state.applied_events)
            served.swap_published_ns = state.swap_published_ns
            served.control_seq = state.control_seq
            if state.pending_event_id:  # a swap the last owner applied but never showed
                now = time.time_ns()
                served.pending_swap = PendingSwap(
                    state.pending_event_id, state.garment_id, state.swap_published_ns, now, now, now
                )
        if previous is not None:
            served.applied_events = list(previous.applied_events)
            served.swap_published_ns = previous.swap_published_ns
            served.control_seq = previous.control_seq
        self._sessions[session_id] = served
        return served

    def close(self, session_id: str) -> ServedSession | None:
        """Stop serving a session (stop, idle, restart, shutdown) and free its renderer."""
        served = self._sessions.pop(session_id, None)
        if served is not None:
            served.close()
        return served

    def forget(self, session_id: str) -> None:
        """Drop a session whose renderer could not be opened (the backend is at capacity)."""
        self._sessions.pop(session_id, None)
