"""Between encodings, stored blobs and what callers hold: content keys, wire conversion, and the
decoded ``GarmentAsset``. Pure: no bus, no asyncio."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import cv2
import numpy as np

from services.garments.encoder import EncodedGarment
from shared.garment_schemas import GarmentAssetData, GarmentGetReply, valid_garment_id
from shared.schemas import SchemaError, pack_array, unpack_array


def source_digest(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()


def content_key(image: bytes, encoder_version: str) -> str:
    """The storage key of one encoding: a hash of the image bytes and the encoder version."""
    h = hashlib.sha256()
    h.update(image)
    h.update(b"\x00")
    h.update(encoder_version.encode())
    return h.hexdigest()[:40]


def asset_object(key: str) -> str:
    return f"asset/{key}"


def source_object(digest: str) -> str:
    return f"source/{digest}"


def derive_garment_id(name: str, digest: str) -> str:
    """An id for an encode request without one: the slugged name, else ``g-<hash prefix>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64].rstrip("-")
    return slug if valid_garment_id(slug) else f"g-{digest[:12]}"


def to_asset_data(enc: EncodedGarment, key: str) -> GarmentAssetData:
    ok, png = cv2.imencode(".png", enc.texture, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError("PNG encoding of the texture failed")
    return GarmentAssetData(
        content_key=key,
        encoder_version=enc.encoder_version,
        canvas_size=int(enc.texture.shape[0]),
        texture_png=png.tobytes(),
        keypoints={k: [float(v) for v in p] for k, p in enc.keypoints.items()},
        dominant_colours=enc.dominant_colours,
        student=pack_array(enc.student),
        source_width=enc.source_size[0],
        source_height=enc.source_size[1],
        source_bbox=list(enc.fit.source_bbox),
        canvas_rect=list(enc.fit.canvas_rect),
        mask_source=enc.mask_source,
        coverage=round(enc.coverage, 5),
    )


@dataclass(frozen=True)
class GarmentAsset:
    """A garment ready for a generator: decoded arrays plus the catalogue metadata.

    ``texture`` is BGRA uint8 on the canonical canvas, its alpha the garment mask; ``keypoints``
    are named canvas pixel positions (image sides: left = smaller x) with ``keypoint_confidence``
    next to them; ``dominant_colours`` are ``{"bgr", "fraction"}``, largest first.
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

    @property
    def mask(self) -> np.ndarray:
        return self.texture[..., 3]

    @property
    def canvas_size(self) -> int:
        return int(self.texture.shape[0])

    @classmethod
    def from_reply(cls, reply: GarmentGetReply) -> GarmentAsset:
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
        )
