"""What a client of a running stack records besides the output frames: the conditioning (inputs
and garment masks, by sequence) and the session's events, with each control message's answer;
and the starter catalogue loaded into it with each garment's colours. ``chameleon demo`` and the
capacity benchmark measure with these."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from nats.aio.msg import Msg

from shared.headers import FrameMeta, HeaderError
from shared.schemas import Conditioning, Event, SchemaError
from shared.subjects import Subjects


@dataclass
class Recorder:
    """What the demo's client sees besides the output: conditioning (inputs and garment masks,
    by sequence) and the session's events."""

    raw_cond: dict[int, bytes] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    answers: dict[str, Event] = field(default_factory=dict)  # control event id -> its answer
    _answered: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_cond(self, msg: Msg) -> None:
        """Keep the bytes only: decoding 15 conditioning messages a second would take CPU from
        the pipeline being measured; the few that metrics need are decoded afterwards."""
        try:
            self.raw_cond[FrameMeta.from_headers(msg.headers).seq] = bytes(msg.data)
        except HeaderError:
            pass

    def cond(self, seq: int) -> Conditioning | None:
        raw = self.raw_cond.get(seq)
        try:
            return Conditioning.decode(raw) if raw else None
        except SchemaError:
            return None

    async def on_event(self, msg: Msg) -> None:
        try:
            event = Event.decode(msg.data)
        except SchemaError:
            return
        self.events.append(event)
        if event.kind == "session_started":
            self.started.set()
        if event_id := event.data.get("event_id"):
            self.answers[str(event_id)] = event
            self._answered.set()

    async def answer(self, event_id: str, timeout_s: float) -> Event:
        """The event answering control message ``event_id`` (``swap_applied`` or an error)."""
        deadline = time.monotonic() + timeout_s
        while event_id not in self.answers:
            self._answered.clear()
            try:
                await asyncio.wait_for(self._answered.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise RuntimeError(
                    f"control {event_id} got no answer within {timeout_s:.0f} s: see the service logs"
                ) from None
        return self.answers[event_id]

    def of(self, code: str) -> list[Event]:
        return [e for e in self.events if e.code == code]


CATALOGUE_GROUP = "chameleon.catalogue"  # entry point ``photos``: the photographed starter catalogue


def catalogue_photos_source():  # type: ignore[no-untyped-def]
    """The starter catalogue as a shop would photograph it (``tools.product_photos``, found by its
    entry point: neither the CLI nor the harness imports a tool); None in a build without the
    tools, and then the generated flat-lays are loaded."""
    for ep in entry_points(group=CATALOGUE_GROUP):
        if ep.name == "photos":
            try:
                return ep.load()
            except ModuleNotFoundError:
                return None
    return None


async def starter_colours(nc, subjects: Subjects) -> dict[str, list[tuple[int, int, int]]]:  # type: ignore[no-untyped-def]
    """Add the starter catalogue, photographed (idempotent), and return each garment's dominant
    colours."""
    from services.garments.starter import add_starter_garments
    from shared.garment_client import GarmentClient

    client = GarmentClient(nc, subjects, timeout_s=30)
    colours = {}
    for reply in await add_starter_garments(client, photos=catalogue_photos_source()):
        asset = await client.get(reply.garment_id)
        colours[reply.garment_id] = [tuple(int(v) for v in c["bgr"]) for c in asset.dominant_colours]
    return colours
