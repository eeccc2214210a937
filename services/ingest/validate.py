"""Frame validation and normalisation for ingest. Pure: no bus, no asyncio.

A frame is accepted only if its bytes decode to an image of sane size and aspect; it is then
resized to fit the session's resolution (aspect kept, never upscaled past the box) and re-encoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from runtime.media import UndecodableImage, decode_image, encode_jpeg, fit_size, jpeg_dimensions
from shared.errors import CodedError


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


def _decode(payload: bytes, limits: Limits, reduced: bool = False) -> np.ndarray:
    """Decode of a payload that already passed ``_check_payload``: ``bad_frame`` when it is no
    image, or a JPEG whose coded data does not match its header (``runtime.media.decode_image``)."""
    try:
        img = decode_image(payload, reduced=reduced)
    except UndecodableImage as exc:
        raise CodedError("bad_frame", str(exc)) from None
    if not reduced:
        _check_size(img.shape[1], img.shape[0], limits)
    return img


def _check_declared(dims: tuple[int, int], declared: tuple[int, int] | None) -> None:
    """The JPEG's own size against the size its frame headers declare (0x0: not declared)."""
    if declared is not None and all(declared) and declared != dims:
        raise CodedError(
            "bad_frame",
            f"JPEG header says {dims[0]}x{dims[1]}, frame headers say {declared[0]}x{declared[1]}",
        )


def session_box(width: int, height: int, cap: tuple[int, int], min_side: int) -> tuple[int, int]:
    """The box a session's frames are fitted into when its ``start`` asks for ``width`` x
    ``height``: each side capped at ``cap`` (frames are scaled up to the box, and every later
    stage's work grows with it: a 4096x4096 start turned small frames into 13 MP ones that took
    the generator a minute each) and at least ``min_side``."""
    return max(min_side, min(width, cap[0])), max(min_side, min(height, cap[1]))


def normalise(img: np.ndarray, box_w: int, box_h: int, quality: int) -> Normalised:
    h, w = img.shape[:2]
    tw, th = fit_size(w, h, box_w, box_h)
    if (tw, th) != (w, h):
        interp = cv2.INTER_AREA if tw < w else cv2.INTER_LINEAR
        img = cv2.resize(img, (tw, th), interpolation=interp)
    return Normalised(encode_jpeg(img, quality), tw, th)


def process_frame(
    payload: bytes,
    limits: Limits,
    box_w: int,
    box_h: int,
    quality: int,
    declared: tuple[int, int] | None = None,
) -> Normalised:
    """Validate and normalise one camera frame (runs in a worker thread). ``declared``: the size
    its frame headers give (``Chameleon-Width/Height``; 0x0 or None: not declared).

    A complete JPEG that already fits the session's box goes on byte for byte: re-encoding it
    would cost time and a generation of JPEG loss. It is checked from its headers (structure,
    size, the size the frame headers declare) and then by an eighth-size decode that reads every
    coded bit (about 1 ms at 640x480), so a header that lies about the size and garbage after a
    valid header are ``bad_frame`` here, at the first stage, not frames that preprocess decodes
    into a grey picture. Anything else is decoded, checked and resized."""
    _check_payload(payload, limits)
    dims = jpeg_dimensions(payload)
    if dims is not None:
        _check_size(*dims, limits)
        _check_declared(dims, declared)
        if fit_size(*dims, box_w, box_h) == dims:
            _decode(payload, limits, reduced=True)
            return Normalised(payload, *dims)
    img = _decode(payload, limits)
    if dims is None:
        _check_declared((img.shape[1], img.shape[0]), declared)
    return normalise(img, box_w, box_h, quality)
