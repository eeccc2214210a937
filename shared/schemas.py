"""Message schemas (msgpack), versioned and validated on decode.

Every message is a frozen dataclass with a ``TYPE`` and a ``VERSION``. ``encode`` writes a map with
``type`` and ``v`` next to the fields; ``decode`` checks both (a message may also read the earlier
versions it lists in ``READS``), rejects unknown or missing fields and
wrong types with a ``SchemaError`` whose text says exactly what was wrong, so a service can turn it
into an error event instead of crashing. A field a message no longer has is listed in its
``RETIRED``: decode ignores it, so what the previous version wrote (a stored record, a peer in a
rolling update) still reads.

Arrays (landmarks) travel as ``bytes`` plus shape and dtype, masks as run lengths (``shared.masks``)
or, in version 1 of ``Conditioning``, PNG bytes: never raw floats.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import msgpack
import numpy as np

T = TypeVar("T", bound="Message")

MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class SchemaError(ValueError):
    """A message that does not match its schema."""


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    READS: ClassVar[frozenset[int]] = frozenset()  # earlier versions decode still accepts
    RETIRED: ClassVar[frozenset[str]] = frozenset()  # former fields: ignored on decode

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"type": self.TYPE, "v": self.VERSION, **d}

    def encode(self) -> bytes:
        return msgpack.packb(self.to_dict(), use_bin_type=True)

    @classmethod
    def from_dict(cls: type[T], data: Any) -> T:
        if not isinstance(data, dict):
            raise SchemaError(f"{cls.TYPE}: expected a map, got {type(data).__name__}")
        if data.get("type") != cls.TYPE:
            raise SchemaError(f"expected message type {cls.TYPE!r}, got {data.get('type')!r}")
        if data.get("v") != cls.VERSION and data.get("v") not in cls.READS:
            raise SchemaError(f"{cls.TYPE}: unsupported version {data.get('v')!r}")
        hints, fields = _schema_of(cls)
        unknown = set(data) - set(fields) - {"type", "v"} - cls.RETIRED
        if unknown:
            raise SchemaError(f"{cls.TYPE}: unknown fields {sorted(unknown)}")
        kwargs = {}
        for name, f in fields.items():  # retired fields are not among them: dropped here
            if name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise SchemaError(f"{cls.TYPE}: missing field {name!r}")
                continue
            kwargs[name] = _check(cls.TYPE, name, data[name], hints[name])
        obj = cls(**kwargs)
        obj.validate()
        return obj

    @classmethod
    def decode(cls: type[T], raw: bytes) -> T:
        if not isinstance(raw, (bytes, bytearray, memoryview)) or len(raw) == 0:
            raise SchemaError(f"{cls.TYPE}: empty payload")
        if len(raw) > MAX_MESSAGE_BYTES:
            raise SchemaError(f"{cls.TYPE}: payload of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
        try:
            data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            raise SchemaError(f"{cls.TYPE}: not valid msgpack ({exc})") from exc
        return cls.from_dict(data)

    def validate(self) -> None:
        """Cross-field checks; override where a message has them."""


@functools.cache
def _schema_of(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    """Type hints and fields of a message class, resolved once (decode is on the hot path)."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def _check(msg_type: str, name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(hint):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check(msg_type, name, value, arg)
            except SchemaError as exc:
                errors.append(str(exc))
        raise SchemaError(f"{msg_type}.{name}: {value!r:.60} matches none of {hint}")
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(f"{msg_type}.{name}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_check(msg_type, name, v, item) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{msg_type}.{name}: expected a map, got {type(value).__name__}")
        return value
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"{msg_type}.{name}: expected a number, got {type(value).__name__}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{msg_type}.{name}: expected an integer, got {type(value).__name__}")
        return value
    if hint is bytes:
        if not isinstance(value, (bytes, bytearray)):
            raise SchemaError(f"{msg_type}.{name}: expected bytes, got {type(value).__name__}")
        return bytes(value)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise SchemaError(f"{msg_type}.{name}: expected {hint.__name__}, got {type(value).__name__}")
    return value


# -- arrays -------------------------------------------------------------------------------------
_ALLOWED_DTYPES = {"float32", "float16", "uint8", "int16", "int32"}


