"""Garment image -> everything a generator needs. Pure: numpy + OpenCV, no bus, no asyncio.

Pipeline (``encode_garment``): check the bytes (format, byte and pixel limits, before decoding) ->
decode -> garment mask (the alpha channel when it has one, else background removal that copes
with shadows, textured tables and thin things in view: ``segment.py``; a photo of a person goes
through ``person.py`` first, which cuts the garment out and lays it flat) -> refuse what cannot
be used (no garment, several, cut off at the edge, too small) -> deskew (the tilt that makes
the outline most symmetric) -> crop and fit on a square canonical canvas (RGBA; alpha is the
mask) -> keypoints from the mask geometry -> category and sleeve length from the shape
(``shape.py``) -> dominant colours -> a small thumbnail of the photo -> the student tensor from
the pluggable hook named by the encoder version.

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
from services.garments.segment import check_usable, deskew_angle, flatlay_mask, rotation_about
from services.garments.shape import Inferred, infer
from shared.garment_client import GarmentError

PIPELINE_VERSION = "g2"  # bump when mask, canvas, keypoint, shape or colour logic changes
DEFAULT_CANVAS = 256
DEFAULT_STUDENT_ENCODER = "tex64-v1"
WORK_MAX_SIDE = 1024  # masks are found on an image no larger than this
CANVAS_MARGIN = 8
DESKEW_MIN_DEG = 1.0  # a smaller tilt is left alone (rotating resamples the texture)
THUMBNAIL_SIDE = 128
THUMBNAIL_QUALITY = 80


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
    """Garment mask (uint8, 255 = garment) and where it came from ("alpha"/"background"); raises
    ``GarmentError`` when no usable garment is there (see ``segment.check_usable``)."""
    if img.ndim == 3 and img.shape[2] == 4:
        alpha = img[..., 3]
        if int(alpha.min()) < 250:  # a real cut-out; an opaque alpha carries no information
            mask, second = _largest_blob(alpha > 127)
            check_usable(mask, second, edge_touch=0.0)  # a cut-out may be cropped to its edges
            return np.where(mask, alpha, 0).astype(np.uint8), "alpha"
        img = img[..., :3]
    found = flatlay_mask(img)
    check_usable(found.mask, found.second_blob, found.edge_touch)
    return (found.mask * 255).astype(np.uint8), "background"


def background_mask(bgr: np.ndarray) -> np.ndarray:
    """The garment mask (uint8 0/255) of a flat-lay photo, unchecked (``segment.flatlay_mask``)."""
    return (flatlay_mask(bgr).mask * 255).astype(np.uint8)


def _largest_blob(fg: np.ndarray) -> tuple[np.ndarray, float]:
    """The largest blob with its holes filled, and the second largest's area over its own."""
    fg = fg.astype(np.uint8)
    k = max(3, (min(fg.shape) // 200) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.zeros(fg.shape, bool), 0.0
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(-areas)
    second = float(areas[order[1]]) / float(areas[order[0]]) if n > 2 else 0.0
    blob = (labels == 1 + int(order[0])).astype(np.uint8)
    # fill holes: everything not reachable from outside the blob's bounding frame is garment
    padded = np.pad(blob, 1)
    outside = padded.copy()
    cv2.floodFill(outside, None, (0, 0), 2)
    return outside[1:-1, 1:-1] != 2, second


# -- canvas -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CanvasFit:
    """Where the garment went: its box in the source image, the box of the (deskewed) garment on
    the canvas, and ``matrix``, the exact 2x3 affine map from source pixels to canvas pixels."""

    source_bbox: tuple[int, int, int, int]  # x, y, w, h in the source image
    canvas_rect: tuple[int, int, int, int]  # where the garment's box lands on the canvas
    matrix: tuple[float, ...] = ()  # 2x3 row-major; empty: the box-to-rect scaling

    def affine(self) -> np.ndarray:
        if self.matrix:
            return np.array(self.matrix, np.float64).reshape(2, 3)
        sx, sy, sw, sh = self.source_bbox
        cx, cy, cw, ch = self.canvas_rect
        return np.array([[cw / sw, 0, cx - sx * cw / sw], [0, ch / sh, cy - sy * ch / sh]])

    def to_canvas(self, x: float, y: float) -> tuple[float, float]:
        m = self.affine()
        return float(m[0, 0] * x + m[0, 1] * y + m[0, 2]), float(m[1, 0] * x + m[1, 1] * y + m[1, 2])


def fit_canvas(bbox: tuple[int, int, int, int], canvas: int, margin: int = CANVAS_MARGIN) -> CanvasFit:
    _, _, w, h = bbox
    scale = (canvas - 2 * margin) / max(w, h)
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    return CanvasFit(bbox, ((canvas - cw) // 2, (canvas - ch) // 2, cw, ch))


def crop_to_canvas(bgr: np.ndarray, alpha: np.ndarray, fit: CanvasFit, canvas: int) -> np.ndarray:
    """The garment cropped (``fit.source_bbox`` of this image) and scaled onto a transparent
    square canvas (BGRA, colour zero where alpha is zero so the PNG stays small)."""
    x, y, w, h = fit.source_bbox
    cx, cy, cw, ch = fit.canvas_rect
    crop = np.dstack([bgr[y : y + h, x : x + w], alpha[y : y + h, x : x + w]])
    interp = cv2.INTER_AREA if cw < w else cv2.INTER_LINEAR
    small = cv2.resize(crop, (cw, ch), interpolation=interp)
    small[small[..., 3] == 0, :3] = 0
    out = np.zeros((canvas, canvas, 4), np.uint8)
    out[cy : cy + ch, cx : cx + cw] = small
    return out


def to_canvas(bgr: np.ndarray, alpha: np.ndarray, fit: CanvasFit, canvas: int) -> np.ndarray:
    """Any image of the source's size mapped onto the canvas the way the garment was (BGRA):
    how a test puts ground truth next to the encoding."""
    m = fit.affine()
    src = np.dstack([bgr, alpha])
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.7:  # pre-shrink so a linear warp does not alias
        f = min(1.0, scale * 1.5)
        src = cv2.resize(src, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        m = m @ np.array([[1 / f, 0, 0], [0, 1 / f, 0], [0, 0, 1]])
    out = cv2.warpAffine(src, m, (canvas, canvas), flags=cv2.INTER_LINEAR)
    out[out[..., 3] == 0, :3] = 0
    return out


def thumbnail(bgr: np.ndarray, bbox: tuple[int, int, int, int], side: int = THUMBNAIL_SIDE) -> bytes:
    """The photo cropped to the garment's box (plus a margin), at most ``side`` px, as JPEG."""
    x, y, w, h = bbox
    m = round(0.06 * max(w, h))
    H, W = bgr.shape[:2]
    x0, y0, x1, y1 = max(0, x - m), max(0, y - m), min(W, x + w + m), min(H, y + h + m)
    crop = bgr[y0:y1, x0:x1, :3]
    f = side / max(crop.shape[:2])
    if f < 1:
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f))),
                          interpolation=cv2.INTER_AREA)  # fmt: skip
    for quality in (THUMBNAIL_QUALITY, 60, 40):
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(crop), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok and len(buf) <= 20_000:
            return buf.tobytes()
    return b""


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
    inferred: Inferred | None = None
    thumbnail: bytes = b""
    rotation_deg: float = 0.0
    source_kind: str = "flatlay"
    extras: dict = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        return self.texture[..., 3]


def encode_image(
    img: np.ndarray,
    student: str = DEFAULT_STUDENT_ENCODER,
    canvas: int = DEFAULT_CANVAS,
    source: str = "flatlay",
) -> EncodedGarment:
    """Encode a decoded image (BGR or BGRA uint8): a garment on its own, or (``source="person"``)
    a person wearing it."""
    version = encoder_version(student, canvas)
    h, w = img.shape[:2]
    scale = min(1.0, WORK_MAX_SIDE / max(h, w))
    work = (
        cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        if scale < 1
        else img
    )
    extras: dict = {}
    person_sleeve = None
    if source == "person":
        from services.garments.person import garment_from_person  # MediaPipe: only when asked

        cut = garment_from_person(work[..., :3])
        thumb = thumbnail(work, cut.photo_bbox)
        flat, alpha, mask_source = cut.bgra[..., :3], cut.bgra[..., 3], "person"
        to_flat = np.vstack([cut.photo_to_flat, [0, 0, 1]])  # work -> flat (where it is defined)
        extras["person"] = cut.report
        person_sleeve = (cut.report["sleeve_length"], cut.report["sleeve_confidence"])
    else:
        alpha, mask_source = garment_alpha(work)
        thumb = thumbnail(work, cv2.boundingRect((alpha > 127).astype(np.uint8)))
        flat, to_flat = work[..., :3], np.eye(3)
    source_bbox = tuple(round(v / scale) for v in cv2.boundingRect((alpha > 127).astype(np.uint8)))

    angle = 0.0
    if source != "person":  # the cut-out from a person is laid out upright already
        angle, _ = deskew_angle(alpha > 127)
        if abs(angle) < DESKEW_MIN_DEG:
            angle = 0.0
    if angle:
        rot, size = rotation_about(
            (flat.shape[1] / 2, flat.shape[0] / 2), angle, (flat.shape[1], flat.shape[0])
        )
        flat = cv2.warpAffine(flat, rot, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(alpha, rot, size, flags=cv2.INTER_LINEAR)
        alpha = np.where(alpha > 127, 255, 0).astype(np.uint8)
        to_flat = np.vstack([rot, [0, 0, 1]]) @ to_flat
    bbox = cv2.boundingRect((alpha > 127).astype(np.uint8))
    fit = fit_canvas(bbox, canvas)
    texture = crop_to_canvas(flat, alpha, fit, canvas)
    keypoints = find_keypoints(texture[..., 3] > 127)
    box_to_canvas = np.vstack([fit.affine(), [0, 0, 1]])
    work_scale = np.diag([scale, scale, 1.0])
    matrix = (box_to_canvas @ to_flat @ work_scale)[:2]
    source_fit = CanvasFit(source_bbox, fit.canvas_rect, tuple(float(v) for v in matrix.ravel()))  # type: ignore[arg-type]
    return EncodedGarment(
        texture=texture,
        keypoints=keypoints,
        dominant_colours=dominant_colours(texture),
        student=encode_for_student(texture, student),
        encoder_version=version,
        fit=source_fit,
        source_size=(w, h),
        mask_source=mask_source,
        coverage=float(np.count_nonzero(texture[..., 3] > 127)) / (canvas * canvas),
        inferred=infer(keypoints, texture[..., 3] > 127, person_sleeve),
        thumbnail=thumb,
        rotation_deg=round(angle, 3),
        source_kind=source,
        extras=extras,
    )


def encode_garment(
    data: bytes,
    limits: ImageLimits | None = None,
    student: str = DEFAULT_STUDENT_ENCODER,
    canvas: int = DEFAULT_CANVAS,
    source: str = "flatlay",
) -> EncodedGarment:
    """Encode image bytes (PNG/JPEG). Raises ``GarmentError`` with a code for bad input."""
    return encode_image(decode_image(data, limits or ImageLimits()), student, canvas, source)
