"""The contract: subjects, frame headers and timing math, schemas, settings."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from runtime.metrics import percentiles
from runtime.settings import BaseSettings, SettingsError
from shared import control as controls
from shared.errors import CodedError
from shared.headers import FrameMeta, HeaderError
from shared.schemas import Conditioning, Control, Event, SchemaError, SessionState, pack_array, unpack_array
from shared.subjects import Channel, InvalidSessionId, Subjects

pytestmark = pytest.mark.unit


# -- subjects ---------------------------------------------------------------------------------------
def test_session_id_is_the_token_after_the_prefix() -> None:
    s = Subjects("acme.prod")
    for channel in Channel:
        subject = s.session("cam-7", channel)
        assert subject.startswith("acme.prod.cam-7.")
        assert s.session_of(subject) == "cam-7"
    assert s.session_permission("cam-7") == "acme.prod.cam-7.>"
    assert s.all_sessions(Channel.CAMERA) == "acme.prod.*.camera"


@pytest.mark.parametrize("bad", ["", "a.b", "a*", ">", "with space", "_svc", "-x", "x" * 65, "é"])
def test_invalid_session_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidSessionId):
        Subjects().camera(bad)


def test_service_subjects_never_collide_with_sessions() -> None:
    s = Subjects()
    assert s.garments("get") == "chameleon._svc.garments.get"
    with pytest.raises(InvalidSessionId):
        s.session_of(s.garments("get"))
    assert s.control_stream == "CHAMELEON_CONTROL"
    with pytest.raises(ValueError):
        Subjects("bad prefix")


def test_session_of_rejects_foreign_prefix() -> None:
    with pytest.raises(InvalidSessionId):
        Subjects("a").session_of("b.s1.camera")


# -- headers and timing ------------------------------------------------------------------------------
def test_frame_meta_roundtrip_and_timing_math() -> None:
    meta = FrameMeta("s1", seq=7, capture_ns=1_000_000_000, width=640, height=480, garment_id="tee")
    meta.stamp("camera", "out", 1_000_000_000)
    meta.stamp("ingest", "in", 1_002_000_000).stamp("ingest", "out", 1_007_000_000)
    meta.stamp("gen", "in", 1_008_500_000).stamp("gen", "out", 1_030_000_000)
    back = FrameMeta.from_headers(meta.to_headers())
    assert back == meta
    assert back.stage_ms() == {"ingest": 5.0, "gen": 21.5}
    assert back.hop_ms() == [("camera", "ingest", 2.0), ("ingest", "gen", 1.5)]
    assert back.age_ms(at_ns=1_031_000_000) == 31.0


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {},
        {"Chameleon-Session": "s", "Chameleon-Seq": "x", "Chameleon-Capture-Ns": "1"},
        {"Chameleon-Session": "s", "Chameleon-Seq": "1"},
        {"Chameleon-Session": "s", "Chameleon-Seq": "-1", "Chameleon-Capture-Ns": "1"},
        {"Chameleon-Session": "s", "Chameleon-Seq": "1", "Chameleon-Capture-Ns": "1", "Chameleon-Trace": "x"},
        {
            "Chameleon-Session": "s",
            "Chameleon-Seq": "1",
            "Chameleon-Capture-Ns": "1",
            "Chameleon-Frame-Schema": "9",
        },
    ],
)
def test_bad_headers_raise_header_error(headers: dict | None) -> None:
    with pytest.raises(HeaderError):
        FrameMeta.from_headers(headers)


GOOD = {"Chameleon-Session": "s", "Chameleon-Seq": "1", "Chameleon-Capture-Ns": "1"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Chameleon-Seq", str(2**70)),  # msgpack could not pack it downstream (issue #13)
        ("Chameleon-Seq", str(2**53)),  # a JSON client would round it
        ("Chameleon-Seq", "1_000"),  # int() takes these; no camera sends them
        ("Chameleon-Seq", " 7"),
        ("Chameleon-Seq", "+7"),
        ("Chameleon-Capture-Ns", str(2**63)),
        ("Chameleon-Capture-Ns", "0"),
        ("Chameleon-Width", "65536"),
        ("Chameleon-Height", str(10**30)),
        ("Chameleon-Epoch", str(2**60)),
        ("Chameleon-Trace", f"camera.out={2**64}"),
    ],
)
def test_integer_headers_out_of_range_are_refused(name: str, value: str) -> None:
    with pytest.raises(HeaderError) as info:
        FrameMeta.from_headers({**GOOD, name: value})
    assert name in str(info.value) or "trace entry" in str(info.value)  # says which header


def test_integer_headers_at_their_bounds_pass_and_pack() -> None:
    headers = {
        **GOOD,
        "Chameleon-Seq": str(2**53 - 1),
        "Chameleon-Capture-Ns": str(2**63 - 1),
        "Chameleon-Width": "65535",
        "Chameleon-Height": "65535",
        "Chameleon-Epoch": str(2**53 - 1),
    }
    meta = FrameMeta.from_headers(headers)
    assert (meta.seq, meta.width, meta.epoch) == (2**53 - 1, 65535, 2**53 - 1)
    msgpack.packb([meta.seq, meta.capture_ns, meta.epoch])  # what later stages do with them


def test_percentiles_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentiles(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert percentiles([]) == {"p50": 0.0, "p95": 0.0, "p99": 0.0}


# -- schemas -------------------------------------------------------------------------------------------
def _swap(**kw: object) -> Control:
    base = dict(action="swap", session_id="s1", event_id="e1", published_ns=1, garment_id="tee-red")
    base.update(kw)
    return Control(**base)  # type: ignore[arg-type]


def test_control_roundtrip() -> None:
    c = _swap(width=640, height=480, fps=15.0)
    assert Control.decode(c.encode()) == c


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(action="explode"), "action"),
        (lambda d: d.update(session_id="a.b"), "session"),
        (lambda d: d.pop("event_id"), "missing field 'event_id'"),
        (lambda d: d.update(published_ns="soon"), "published_ns"),
        (lambda d: d.update(extra=1), "unknown fields"),
        (lambda d: d.update(v=99), "version"),
        (lambda d: d.update(type="event"), "expected message type"),
        (lambda d: d.update(garment_id=None), "garment_id"),
        (lambda d: d.update(fps=1e6), "fps"),
        (lambda d: d.update(width=True), "width"),
    ],
)
def test_control_validation_errors_are_clear(mutate, needle: str) -> None:
    d = _swap().to_dict()
    mutate(d)
    with pytest.raises(SchemaError, match=needle):
        Control.decode(msgpack.packb(d))


@pytest.mark.parametrize("raw", [b"", b"\xc1\xc1", msgpack.packb([1, 2]), b"x" * (9 * 1024 * 1024)])
def test_garbage_payloads_raise_schema_error(raw: bytes) -> None:
    with pytest.raises(SchemaError):
        Event.decode(raw)


def test_control_is_read_for_the_session_its_subject_names() -> None:
    s = Subjects("p")
    stop = controls.stop("alice")
    assert controls.read_control(s, s.control("alice"), stop.encode()) == stop
    with pytest.raises(CodedError) as exc:  # alice's token may publish there, naming bob
        controls.read_control(s, s.control("alice"), controls.stop("bob").encode())
    assert exc.value.code == "session_mismatch" and exc.value.data["event_id"]
    with pytest.raises(SchemaError):
        controls.read_control(s, s.control("alice"), b"\x93junk")
    with pytest.raises(InvalidSessionId):
        controls.read_control(s, "p._svc.control", stop.encode())
    assert controls.control_for(s, s.control("alice"), controls.stop("bob").encode()) is None
    assert controls.control_for(s, s.control("alice"), stop.encode()) == stop


def test_retired_fields_of_the_previous_version_still_read() -> None:
    """A state stored by the previous version (with its size, rate and change counter) and
    conditioning from a preprocess not yet updated (an agnostic image, a category) decode; a
    field nobody ever had is still refused."""
    old_state = {"type": "session_state", "v": 1, "session_id": "s", "garment_id": "tee"}
    old_state.update(width=640, height=480, fps=15.0, epoch=7, applied_events=["e1"])
    state = SessionState.decode(msgpack.packb(old_state))
    assert (state.garment_id, state.applied_events) == ("tee", ["e1"])
    old_cond = Conditioning("s", 1, 4, 4, b"jpeg", False).to_dict()
    old_cond.update(agnostic_jpeg=b"grey", category="dress")
    assert Conditioning.decode(msgpack.packb(old_cond)).seq == 1
    with pytest.raises(SchemaError, match="unknown fields"):
        SessionState.decode(msgpack.packb({**old_state, "colour": "red"}))


def test_arrays_travel_compactly_and_validate() -> None:
    lm = np.random.default_rng(0).random((33, 4), dtype=np.float32)
    msg = Conditioning(
        session_id="s1",
        seq=3,
        width=64,
        height=48,
        frame_jpeg=b"jpg",
        person_found=True,
        landmarks=pack_array(lm),
    )
    back = Conditioning.decode(msg.encode())
    np.testing.assert_array_equal(unpack_array(back.landmarks), lm)
    assert len(msg.encode()) < 33 * 4 * 4 + 240
    bad = pack_array(lm)
    bad["data"] = bad["data"][:-4]
    with pytest.raises(SchemaError, match="do not fill"):
        unpack_array(bad)
    with pytest.raises(SchemaError, match="not allowed"):
        pack_array(np.zeros(3, dtype=np.float64))


# -- settings ---------------------------------------------------------------------------------------
def test_settings_from_env_with_prefix_and_nats_url() -> None:
    s = BaseSettings.from_env(
        {"NATS_URL": "nats://x:1", "CHAMELEON_METRICS_PORT": "9100", "CHAMELEON_LOG_JSON": "yes"}
    )
    assert (s.nats_url, s.metrics_port, s.log_json) == ("nats://x:1", 9100, True)
    s = BaseSettings.from_env({"NATS_URL": "nats://x:1", "CHAMELEON_NATS_URL": "nats://y:2"})
    assert s.nats_url == "nats://y:2"
    with pytest.raises(SettingsError, match="CHAMELEON_METRICS_PORT"):
        BaseSettings.from_env({"CHAMELEON_METRICS_PORT": "ninety"})
    names = [n for n, _, _ in BaseSettings.env_doc()]
    assert "CHAMELEON_SUBJECT_PREFIX" in names


def test_logging_never_raises_on_a_closed_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """A log call must not take a handler down, even when stderr was closed under it."""
    import io
    import sys

    from runtime.logging import configure_logging, get_logger

    configure_logging("info", json=True)
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    get_logger("t").warning("still_fine", session_id="s1")
    live = io.StringIO()
    monkeypatch.setattr(sys, "stderr", live)
    get_logger("t").warning("to_the_current_stream", session_id="s1")
    assert '"session_id": "s1"' in live.getvalue() and "to_the_current_stream" in live.getvalue()
