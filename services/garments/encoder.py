"""Garment image -> everything a generator needs. Pure: numpy + OpenCV, no bus, no asyncio.

Pipeline (``encode_garment``): check the bytes (format, byte and pixel limits, before decoding) ->
decode -> garment mask (the alpha channel when it has one, else background removal by colour
statistics of the image border) -> crop and fit on a square canonical canvas (RGBA; alpha is the
mask) -> keypoints from the mask geometry -> dominant colours -> the student tensor from the
pluggable hook named by the encoder version.

Everything that changes the output is part of ``encoder_version``; the service stores encodings
under a hash of (image bytes, encoder version), so bumping it re-encodes the catalogue.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from services.garments.keypoints import find_keypoints
from shared.garment_client import GarmentError

PIPELINE_VERSION = "g1"  # bump when mask, canvas, keypoint or colour logic changes
DEFAULT_CANVAS = 256
DEFAULT_STUDENT_ENCODER = "tex64-v1"
WORK_MAX_SIDE = 1024  # masks are found on an image no larger than this
CANVAS_MARGIN = 8


# -- the student hook ---------------------------------------------------------------------------
StudentEncoder = Callable[[np.ndarray], np.ndarray]
_STUDENT_ENCODERS: dict[str, StudentEncoder] = {}


def register_student_encoder(name: str) -> Callable[[StudentEncoder], StudentEncoder]:
    """Register ``fn(texture_bgra) -> small float16 array`` under a model-version name.

    The generator's engine registers its own encoder here when it needs a different tensor;
    the service picks one with ``CHAMELEON_STUDENT_ENCODER`` and the name becomes part of the
    encoder version, so switching it re-encodes the catalogue.
    """

    def deco(fn: StudentEncoder) -> StudentEncoder:
        if name in _STUDENT_ENCODERS and _STUDENT_ENCODERS[name] is not fn:
            raise ValueError(f"student encoder {name!r} is already registered")
        _STUDENT_ENCODERS[name] = fn
        return fn

    return deco


def student_encoders() -> list[str]:
    return sorted(_STUDENT_ENCODERS)


def encode_for_student(texture: np.ndarray, version: str = DEFAULT_STUDENT_ENCODER) -> np.ndarray:
    """The tensor the student model reads for ``texture`` (canvas BGRA uint8)."""
    try:
        fn = _STUDENT_ENCODERS[version]
    except KeyError:
        raise ValueError(f"unknown student encoder {version!r}; known: {student_encoders()}") from None
    out = np.ascontiguousarray(fn(texture))
    if out.dtype != np.float16:
        raise TypeError(f"student encoder {version!r} must return float16, got {out.dtype}")
    return out


@register_student_encoder("tex64-v1")
def _tex64_v1(texture: np.ndarray) -> np.ndarray:
    """(4, 64, 64) float16, channels-first: RGB in [-1, 1] premultiplied by alpha, then alpha in [0, 1]."""
    small = cv2.resize(texture, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    alpha = small[..., 3:4]
    rgb = (small[..., 2::-1] * 2.0 - 1.0) * alpha
    return np.concatenate([rgb, alpha], axis=2).transpose(2, 0, 1).astype(np.float16)


def encoder_version(student: str = DEFAULT_STUDENT_ENCODER, canvas: int = DEFAULT_CANVAS) -> str:
    """E.g. ``g1-c256+tex64-v1``: pipeline, canvas size, student hook."""
    if student not in _STUDENT_ENCODERS:
        raise ValueError(f"unknown student encoder {student!r}; known: {student_encoders()}")
    return f"{PIPELINE_VERSION}-c{canvas}+{student}"


# -- input checks -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 3 * 1024 * 1024
    max_pixels: int = 24_000_000


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "png" or "jpeg"
    width: int
    height: int


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def inspect_image(data: bytes, limits: ImageLimits) -> ImageInfo:
    """Format and size from the header alone, so a decompression bomb is refused undecoded."""
    if not data:
        raise GarmentError("empty_image", "the image is empty")
    if len(data) > limits.max_bytes:
        raise GarmentError("image_too_large", f"{len(data)} bytes exceeds the limit of {limits.max_bytes}")
    if data.startswith(_PNG_MAGIC):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise GarmentError("not_an_image", "truncated PNG header")
        width, height = struct.unpack(">II", data[16:24])
        info = ImageInfo("png", width, height)
    elif data.startswith(b"\xff\xd8"):
        info = _jpeg_info(data)
    else:
        raise GarmentError("not_an_image", "not a PNG or JPEG image")
    if info.width <= 0 or info.height <= 0:
        raise GarmentError("not_an_image", f"bad image size {info.width}x{info.height}")
    if info.width * info.height > limits.max_pixels:
        raise GarmentError(
            "image_too_large",
            f"{info.width}x{info.height} exceeds the limit of {limits.max_pixels} pixels",
        )
    return info


def _jpeg_info(data: bytes) -> ImageInfo:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise GarmentError("not_an_image", "corrupt JPEG marker stream")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if i + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return ImageInfo("jpeg", width, height)
        i += 2 + length
    raise GarmentError("not_an_image", "JPEG without a frame header")


def decode_image(data: bytes, limits: ImageLimits) -> np.ndarray:
    """BGR or BGRA uint8; raises ``GarmentError`` for anything that is not a usable image."""
    inspect_image(data, limits)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise GarmentError("not_an_image", "the image does not decode")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise GarmentError("not_an_image", f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 2:
        img = cv2.cvtColor(img[..., 0], cv2.COLOR_GRAY2BGR)
    return img


# -- mask ---------------------------------------------------------------------------------------
def garment_alpha(img: np.ndarray) -> tuple[np.ndarray, str]:
    """Soft garment mask (uint8, 255 = garment) and where it came from ("alpha"/"background")."""
    if img.ndim == 3 and img.shape[2] == 4:
        alpha = img[..., 3]
        if int(alpha.min()) < 250:  # a real cut-out; an opaque alpha carries no information
            mask = _clean_mask(alpha > 127)
            return np.where(mask, alpha, 0).astype(np.uint8), "alpha"
        img = img[..., :3]
    return background_mask(img), "background"


def background_mask(bgr: np.ndarray) -> np.ndarray:
    """Garment = pixels far (in Lab) from the background colour seen along the image border.

    The threshold adapts to the border's own noise (JPEG, sensor, shading), the result keeps the
    largest blob and fills its holes (prints or dots the colour of the background stay garment).
    """
    h, w = bgr.shape[:2]
    lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB).astype(np.float32)
    b = max(2, int(0.02 * min(h, w)))
    border = np.concatenate(
        [
            lab[:b].reshape(-1, 3),
            lab[-b:].reshape(-1, 3),
            lab[:, :b].reshape(-1, 3),
            lab[:, -b:].reshape(-1, 3),
        ]
    )
    bg = np.median(border, axis=0)
    border_dist = np.linalg.norm(border - bg, axis=1)
    threshold = max(10.0, 2.0 * float(np.percentile(border_dist, 99)))
    dist = np.linalg.norm(lab - bg, axis=2)
    return (_clean_mask(dist > threshold) * 255).astype(np.uint8)


def _clean_mask(fg: np.ndarray) -> np.ndarray:
    fg = fg.astype(np.uint8)
    k = max(3, (min(fg.shape) // 200) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.zeros(fg.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    blob = (labels == largest).astype(np.uint8)
    # fill holes: everything not reachable from outside the blob's bounding frame is garment
    padded = np.pad(blob, 1)
    outside = padded.copy()
    cv2.floodFill(outside, None, (0, 0), 2)
    return outside[1:-1, 1:-1] != 2


# -- canvas -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CanvasFit:
    source_bbox: tuple[int, int, int, int]  # x, y, w, h in the source image
    canvas_rect: tuple[int, int, int, int]  # where that box lands on the canvas

    def to_canvas(self, x: float, y: float) -> tuple[float, float]:
        sx, sy, sw, sh = self.source_bbox
        cx, cy, cw, ch = self.canvas_rect
        return cx + (x - sx) * cw / sw, cy + (y - sy) * ch / sh


def fit_canvas(bbox: tuple[int, int, int, int], canvas: int, margin: int = CANVAS_MARGIN) -> CanvasFit:
    _, _, w, h = bbox
    scale = (canvas - 2 * margin) / max(w, h)
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    return CanvasFit(bbox, ((canvas - cw) // 2, (canvas - ch) // 2, cw, ch))


def to_canvas(bgr: np.ndarray, alpha: np.ndarray, fit: CanvasFit, canvas: int) -> np.ndarray:
    """The garment cropped and scaled onto a transparent square canvas (BGRA, colour zero where
    alpha is zero so the PNG stays small)."""
    x, y, w, h = fit.source_bbox
    cx, cy, cw, ch = fit.canvas_rect
    crop = np.dstack([bgr[y : y + h, x : x + w], alpha[y : y + h, x : x + w]])
    interp = cv2.INTER_AREA if cw < w else cv2.INTER_LINEAR
    small = cv2.resize(crop, (cw, ch), interpolation=interp)
    small[small[..., 3] == 0, :3] = 0
    out = np.zeros((canvas, canvas, 4), np.uint8)
    out[cy : cy + ch, cx : cx + cw] = small
    return out


# -- colours ------------------------------------------------------------------------------------
def dominant_colours(texture: np.ndarray, k: int = 5, max_pixels: int = 4096) -> list[dict]:
    """Up to ``k`` colours covering the garment, largest first: ``{"bgr": [b, g, r], "fraction"}``.

    Deterministic k-means in Lab (farthest-point initialisation, no randomness); clusters closer
    than a just-noticeable difference are merged and slivers under 3 % dropped.
    """
    pixels = texture[texture[..., 3] > 200][:, :3]
    if len(pixels) == 0:
        return []
    step = max(1, len(pixels) // max_pixels)
    bgr = pixels[::step].astype(np.float32)
    lab = (
        cv2.cvtColor(bgr.reshape(-1, 1, 3).astype(np.uint8), cv2.COLOR_BGR2LAB)
        .reshape(-1, 3)
        .astype(np.float32)
    )
    centres = [np.median(lab, axis=0)]
    for _ in range(1, k):
        d = np.min([np.linalg.norm(lab - c, axis=1) for c in centres], axis=0)
        if d.max() < 8:
            break
        centres.append(lab[int(np.argmax(d))])
    c = np.array(centres)
    for _ in range(12):
        labels = np.argmin(np.linalg.norm(lab[:, None] - c[None], axis=2), axis=1)
        c = np.array([lab[labels == j].mean(axis=0) if np.any(labels == j) else c[j] for j in range(len(c))])
    groups: list[list[int]] = []
    for j in range(len(c)):  # merge near-identical clusters
        for g in groups:
            if np.linalg.norm(c[g[0]] - c[j]) < 10:
                g.append(j)
                break
        else:
            groups.append([j])
    out = []
    for g in groups:
        members = np.isin(labels, g)
        fraction = float(members.mean())
        if fraction >= 0.03:
            mean = bgr[members].mean(axis=0)
            out.append({"bgr": [round(v) for v in mean], "fraction": round(fraction, 4)})
    out.sort(key=lambda d: -d["fraction"])
    return out


# -- the whole pipeline -------------------------------------------------------------------------
@dataclass
class EncodedGarment:
    texture: np.ndarray  # (canvas, canvas, 4) uint8 BGRA, alpha = garment mask
    keypoints: dict[str, tuple[float, float, float]]  # name -> (x, y, confidence), canvas pixels
    dominant_colours: list[dict]
    student: np.ndarray  # float16, shape set by the student hook
    encoder_version: str
    fit: CanvasFit
    source_size: tuple[int, int]  # w, h
    mask_source: str
    coverage: float
    extras: dict = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        return self.texture[..., 3]


def encode_image(
    img: np.ndarray,
    student: str = DEFAULT_STUDENT_ENCODER,
    canvas: int = DEFAULT_CANVAS,
) -> EncodedGarment:
    """Encode a decoded image (BGR or BGRA uint8)."""
    version = encoder_version(student, canvas)
    h, w = img.shape[:2]
    scale = min(1.0, WORK_MAX_SIDE / max(h, w))
    work = (
        cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        if scale < 1
        else img
    )
    alpha, source = garment_alpha(work)
    coverage = float(np.count_nonzero(alpha > 127)) / alpha.size
    if coverage < 0.01:
        raise GarmentError("no_garment", "no garment found: nothing stands out from the background")
    if coverage > 0.97:
        raise GarmentError(
            "no_garment", "no garment found: no background around it (use a flat-lay or a PNG cut-out)"
        )
    bbox = cv2.boundingRect((alpha > 127).astype(np.uint8))
    if min(bbox[2], bbox[3]) < 16:
        raise GarmentError("no_garment", f"the garment found is only {bbox[2]}x{bbox[3]} pixels")
    fit = fit_canvas(bbox, canvas)
    texture = to_canvas(work[..., :3], alpha, fit, canvas)
    keypoints = find_keypoints(texture[..., 3] > 127)
    inv = 1.0 / scale
    source_fit = CanvasFit(
        tuple(round(v * inv) for v in bbox),  # type: ignore[arg-type]
        fit.canvas_rect,
    )
    return EncodedGarment(
        texture=texture,
        keypoints=keypoints,
        dominant_colours=dominant_colours(texture),
        student=encode_for_student(texture, student),
        encoder_version=version,
        fit=source_fit,
        source_size=(w, h),
        mask_source=source,
        coverage=float(np.count_nonzero(texture[..., 3] > 127)) / (canvas * canvas),
    )


def encode_garment(
    data: bytes,
    limits: ImageLimits | None = None,
    student: str = DEFAULT_STUDENT_ENCODER,
    canvas: int = DEFAULT_CANVAS,
) -> EncodedGarment:
    """Encode image bytes (PNG/JPEG). Raises ``GarmentError`` with a code for bad input."""
    return encode_image(decode_image(data, limits or ImageLimits()), student, canvas)
