"""A session brought up on a running stack the way a shopper's client brings one up: the garment
it needs added (by an operator's connection), its own client connected with its session token
(none on an open stack), its output watched, ``start`` sent and answered ``session_started``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS

from runtime.bus import connect
from services.garments.starter import add_starter_garments
from services.watch.client import Watcher
from shared.client import Session
from shared.garment_client import GarmentClient
from shared.schemas import Event
from shared.subjects import Subjects


@dataclass
class OpenSession:
    admin: NATS  # an operator's connection: the catalogue, what a session may not see
    client: Session  # the session's own connection (its token on a secure stack)
    watcher: Watcher  # its output frames, epoch-filtered


async def open_session(
    stack: Any,
    subjects: Subjects,
    session_id: str,
    garment: str,
    *,
    width: int,
    height: int,
    fps: float,
    backend: str = "warp",
    name: str = "bench",
    timeout_s: float = 60.0,
) -> OpenSession:
    """``stack``: a running ``harness.stack.Stack`` (its URL and credentials)."""
    admin = await connect(stack.url, f"{name}-admin", credentials=stack.admin_credentials)
    await add_starter_garments(GarmentClient(admin, subjects, timeout_s=60), [garment])
    credentials = stack.session_credentials(session_id)
    nc = await connect(stack.url, f"{name}-{session_id}", credentials=credentials)
    client = Session(nc, session_id, subjects, ensure_stream=credentials is None)
    watcher = Watcher(nc, subjects, session_id, keep_frames=False)
    await watcher.start()
    started = asyncio.Event()

    def on_event(event: Event) -> None:
        if event.kind == "session_started":
            started.set()

    await client.events(on_event)
    await nc.flush()
    await client.start(garment, backend, width, height, fps)
    await asyncio.wait_for(started.wait(), timeout_s)
    return OpenSession(admin, client, watcher)
