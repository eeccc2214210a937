"""Garment handlers: the only garment-service module that touches NATS.

Request/reply on ``<prefix>._svc.garments.{encode,get,list}`` in one queue group, so replicas
share the load. Storage is JetStream, content-addressed:

* Object Store ``<PREFIX>_GARMENT_BLOBS``: ``source/<sha256 of the image>`` (the upload, kept so a
  new encoder version can re-encode) and ``asset/<content key>`` (``GarmentAssetData``), where the
  content key hashes the image bytes together with the encoder version.
* KV ``<PREFIX>_GARMENTS``: ``id.<garment_id>`` -> ``GarmentRecord`` (name, category, source hash,
  encoder version -> content key). Blobs are written before the record that points at them, and
  records change only by compare-and-set, so concurrent replicas never leave a dangling or lost
  entry.

``get`` is served from an in-memory LRU of ready-encoded replies; an entry is trusted for
``index_ttl_s`` and then revalidated against the record's KV revision (one direct get). A record
without an encoding for this service's version is re-encoded from its stored source on the spot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from prometheus_client import Counter, Histogram

from services.garments.assets import (
    asset_object,
    content_key,
    derive_garment_id,
    source_digest,
    source_object,
    to_asset_data,
)
from services.garments.encoder import ImageLimits, encode_garment, encoder_version, inspect_image
from services.garments.settings import GarmentSettings
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
    valid_garment_id,
)
from shared.logging import get_logger
from shared.metrics import LATENCY_BUCKETS_S
from shared.schemas import SchemaError
from shared.service import ServiceContext

log = get_logger("garments")

_UNAVAILABLE = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    asyncio.TimeoutError,
)
_CAS_ATTEMPTS = 10


@dataclass
class _Cached:
    revision: int
    content_key: str
    reply: bytes
    checked: float  # monotonic time of the last KV revalidation


class GarmentHandlers:
    def __init__(self, ctx: ServiceContext, settings: GarmentSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.version = encoder_version(settings.student_encoder, settings.canvas_size)
        self.limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        self.js: JetStreamContext | None = None
        self.kv: KeyValue | None = None
        self.objects: ObjectStore | None = None
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[bool]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._subs: list[Subscription] = []
        self._encode_slots = asyncio.Semaphore(max(1, settings.encode_workers))
        self._pool = ThreadPoolExecutor(max(1, settings.encode_workers), thread_name_prefix="garment-encode")
        self._warm: asyncio.Task[None] | None = None
        self.encodes = 0  # encoder runs in this replica (tests and health read it)
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

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        js = self.js = self.ctx.nc.jetstream()
        subjects = self.ctx.subjects
        try:
            self.kv = await js.key_value(subjects.garment_bucket)
        except nats.js.errors.BucketNotFoundError:
            self.kv = await js.create_key_value(
                bucket=subjects.garment_bucket,
                history=5,
                storage=StorageType.FILE,
                description="garment catalogue index: id.<garment_id> -> GarmentRecord",
            )
        try:
            self.objects = await js.object_store(subjects.garment_objects)
        except nats.js.errors.BucketNotFoundError:
            self.objects = await js.create_object_store(
                subjects.garment_objects,
                storage=StorageType.FILE,
                description="garment sources and encoded assets, content-addressed",
            )
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
        self._pool.shutdown(wait=False, cancel_futures=True)

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
            self._cache.move_to_end(garment_id)
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
            record, revision = await self._read_record(garment_id)
        except _UNAVAILABLE:
            if cached is not None:  # JetStream is down: a slightly stale garment beats none
                return cached.reply
            raise
        if record is None:
            self._cache.pop(garment_id, None)
            raise GarmentError("unknown_garment", f"no garment {garment_id!r} in the catalogue")
        if cached is not None and cached.revision == revision:
            cached.checked = time.monotonic()
            return cached.reply
        return await self._load_into_cache(record, revision)

    async def _load_into_cache(self, record: GarmentRecord, revision: int) -> bytes:
        key = record.versions.get(self.version)
        if key is None or not await self._has_object(asset_object(key)):
            record, revision = await self._reencode(record)
            key = record.versions[self.version]
        assert self.objects is not None
        blob = (await self.objects.get(asset_object(key))).data
        asset = GarmentAssetData.decode(blob)
        return self._remember(record, revision, asset)

    def _remember(self, record: GarmentRecord, revision: int, asset: GarmentAssetData) -> bytes:
        reply = _get_reply(record, asset)
        self._cache[record.garment_id] = _Cached(revision, asset.content_key, reply, time.monotonic())
        self._cache.move_to_end(record.garment_id)
        while len(self._cache) > max(1, self.settings.cache_size):
            self._cache.popitem(last=False)
        return reply

    async def _reencode(self, record: GarmentRecord) -> tuple[GarmentRecord, int]:
        """Encode a catalogue entry with this replica's encoder version, from its stored source."""
        assert self.objects is not None
        try:
            image = (await self.objects.get(source_object(record.source_sha256))).data
        except nats.js.errors.ObjectNotFoundError:
            raise GarmentError("internal", f"the source image of {record.garment_id!r} is missing") from None
        key = content_key(image, self.version)
        await self._encode_once(key, image)
        log.info("garment_reencoded", garment_id=record.garment_id, encoder_version=self.version)
        new, revision, _ = await self._upsert(record.garment_id, record.name, record.category, image, key)
        return new, revision

    # -- encode -----------------------------------------------------------------------------------
    async def _on_encode(self, msg: Msg) -> None:
        self._spawn(self._serve("encode", msg, lambda: self._encode(msg)))

    async def _encode(self, msg: Msg) -> bytes:
        t0 = time.perf_counter()
        req = GarmentEncodeRequest.decode(msg.data)
        image = req.image
        inspect_image(image, self.limits)  # cheap checks first: nothing is stored for a bad image
        digest = source_digest(image)
        key = content_key(image, self.version)
        garment_id = req.garment_id or derive_garment_id(req.name, digest)
        name = req.name or garment_id
        created = await self._encode_once(key, image)
        _, _, updated = await self._upsert(garment_id, name, req.category, image, key)
        if created or updated:
            log.info(
                "garment_stored", garment_id=garment_id, content_key=key, created=created, updated=updated
            )
        return GarmentEncodeReply(
            ok=True,
            garment_id=garment_id,
            content_key=key,
            encoder_version=self.version,
            created=created,
            updated=updated,
            encode_ms=round((time.perf_counter() - t0) * 1e3, 2),
        ).encode()

    async def _encode_once(self, key: str, image: bytes) -> bool:
        """Make sure ``asset/<key>`` exists; True if this call ran the encoder. Concurrent calls
        for one key in this replica share one encoding."""
        pending = self._inflight.get(key)
        if pending is not None:
            await asyncio.shield(pending)
            return False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            created = await self._store_encoding(key, image)
            fut.set_result(created)
            return created
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it, nobody else needs to
            raise
        finally:
            self._inflight.pop(key, None)

    async def _store_encoding(self, key: str, image: bytes) -> bool:
        assert self.objects is not None
        if await self._has_object(asset_object(key)):
            return False
        s = self.settings
        async with self._encode_slots:
            enc = await asyncio.get_running_loop().run_in_executor(
                self._pool, encode_garment, image, self.limits, s.student_encoder, s.canvas_size
            )
        self.encodes += 1
        data = to_asset_data(enc, key)
        digest = source_digest(image)
        if not await self._has_object(source_object(digest)):
            await self.objects.put(source_object(digest), image)
        await self.objects.put(asset_object(key), data.encode())
        return True

    async def _upsert(
        self, garment_id: str, name: str, category: str, image: bytes, key: str
    ) -> tuple[GarmentRecord, int, bool]:
        """Point ``garment_id`` at ``key`` by compare-and-set; (record, revision, changed)."""
        assert self.kv is not None
        digest = source_digest(image)
        for _ in range(_CAS_ATTEMPTS):
            record, revision = await self._read_record(garment_id)
            now = time.time_ns()
            same_source = record is not None and record.source_sha256 == digest
            versions = (
                {**record.versions, self.version: key} if same_source and record else {self.version: key}
            )
            if (
                record is not None
                and revision is not None
                and same_source
                and record.versions == versions
                and record.name == name
                and record.category == category
            ):
                return record, revision, False
            new = GarmentRecord(
                garment_id=garment_id,
                name=name,
                category=category,
                source_sha256=digest,
                source_bytes=len(image),
                versions=versions,
                created_ns=record.created_ns if record else now,
                updated_ns=now,
            )
            try:
                if revision is None:
                    revision = await self.kv.create(_kv_key(garment_id), new.encode())
                else:
                    revision = await self.kv.update(_kv_key(garment_id), new.encode(), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another replica wrote first: re-read and merge
            self._cache.pop(garment_id, None)
            return new, revision, True
        raise GarmentError("unavailable", f"the index entry of {garment_id!r} kept changing; try again")

    # -- list -------------------------------------------------------------------------------------
    async def _on_list(self, msg: Msg) -> None:
        self._spawn(self._serve("list", msg, lambda: self._list(msg)))

    async def _list(self, msg: Msg) -> bytes:
        category = GarmentListRequest.decode(msg.data).category
        records = [r for r in await self._all_records() if not category or r.category == category]
        return GarmentListReply(ok=True, items=[r.to_dict() for r in records]).encode()

    async def _all_records(self) -> list[GarmentRecord]:
        """Every index entry (latest values), sorted by id.

        Keys come from the KV stream's per-subject state, values from direct gets: unlike a KV
        watcher's "initial values done" marker, this cannot race and come back short.
        """
        assert self.kv is not None and self.js is not None
        bucket = self.ctx.subjects.garment_bucket
        prefix = f"$KV.{bucket}.id."
        info = await self.js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
        ids = sorted(subject[len(prefix) :] for subject in (info.state.subjects or {}))
        records = []
        for garment_id in ids:
            try:
                record, _ = await self._read_record(garment_id)
            except (SchemaError, GarmentError) as exc:
                log.warning("garment_record_unreadable", garment_id=garment_id, error=str(exc))
                continue
            if record is not None:  # None: deleted
                records.append(record)
        return records

    # -- storage helpers --------------------------------------------------------------------------
    async def _read_record(self, garment_id: str) -> tuple[GarmentRecord | None, int | None]:
        assert self.kv is not None
        if not valid_garment_id(garment_id):
            raise GarmentError("bad_id", f"invalid garment id {garment_id!r}")
        try:
            entry = await self.kv.get(_kv_key(garment_id))
        except nats.js.errors.KeyNotFoundError:
            return None, None
        return GarmentRecord.decode(entry.value), entry.revision

    async def _has_object(self, name: str) -> bool:
        assert self.objects is not None
        try:
            await self.objects.get_info(name)
            return True
        except nats.js.errors.ObjectNotFoundError:
            return False

    async def _warm_cache(self) -> None:
        """Load the catalogue into memory, encoding entries that lack this encoder version."""
        try:
            records = await self._all_records()
            for record in records[: self.settings.cache_size]:
                try:
                    _, revision = await self._read_record(record.garment_id)
                    if revision is not None and record.garment_id not in self._cache:
                        await self._load_into_cache(record, revision)
                except GarmentError as exc:
                    log.warning("garment_warm_failed", garment_id=record.garment_id, code=exc.code)
            log.info("garments_warm", cached=len(self._cache), catalogue=len(records))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # warming is an optimisation; requests still work without it
            log.warning("garments_warm_failed", error=f"{type(exc).__name__}: {exc}")


def _kv_key(garment_id: str) -> str:
    return f"id.{garment_id}"


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
