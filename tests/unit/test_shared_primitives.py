"""The small pieces every service shares: the latest-frame-wins slots, the LRU, the coded error."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg

from runtime.bus import LatestFrameSlots
from runtime.lru import LRU
from shared.errors import CodedError
from shared.garment_client import GarmentError

pytestmark = pytest.mark.unit


def frame(n: int) -> Msg:
    return Msg(_client=None, subject="chameleon.s.camera", data=str(n).encode())  # type: ignore[arg-type]


class Recorder:
    """A frame handler that can be held mid-frame, to see what queues behind it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()

    async def __call__(self, session_id: str, msg: Msg, received_ns: int) -> None:
        self.started.set()
        await self.gate.wait()
        if msg.data == b"boom":
            raise RuntimeError("a handler bug")
        self.seen.append((session_id, msg.data))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_newest_frame_replaces_the_one_waiting_and_the_drop_is_counted() -> None:
    rec, drops = Recorder(), []
    slots = LatestFrameSlots(rec, idle_s=5, on_drop=drops.append)
    rec.gate.clear()
    slots.offer("a", frame(1))
    await rec.started.wait()  # frame 1 is being handled
    for n in (2, 3, 4):
        slots.offer("a", frame(n))
    rec.gate.set()
    await settle()
    assert rec.seen == [("a", b"1"), ("a", b"4")]
    assert drops == ["a", "a"] and slots.dropped == {"a": 2}
    await slots.close()


async def test_a_slow_session_never_delays_another() -> None:
    slow, fast = asyncio.Event(), []

    async def handler(session_id: str, msg: Msg, received_ns: int) -> None:
        if session_id == "slow":
            await slow.wait()
        fast.append(session_id)

    slots = LatestFrameSlots(handler, idle_s=5)
    slots.offer("slow", frame(1))
    slots.offer("fast", frame(1))
    await settle()
    assert fast == ["fast"]
    slow.set()
    await settle()
    assert fast == ["fast", "slow"]
    await slots.close()


async def test_a_failing_frame_does_not_end_the_session_worker() -> None:
    rec = Recorder()
    slots = LatestFrameSlots(rec, idle_s=5)
    slots.offer("a", Msg(_client=None, data=b"boom"))  # type: ignore[arg-type]
    await settle()
    slots.offer("a", frame(2))
    await settle()
    assert rec.seen == [("a", b"2")] and slots.sessions == ["a"]
    await slots.close()


async def test_an_idle_session_ends_and_is_reported() -> None:
    idle: list[str] = []

    async def on_idle(session_id: str) -> None:
        idle.append(session_id)

    slots = LatestFrameSlots(Recorder(), idle_s=0.05, on_idle=on_idle)
    slots.offer("a", frame(1))
    for _ in range(100):
        if idle:
            break
        await asyncio.sleep(0.02)
    assert idle == ["a"] and slots.sessions == []
    await slots.close()


async def test_clear_forgets_buffered_frames_after_a_disconnect() -> None:
    rec = Recorder()
    slots = LatestFrameSlots(rec, idle_s=5)
    rec.gate.clear()
    slots.offer("a", frame(1))
    await rec.started.wait()
    slots.offer("a", frame(2))
    slots.offer("b", frame(1))  # b's worker has not run yet: its frame waits too
    assert slots.clear() == 2
    rec.gate.set()
    await settle()
    assert rec.seen == [("a", b"1")]
    await slots.close()
    slots.offer("a", frame(3))  # closed: ignored
    assert slots.sessions == []


def test_lru_evicts_the_least_recently_used_and_returns_it() -> None:
    cache: LRU[str, int] = LRU(2)
    assert cache.put("a", 1) == [] and cache.put("b", 2) == []
    assert cache.get("a") == 1  # a is now the newest
    assert cache.put("c", 3) == [("b", 2)]
    assert "b" not in cache and list(cache.keys()) == ["a", "c"] and len(cache) == 2
    assert cache.pop("a") == 1 and cache.get("a") is None
    assert LRU(0).capacity == 1


def test_coded_errors_carry_their_code_and_a_subclass_may_restrict_codes() -> None:
    err = CodedError("bad_frame", "payload is not an image")
    assert (err.code, err.message, str(err)) == (
        "bad_frame",
        "payload is not an image",
        "payload is not an image",
    )
    assert str(GarmentError("unavailable", "nobody answered")) == "unavailable: nobody answered"
    assert isinstance(GarmentError("unavailable", "x"), CodedError)
    with pytest.raises(ValueError, match="no_such_code"):
        GarmentError("no_such_code", "x")


async def test_frame_slot_waits_for_a_frames_time_and_skips_ahead_when_late() -> None:
    import time

    from shared.client import frame_slot

    start = time.monotonic()
    assert await frame_slot(start, 2, 0.02) == 0
    assert time.monotonic() - start >= 0.04  # slept until frame 2's time
    late = time.monotonic() - 0.05  # frame 0 was due 50 ms ago: 2.5 intervals of 20 ms
    assert await frame_slot(late, 0, 0.02) == 2
    assert await frame_slot(time.monotonic() - 0.015, 0, 0.02) == 0  # under an interval: on time


async def test_a_jetstream_that_does_not_answer_yet_is_asked_again_until_the_deadline() -> None:
    import nats.errors

    from runtime.jetstream import until_answered

    calls: list[int] = []
    warned: list[dict] = []

    class Log:
        def warning(self, event: str, **fields) -> None:
            warned.append({"event": event, **fields})

    async def ask() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise nats.errors.TimeoutError
        return "stream"

    assert await until_answered(ask, 10.0, Log(), "jetstream_not_ready", stream="s") == "stream"
    assert len(calls) == 3 and [w["event"] for w in warned] == ["jetstream_not_ready"] * 2
    assert warned[0]["stream"] == "s"
    calls.clear()
    with pytest.raises(nats.errors.TimeoutError):  # past the deadline: the error, not a hang
        await until_answered(ask, 0.0, Log(), "jetstream_not_ready")
    assert len(calls) == 1
