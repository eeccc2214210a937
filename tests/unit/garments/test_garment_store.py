"""The garment store's own rules without a server: key and subject naming, how a record is merged,
and compare-and-set against an in-memory KV that another "replica" writes into."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import nats.js.errors
import numpy as np
import pytest

from services.garments.assets import asset_object, content_key, source_digest
from services.garments.settings import GarmentSettings
from services.garments.store import EncoderPool, GarmentStore, RecordMeta, index_key, merged_record
from shared.garment_client import GarmentError
from shared.garment_schemas import GarmentEncodeRequest, GarmentRecord
from shared.schemas import SchemaError
from shared.subjects import Subjects

pytestmark = pytest.mark.unit

IMAGE = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
DIGEST = source_digest(IMAGE)


def _record(**kw: object) -> GarmentRecord:
    fields: dict = dict(
        garment_id="tee",
        name="Tee",
        category="tshirt",
        source_sha256=DIGEST,
        source_bytes=len(IMAGE),
        versions={"v1": "k1"},
        created_ns=1,
        updated_ns=1,
    )
    return GarmentRecord(**{**fields, **kw})


def _merge(current: GarmentRecord | None, **kw: object) -> GarmentRecord | None:
    args: dict = dict(
        garment_id="tee",
        name="Tee",
        category="tshirt",
        source_sha256=DIGEST,
        source_bytes=len(IMAGE),
        version="v1",
        key="k1",
        now_ns=5,
    )
    return merged_record(current, **{**args, **kw})


def test_index_keys_and_their_stream_subjects() -> None:
    s = Subjects("acme.prod")
    assert index_key("tee-red") == "id.tee-red"
    assert s.kv_stream(s.garment_bucket) == "KV_ACME_PROD_GARMENTS"
    assert s.kv_stream_subject(s.garment_bucket, index_key(">")) == "$KV.ACME_PROD_GARMENTS.id.>"
    assert s.kv_stream_subject(s.garment_bucket, index_key("tee")) == "$KV.ACME_PROD_GARMENTS.id.tee"


def test_a_new_record_starts_its_history_now() -> None:
    new = _merge(None)
    assert new == _record(created_ns=5, updated_ns=5)


def test_a_record_that_already_says_so_is_left_alone() -> None:
    assert _merge(_record()) is None


def test_a_new_version_of_the_same_image_joins_the_others() -> None:
    new = _merge(_record(), version="v2", key="k2")
    assert new is not None and new.versions == {"v1": "k1", "v2": "k2"}
    assert (new.created_ns, new.updated_ns) == (1, 5)


def test_a_new_image_replaces_every_version() -> None:
    new = _merge(_record(versions={"v1": "k1", "v2": "k2"}), source_sha256="other", source_bytes=3, key="k9")
    assert new is not None and new.versions == {"v1": "k9"}
    assert (new.source_sha256, new.source_bytes, new.created_ns) == ("other", 3, 1)


def test_a_rename_or_recategorisation_rewrites_the_record() -> None:
    assert _merge(_record(), name="Red tee") == _record(name="Red tee", updated_ns=5)
    assert _merge(_record(), category="top") == _record(category="top", updated_ns=5)


# -- compare-and-set against a fake bucket -------------------------------------------------------
@dataclass
class _Entry:
    value: bytes
    revision: int


class _FakeKV:
    """Revisions like JetStream's; ``before_write`` lets a test slip in another replica's write."""

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}
        self.seq = 0
        self.before_write: Callable[[], None] = lambda: None

    async def get(self, key: str) -> _Entry:
        if key not in self.entries:
            raise nats.js.errors.KeyNotFoundError
        return self.entries[key]

    def write(self, key: str, value: bytes) -> int:
        self.seq += 1
        self.entries[key] = _Entry(value, self.seq)
        return self.seq

    async def put(self, key: str, value: bytes) -> int:
        self.before_write()
        return self.write(key, value)

    async def create(self, key: str, value: bytes) -> int:
        return await self.update(key, value, last=0)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        """As the server does it: the write lands only if the key's revision is ``last`` (0: none)."""
        self.before_write()
        current = self.entries[key].revision if key in self.entries else 0
        if current != (last or 0):
            raise nats.js.errors.KeyWrongLastSequenceError
        return self.write(key, value)


class _FakeObjects:
    def __init__(self, names: set[str]) -> None:
        self.names = names

    async def get_info(self, name: str) -> str:
        if name not in self.names:
            raise nats.js.errors.ObjectNotFoundError
        return name


@pytest.fixture
def encoder():
    pool = EncoderPool(GarmentSettings())
    yield pool
    pool.close()


def _store(kv: _FakeKV, encoder: EncoderPool, changed: list[str]) -> GarmentStore:
    # the asset already exists, so an add never runs the encoder: these tests are about the index
    objects = _FakeObjects({asset_object(content_key(IMAGE, encoder.version))})
    return GarmentStore(None, kv, objects, Subjects(), encoder, on_record_changed=changed.append)  # type: ignore[arg-type]


