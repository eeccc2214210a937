"""Garment handlers: the only garment-service module that touches NATS.

Request/reply on ``<prefix>._svc.garments.{encode,get,list}`` in one queue group, so replicas
share the load. Each request is decoded here, answered by the store (``store.py``: KV index and
Object Store) or the reply cache, and encoded back; every failure becomes a coded error reply.

``get`` is served from an in-memory LRU of ready-encoded replies; an entry is trusted for
``index_ttl_s`` and then revalidated against the record's KV revision (one direct get). A record
without an encoding for this service's version is re-encoded from its stored source on the spot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter, Histogram

from runtime.jetstream import key_value, object_store
from runtime.logging import get_logger
from runtime.lru import LRU
from runtime.metrics import LATENCY_BUCKETS_S
from runtime.service import ServiceContext
from services.garments.assets import derive_garment_id, source_digest
from services.garments.settings import GarmentSettings
from services.garments.store import EncoderPool, GarmentStore, blobs_config, index_config
from shared.garment_client import GarmentError
from shared.garment_schemas import (
    GarmentAssetData,
    GarmentEncodeReply,
    GarmentEncodeRequest,
    GarmentGetReply,
    GarmentGetRequest,
    GarmentListReply,
    GarmentListRequest,
    GarmentRecord,
)
from shared.schemas import SchemaError

log = get_logger("garments")

_UNAVAILABLE = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    asyncio.TimeoutError,
)


@dataclass
class _CachedReply:
    """A ready ``get`` reply and the record revision it was built from."""

    revision: int
    content_key: str
    reply: bytes
    checked: float  # monotonic time of the last KV revalidation


class GarmentHandlers:
    def __init__(self, ctx: ServiceContext, settings: GarmentSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.encoder = EncoderPool(settings)
        self.version = self.encoder.version
        self._store: GarmentStore | None = None
        self._cache: LRU[str, _CachedReply] = LRU(settings.cache_size)
        self._tasks: set[asyncio.Task[None]] = set()
        self._subs: list[Subscription] = []
        self._warm: asyncio.Task[None] | None = None
        registry = ctx.metrics.registry
        self._requests = Counter(
            "chameleon_garment_requests_total",
            "Garment requests by verb and outcome",
            ["verb", "outcome"],
            registry=registry,
        )
        self._latency = Histogram(
            "chameleon_garment_request_seconds",
            "Garment request handling time",
            ["verb"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )

    @property
    def encodes(self) -> int:
        """Encoder runs in this replica (tests and health read it)."""
        return self.encoder.encodes

    @property
    def store(self) -> GarmentStore:
        if self._store is None:
            raise RuntimeError("garment handlers used before start()")
        return self._store

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        js = self.ctx.nc.jetstream()
        subjects = self.ctx.subjects
        kv = await key_value(js, index_config(subjects.garment_bucket, self.settings.js_replicas))
        objects = await object_store(js, blobs_config(subjects.garment_objects, self.settings.js_replicas))
        # a rewritten record drops its cached reply before anything can serve it again
        self._store = GarmentStore(js, kv, objects, subjects, self.encoder, on_record_changed=self._cache.pop)
        group = self.settings.queue_group
        nc = self.ctx.nc
        self._subs = [
            await nc.subscribe(subjects.garments("encode"), queue=group, cb=self._on_encode),
            await nc.subscribe(subjects.garments("get"), queue=group, cb=self._on_get),
            await nc.subscribe(subjects.garments("list"), queue=group, cb=self._on_list),
        ]
        if self.settings.warm_on_start:
            self._warm = asyncio.create_task(self._warm_cache(), name="garments:warm")
        log.info("garments_ready", encoder_version=self.version, bucket=subjects.garment_bucket)

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._warm:
            self._warm.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.drain_timeout_s)
        for task in list(self._tasks):
            task.cancel()
        self.encoder.close()

    def health(self) -> dict:
        return {"encoder_version": self.version, "cached": len(self._cache), "encodes": self.encodes}

    # -- request plumbing -------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, verb: str, msg: Msg, work: Callable[[], Awaitable[bytes]]) -> None:
        """Run ``work`` and answer with its bytes, or with a coded error reply; never raises."""
        t0 = time.perf_counter()
        try:
            reply, outcome = await work(), "ok"
        except GarmentError as exc:
            reply, outcome = _error(verb, exc.code, exc.message), exc.code
        except SchemaError as exc:
            reply, outcome = _error(verb, "bad_request", str(exc)), "bad_request"
        except _UNAVAILABLE as exc:
            reply, outcome = (
                _error(verb, "unavailable", f"storage unavailable ({type(exc).__name__})"),
                "unavailable",
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("garment_request_failed", verb=verb)
            reply, outcome = _error(verb, "internal", f"{type(exc).__name__}: {exc}"), "internal"
        if outcome != "ok" and verb == "encode":
            log.info("garment_encode_refused", code=outcome)
        self._requests.labels(verb, outcome).inc()
        self._latency.labels(verb).observe(time.perf_counter() - t0)
        if msg.reply:
            with contextlib.suppress(Exception):  # the requester may be gone; that is its business
                await msg.respond(reply)

    # -- get --------------------------------------------------------------------------------------
    async def _on_get(self, msg: Msg) -> None:
        try:
            garment_id = GarmentGetRequest.decode(msg.data).garment_id
        except SchemaError:
            garment_id = ""
        cached = self._cache.get(garment_id)
        if cached is not None and time.monotonic() - cached.checked < self.settings.index_ttl_s:
            self._requests.labels("get", "ok").inc()
            if msg.reply:
                await msg.respond(cached.reply)
            return
        # anything that needs JetStream runs in its own task so cached gets never wait behind it
        self._spawn(self._serve("get", msg, lambda: self._get(msg)))

    async def _get(self, msg: Msg) -> bytes:
        garment_id = GarmentGetRequest.decode(msg.data).garment_id
        cached = self._cache.get(garment_id)
        try:
            record, revision = await self.store.read(garment_id)
        except _UNAVAILABLE:
            if cached is not None:  # JetStream is down: a slightly stale garment beats none
                return cached.reply
            raise
        if record is None or revision is None:
            self._cache.pop(garment_id)
            raise GarmentError("unknown_garment", f"no garment {garment_id!r} in the catalogue")
        if cached is not None and cached.revision == revision:
            cached.checked = time.monotonic()
            return cached.reply
        return await self._load_into_cache(record, revision)

    async def _load_into_cache(self, record: GarmentRecord, revision: int) -> bytes:
        record, revision, asset = await self.store.asset(record, revision)
        reply = _get_reply(record, asset)
        self._cache.put(record.garment_id, _CachedReply(revision, asset.content_key, reply, time.monotonic()))
        return reply

    async def _warm_cache(self) -> None:
        """Load the catalogue into memory, encoding entries that lack this encoder version."""
        try:
            records = await self.store.records()
            for record in records[: self.settings.cache_size]:
                try:
                    _, revision = await self.store.read(record.garment_id)
                    if revision is not None and record.garment_id not in self._cache:
                        await self._load_into_cache(record, revision)
                except GarmentError as exc:
                    log.warning("garment_warm_failed", garment_id=record.garment_id, code=exc.code)
            log.info("garments_warm", cached=len(self._cache), catalogue=len(records))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # warming is an optimisation; requests still work without it
            log.warning("garments_warm_failed", error=f"{type(exc).__name__}: {exc}")

    # -- encode -----------------------------------------------------------------------------------
    async def _on_encode(self, msg: Msg) -> None:
        self._spawn(self._serve("encode", msg, lambda: self._encode(msg)))

    async def _encode(self, msg: Msg) -> bytes:
        t0 = time.perf_counter()
        req = GarmentEncodeRequest.decode(msg.data)
        garment_id = req.garment_id or derive_garment_id(req.name, source_digest(req.image))
        stored = await self.store.add(garment_id, req.name or garment_id, req.category, req.image, req.source)
        return GarmentEncodeReply(
            ok=True,
            garment_id=garment_id,
            content_key=stored.content_key,
            encoder_version=self.version,
            created=stored.created,
            updated=stored.updated,
            encode_ms=round((time.perf_counter() - t0) * 1e3, 2),
        ).encode()

    # -- list -------------------------------------------------------------------------------------
    async def _on_list(self, msg: Msg) -> None:
        self._spawn(self._serve("list", msg, lambda: self._list(msg)))

    async def _list(self, msg: Msg) -> bytes:
        category = GarmentListRequest.decode(msg.data).category
        records = [r for r in await self.store.records() if not category or r.category == category]
        return GarmentListReply(ok=True, items=[r.to_dict() for r in records]).encode()


def _get_reply(record: GarmentRecord, asset: GarmentAssetData) -> bytes:
    return GarmentGetReply(
        ok=True,
        garment_id=record.garment_id,
        name=record.name,
        category=record.category,
        asset=asset.to_dict(),
    ).encode()


_ERROR_REPLIES = {"encode": GarmentEncodeReply, "get": GarmentGetReply, "list": GarmentListReply}


def _error(verb: str, code: str, message: str) -> bytes:
    return _ERROR_REPLIES[verb](ok=False, error_code=code, error=message[:500]).encode()
