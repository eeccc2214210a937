"""The fleet over real processes: generator workers as `python -m services.generator.main`
children of a `Stack` on a real nats-server, sessions placed with compare-and-set, a worker
SIGKILLed, SIGSTOPped or SIGTERMed while its session streams and swaps (docs/fleet.md)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from service_testkit import until as _until

from harness.stack import Child, Stack
from runtime.bus import connect
from runtime.fleet.view import FleetView, open_view
from runtime.media import encode_jpeg
from services.camera.source import MotionCamera
from services.garments.starter import add_starter_garments
from services.ingest.admission import Admission
from services.preprocess.pipeline import SessionPreprocessor
from services.watch.client import Watcher
from shared import control
from shared.client import publish_frame
from shared.errors import CodedError
from shared.garment_client import GarmentClient
from shared.headers import FrameMeta, now_ns
from shared.schemas import Conditioning, Event
from shared.subjects import Subjects

pytestmark = pytest.mark.service
GARMENTS = ("tee-red-solid", "shirt-blue-checks", "tee-yellow-dots", "tee-navy-stripes")


@pytest.fixture(scope="module")
def conditioning(bus_photo) -> list[Conditioning]:
    """Real MediaPipe conditioning of a moving camera over the real full-body photo."""
    cam = MotionCamera(bus_photo, 320, 240)
    pre = SessionPreprocessor("fleet-fixture")
    try:
        return [pre.process(cam.frame(i), i, i * 1000 / 15).conditioning for i in range(12)]
    finally:
        pre.close()


until = functools.partial(_until, timeout=15.0)


@dataclass
class Fleet:
    """A stack of generator workers plus what ingest and preprocess would do for them."""

    stack: Stack
    subjects: Subjects
    nc: object
    view: FleetView
    admission: Admission
    conditioning: list[Conditioning]
    events: dict[str, list[Event]] = field(default_factory=dict)
    streams: list[asyncio.Task[None]] = field(default_factory=list)

    def owner(self, session: str) -> Child:
        held = self.view.owner("generator", session)
        assert held is not None, f"{session} has no generator owner"
        return next(c for c in self.stack.children if c.worker_id == held[0].worker_id)

    def epoch(self, session: str) -> int:
        held = self.view.owner("generator", session)
        return held[0].epoch if held else 0

    async def admit(self, session: str) -> None:
        await self.admission.admit(session)

    async def watch(self, session: str) -> Watcher:
        w = Watcher(self.nc, self.subjects, session, keep_frames=False)  # type: ignore[arg-type]
        await w.start()
        self.events[session] = []

        async def on_event(msg) -> None:  # type: ignore[no-untyped-def]
            self.events[session].append(Event.decode(msg.data))

        await self.nc.subscribe(self.subjects.events(session), cb=on_event)  # type: ignore[attr-defined]
        return w

    def stream(self, session: str, fps: float = 15.0) -> None:
        """Conditioning frames for ``session`` until the test ends; re-admitted like ingest would."""

        async def run() -> None:
            i = 0
            while True:
                if not self.admission.admitted(session):
                    with contextlib.suppress(CodedError):
                        await self.admission.admit(session)
                cond = dataclasses.replace(
                    self.conditioning[i % len(self.conditioning)], session_id=session, seq=i
                )
                meta = FrameMeta(session, i, now_ns(), cond.width, cond.height).stamp("preprocess", "out")
                await publish_frame(self.nc, self.subjects.conditioning(session), cond.encode(), meta)  # type: ignore[arg-type]
                i += 1
                await asyncio.sleep(1 / fps)

        self.streams.append(asyncio.create_task(run()))

    async def swap(self, session: str, garment: str, deadline_s: float = 15.0) -> str:
        msg = control.swap(session, garment)
        await control.publish_control(self.nc, self.subjects, msg, deadline_s=deadline_s)  # type: ignore[arg-type]
        return msg.event_id

    def answered(self, session: str) -> dict[str, str]:
        """event id -> swap_applied / swap_superseded, for every swap that got its answer."""
        return {
            str(e.data.get("event_id")): e.code
            for e in self.events.get(session, [])
            if e.code in ("swap_applied", "swap_superseded")
        }


@contextlib.asynccontextmanager
async def fleet(
    nats_url: str, conditioning, workers: int = 2, log_dir=None, **env: str
) -> AsyncIterator[Fleet]:  # type: ignore[no-untyped-def]
    prefix = f"fl{uuid.uuid4().hex[:10]}"
    subjects = Subjects(prefix)
    stack_env = {
        "CHAMELEON_SUBJECT_PREFIX": prefix,
        "CHAMELEON_BACKEND": "warp",
        "CHAMELEON_LEASE_S": "1.0",
        "CHAMELEON_LOG_LEVEL": "warning",
        **env,
    }
    stack = await asyncio.to_thread(
        Stack(
            ["garments", "generator"], nats_url=nats_url, env=stack_env, workers=workers, log_dir=log_dir
        ).start
    )
    nc = await connect(nats_url, "fleet-test")
    view = await open_view(nc.jetstream(), subjects)
    f = Fleet(stack, subjects, nc, view, Admission(view, ["generator"]), conditioning)
    try:
        await add_starter_garments(GarmentClient(nc, subjects, timeout_s=30), list(GARMENTS))
        await until(lambda: len([w for w in view.workers("generator") if not w.draining]) == workers)
        yield f
    finally:
        for task in f.streams:
            task.cancel()
        await view.close()
        await nc.drain()
        await asyncio.to_thread(stack.stop)


async def test_placement_spreads_sessions_and_a_full_fleet_answers_at_capacity(
    nats_url, conditioning
) -> None:  # type: ignore[no-untyped-def]
    async with fleet(nats_url, conditioning, CHAMELEON_MAX_SESSIONS="2") as f:
        for session in ("p1", "p2", "p3", "p4"):
            await f.admit(session)
        assert sorted(f.view.owned("generator").values()) == [2, 2]
        with pytest.raises(CodedError) as refused:
            await f.admit("p5")
        assert refused.value.code == "at_capacity" and refused.value.data["retry_after_s"] > 0
        assert f.view.owner("generator", "p5") is None  # nothing half-placed


async def test_a_killed_owner_moves_the_session_with_its_garment_and_every_swap(
    nats_url, conditioning
) -> None:  # type: ignore[no-untyped-def]
    async with fleet(nats_url, conditioning) as f:
        w = await f.watch("k")
        f.stream("k")
        await until(lambda: len(w.frames) >= 5)
        first = await f.swap("k", "shirt-blue-checks")
        await until(lambda: first in f.answered("k"))
        owner, old_epoch = f.owner("k"), f.epoch("k")
        os.kill(owner.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        sent = [await f.swap("k", g) for g in ("tee-yellow-dots", "tee-navy-stripes")]  # while no owner
        await until(lambda: f.epoch("k") > old_epoch, timeout=5)
        await until(lambda: w.frames and w.frames[-1].meta.epoch > old_epoch, timeout=5)
        resumed = time.monotonic() - killed
        assert resumed < 3.0, resumed
        assert f.owner("k").worker_id != owner.worker_id
        await until(lambda: all(e in f.answered("k") for e in sent), what=f.answered("k"))
        assert (
            f.answered("k")[sent[-1]] == "swap_applied"
        )  # the newest is shown, older ones at most superseded
        await until(
            lambda: w.frames[-1].meta.garment_id == "tee-navy-stripes",
            what=[(r.meta.epoch, r.meta.garment_id) for r in w.frames[-40:]],
        )
        epochs = [r.meta.epoch for r in w.frames]
        assert epochs == sorted(epochs)  # a viewer never goes back to an older owner


async def test_a_hung_owner_is_replaced_and_never_shown_again(nats_url, conditioning) -> None:  # type: ignore[no-untyped-def]
    async with fleet(nats_url, conditioning) as f:
        w = await f.watch("h")
        raw: list[int] = []

        async def on_raw(msg) -> None:  # type: ignore[no-untyped-def]
            raw.append(FrameMeta.from_headers(msg.headers).epoch)

        await f.nc.subscribe(f.subjects.output("h"), cb=on_raw)  # type: ignore[attr-defined]
        f.stream("h")
        await until(lambda: len(w.frames) >= 5)
        owner, old_epoch = f.owner("h"), f.epoch("h")
        os.kill(owner.proc.pid, signal.SIGSTOP)
        try:
            await until(lambda: f.epoch("h") > old_epoch, timeout=5)
            await until(lambda: w.frames[-1].meta.epoch > old_epoch, timeout=5)
        finally:
            os.kill(owner.proc.pid, signal.SIGCONT)
        moved_at = len(raw)
        await asyncio.sleep(1.5)  # the old owner runs again: it must notice it lost the session
        late_old = [e for e in raw[moved_at:] if e <= old_epoch]
        assert late_old == [], "the replaced owner published after waking up"
        assert [r.meta.epoch for r in w.frames] == sorted(r.meta.epoch for r in w.frames)


async def test_sigterm_hands_the_session_over_without_a_long_gap(nats_url, conditioning) -> None:  # type: ignore[no-untyped-def]
    async with fleet(nats_url, conditioning) as f:
        w = await f.watch("d")
        f.stream("d")
        await until(lambda: len(w.frames) >= 5)
        owner, old_epoch = f.owner("d"), f.epoch("d")
        owner.proc.send_signal(signal.SIGTERM)
        await until(lambda: f.epoch("d") > old_epoch, timeout=5)
        await until(lambda: w.frames[-1].meta.epoch > old_epoch, timeout=5)
        assert f.view.owner("generator", "d")[0].reason == "drain"  # type: ignore[index]
        await asyncio.sleep(0.5)
        arrivals = [r.recv_ns for r in w.frames]
        gap_s = max(b - a for a, b in itertools.pairwise(arrivals)) / 1e9
        assert gap_s < 1.0, gap_s


async def test_a_deleted_control_consumer_is_recreated_and_nothing_sent_meanwhile_is_lost(
    nats_url, conditioning
) -> None:  # type: ignore[no-untyped-def]
    """The worker's one consumer of every session's control is deleted (by hand, or lost with a
    node): it binds a new one within seconds, and reads from the stream what its sessions were
    sent while there was none."""
    async with fleet(nats_url, conditioning, workers=1) as f:
        w = await f.watch("c")
        f.stream("c")
        await until(lambda: len(w.frames) >= 3)
        js = f.nc.jetstream()  # type: ignore[attr-defined]
        consumer = Subjects.control_consumer("generator", f.owner("c").worker_id)
        await js.delete_consumer(f.subjects.control_stream, consumer)
        meanwhile = await f.swap("c", "tee-yellow-dots")  # delivered to nobody: in the stream only
        await until(lambda: f.answered("c").get(meanwhile) == "swap_applied", timeout=10)
        later = await f.swap("c", "tee-navy-stripes")
        await until(lambda: f.answered("c").get(later) == "swap_applied", timeout=10)
        assert (await js.consumer_info(f.subjects.control_stream, consumer)).name == consumer


async def test_ingest_admits_once_and_answers_a_full_fleet_before_decoding(nats_url, bus_photo) -> None:  # type: ignore[no-untyped-def]
    """Through the real ingest: a session the fleet cannot take gets at_capacity with a retry
    hint, and its further frames are dropped unread; the admitted session is untouched."""
    prefix = f"fl{uuid.uuid4().hex[:10]}"
    subjects = Subjects(prefix)
    env = {
        "CHAMELEON_SUBJECT_PREFIX": prefix,
        "CHAMELEON_BACKEND": "warp",
        "CHAMELEON_MAX_SESSIONS": "1",
        "CHAMELEON_LOG_LEVEL": "warning",
    }
    stack = await asyncio.to_thread(Stack(["ingest", "generator"], nats_url=nats_url, env=env).start)
    nc = await connect(nats_url, "admission-test")
    try:
        events: dict[str, list[Event]] = {"a": [], "b": []}
        ingested: dict[str, int] = {"a": 0, "b": 0}
        for s in events:

            async def on_event(msg, s=s) -> None:  # type: ignore[no-untyped-def]
                events[s].append(Event.decode(msg.data))

            async def on_ingested(msg, s=s) -> None:  # type: ignore[no-untyped-def]
                ingested[s] += 1

            await nc.subscribe(subjects.events(s), cb=on_event)
            await nc.subscribe(subjects.ingested(s), cb=on_ingested)
        cam = MotionCamera(bus_photo, 320, 240)
        for i in range(6):
            for s in ("a", "b"):
                meta = FrameMeta(s, i, now_ns(), 320, 240)
                await publish_frame(nc, subjects.camera(s), encode_jpeg(cam.frame(i)), meta)
            await asyncio.sleep(1 / 15)

        def settled() -> tuple[str, str] | None:
            """(admitted, refused): whichever session's first frame the ingest admitted first
            takes the one slot (their frames interleave), the other is refused."""
            for won, lost in (("a", "b"), ("b", "a")):
                if ingested[won] >= 4 and any(e.code == "at_capacity" for e in events[lost]):
                    return won, lost
            return None

        await until(
            lambda: settled() is not None,
            what=(ingested, {s: [e.code for e in ev] for s, ev in events.items()}),
        )
        won, lost = settled()  # type: ignore[misc]
        refusal = next(e for e in events[lost] if e.code == "at_capacity")
        assert refusal.kind == "error" and refusal.service == "ingest" and refusal.data["retry_after_s"] > 0
        assert ingested[lost] == 0  # nothing of the refused session went on
        assert len([e for e in events[lost] if e.code == "at_capacity"]) == 1  # once, not per frame
        assert not any(e.code == "at_capacity" for e in events[won])
    finally:
        await nc.drain()
        await asyncio.to_thread(stack.stop)


async def test_a_cluster_losing_a_node_keeps_the_session_and_its_swaps(nats_cluster, conditioning) -> None:  # type: ignore[no-untyped-def]
    """Three nats-servers, R3 streams and buckets: one node SIGKILLed while the session streams
    and swaps; frames keep coming (clients reconnect to a surviving node) and a swap sent after
    the loss is applied."""
    async with fleet(nats_cluster.url, conditioning, CHAMELEON_JS_REPLICAS="3") as f:
        w = await f.watch("n")
        f.stream("n")
        await until(lambda: len(w.frames) >= 5)
        before = await f.swap("n", "shirt-blue-checks")
        await until(lambda: f.answered("n").get(before) == "swap_applied")
        nats_cluster.kill_node(0)
        killed, seen = time.monotonic(), len(w.frames)
        # sent now, stored once the control stream has a leader again (node 0 may have led it, and
        # the JetStream meta group too: elections take seconds, more on a loaded machine)
        sending = asyncio.create_task(f.swap("n", "tee-yellow-dots", deadline_s=45))
        await until(lambda: len(w.frames) > seen + 5, timeout=10)
        assert time.monotonic() - killed < 5.0 + 10 / 15  # output back within 5 s (plus the frames counted)
        after = await sending
        await until(lambda: f.answered("n").get(after) == "swap_applied", timeout=30, what=f.answered("n"))
        await until(lambda: w.frames[-1].meta.garment_id == "tee-yellow-dots")


async def test_a_stack_with_sessions_stops_at_once_and_writes_only_json(
    nats_url, conditioning, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Stopping a fleet whose workers serve sessions and consume their control: every process
    exits by itself (no SIGKILL from the supervisor, which waits 10 s, while a drain may wait 20 s)
    and writes nothing but JSON lines (no asyncio traceback from nats-py's subscription drain)."""
    logs = tmp_path / "logs"
    async with fleet(
        nats_url, conditioning, log_dir=logs, CHAMELEON_DRAIN_TIMEOUT_S="20", CHAMELEON_LOG_LEVEL="info"
    ) as f:
        watchers = {s: await f.watch(s) for s in ("q1", "q2")}
        for s in watchers:
            f.stream(s)
        await until(lambda: all(len(w.frames) >= 3 for w in watchers.values()))
        swaps = [await f.swap(s, "tee-yellow-dots") for s in watchers]
        await until(lambda: all(e in f.answered(s) for s, e in zip(watchers, swaps, strict=True)))
        await asyncio.sleep(3.0)  # control idle a while: expired pulls leave status messages behind
        for task in f.streams:
            task.cancel()
        procs = {c.worker_id: c.proc for c in f.stack.children}
        await asyncio.to_thread(f.stack.stop, 10.0)
    assert {w: p.returncode for w, p in procs.items()} == dict.fromkeys(procs, 0)
    lines = [line for log in sorted(logs.iterdir()) for line in log.read_text().splitlines() if line.strip()]
    not_json = [line for line in lines if not line.startswith("{")]
    assert not_json == [], not_json[:10]
    events = [json.loads(line)["event"] for line in lines]
    assert "drain_timed_out" not in events
    assert events.count("service_stopped") == len(procs)


