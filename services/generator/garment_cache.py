"""The worker's garments: fetched from the garment service once, decoded, prepared for every
backend, and kept in an LRU shared by the worker's sessions.

Why it owns fetch and prefetch: a swap must never wait for a fetch, so the catalogue is decoded in
the background when the worker starts and again when a session starts (the catalogue may have
grown); a garment missing from the cache is fetched on demand. No bus of its own: it is handed the
garment client (the service's request/reply contract in ``shared``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

from runtime.logging import get_logger
from runtime.lru import LRU
from services.generator.rendering import Garment
from shared.errors import CodedError
from shared.garment_client import GarmentAsset, GarmentError
from shared.garment_schemas import GarmentRecord

log = get_logger("generator")


class GarmentSource(Protocol):
    async def get(self, garment_id: str) -> GarmentAsset: ...
    async def list(self, category: str = "") -> list[GarmentRecord]: ...


def garment_from_asset(asset: GarmentAsset) -> Garment:
    """The garment service's decoded asset → the generator's view of a garment."""
    return Garment(
        garment_id=asset.garment_id,
        category=asset.category,
        texture_bgra=asset.texture,
        keypoints={
            k: (float(x), float(y), float(asset.keypoint_confidence.get(k, 1.0)))
            for k, (x, y) in asset.keypoints.items()
        },
        colours=[tuple(int(v) for v in c["bgr"]) for c in asset.dominant_colours],  # type: ignore[misc]
        student_tensor=asset.student,
    )


class GarmentCache:
    """``get`` a garment by id (cached, else fetched); ``prefetch`` the catalogue in the background.

    ``prepare`` runs on a worker thread for each newly decoded garment (the backends precompute
    their per-garment data there, so a swap to it only switches)."""

    def __init__(self, source: GarmentSource, capacity: int, prepare: Callable[[Garment], None]) -> None:
        self.source = source
        self.prepare = prepare
        self._items: LRU[str, Garment] = LRU(capacity)
        self._prefetch: asyncio.Task[None] | None = None

    @property
    def capacity(self) -> int:
        return self._items.capacity

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, garment_id: str) -> Garment:
        """Raises ``CodedError``: ``unknown_garment``, or ``garment_<code>`` when the garment
        service failed (``garment_unavailable`` when none answers)."""
        cached = self._items.get(garment_id)
        if cached is not None:
            return cached
        try:
            asset = await self.source.get(garment_id)
        except GarmentError as exc:
            code = "unknown_garment" if exc.code in ("unknown_garment", "bad_id") else f"garment_{exc.code}"
            raise CodedError(code, f"garment {garment_id!r}: {exc.message}") from None
        garment = await asyncio.to_thread(self._decode_and_prepare, asset)
        self._items.put(garment.garment_id, garment)
        return garment

    def _decode_and_prepare(self, asset: GarmentAsset) -> Garment:
        garment = garment_from_asset(asset)
        self.prepare(garment)
        return garment

    def prefetch(self) -> None:
        """(Re)fill the cache in the background unless a fill is running."""
        if self._prefetch is None or self._prefetch.done():
            self._prefetch = asyncio.create_task(self._fill(), name="garments:prefetch")

    async def _fill(self) -> None:
        """Decode the catalogue, up to the cache size; a missing garment service only delays it."""
        for attempt in range(30):
            try:
                records = await self.source.list()
                break
            except GarmentError:
                await asyncio.sleep(min(5.0, 0.5 * (attempt + 1)))
        else:
            return
        for record in records[: self.capacity]:
            with contextlib.suppress(CodedError):
                await self.get(record.garment_id)
        log.info("garments_prefetched", count=len(self))

    async def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.cancel()
            await asyncio.wait([self._prefetch], timeout=5.0)
