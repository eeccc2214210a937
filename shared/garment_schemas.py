"""Garment service messages (msgpack), following ``shared.schemas``: frozen, typed, validated.

Request/reply on ``Subjects.garments(verb)`` for ``encode``, ``get`` and ``list``. Every reply
has ``ok``; when it is false, ``error_code`` (one of ``GARMENT_ERROR_CODES``) says what went wrong
and ``error`` says it for humans. Arrays travel packed (``pack_array``), the texture as an RGBA
PNG, so a ``get`` reply stays well below 1 MB.

Conventions: colours are BGR (OpenCV order, like every frame in the system); keypoints are
``name -> [x, y, confidence]`` in canonical-canvas pixels; "left"/"right" are image sides (smaller
x is left), not the wearer's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from shared.schemas import Message, SchemaError, unpack_array

GARMENT_CATEGORIES = ("top", "tshirt", "shirt", "dress", "jacket")
SLEEVE_LENGTHS = ("none", "short", "long")
# what the image shows: a garment on its own (a flat-lay, a ghost-mannequin shot, a PNG cut-out),
# or a person wearing it (the service cuts the garment out)
GARMENT_SOURCES = ("flatlay", "person")
MAX_THUMBNAIL_BYTES = 24 * 1024

GARMENT_ERROR_CODES = (
    "bad_request",  # the request itself is malformed (not msgpack, wrong fields)
    "bad_id",  # a garment id that is not 1-64 chars of [A-Za-z0-9_-]
    "bad_category",
    "empty_image",
    "not_an_image",  # neither PNG nor JPEG, or it does not decode
    "image_too_large",  # over the byte or pixel limit
    "no_garment",  # decoded, but no garment could be separated from the background
    "several_garments",  # two or more garments (or people) in one photo
    "garment_cut_off",  # the garment (or the person's torso) runs off the edge of the photo
    "garment_too_small",  # found, but too few pixels to make a usable garment
    "no_person",  # --from-person: nobody found in the photo
    "unknown_garment",  # get of an id that is not in the catalogue
    "unavailable",  # JetStream (or the service) is not reachable right now
    "internal",
)

KEYPOINT_NAMES = (
    "collar",  # centre of the neckline (its lowest point)
    "neck_left",
    "neck_right",  # where the neckline meets the shoulder line
    "shoulder_left",
    "shoulder_right",  # the shoulder line right above the armpit
    "armpit_left",
    "armpit_right",
    "sleeve_left",
    "sleeve_right",  # middle of the cuff
    "hem_left",
    "hem_right",  # bottom corners of the body
)

_GARMENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def valid_garment_id(garment_id: str) -> bool:
    """Usable as a KV key token and a CLI argument: 1-64 chars of [A-Za-z0-9_-]."""
    return isinstance(garment_id, str) and bool(_GARMENT_ID_RE.match(garment_id))


def _check_error(msg_type: str, ok: bool, code: str) -> None:
    if ok and code:
        raise SchemaError(f"{msg_type}: ok reply must not carry error_code {code!r}")
    if not ok and code not in GARMENT_ERROR_CODES:
        raise SchemaError(f"{msg_type}: error_code must be one of {GARMENT_ERROR_CODES}, not {code!r}")


def _check_keypoints(msg_type: str, keypoints: dict) -> None:
    for name, value in keypoints.items():
        if not isinstance(name, str):
            raise SchemaError(f"{msg_type}.keypoints: key {name!r} is not a string")
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise SchemaError(f"{msg_type}.keypoints[{name!r}]: expected [x, y, confidence]")


def _check_colours(msg_type: str, colours: list) -> None:
    for c in colours:
        if not isinstance(c, dict) or set(c) != {"bgr", "fraction"}:
            raise SchemaError(f"{msg_type}.dominant_colours: expected {{bgr, fraction}} maps")


def _check_inferred(msg_type: str, inferred: dict) -> None:
    if not inferred:
        return
    if (
        inferred.get("category") not in GARMENT_CATEGORIES
        or inferred.get("sleeve_length") not in SLEEVE_LENGTHS
    ):
        raise SchemaError(f"{msg_type}.inferred: needs a category and a sleeve_length from the known ones")
    for key in ("category_confidence", "sleeve_confidence"):
        v = inferred.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v <= 1.0:
            raise SchemaError(f"{msg_type}.inferred.{key}: a number in [0, 1]")


def _check_thumbnail(msg_type: str, data: bytes) -> None:
    if len(data) > MAX_THUMBNAIL_BYTES:
        raise SchemaError(f"{msg_type}.thumbnail_jpeg: {len(data)} bytes exceeds {MAX_THUMBNAIL_BYTES}")
    if data and not data.startswith(b"\xff\xd8"):
        raise SchemaError(f"{msg_type}.thumbnail_jpeg: not a JPEG")


# -- encode -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GarmentEncodeRequest(Message):
    """Add a garment image: a PNG cut-out, a flat-lay or ghost-mannequin photo (PNG/JPEG) on a
    plain or lightly textured background, or (``source="person"``) a photo of someone wearing it.

    ``garment_id`` empty: the service derives one from ``name`` or the image hash. ``category``
    empty: the service infers it from the garment's shape (the record says so, with a
    confidence). The image is checked by the service (so an empty or broken image, or one with
    no usable garment, gets its own error code).
    """

    TYPE: ClassVar[str] = "garment_encode"
    image: bytes
    garment_id: str = ""
    name: str = ""
    category: str = ""
    source: str = "flatlay"

    def validate(self) -> None:
        if self.garment_id and not valid_garment_id(self.garment_id):
            raise SchemaError(f"garment_encode.garment_id {self.garment_id!r}: 1-64 chars of [A-Za-z0-9_-]")
        if self.category and self.category not in GARMENT_CATEGORIES:
            raise SchemaError(f"garment_encode.category must be empty (infer) or one of {GARMENT_CATEGORIES}")
        if self.source not in GARMENT_SOURCES:
            raise SchemaError(f"garment_encode.source must be one of {GARMENT_SOURCES}")
        if len(self.name) > 200:
            raise SchemaError("garment_encode.name longer than 200 characters")


@dataclass(frozen=True)
class GarmentEncodeReply(Message):
    """``created``: this request ran the encoder (false: the content was already stored);
    ``updated``: the catalogue entry of ``garment_id`` changed (new image, version or metadata)."""

    TYPE: ClassVar[str] = "garment_encode_reply"
    ok: bool
    garment_id: str = ""
    content_key: str = ""
    encoder_version: str = ""
    created: bool = False
    updated: bool = False
    encode_ms: float = 0.0
    error_code: str = ""
    error: str = ""

    def validate(self) -> None:
        _check_error(self.TYPE, self.ok, self.error_code)


# -- get ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GarmentGetRequest(Message):
    TYPE: ClassVar[str] = "garment_get"
    garment_id: str


@dataclass(frozen=True)
class GarmentAssetData(Message):
    """One encoding of one image: what the Object Store keeps under ``asset/<content_key>``.

    ``texture_png``: RGBA PNG of ``canvas_size``² (colour BGR in OpenCV terms, alpha = garment
    mask); ``student``: packed array from the student hook named in ``encoder_version``;
    ``source_bbox``: the garment's box in the source image (x, y, w, h) and ``canvas_rect`` where
    the garment's box (after deskewing by ``rotation_deg``) landed on the canvas;
    ``source_to_canvas`` is the exact map (2x3 affine, row-major) from photo to canvas pixels.
    ``inferred``: what the shape says, ``{"category", "category_confidence", "sleeve_length",
    "sleeve_confidence"}``; ``thumbnail_jpeg``: the photo cropped to the garment, at most
    ``MAX_THUMBNAIL_BYTES`` (what a catalogue page shows). Fields after ``coverage`` are newer
    and optional, so older assets still decode.
    """

    TYPE: ClassVar[str] = "garment_asset"
    content_key: str
    encoder_version: str
    canvas_size: int
    texture_png: bytes
    keypoints: dict
    dominant_colours: list
    student: dict
    source_width: int
    source_height: int
    source_bbox: list
    canvas_rect: list
    mask_source: str  # "alpha", "background" or "person"
    coverage: float  # garment fraction of the canvas
    source_kind: str = "flatlay"
    rotation_deg: float = 0.0
    source_to_canvas: list = field(default_factory=list)
    inferred: dict = field(default_factory=dict)
    thumbnail_jpeg: bytes = b""

    def validate(self) -> None:
        _check_keypoints(self.TYPE, self.keypoints)
        _check_colours(self.TYPE, self.dominant_colours)
        unpack_array(self.student, f"{self.TYPE}.student")
        if len(self.source_bbox) != 4 or len(self.canvas_rect) != 4:
            raise SchemaError(f"{self.TYPE}: source_bbox and canvas_rect are [x, y, w, h]")
        if self.source_to_canvas and len(self.source_to_canvas) != 6:
            raise SchemaError(f"{self.TYPE}.source_to_canvas: a 2x3 affine as 6 numbers")
        _check_inferred(self.TYPE, self.inferred)
        _check_thumbnail(self.TYPE, self.thumbnail_jpeg)


@dataclass(frozen=True)
class GarmentGetReply(Message):
    """A catalogue entry with its current asset (``asset`` is ``GarmentAssetData.to_dict()``)."""

    TYPE: ClassVar[str] = "garment_get_reply"
    ok: bool
    garment_id: str = ""
    name: str = ""
    category: str = ""
    asset: dict | None = None
    error_code: str = ""
    error: str = ""

    def validate(self) -> None:
        _check_error(self.TYPE, self.ok, self.error_code)
        if self.ok and self.asset is None:
            raise SchemaError(f"{self.TYPE}: ok reply needs an asset")

    def asset_data(self) -> GarmentAssetData:
        return GarmentAssetData.from_dict(self.asset)


# -- list ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GarmentListRequest(Message):
    TYPE: ClassVar[str] = "garment_list"
    category: str = ""  # empty: every category


@dataclass(frozen=True)
class GarmentListReply(Message):
    """``items``: ``GarmentRecord.to_dict()`` of every entry, sorted by id."""

    TYPE: ClassVar[str] = "garment_list_reply"
    ok: bool
    items: list = field(default_factory=list)
    error_code: str = ""
    error: str = ""

    def validate(self) -> None:
        _check_error(self.TYPE, self.ok, self.error_code)


# -- the KV index -------------------------------------------------------------------------------
@dataclass(frozen=True)
class GarmentRecord(Message):
    """The catalogue index entry under KV key ``id.<garment_id>``.

    ``versions`` maps each encoder version that has encoded this image to its content key, so
    replicas running different encoder versions (a rolling upgrade) never overwrite each other.

    Newer, optional fields (older records decode without them): ``source_kind`` (what the image
    shows, ``GARMENT_SOURCES``), ``category_source`` (``given`` by the uploader or ``inferred``
    from the shape), ``sleeve_length`` (``SLEEVE_LENGTHS``, empty when unknown), ``inferred``
    (what the shape says, with confidences: see ``GarmentAssetData``) and ``thumbnail_jpeg``
    (the photo cropped to the garment: a catalogue page lists every garment with one request).
    """

    TYPE: ClassVar[str] = "garment_record"
    garment_id: str
    name: str
    category: str
    source_sha256: str
    source_bytes: int
    versions: dict
    created_ns: int
    updated_ns: int
    source_kind: str = "flatlay"
    category_source: str = "given"
    sleeve_length: str = ""
    inferred: dict = field(default_factory=dict)
    thumbnail_jpeg: bytes = b""

    def validate(self) -> None:
        if not valid_garment_id(self.garment_id):
            raise SchemaError(f"{self.TYPE}.garment_id {self.garment_id!r} is invalid")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.versions.items()):
            raise SchemaError(f"{self.TYPE}.versions must map version -> content key")
        if self.source_kind not in GARMENT_SOURCES:
            raise SchemaError(f"{self.TYPE}.source_kind must be one of {GARMENT_SOURCES}")
        if self.category_source not in ("given", "inferred"):
            raise SchemaError(f"{self.TYPE}.category_source must be 'given' or 'inferred'")
        if self.sleeve_length and self.sleeve_length not in SLEEVE_LENGTHS:
            raise SchemaError(f"{self.TYPE}.sleeve_length must be empty or one of {SLEEVE_LENGTHS}")
        _check_inferred(self.TYPE, self.inferred)
        _check_thumbnail(self.TYPE, self.thumbnail_jpeg)