async def test_a_conflicting_write_is_re_read_and_merged_not_overwritten(encoder: EncoderPool) -> None:
    kv, changed = _FakeKV(), []
    kv.write(index_key("tee"), _record().encode())  # what another replica (version v1) stored

    def other_replica_adds_a_version() -> None:
        kv.before_write = lambda: None
        kv.write(index_key("tee"), _record(versions={"v1": "k1", "v3": "k3"}).encode())

    kv.before_write = other_replica_adds_a_version
    stored = await _store(kv, encoder, changed).add("tee", "Tee", "tshirt", IMAGE)
    assert stored.updated and not stored.created and changed == ["tee"]
    record = GarmentRecord.decode(kv.entries[index_key("tee")].value)
    assert record.versions == {"v1": "k1", "v3": "k3", encoder.version: stored.content_key}
    assert kv.seq == 3


async def test_an_add_that_changes_nothing_writes_nothing(encoder: EncoderPool) -> None:
    kv, changed = _FakeKV(), []
    store = _store(kv, encoder, changed)
    first = await store.add("tee", "Tee", "tshirt", IMAGE)
    again = await store.add("tee", "Tee", "tshirt", IMAGE)
    assert first.updated and not again.updated and kv.seq == 1 and changed == ["tee"]


async def test_a_record_that_keeps_changing_is_unavailable_not_lost(encoder: EncoderPool) -> None:
    kv, changed = _FakeKV(), []
    kv.before_write = lambda: kv.write(index_key("tee"), _record(name=f"n{kv.seq}").encode())
    with pytest.raises(GarmentError) as err:
        await _store(kv, encoder, changed).add("tee", "Tee", "tshirt", IMAGE)
    assert err.value.code == "unavailable" and changed == []


# -- what the shape says, kept in the record -------------------------------------------------------
INFERRED = {
    "category": "dress",
    "category_confidence": 0.91,
    "sleeve_length": "short",
    "sleeve_confidence": 0.97,
}


def test_an_empty_category_takes_the_inferred_one_and_says_so() -> None:
    meta = RecordMeta("flatlay", "short", INFERRED, b"\xff\xd8thumb")
    new = _merge(None, category="", meta=meta)
    assert new is not None
    assert (new.category, new.category_source, new.sleeve_length) == ("dress", "inferred", "short")
    assert new.inferred == INFERRED and new.thumbnail_jpeg == b"\xff\xd8thumb"
    given = _merge(None, category="jacket", meta=meta)
    assert given is not None and (given.category, given.category_source) == ("jacket", "given")
    assert given.inferred == INFERRED  # what the shape said is kept beside what was given
    assert _merge(new, category="", meta=meta) is None  # the same add again changes nothing
    # a re-add without an encoding at hand keeps what the record knows about the same image
    assert _merge(new, category="") is None


def test_a_record_without_the_newer_fields_still_decodes() -> None:
    """The wire stays backward compatible: a record written before inference had no
    source_kind, category_source, sleeve_length, inferred or thumbnail."""
    old = {k: v for k, v in _record().to_dict().items() if k not in (
        "source_kind", "category_source", "sleeve_length", "inferred", "thumbnail_jpeg")}  # fmt: skip
    record = GarmentRecord.from_dict(old)
    assert (record.source_kind, record.category_source, record.sleeve_length) == ("flatlay", "given", "")
    assert record.inferred == {} and record.thumbnail_jpeg == b""


@pytest.mark.parametrize(
    "bad",
    [
        {"source_kind": "catalogue"},
        {"category_source": "guessed"},
        {"sleeve_length": "three-quarter"},
        {
            "inferred": {
                "category": "socks",
                "category_confidence": 0.5,
                "sleeve_length": "none",
                "sleeve_confidence": 0.5,
            }
        },
        {"inferred": {**INFERRED, "category_confidence": 1.5}},
        {"thumbnail_jpeg": b"GIF89a"},
        {"thumbnail_jpeg": b"\xff\xd8" + b"0" * 30_000},
    ],
)
def test_the_newer_record_fields_are_validated(bad: dict) -> None:
    with pytest.raises(SchemaError):
        GarmentRecord.decode(_record(**bad).encode())


def test_an_encode_request_may_leave_the_category_to_the_service() -> None:
    req = GarmentEncodeRequest.decode(GarmentEncodeRequest(image=b"x", source="person").encode())
    assert (req.category, req.source) == ("", "person")
    for bad in ({"category": "socks"}, {"source": "drawing"}):
        with pytest.raises(SchemaError):
            GarmentEncodeRequest.decode(GarmentEncodeRequest(image=b"x", **bad).encode())
