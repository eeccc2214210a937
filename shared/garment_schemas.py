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

GARMENT_ERROR_CODES = (
    "bad_request",  # the request itself is malformed (not msgpack, wrong fields)
    "bad_id",  # a garment id that is not 1-64 chars of [A-Za-z0-9_-]
    "bad_category",
    "empty_image",
    "not_an_image",  # neither PNG nor JPEG, or it does not decode
    "image_too_large",  # over the byte or pixel limit
    "no_garment",  # decoded, but no garment could be separated from the background
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


# -- encode -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GarmentEncodeRequest(Message):
    """Add a garment image (PNG with alpha, or a flat-lay PNG/JPEG on a plain background).

    ``garment_id`` empty: the service derives one from ``name`` or the image hash. The image is
    checked by the service (so an empty or broken image gets its own error code).
    """

    TYPE: ClassVar[str] = "garment_encode"
    image: bytes
    garment_id: str = ""
    name: str = ""
    category: str = "top"

    def validate(self) -> None:
        if self.garment_id and not valid_garment_id(self.garment_id):
            raise SchemaError(f"garment_encode.garment_id {self.garment_id!r}: 1-64 chars of [A-Za-z0-9_-]")
        if self.category not in GARMENT_CATEGORIES:
            raise SchemaError(f"garment_encode.category must be one of {GARMENT_CATEGORIES}")
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
    that box landed on the canvas, so canvas coordinates map back to the photo.
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
    mask_source: str  # "alpha" or "background"
    coverage: float  # garment fraction of the canvas

    def validate(self) -> None:
        _check_keypoints(self.TYPE, self.keypoints)
        _check_colours(self.TYPE, self.dominant_colours)
        unpack_array(self.student, f"{self.TYPE}.student")
        if len(self.source_bbox) != 4 or len(self.canvas_rect) != 4:
            raise SchemaError(f"{self.TYPE}: source_bbox and canvas_rect are [x, y, w, h]")


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

    def validate(self) -> None:
        if not valid_garment_id(self.garment_id):
            raise SchemaError(f"{self.TYPE}.garment_id {self.garment_id!r} is invalid")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.versions.items()):
            raise SchemaError(f"{self.TYPE}.versions must map version -> content key")
