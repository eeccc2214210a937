"""The garment service seen from another process (a generator, the CLI, a frontend's backend).

Contract, like the subjects and schemas: ``GarmentClient`` speaks the service's request/reply API
over a connection the caller hands it; ``GarmentAsset`` is a ``get`` reply decoded into arrays;
every failure is a ``GarmentError`` with the service's error code (``unavailable`` when nothing
answers in time). A process that only uses garments imports this, never the garment service.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nats.errors
import numpy as np
from nats.aio.client import Client as NATS

from shared.errors import CodedError
from shared.garment_schemas import (
    GARMENT_ERROR_CODES,
    GarmentEncodeReply,
    GarmentEncodeRequest,
    GarmentGetReply,
    GarmentGetRequest,
    GarmentListReply,
    GarmentListRequest,
    GarmentRecord,
)
from shared.schemas import SchemaError, unpack_array
from shared.subjects import Subjects


class GarmentError(CodedError):
    """A garment request that failed; ``code`` is one of ``GARMENT_ERROR_CODES``."""

    codes = GARMENT_ERROR_CODES

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class GarmentAsset:
    """A garment ready for a generator: decoded arrays plus the catalogue metadata.

    ``texture`` is BGRA uint8 on the canonical canvas, its alpha the garment mask; ``keypoints``
    are named canvas pixel positions (image sides: left = smaller x) with ``keypoint_confidence``
    next to them; ``dominant_colours`` are ``{"bgr", "fraction"}``, largest first; ``inferred``
    is what the shape says (category, sleeve length and their confidences; see
    ``GarmentAssetData``), ``thumbnail_jpeg`` the photo cropped to the garment.
    """

    garment_id: str
    name: str
    category: str
    content_key: str
    encoder_version: str
    texture: np.ndarray
    keypoints: dict[str, tuple[float, float]]
    keypoint_confidence: dict[str, float]
    dominant_colours: list[dict]
    student: np.ndarray
    source_size: tuple[int, int]
    source_bbox: tuple[int, int, int, int]
    canvas_rect: tuple[int, int, int, int]
    mask_source: str
    coverage: float
    source_kind: str = "flatlay"
    inferred: dict = field(default_factory=dict)
    thumbnail_jpeg: bytes = b""

    @property
    def sleeve_length(self) -> str:
        """``none``, ``short`` or ``long`` as inferred; empty for an asset older than inference."""
        return str(self.inferred.get("sleeve_length", ""))

    @property
    def mask(self) -> np.ndarray:
        return self.texture[..., 3]

    @property
    def canvas_size(self) -> int:
        return int(self.texture.shape[0])

    @classmethod
    def from_reply(cls, reply: GarmentGetReply) -> GarmentAsset:
        import cv2  # here: a client that only lists garments (``shared.client``) needs no OpenCV

        data = reply.asset_data()
        texture = cv2.imdecode(np.frombuffer(data.texture_png, np.uint8), cv2.IMREAD_UNCHANGED)
        if texture is None or texture.ndim != 3 or texture.shape[2] != 4:
            raise SchemaError("garment_asset.texture_png is not an RGBA PNG")
        return cls(
            garment_id=reply.garment_id,
            name=reply.name,
            category=reply.category,
            content_key=data.content_key,
            encoder_version=data.encoder_version,
            texture=texture,
            keypoints={k: (float(v[0]), float(v[1])) for k, v in data.keypoints.items()},
            keypoint_confidence={k: float(v[2]) for k, v in data.keypoints.items()},
            dominant_colours=data.dominant_colours,
            student=unpack_array(data.student, "student"),
            source_size=(data.source_width, data.source_height),
            source_bbox=tuple(data.source_bbox),  # type: ignore[arg-type]
            canvas_rect=tuple(data.canvas_rect),  # type: ignore[arg-type]
            mask_source=data.mask_source,
            coverage=data.coverage,
            source_kind=data.source_kind,
            inferred=dict(data.inferred),
            thumbnail_jpeg=data.thumbnail_jpeg,
        )


class GarmentClient:
    def __init__(
        self, nc: NATS, subjects: Subjects, timeout_s: float = 5.0, encode_timeout_s: float = 60.0
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.timeout_s = timeout_s
        self.encode_timeout_s = encode_timeout_s

    async def encode(
        self,
        image: bytes,
        *,
        garment_id: str = "",
        name: str = "",
        category: str = "",
        source: str = "flatlay",
    ) -> GarmentEncodeReply:
        """Add (or re-add: idempotent) a garment image; the reply says what was stored.
        ``category`` empty: inferred from the garment; ``source="person"``: the image is a photo
        of someone wearing it."""
        try:
            payload = GarmentEncodeRequest(
                image=image, garment_id=garment_id, name=name, category=category, source=source
            )
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
