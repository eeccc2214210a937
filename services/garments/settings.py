"""Garment service settings (``CHAMELEON_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.settings import BaseSettings
from services.garments.encoder import DEFAULT_CANVAS, DEFAULT_STUDENT_ENCODER


@dataclass(frozen=True)
class GarmentSettings(BaseSettings):
    max_image_bytes: int = 3 * 1024 * 1024  # larger uploads are refused (image_too_large)
    max_image_pixels: int = 24_000_000  # checked from the header, before decoding
    canvas_size: int = DEFAULT_CANVAS  # side of the canonical RGBA canvas
    student_encoder: str = DEFAULT_STUDENT_ENCODER  # the student hook; part of the encoder version
    cache_size: int = 128  # garments kept ready in memory (~100 KB each)
    index_ttl_s: float = 1.0  # how long a cached id -> content mapping is served without re-reading KV
    encode_workers: int = 1  # encoder threads (and concurrent encodes) per replica
    queue_group: str = "garments"
    warm_on_start: bool = True  # load the catalogue into memory (re-encoding old versions) at start
