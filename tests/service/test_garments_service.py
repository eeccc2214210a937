"""The garment service over a real nats-server with JetStream file storage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import cv2
import numpy as np
import pytest

from runtime.bus import connect
from runtime.service import serve_in_task
from services.garments.catalogue import render, spec_by_id, starter_catalogue
from services.garments.encoder import encoder_version, register_student_encoder
from services.garments.handlers import GarmentHandlers
from services.garments.settings import GarmentSettings
from shared.garment_client import GarmentClient, GarmentError
from shared.garment_schemas import KEYPOINT_NAMES, GarmentEncodeReply, GarmentRecord
from shared.subjects import Subjects

pytestmark = pytest.mark.service

TEST_STUDENT = "service-test-16"


@register_student_encoder(TEST_STUDENT)
def _tiny_student(texture: np.ndarray) -> np.ndarray:
    small = cv2.resize(texture, (16, 16), interpolation=cv2.INTER_AREA)
    return (small.astype(np.float32) / 255).astype(np.float16)


@pytest.fixture
def prefix() -> str:
    """A private subject prefix, hence private KV and Object Store buckets on the shared server."""
    return f"gt{uuid.uuid4().hex[:10]}"


def _service(url: str, prefix: str, **kw: object):
    settings = GarmentSettings(nats_url=url, subject_prefix=prefix, summary_interval_s=60, **kw)  # type: ignore[arg-type]
    return serve_in_task("garments", settings, lambda ctx: GarmentHandlers(ctx, settings))


@contextlib.asynccontextmanager
async def _client(url: str, prefix: str):
    nc = await connect(url, "garments-test-client")
    try:
        yield GarmentClient(nc, Subjects(prefix), timeout_s=10.0)
    finally:
        await nc.drain()


async def _stored_objects(url: str, prefix: str) -> list[str]:
    nc = await connect(url, "garments-test-inspect")
    try:
        obj = await nc.jetstream().object_store(Subjects(prefix).garment_objects)
        try:
            return sorted(o.name for o in await obj.list(ignore_deletes=True))
        except Exception:  # an empty store raises NotFoundError
            return []
    finally:
        await nc.drain()


_IMAGES: dict[str, bytes] = {}


def _png(garment_id: str) -> bytes:
    if garment_id not in _IMAGES:
        _IMAGES[garment_id] = render(spec_by_id(garment_id)).png()
    return _IMAGES[garment_id]


async def test_add_then_get_from_another_connection(nats_url: str, prefix: str) -> None:
    async with _service(nats_url, prefix), _client(nats_url, prefix) as adder:
        reply = await adder.encode(
            _png("tee-red-solid"), garment_id="tee-red-solid", name="Red tee", category="tshirt"
        )
        assert reply.created and reply.updated and reply.encoder_version == encoder_version()
        async with _client(nats_url, prefix) as other:
            asset = await other.get("tee-red-solid")
            (record,) = await other.list()
    assert (asset.name, asset.category, asset.content_key) == ("Red tee", "tshirt", reply.content_key)
    assert asset.texture.shape == (256, 256, 4) and asset.mask.max() == 255
    assert set(asset.keypoints) == set(KEYPOINT_NAMES)
    assert asset.student.shape == (4, 64, 64) and asset.student.dtype == np.float16
    assert np.abs(np.array(asset.dominant_colours[0]["bgr"]) - (40, 40, 200)).max() <= 12
    assert record.garment_id == "tee-red-solid"
    assert record.versions == {reply.encoder_version: reply.content_key}


async def test_re_adding_the_same_image_is_idempotent(nats_url: str, prefix: str) -> None:
    async with _service(nats_url, prefix) as svc, _client(nats_url, prefix) as client:
        first = await client.encode(_png("shirt-green-solid"), garment_id="shirt-green", category="shirt")
        again = await client.encode(_png("shirt-green-solid"), garment_id="shirt-green", category="shirt")
        alias = await client.encode(_png("shirt-green-solid"), garment_id="shirt-green-2", category="shirt")
        assert first.created and not again.created and not again.updated
        assert alias.updated and not alias.created and alias.content_key == first.content_key
        assert svc.encodes == 1
        assert len(await client.list()) == 2
    objects = await _stored_objects(nats_url, prefix)
    assert len(objects) == 2 and {o.split("/")[0] for o in objects} == {"asset", "source"}


async def test_a_new_encoder_version_re_encodes_from_the_stored_source(nats_url: str, prefix: str) -> None:
    image = _png("dress-red-solid")
    async with _service(nats_url, prefix), _client(nats_url, prefix) as client:
        old = await client.encode(image, garment_id="dress", category="dress")
    async with (
        _service(nats_url, prefix, student_encoder=TEST_STUDENT) as svc,
        _client(nats_url, prefix) as client,
    ):
        asset = await client.get("dress")  # warm-up or this get re-encodes; either way once
        assert asset.encoder_version == encoder_version(TEST_STUDENT) != old.encoder_version
        assert asset.content_key != old.content_key and asset.student.shape == (16, 16, 4)
        assert svc.encodes == 1
        again = await client.encode(image, garment_id="dress", category="dress")
        assert not again.created and again.content_key == asset.content_key
        (record,) = await client.list()
        expected = {old.encoder_version: old.content_key, asset.encoder_version: asset.content_key}
        assert record.versions == expected
    # the old version is still served by a replica running it (rolling upgrades never fight)
    async with _service(nats_url, prefix) as svc, _client(nats_url, prefix) as client:
        assert (await client.get("dress")).content_key == old.content_key and svc.encodes == 0


async def test_concurrent_adds_on_two_replicas_keep_the_index_consistent(nats_url: str, prefix: str) -> None:
    ids = [s.garment_id for s in starter_catalogue()[:8]]
    async with (
        _service(nats_url, prefix, encode_workers=2) as a,
        _service(nats_url, prefix, encode_workers=2) as b,
        _client(nats_url, prefix) as c1,
        _client(nats_url, prefix) as c2,
    ):
        jobs = [c.encode(_png(g), garment_id=g, name=g) for g in ids for c in (c1, c2)]
        # and one id fought over with two different images
        jobs += [
            c1.encode(_png(ids[0]), garment_id="contested"),
            c2.encode(_png(ids[1]), garment_id="contested"),
        ]
        replies: list[GarmentEncodeReply] = await asyncio.gather(*jobs)
        assert all(r.ok for r in replies)
        assert a.encodes > 0 and b.encodes > 0, "the queue group should spread the work"
        records = {r.garment_id: r for r in await c1.list()}
        assert sorted(records) == sorted([*ids, "contested"])
        by_id = {r.garment_id: r.content_key for r in replies if r.garment_id != "contested"}
        for g in ids:
            assert records[g].versions == {encoder_version(): by_id[g]}
            assert (await c2.get(g)).content_key == by_id[g]
        contested = records["contested"].versions[encoder_version()]
        assert contested in {r.content_key for r in replies[-2:]}
        assert (await c1.get("contested")).content_key == contested


async def test_catalogue_survives_service_and_nats_server_restarts(restartable_nats) -> None:
    url, prefix = restartable_nats.url, "restart"
    ids = ["tee-navy-stripes", "jacket-denim-solid", "dress-floral-print"]
    async with _service(url, prefix), _client(url, prefix) as client:
        for g in ids:
            await client.encode(_png(g), garment_id=g)
        before = {g: (await client.get(g)).content_key for g in ids}
    restartable_nats.restart()
    async with _service(url, prefix) as svc, _client(url, prefix) as client:
        assert [r.garment_id for r in await client.list()] == sorted(ids)
        assert {g: (await client.get(g)).content_key for g in ids} == before
        assert svc.encodes == 0
        # and a restart under a running service: it reconnects and keeps serving
        restartable_nats.restart()
        for _ in range(100):
            with contextlib.suppress(GarmentError):
                if (await client.get(ids[0])).content_key == before[ids[0]]:
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no get succeeded after the nats-server restart")
        added = await client.encode(_png("tee-red-solid"), garment_id="after-restart")
        assert added.created and len(await client.list()) == 4


async def test_bad_inputs_get_coded_errors_store_nothing_and_keep_serving(nats_url: str, prefix: str) -> None:
    big_pixels = cv2.imencode(".png", np.zeros((3000, 3000, 3), np.uint8))[1].tobytes()
    plain = cv2.imencode(".png", np.full((300, 300, 3), 128, np.uint8))[1].tobytes()
    async with (
        _service(nats_url, prefix, max_image_bytes=600_000, max_image_pixels=4_000_000) as svc,
        _client(nats_url, prefix) as client,
    ):
        cases = [
            (b"", "empty_image"),
            (b"definitely not an image", "not_an_image"),
            (b"\x89PNG\r\n\x1a\n" + bytes(64), "not_an_image"),
            (bytes([0xFF, 0xD8]) + bytes(700_000), "image_too_large"),
            (big_pixels, "image_too_large"),
            (plain, "no_garment"),
        ]
        for data, code in cases:
            with pytest.raises(GarmentError) as err:
                await client.encode(data, garment_id="bad")
            assert err.value.code == code, err.value
        with pytest.raises(GarmentError) as err:
            await client.get("no-such-garment")
        assert err.value.code == "unknown_garment"
        with pytest.raises(GarmentError) as err:
            await client.encode(_png("tee-red-solid"), category="socks")
        assert err.value.code == "bad_category"
        for subject in ("encode", "get", "list"):  # garbage on the wire
            raw = await client.nc.request(Subjects(prefix).garments(subject), b"\xc1garbage", timeout=5)
            assert b"bad_request" in raw.data
        assert await client.list() == [] and svc.encodes == 0
        assert await _stored_objects(nats_url, prefix) == []
        good = await client.encode(render(spec_by_id("tee-yellow-dots")).jpeg(), garment_id="ok")
        assert good.created and (await client.get("ok")).content_key == good.content_key


async def test_photos_infer_their_category_keep_a_thumbnail_and_refusals_store_nothing(
    nats_url: str, prefix: str
) -> None:
    """A shop's photos through the service: a photographed flat-lay without a category, a photo
    of someone wearing a tee (``source="person"``); two garments in one photo and a flat-lay sent
    as a person photo are refused with their codes, and nothing of them is stored."""
    from tools.product_photos import flatlay_photo, worn_photo

    async with _service(nats_url, prefix), _client(nats_url, prefix) as client:
        two = render(spec_by_id("tee-red-solid")).image, render(spec_by_id("tee-yellow-dots")).image
        for data, source, code in (
            (cv2.imencode(".jpg", np.hstack(two))[1].tobytes(), "flatlay", "several_garments"),
            (flatlay_photo(spec_by_id("dress-red-solid"), 0).data, "person", "no_person"),
        ):
            with pytest.raises(GarmentError) as err:
                await client.encode(data, garment_id="refused", source=source)
            assert err.value.code == code, err.value
        assert await client.list() == [] and await _stored_objects(nats_url, prefix) == []

        await client.encode(flatlay_photo(spec_by_id("dress-red-solid"), 0).data, garment_id="dress")
        worn = worn_photo(spec_by_id("tee-red-solid"), 0, "front").data
        await client.encode(worn, garment_id="worn-tee", name="Worn tee", category="tshirt", source="person")
        records = {r.garment_id: r for r in await client.list()}
        asset = await client.get("worn-tee")
    dress = records["dress"]
    assert (dress.category, dress.category_source, dress.source_kind) == ("dress", "inferred", "flatlay")
    assert dress.inferred["category"] == "dress" and dress.inferred["category_confidence"] > 0.6
    assert dress.sleeve_length == "short" and dress.thumbnail_jpeg.startswith(b"\xff\xd8")
    thumb = cv2.imdecode(np.frombuffer(dress.thumbnail_jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert max(thumb.shape[:2]) <= 128 and len(dress.thumbnail_jpeg) < 24 * 1024
    tee = records["worn-tee"]
    assert (tee.category, tee.category_source, tee.source_kind) == ("tshirt", "given", "person")
    assert tee.sleeve_length == "short" and tee.thumbnail_jpeg
    assert asset.source_kind == "person" and asset.sleeve_length == "short"


async def test_no_service_running_is_unavailable(nats_url: str, prefix: str) -> None:
    async with _client(nats_url, prefix) as client:
        with pytest.raises(GarmentError) as err:
            await client.get("anything")
    assert err.value.code == "unavailable"


async def test_records_in_kv_decode_as_the_contract(nats_url: str, prefix: str) -> None:
    async with _service(nats_url, prefix), _client(nats_url, prefix) as client:
        await client.encode(_png("tee-grey-print"), garment_id="print", name="Print", category="tshirt")
        kv = await client.nc.jetstream().key_value(Subjects(prefix).garment_bucket)
        record = GarmentRecord.decode((await kv.get("id.print")).value)
        assert record.name == "Print" and record.source_bytes == len(_png("tee-grey-print"))


async def test_cli_loads_lists_adds_and_shows(
    nats_url: str, prefix: str, monkeypatch, tmp_path, capsys
) -> None:
    from services.garments import cli

    monkeypatch.setenv("NATS_URL", nats_url)
    monkeypatch.setenv("CHAMELEON_SUBJECT_PREFIX", prefix)
    photo = tmp_path / "My Red Tee.jpg"
    photo.write_bytes(render(spec_by_id("tee-red-solid")).jpeg())
    async with _service(nats_url, prefix):
        assert await asyncio.to_thread(cli.main, ["load-catalogue", "--json"]) == 0
        assert await asyncio.to_thread(cli.main, ["add", str(photo), "--category", "tshirt"]) == 0
        assert await asyncio.to_thread(cli.main, ["add", str(tmp_path / "missing.png")]) == 1
        capsys.readouterr()
        assert await asyncio.to_thread(cli.main, ["list", "--json"]) == 0
        listed = [json.loads(line)["garment_id"] for line in capsys.readouterr().out.splitlines()]
        assert listed == sorted([*(s.garment_id for s in starter_catalogue()), "my-red-tee"])
        out = tmp_path / "tex.png"
        show = ["show", "dress-red-solid", "--json", "--texture", str(out)]
        assert await asyncio.to_thread(cli.main, show) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["category"] == "dress" and set(shown["keypoints"]) == set(KEYPOINT_NAMES)
        assert cv2.imread(str(out), cv2.IMREAD_UNCHANGED).shape == (256, 256, 4)
        assert await asyncio.to_thread(cli.main, ["show", "nope"]) == 1
