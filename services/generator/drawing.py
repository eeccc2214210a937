"""Drawing off the event loop: render and encode in one worker-thread trip (pure of the bus).

Each trip to a pool thread is a wake-up of the event loop and of the thread, which on a busy
machine costs more than the JPEG itself, so a frame is rendered and encoded in the same trip.
A swap or a stop may replace the session's renderer while a frame is drawing: that frame is
dropped (it shows the old garment) and the replaced renderer is closed by its last user.
"""

from __future__ import annotations

import asyncio

from runtime.logging import get_logger
from runtime.media import encode_jpeg
from services.generator.lifecycle import ServedSession
from services.generator.rendering import FrameInput, RenderedFrame, Renderer

log = get_logger("generator")
Rendered = list[tuple[RenderedFrame, bytes]]  # frames and their JPEGs, encoded on the drawing thread


def _draw(renderer: Renderer, inp: FrameInput, quality: int) -> Rendered:
    return [(frame, encode_jpeg(frame.image_bgr, quality)) for frame in renderer.render(inp)]


async def draw(served: ServedSession, renderer: Renderer, inp: FrameInput, quality: int) -> Rendered | None:
    """Draw off the loop; None when the renderer was replaced meanwhile (then it is closed)."""
    served.in_flight.append(renderer)
    try:
        rendered = await asyncio.to_thread(_draw, renderer, inp, quality)
    finally:
        served.in_flight.remove(renderer)
    if served.renderer is not renderer:
        if renderer not in served.in_flight:
            renderer.close()
        return None
    return rendered


async def held_back(served: ServedSession, quality: int) -> Rendered:
    """What the renderer still holds (the student's incomplete chunk), drawn and encoded before
    its session ends. Nothing while a frame is drawing: that thread owns the renderer, and its
    chunk is dropped with the session. Nothing when it fails: the session ends regardless."""
    renderer = served.renderer
    if renderer is None or served.in_flight:
        return []
    try:
        return await asyncio.to_thread(
            lambda: [(f, encode_jpeg(f.image_bgr, quality)) for f in renderer.flush()]
        )
    except Exception as exc:
        log.warning("flush_failed", session_id=served.session_id, error=str(exc))
        return []
