"""Between encodings, stored blobs and what callers hold: content keys, wire conversion, and the
decoded ``GarmentAsset``. Pure: no bus, no asyncio."""

from __future__ import annotations

import hashlib
import re

import cv2

from services.garments.encoder import EncodedGarment
from shared.garment_schemas import GarmentAssetData, valid_garment_id
from shared.schemas import pack_array


def source_digest(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()


def content_key(image: bytes, encoder_version: str) -> str:
    """The storage key of one encoding: a hash of the image bytes and the encoder version."""
    h = hashlib.sha256()
    h.update(image)
    h.update(b"\x00")
    h.update(encoder_version.encode())
    return h.hexdigest()[:40]


def asset_key(image: bytes, encoder_version: str, source: str = "flatlay") -> str:
    """The content key of ``image`` encoded as ``source`` shows it: a flat-lay's is the plain
    content key (as before there were sources), a person photo's hashes the source in too."""
    return content_key(image, encoder_version if source == "flatlay" else f"{encoder_version}|{source}")


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
        source_kind=enc.source_kind,
        rotation_deg=float(enc.rotation_deg),
        source_to_canvas=[round(float(v), 6) for v in enc.fit.affine().ravel()],
        inferred=inferred_dict(enc),
        thumbnail_jpeg=enc.thumbnail,
    )


def inferred_dict(enc: EncodedGarment) -> dict:
    """``GarmentAssetData.inferred`` of an encoding (empty when nothing was inferred)."""
    i = enc.inferred
    if i is None:
        return {}
    return {
        "category": i.category,
        "category_confidence": float(i.category_confidence),
        "sleeve_length": i.sleeve_length,
        "sleeve_confidence": float(i.sleeve_confidence),
    }
