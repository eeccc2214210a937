"""Garment storage: the KV index and the Object Store, content-addressed, changed only by
compare-and-set. No subscriptions: it works on the JetStream objects the handlers hand it.

* Object Store ``<PREFIX>_GARMENT_BLOBS``: ``source/<sha256 of the image>`` (the upload, kept so a
  new encoder version can re-encode) and ``asset/<content key>`` (``GarmentAssetData``), where the
  content key hashes the image bytes together with the encoder version.
* KV ``<PREFIX>_GARMENTS``: ``id.<garment_id>`` -> ``GarmentRecord`` (name, category, source hash,
  encoder version -> content key). Blobs are written before the record that points at them, and
  records change only by compare-and-set (re-read and merge on conflict), so concurrent replicas
  never leave a dangling or lost entry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from runtime.logging import get_logger
from services.garments.assets import asset_key, asset_object, source_digest, source_object, to_asset_data
from services.garments.encoder import ImageLimits, encode_garment, encoder_version, inspect_image
from services.garments.settings import GarmentSettings
from shared.garment_client import GarmentError
from shared.garment_schemas import GarmentAssetData, GarmentRecord, valid_garment_id
from shared.schemas import SchemaError
from shared.subjects import Subjects

log = get_logger("garments")

CAS_ATTEMPTS = 10  # conflicting writers per record before a request gives up (``unavailable``)
INDEX_KEY_PREFIX = "id."


def index_config(bucket: str, replicas: int = 1) -> KeyValueConfig:
    """The index bucket; a little history so an operator can see what a record pointed at.
    ``replicas`` 3 on a 3-node cluster: the catalogue survives the loss of a server."""
    return KeyValueConfig(
        bucket=bucket,
        history=5,
        storage=StorageType.FILE,
        replicas=replicas,
        description="garment catalogue index: id.<garment_id> -> GarmentRecord",
    )


def blobs_config(bucket: str, replicas: int = 1) -> ObjectStoreConfig:
    """The blob store; ``replicas`` as for the index, which points into it."""
    return ObjectStoreConfig(
        bucket=bucket,
        storage=StorageType.FILE,
        replicas=replicas,
        description="garment sources and encoded assets, content-addressed",
    )


def index_key(garment_id: str) -> str:
    return f"{INDEX_KEY_PREFIX}{garment_id}"


@dataclass(frozen=True)
class RecordMeta:
    """What an encoding says about the garment, kept in its index entry (``GarmentRecord``)."""

    source_kind: str = "flatlay"
    sleeve_length: str = ""
    inferred: dict = field(default_factory=dict)
    thumbnail_jpeg: bytes = b""

    @classmethod
    def of(cls, asset: GarmentAssetData) -> RecordMeta:
        inferred = asset.inferred or {}
        return cls(asset.source_kind, inferred.get("sleeve_length", ""), inferred, asset.thumbnail_jpeg)

    @classmethod
    def from_record(cls, record: GarmentRecord) -> RecordMeta:
        return cls(record.source_kind, record.sleeve_length, record.inferred, record.thumbnail_jpeg)


def merged_record(
    current: GarmentRecord | None,
    *,
    garment_id: str,
    name: str,
    category: str,
    source_sha256: str,
    source_bytes: int,
    version: str,
    key: str,
    now_ns: int,
    meta: RecordMeta | None = None,
) -> GarmentRecord | None:
    """The record that points ``garment_id`` at ``key`` for ``version``, or None when ``current``
    already says exactly that. Other versions survive only while the source image is the same:
    they are encodings of that image, so a new image makes them wrong.

    ``category`` empty: the inferred one (``meta.inferred``, else the current record's, else
    ``top``). ``meta`` None: what the current record says about the same image, if anything."""
    same_source = current is not None and current.source_sha256 == source_sha256
    versions = {**current.versions, version: key} if current is not None and same_source else {version: key}
    if meta is None:
        meta = RecordMeta.from_record(current) if current is not None and same_source else RecordMeta()
    category_source = "given"
    if not category:
        category_source = "inferred"
        if meta.inferred.get("category"):
            category = meta.inferred["category"]
        elif current is not None and same_source:
            category, category_source = current.category, current.category_source
        else:
            category = "top"
    new = GarmentRecord(
        garment_id=garment_id,
        name=name,
        category=category,
        source_sha256=source_sha256,
        source_bytes=source_bytes,
        versions=versions,
        created_ns=current.created_ns if current is not None else now_ns,
        updated_ns=now_ns,
        source_kind=meta.source_kind,
        category_source=category_source,
        sleeve_length=meta.sleeve_length,
        inferred=meta.inferred,
        thumbnail_jpeg=meta.thumbnail_jpeg,
    )
    if current is not None and same_source and _same(current, new):
        return None
    return new


def _same(a: GarmentRecord, b: GarmentRecord) -> bool:
    """Equal but for the timestamps."""
    times = {"created_ns": 0, "updated_ns": 0}
    return {**a.to_dict(), **times} == {**b.to_dict(), **times}


@dataclass(frozen=True)
class Stored:
    """What an add did: ``created`` if it ran the encoder, ``updated`` if it changed the index."""

    content_key: str
    created: bool
    updated: bool


class EncoderPool:
    """This replica's encoder version, run in threads so the event loop keeps serving."""

    def __init__(self, settings: GarmentSettings) -> None:
        self.student_encoder = settings.student_encoder
        self.canvas_size = settings.canvas_size
        self.version = encoder_version(settings.student_encoder, settings.canvas_size)
        self.limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        self.encodes = 0  # encoder runs in this replica (tests and health read it)
        workers = max(1, settings.encode_workers)
        self._slots = asyncio.Semaphore(workers)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="garment-encode")

    async def encode(self, image: bytes, key: str, source: str = "flatlay") -> GarmentAssetData:
        async with self._slots:
            enc = await asyncio.get_running_loop().run_in_executor(
                self._pool, encode_garment, image, self.limits, self.student_encoder, self.canvas_size, source
            )
        self.encodes += 1
        return to_asset_data(enc, key)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class GarmentStore:
    """Records and blobs of one deployment, seen through one encoder version.

    ``on_record_changed(garment_id)`` runs right after this store rewrites a record, so a cache
    in front of it drops the entry before anything else can read it.
    """

    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        objects: ObjectStore,
        subjects: Subjects,
        encoder: EncoderPool,
        on_record_changed: Callable[[str], object] = lambda garment_id: None,
    ) -> None:
        self.js = js
        self.kv = kv
        self.objects = objects
        self.subjects = subjects
        self.encoder = encoder
        self.version = encoder.version
        self.on_record_changed = on_record_changed
        self._inflight: dict[str, asyncio.Future[bool]] = {}

    # -- records ----------------------------------------------------------------------------------
    async def read(self, garment_id: str) -> tuple[GarmentRecord | None, int | None]:
        """The record and its KV revision; (None, None) when there is none."""
        if not valid_garment_id(garment_id):
            raise GarmentError("bad_id", f"invalid garment id {garment_id!r}")
        try:
            entry = await self.kv.get(index_key(garment_id))
        except nats.js.errors.KeyNotFoundError:
            return None, None
        return GarmentRecord.decode(entry.value), entry.revision

    async def records(self) -> list[GarmentRecord]:
        """Every index entry (latest values), sorted by id.

        Keys come from the KV stream's per-subject state, values from direct gets: unlike a KV
        watcher's "initial values done" marker, this cannot race and come back short.
        """
        bucket = self.subjects.garment_bucket
        head = self.subjects.kv_stream_subject(bucket, INDEX_KEY_PREFIX)
        info = await self.js.stream_info(
            self.subjects.kv_stream(bucket),
            subjects_filter=self.subjects.kv_stream_subject(bucket, index_key(">")),
        )
        ids = sorted(subject[len(head) :] for subject in (info.state.subjects or {}))
        records = []
        for garment_id in ids:
            try:
                record, _ = await self.read(garment_id)
            except (SchemaError, GarmentError) as exc:
                log.warning("garment_record_unreadable", garment_id=garment_id, error=str(exc))
                continue
            if record is not None:  # None: deleted
                records.append(record)
        return records

    # -- add --------------------------------------------------------------------------------------
    async def add(
        self, garment_id: str, name: str, category: str, image: bytes, source: str = "flatlay"
    ) -> Stored:
        """Encode ``image`` (once per content key) and point ``garment_id`` at it; ``category``
        empty: the one inferred from the garment's shape."""
        inspect_image(image, self.encoder.limits)  # cheap checks first: nothing is stored for a bad image
        key = asset_key(image, self.version, source)
        asset = await self._encode_once(key, image, source)
        created = asset is not None
        if asset is None and not category:  # inferring needs the encoding this add did not make
            asset = GarmentAssetData.decode((await self.objects.get(asset_object(key))).data)
        meta = RecordMeta.of(asset) if asset is not None else None
        _, _, updated = await self._point(garment_id, name, category, image, key, meta)
        if created or updated:
            log.info(
                "garment_stored", garment_id=garment_id, content_key=key, created=created, updated=updated
            )
        return Stored(key, created, updated)

    # -- assets -----------------------------------------------------------------------------------
    async def asset(
        self, record: GarmentRecord, revision: int
    ) -> tuple[GarmentRecord, int, GarmentAssetData]:
        """The encoding of ``record`` for this version, re-encoded from its stored source when
        missing; returns the record and revision it belongs to (newer if it had to re-encode)."""
        key = record.versions.get(self.version)
        if key is None or not await self._has_object(asset_object(key)):
            record, revision = await self._reencode(record)
            key = record.versions[self.version]
        blob = (await self.objects.get(asset_object(key))).data
        return record, revision, GarmentAssetData.decode(blob)

    async def _reencode(self, record: GarmentRecord) -> tuple[GarmentRecord, int]:
        """Encode a catalogue entry with this replica's encoder version, from its stored source."""
        try:
            image = (await self.objects.get(source_object(record.source_sha256))).data
        except nats.js.errors.ObjectNotFoundError:
            raise GarmentError("internal", f"the source image of {record.garment_id!r} is missing") from None
        key = asset_key(image, self.version, record.source_kind)
        asset = await self._encode_once(key, image, record.source_kind)
        log.info("garment_reencoded", garment_id=record.garment_id, encoder_version=self.version)
        category = "" if record.category_source == "inferred" else record.category  # infer it anew
        meta = RecordMeta.of(asset) if asset is not None else None
        new, revision, _ = await self._point(record.garment_id, record.name, category, image, key, meta)
        return new, revision

    async def _encode_once(self, key: str, image: bytes, source: str = "flatlay") -> GarmentAssetData | None:
        """Make sure ``asset/<key>`` exists; the encoding if this call ran the encoder, else
        None. Concurrent calls for one key in this replica share one encoding."""
        pending = self._inflight.get(key)
        if pending is not None:
            await asyncio.shield(pending)
            return None
        fut: asyncio.Future[GarmentAssetData | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            created = await self._store_encoding(key, image, source)
            fut.set_result(created)
            return created
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it, nobody else needs to
            raise
        finally:
            self._inflight.pop(key, None)

    async def _store_encoding(self, key: str, image: bytes, source: str) -> GarmentAssetData | None:
        if await self._has_object(asset_object(key)):
            return None
        data = await self.encoder.encode(image, key, source)
        digest = source_digest(image)
        if not await self._has_object(source_object(digest)):
            await self.objects.put(source_object(digest), image)
        await self.objects.put(asset_object(key), data.encode())
        return data

    async def _point(
        self,
        garment_id: str,
        name: str,
        category: str,
        image: bytes,
        key: str,
        meta: RecordMeta | None = None,
    ) -> tuple[GarmentRecord, int, bool]:
        """Point ``garment_id`` at ``key`` by compare-and-set; (record, revision, changed)."""
        digest = source_digest(image)
        for _ in range(CAS_ATTEMPTS):
            current, revision = await self.read(garment_id)
            new = merged_record(
                current,
                garment_id=garment_id,
                name=name,
                category=category,
                source_sha256=digest,
                source_bytes=len(image),
                version=self.version,
                key=key,
                now_ns=time.time_ns(),
                meta=meta,
            )
            if new is None:  # the record already says so; a record read always has a revision
                assert current is not None and revision is not None
                return current, revision, False
            try:
                if revision is None:
                    revision = await self.kv.create(index_key(garment_id), new.encode())
                else:
                    revision = await self.kv.update(index_key(garment_id), new.encode(), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another replica wrote first: re-read and merge
            self.on_record_changed(garment_id)
            return new, revision, True
        raise GarmentError("unavailable", f"the index entry of {garment_id!r} kept changing; try again")

    async def _has_object(self, name: str) -> bool:
        try:
            await self.objects.get_info(name)
            return True
        except nats.js.errors.ObjectNotFoundError:
            return False
