"""Frame validation and normalisation for ingest. Pure: no bus, no asyncio.

A frame is accepted only if its bytes decode to an image of sane size and aspect; it is then
resized to fit the session's resolution (aspect kept, never upscaled past the box) and re-encoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from shared.errors import CodedError
from shared.media import decode_jpeg, encode_jpeg, fit_size, jpeg_dimensions


@dataclass(frozen=True)
class Limits:
    max_frame_bytes: int
    max_input_pixels: int
    min_input_side: int
    max_aspect: float


@dataclass(frozen=True)
class Normalised:
    jpeg: bytes
    width: int
    height: int


def _check_payload(payload: bytes, limits: Limits) -> None:
    if not payload:
        raise CodedError("empty_frame", "frame payload is empty")
    if len(payload) > limits.max_frame_bytes:
        raise CodedError("frame_too_large", f"frame of {len(payload)} bytes exceeds {limits.max_frame_bytes}")


def _check_size(w: int, h: int, limits: Limits) -> None:
    if w * h > limits.max_input_pixels:
        raise CodedError("frame_too_large", f"{w}x{h} exceeds {limits.max_input_pixels} pixels")
    if min(w, h) < limits.min_input_side:
        raise CodedError("frame_too_small", f"{w}x{h} is below {limits.min_input_side} px")
    if max(w, h) / min(w, h) > limits.max_aspect:
        raise CodedError("bad_aspect", f"{w}x{h} is more extreme than {limits.max_aspect}:1")


def _decode(payload: bytes, limits: Limits) -> np.ndarray:
    """Full decode of a payload that already passed ``_check_payload``."""
    img = decode_jpeg(payload)
    if img is None:
        raise CodedError("bad_frame", "payload is not a decodable JPEG/PNG image")
    _check_size(img.shape[1], img.shape[0], limits)
    return img


def normalise(img: np.ndarray, box_w: int, box_h: int, quality: int) -> Normalised:
    h, w = img.shape[:2]
    tw, th = fit_size(w, h, box_w, box_h)
    if (tw, th) != (w, h):
        interp = cv2.INTER_AREA if tw < w else cv2.INTER_LINEAR
        img = cv2.resize(img, (tw, th), interpolation=interp)
    return Normalised(encode_jpeg(img, quality), tw, th)


def process_frame(payload: bytes, limits: Limits, box_w: int, box_h: int, quality: int) -> Normalised:
    """Validate and normalise one camera frame (runs in a worker thread).

    A complete JPEG that already fits the session's box goes on byte for byte, checked from its
    headers alone: decoding it (3-5 ms) or re-encoding it (time and a generation of JPEG loss)
    would buy nothing, and preprocess decodes it anyway (an undecodable scan gets its
    ``bad_frame`` event there). Anything else is decoded, checked and resized."""
    _check_payload(payload, limits)
    dims = jpeg_dimensions(payload)
    if dims is not None:
        _check_size(*dims, limits)
        if fit_size(*dims, box_w, box_h) == dims:
            return Normalised(payload, *dims)
    img = _decode(payload, limits)
    return normalise(img, box_w, box_h, quality)
