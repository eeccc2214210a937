"""Conditioning message → ``FrameInput`` (decoding JPEG, PNG masks, packed landmarks).
Pure: no bus, no asyncio."""

from __future__ import annotations

import cv2
import numpy as np

from runtime.media import decode_jpeg
from services.generator.rendering import FrameInput
from shared.schemas import Conditioning, SchemaError, unpack_array


def _mask(png: bytes | None, shape: tuple[int, int], name: str) -> np.ndarray | None:
    if not png:
        return None
    m = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise SchemaError(f"conditioning.{name} is not a PNG")
    if m.shape != shape:
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return m


def frame_input(cond: Conditioning) -> FrameInput:
    """Decode one conditioning message; raises ``SchemaError`` on anything malformed."""
    frame = decode_jpeg(cond.frame_jpeg)
    if frame is None:
        raise SchemaError("conditioning.frame_jpeg does not decode")
    shape = frame.shape[:2]
    landmarks = None
    if cond.person_found and cond.landmarks is not None:
        landmarks = unpack_array(cond.landmarks, "conditioning.landmarks").astype(np.float32)
        if landmarks.shape != (33, 4):
            raise SchemaError(f"conditioning.landmarks has shape {landmarks.shape}, expected (33, 4)")
    return FrameInput(
        seq=cond.seq,
        frame_bgr=frame,
        landmarks=landmarks,
        person_mask=_mask(cond.person_mask_png, shape, "person_mask_png"),
        garment_mask=_mask(cond.garment_mask_png, shape, "garment_mask_png"),
    )