def pack_array(a: np.ndarray) -> dict[str, Any]:
    """A compact, typed array for msgpack: little-endian bytes + shape + dtype."""
    a = np.ascontiguousarray(a)
    if a.dtype.name not in _ALLOWED_DTYPES:
        raise SchemaError(f"dtype {a.dtype} not allowed on the wire")
    return {
        "dtype": a.dtype.name,
        "shape": list(a.shape),
        "data": a.astype(a.dtype.newbyteorder("<")).tobytes(),
    }


def unpack_array(d: Any, name: str = "array") -> np.ndarray:
    if not isinstance(d, dict) or set(d) != {"dtype", "shape", "data"}:
        raise SchemaError(f"{name}: expected {{dtype, shape, data}}")
    if d["dtype"] not in _ALLOWED_DTYPES:
        raise SchemaError(f"{name}: dtype {d['dtype']!r} not allowed")
    shape = d["shape"]
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise SchemaError(f"{name}: bad shape {shape!r}")
    dtype = np.dtype(d["dtype"]).newbyteorder("<")
    expected = int(np.prod(shape)) * dtype.itemsize
    if not isinstance(d["data"], (bytes, bytearray)) or len(d["data"]) != expected:
        raise SchemaError(f"{name}: {len(d['data'])} bytes do not fill shape {shape} of {d['dtype']}")
    return np.frombuffer(d["data"], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


# -- control plane ------------------------------------------------------------------------------
CONTROL_ACTIONS = ("start", "swap", "stop")
# the generator's backends (docs/generator.md); a ``start`` may also ask for "auto": the student
# where a GPU and a checkpoint are, else warp
BACKENDS = ("warp", "student", "sim")


@dataclass(frozen=True)
class Control(Message):
    """A control event on ``<prefix>.<session>.control`` (JetStream-backed).

    ``start`` opens a session with its garment, backend, resolution and FPS target; ``swap``
    changes the garment (``event_id`` makes it idempotent, ``published_ns`` lets the generator
    measure swap latency); ``stop`` ends the session and releases its cache.
    """

    TYPE: ClassVar[str] = "control"
    action: str
    session_id: str
    event_id: str
    published_ns: int
    garment_id: str | None = None
    backend: str = "auto"
    width: int = 0  # 0: the service default
    height: int = 0
    fps: float = 0.0

    def validate(self) -> None:
        from shared.subjects import InvalidSessionId, validate_session_id

        if self.action not in CONTROL_ACTIONS:
            raise SchemaError(f"control.action must be one of {CONTROL_ACTIONS}, not {self.action!r}")
        try:
            validate_session_id(self.session_id)
        except InvalidSessionId as exc:
            raise SchemaError(str(exc)) from exc
        if not self.event_id:
            raise SchemaError("control.event_id must not be empty")
        if self.action == "swap" and not self.garment_id:
            raise SchemaError("control.swap needs a garment_id")
        if self.backend not in ("auto", *BACKENDS):
            raise SchemaError(f"control.backend must be auto or one of {BACKENDS}, not {self.backend!r}")
        if not (0 <= self.width <= 4096 and 0 <= self.height <= 4096):
            raise SchemaError("control width/height must be within 0..4096")
        if not 0 <= self.fps <= 240:
            raise SchemaError("control.fps must be within 0..240")


EVENT_KINDS = ("status", "error", "session_started", "session_ended", "swap_applied", "summary")


@dataclass(frozen=True)
class Event(Message):
    """A status or error event on ``<prefix>.<session>.events``.

    ``code`` is machine-readable (``bad_frame``, ``frame_too_large``, ``unknown_garment``,
    ``no_person``, ``at_capacity`` ...); ``message`` is for humans; ``data`` carries numbers such
    as a swap's measured latency.
    """

    TYPE: ClassVar[str] = "event"
    kind: str
    session_id: str
    service: str
    code: str
    message: str
    ts_ns: int
    data: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise SchemaError(f"event.kind must be one of {EVENT_KINDS}, not {self.kind!r}")


@dataclass(frozen=True)
class ReceiverReport(Message):
    """What a viewer received over the last ``window_ms`` on ``<prefix>.<session>.feedback``
    (core NATS, about once a second; a lost one costs nothing): output frames and their bytes, and
    ``queue_ms``, how much later than the best of the last seconds they arrived (arrival on the
    viewer's clock minus the producer's ``out`` stamp, so the clocks' offset cancels). A queue that
    grows means the viewer's downlink carries less than the stream: the generator lowers that
    session's output quality (docs/frontends.md)."""

    TYPE: ClassVar[str] = "receiver_report"
    session_id: str
    window_ms: float
    frames: int
    bytes: int
    queue_ms: float

    def validate(self) -> None:
        from shared.subjects import InvalidSessionId, validate_session_id

        try:
            validate_session_id(self.session_id)
        except InvalidSessionId as exc:
            raise SchemaError(str(exc)) from exc
        if not 0 < self.window_ms <= 60_000:
            raise SchemaError("receiver_report.window_ms must be within (0, 60000]")
        if self.frames < 0 or self.bytes < 0:
            raise SchemaError("receiver_report frames and bytes must not be negative")
        if not 0 <= self.queue_ms <= 600_000:
            raise SchemaError("receiver_report.queue_ms must be within [0, 600000]")


# -- data plane: conditioning -------------------------------------------------------------------
@dataclass(frozen=True)
class Conditioning(Message):
    """Per-frame conditioning from preprocess on ``<prefix>.<session>.cond``.

    Carries the frame itself (JPEG) so a generator needs one subscription per session and never
    has to pair two streams. ``landmarks`` is a packed float32 (33, 4) array of
    (x, y, z, visibility) in normalised image coordinates, absent when no person was found.

    Masks at the frame's size (0 = out, 255 = in): version 2 carries them as run lengths
    (``person_mask_rle``, ``garment_mask_rle``; ``shared.masks``: a tenth of PNG's cost each way),
    version 1 as single-channel PNG bytes (``*_png``). A message is written at the lowest version
    that holds it: one with PNG masks only is version 1, byte for byte what the previous release
    wrote and read, so a preprocess set to PNG (``CHAMELEON_MASK_CODEC=png``) feeds generators of
    either release during a rolling update; a generator reads both.
    """

    TYPE: ClassVar[str] = "conditioning"
    VERSION: ClassVar[int] = 2
    READS: ClassVar[frozenset[int]] = frozenset({1})
    RETIRED: ClassVar[frozenset[str]] = frozenset({"agnostic_jpeg", "category"})  # read by no backend
    V2_FIELDS: ClassVar[tuple[str, ...]] = ("person_mask_rle", "garment_mask_rle")
    session_id: str
    seq: int
    width: int
    height: int
    frame_jpeg: bytes
    person_found: bool
    landmarks: dict | None = None
    person_mask_png: bytes | None = None
    garment_mask_png: bytes | None = None
    people: int = 0
    note: str = ""
    person_mask_rle: bytes | None = None
    garment_mask_rle: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if all(d[name] is None for name in self.V2_FIELDS):
            for name in self.V2_FIELDS:
                del d[name]
            d["v"] = 1
        return d

    @classmethod
    def from_dict(cls, data: Any) -> Conditioning:
        if isinstance(data, dict) and data.get("v") == 1:
            late = sorted(name for name in cls.V2_FIELDS if name in data)
            if late:
                raise SchemaError(f"conditioning: version 1 has no fields {late}")
        return super().from_dict(data)

    def validate(self) -> None:
        for name in ("person_mask", "garment_mask"):
            if getattr(self, f"{name}_png") is not None and getattr(self, f"{name}_rle") is not None:
                raise SchemaError(f"conditioning: {name} both as PNG and as run lengths")


# -- durable session state (JetStream KV) ----------------------------------------------------------
@dataclass(frozen=True)
class SessionState(Message):
    """What survives a generator restart, kept in the KV bucket ``<P>_SESSIONS`` under the session
    id by the session's one owner (docs/fleet.md): the garment in effect, its backend, the ids of
    the last control events applied (idempotency) and where in the control stream it stands."""

    TYPE: ClassVar[str] = "session_state"
    # written by earlier versions and read by none: the start's size and rate, and a change counter
    RETIRED: ClassVar[frozenset[str]] = frozenset({"width", "height", "fps", "epoch"})
    session_id: str
    garment_id: str
    backend: str = "auto"
    applied_events: list[str] = field(default_factory=list)
    updated_ns: int = 0  # when it was stored: for an operator reading the bucket
    # when the swap in effect was published: an older swap delivered late (redelivered after
    # its worker died) is superseded, never shown over a newer one
    swap_published_ns: int = 0
    # the swap in effect but not yet shown (its swap_applied not yet sent): a new owner answers it
    pending_event_id: str = ""
    # the control stream's sequence of the last control message applied to the session: a new
    # owner reads the session's control from the stream after it (docs/fleet.md, "Control")
    control_seq: int = 0