async def test_swaps_queued_while_the_owner_cannot_take_them_are_coalesced(nats_url, conditioning) -> None:  # type: ignore[no-untyped-def]
    """Three swaps stored while the session's only worker is stopped (SIGSTOP, past its pull
    request's expiry): it takes them as one batch when it resumes, renders only the newest and
    answers each older one ``swap_superseded`` naming it, so every swap gets its answer."""
    async with fleet(nats_url, conditioning, workers=1) as f:
        w = await f.watch("co")
        f.stream("co")
        await until(lambda: len(w.frames) >= 3)
        owner = f.owner("co")
        os.kill(owner.proc.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(1.5)  # its outstanding pull request expires: nothing is delivered to it
            sent = [
                await f.swap("co", g) for g in ("shirt-blue-checks", "tee-yellow-dots", "tee-navy-stripes")
            ]
        finally:
            os.kill(owner.proc.pid, signal.SIGCONT)
        await until(lambda: all(e in f.answered("co") for e in sent), what=f.answered("co"))
        assert [f.answered("co")[e] for e in sent] == ["swap_superseded", "swap_superseded", "swap_applied"]
        superseded_by = {
            str(e.data.get("event_id")): e.data.get("superseded_by")
            for e in f.events["co"]
            if e.code == "swap_superseded"
        }
        assert superseded_by == {sent[0]: sent[2], sent[1]: sent[2]}
        await until(lambda: w.frames[-1].meta.garment_id == "tee-navy-stripes")


async def test_an_older_swap_reaching_a_new_owner_after_a_failover_is_refused(nats_url, conditioning) -> None:  # type: ignore[no-untyped-def]
    """The swap in effect was published at t; after its owner dies, a swap published before t (a
    client's delayed retry, a redelivery) reaches the new owner: it is answered ``swap_superseded``
    and the newer garment stays. The new owner knows t only from the stored state."""
    async with fleet(nats_url, conditioning) as f:
        w = await f.watch("late")
        f.stream("late")
        await until(lambda: len(w.frames) >= 3)
        newer = control.swap("late", "shirt-blue-checks")
        await control.publish_control(f.nc, f.subjects, newer)  # type: ignore[arg-type]
        await until(lambda: f.answered("late").get(newer.event_id) == "swap_applied")
        owner, old_epoch = f.owner("late"), f.epoch("late")
        os.kill(owner.proc.pid, signal.SIGKILL)
        await until(lambda: w.frames and w.frames[-1].meta.epoch > old_epoch, timeout=10)
        older = dataclasses.replace(
            control.swap("late", "tee-navy-stripes"), published_ns=newer.published_ns - 1_000_000_000
        )
        await control.publish_control(f.nc, f.subjects, older)  # type: ignore[arg-type]
        await until(lambda: older.event_id in f.answered("late"), what=f.answered("late"))
        assert f.answered("late")[older.event_id] == "swap_superseded"
        await asyncio.sleep(0.5)
        assert {r.meta.garment_id for r in w.frames[-5:]} == {"shirt-blue-checks"}
