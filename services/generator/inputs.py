"""Conditioning message → ``FrameInput`` (decoding the JPEG, the masks, packed landmarks).
Pure: no bus, no asyncio.

One image decode per frame: the JPEG. Masks of a version 2 message are run lengths
(``shared.masks``), expanded rather than decoded; a version 1 message's PNG masks still read.
"""

from __future__ import annotations

import cv2
import numpy as np

from runtime.media import decode_jpeg
from services.generator.rendering import FrameInput
from shared.masks import MaskError, decode_rle
from shared.schemas import Conditioning, SchemaError, unpack_array


def _png_mask(png: bytes | None, shape: tuple[int, int], name: str) -> np.ndarray | None:
    if not png:
        return None
    m = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise SchemaError(f"conditioning.{name} is not a PNG")
    if m.shape != shape:
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return m


def _rle_mask(rle: bytes | None, shape: tuple[int, int], name: str) -> np.ndarray | None:
    """Run lengths at the decoded frame's size (never the message's own width and height: the
    frame bounds what a message can make this process allocate)."""
    if rle is None:
        return None
    try:
        return decode_rle(rle, shape[1], shape[0])
    except MaskError as exc:
        raise SchemaError(f"conditioning.{name}: {exc}") from None


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
    person, garment = masks(cond, shape)
    return FrameInput(
        seq=cond.seq, frame_bgr=frame, landmarks=landmarks, person_mask=person, garment_mask=garment
    )


def masks(cond: Conditioning, shape: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The person and garment masks of a message, uint8 0/255 at ``shape`` (the frame's (h, w)),
    whichever version it is."""
    out = []
    for name in ("person_mask", "garment_mask"):
        rle = _rle_mask(getattr(cond, f"{name}_rle"), shape, f"{name}_rle")
        out.append(rle if rle is not None else _png_mask(getattr(cond, f"{name}_png"), shape, f"{name}_png"))
    return out[0], out[1]
