"""``GarmentClient``: the garment service seen from another process (the CLI, the generator).

Touches NATS, like ``handlers.py``, because it is the service's request/reply API; callers hand it
their connection. Every failure comes back as ``GarmentError`` with the service's error code
(``unavailable`` when nothing answers in time).
"""

from __future__ import annotations

import nats.errors
from nats.aio.client import Client as NATS

from services.garments.assets import GarmentAsset
from services.garments.errors import GarmentError
from shared.garment_schemas import (
    GarmentEncodeReply,
    GarmentEncodeRequest,
    GarmentGetReply,
    GarmentGetRequest,
    GarmentListReply,
    GarmentListRequest,
    GarmentRecord,
)
from shared.schemas import SchemaError
from shared.subjects import Subjects


class GarmentClient:
    def __init__(
        self, nc: NATS, subjects: Subjects, timeout_s: float = 5.0, encode_timeout_s: float = 60.0
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.timeout_s = timeout_s
        self.encode_timeout_s = encode_timeout_s

    async def encode(
        self, image: bytes, *, garment_id: str = "", name: str = "", category: str = "top"
    ) -> GarmentEncodeReply:
        """Add (or re-add: idempotent) a garment image; the reply says what was stored."""
        try:
            payload = GarmentEncodeRequest(image=image, garment_id=garment_id, name=name, category=category)
            payload.validate()
        except SchemaError as exc:
            code = (
                "bad_id"
                if "garment_id" in str(exc)
                else "bad_category"
                if "category" in str(exc)
                else "bad_request"
            )
            raise GarmentError(code, str(exc)) from None
        raw = payload.encode()
        limit = self.nc.max_payload
        if limit and len(raw) > limit:
            raise GarmentError(
                "image_too_large", f"{len(image)} bytes do not fit the server's max_payload of {limit}"
            )
        reply = GarmentEncodeReply.decode(await self._request("encode", raw, self.encode_timeout_s))
        return _checked(reply)

    async def get_reply(self, garment_id: str) -> GarmentGetReply:
        """The raw reply (compact; decode later with ``GarmentAsset.from_reply``)."""
        raw = await self._request("get", GarmentGetRequest(garment_id=garment_id).encode(), self.timeout_s)
        return _checked(GarmentGetReply.decode(raw))

    async def get(self, garment_id: str) -> GarmentAsset:
        return GarmentAsset.from_reply(await self.get_reply(garment_id))

    async def list(self, category: str = "") -> list[GarmentRecord]:
        raw = await self._request("list", GarmentListRequest(category=category).encode(), self.timeout_s)
        reply = _checked(GarmentListReply.decode(raw))
        return [GarmentRecord.from_dict(item) for item in reply.items]

    async def _request(self, verb: str, payload: bytes, timeout_s: float) -> bytes:
        try:
            msg = await self.nc.request(self.subjects.garments(verb), payload, timeout=timeout_s)
        except nats.errors.NoRespondersError:
            raise GarmentError("unavailable", "no garment service is running") from None
        except nats.errors.TimeoutError:
            raise GarmentError(
                "unavailable", f"the garment service did not answer {verb} in {timeout_s:g}s"
            ) from None
        return msg.data


def _checked(reply):  # type: ignore[no-untyped-def]
    if not reply.ok:
        raise GarmentError(reply.error_code, reply.error)
    return reply


async def load_catalogue(
    client: GarmentClient, garment_ids: list[str] | None = None
) -> list[GarmentEncodeReply]:
    """Add the procedural starter catalogue (idempotent: an image already stored is not re-encoded)."""
    from services.garments.catalogue import catalogue_photos

    return [
        await client.encode(photo, garment_id=spec.garment_id, name=spec.name, category=spec.category)
        for spec, photo in catalogue_photos(garment_ids)
    ]
