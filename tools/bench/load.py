"""``chameleon bench load``: the fleet's control plane at scale on this machine (issue #12).

N generator worker processes with the ``sim`` backend (each frame holds a worker thread for a
fixed service time, like a GPU call, and comes out as a tiny JPEG), the garment service, and an
embedded nats-server, all from ``harness.stack.Stack``. This process plays ingest and
preprocess for every session: it admits each one with ``services.ingest.admission.Admission`` (what ingest
does at a session's first frame) and publishes recorded MediaPipe conditioning straight to the
session's ``cond`` subject at the camera rate, so MediaPipe is not what limits the run.

It asks for ``sessions + extra`` sessions: those beyond the fleet's capacity must be refused with
``at_capacity``; every admitted one must keep its frame rate. Measured over a window after every
admitted session has produced output:

- ``fps_out``: distinct frames out per second of each admitted session (p05 and p50 over sessions);
- ``latency_ms``: publish of the conditioning -> this process receiving the output (bus + generator);
- ``placement``: owner records per live generator worker (``FleetView.owned``);
- ``control_plane_cpu_ms_per_session_s``: the generator processes' CPU time (user + system, from
  psutil) per second of one session. The sim service time is ``time.sleep``, which
  costs no CPU time, so nothing has to be subtracted for it: what remains is decode, routing,
  leases, KV watches, encode and publish.

The JSON report is the LAST line printed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import probe
from tools.bench.common import child_pids, cpu_total, emit, process_cpu_s, provenance

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from services.ingest.admission import Admission
    from shared.schemas import Conditioning

GARMENT = "tee-red-solid"
RECORDED_FRAMES = 10
WARMUP_TIMEOUT_S = 20.0
WORKERS_TIMEOUT_S = 30.0


# -- the arithmetic (pure) ----------------------------------------------------------------------------
def nearest_rank(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return float(ordered[k])


def fps_by_session(
    arrivals: Mapping[str, Iterable[tuple[int, int]]], sessions: Iterable[str], start_ns: int, end_ns: int
) -> dict[str, float]:
    """Distinct frames out per second of each session over ``[start_ns, end_ns)``, from its
    ``(receive_ns, seq)`` arrivals. A session with nothing out counts 0: a starved session must
    show, not vanish from the statistics."""
    span_s = (end_ns - start_ns) / 1e9
    if span_s <= 0:
        raise ValueError("empty measuring window")
    return {
        sid: len({seq for t, seq in arrivals.get(sid, ()) if start_ns <= t < end_ns}) / span_s
        for sid in sessions
    }


def placement_spread(owned: Mapping[str, int], workers: Iterable[str]) -> dict[str, Any]:
    """Sessions per worker, every live worker counted (one with none is the minimum)."""
    per_worker = {w: int(owned.get(w, 0)) for w in sorted(set(workers) | set(owned))}
    counts = list(per_worker.values()) or [0]
    return {"max_per_worker": max(counts), "min_per_worker": min(counts), "per_worker": per_worker}


def cpu_ms_per_session_s(cpu_s: float, sessions: int, seconds: float) -> float:
    """CPU milliseconds per second of one session: ``cpu_s`` spent serving ``sessions`` sessions
    for ``seconds``."""
    if sessions <= 0 or seconds <= 0:
        raise ValueError("no session-seconds to divide by")
    return cpu_s * 1e3 / (sessions * seconds)


def goals(report: Mapping[str, Any], fps: float, extra_asked: int) -> dict[str, bool]:
    """Issue #12's goals for this bench, judged on the report."""
    return {
        "fps_out_p05_ge_fps_minus_1": report["fps_out"]["p05"] >= fps - 1,
        "placement_max_minus_min_le_1": report["placement"]["max_per_worker"]
        - report["placement"]["min_per_worker"]
        <= 1,
        "extra_rejected_at_capacity": report["rejected_at_capacity"] >= extra_asked
        and not report["rejected_other"],
        "none_admitted_and_starved": report["admitted_starved"] == 0,
    }


# -- recorded conditioning ------------------------------------------------------------------------------
def record_conditioning(frames: int, width: int, height: int) -> list[Conditioning]:
    """Real MediaPipe conditioning of a moving camera over the real sample photo, once."""
    from runtime.media import read_image, sample_photo
    from services.camera.source import MotionCamera
    from services.preprocess.pipeline import SessionPreprocessor

    cam = MotionCamera(read_image(sample_photo("bus.jpg", fetch=True)), width, height)
    pre = SessionPreprocessor("bench-load")
    try:
        out = [pre.process(cam.frame(i), i, i * 1000 / 15).conditioning for i in range(frames)]
    finally:
        pre.close()
    if not any(c.person_found for c in out):
        raise RuntimeError("MediaPipe found no person in the recorded frames")
    return out


# -- the run ----------------------------------------------------------------------------------------------
@dataclass
class Outputs:
    """Every output frame of every session, as this process received it."""

    arrivals: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # sid -> (recv_ns, seq)
    latency_ms: list[tuple[int, float]] = field(default_factory=list)  # (recv_ns, ms)
    bad: int = 0

    async def on_frame(self, msg: Msg) -> None:
        from shared.headers import FrameMeta, HeaderError, now_ns

        t = now_ns()
        try:
            meta = FrameMeta.from_headers(msg.headers)
        except HeaderError:
            self.bad += 1
            return
        self.arrivals.setdefault(meta.session_id, []).append((t, meta.seq))
        self.latency_ms.append((t, (t - meta.capture_ns) / 1e6))


@dataclass
class Errors:
    """Error events by code (an admitted session refused by its worker would show here)."""

    codes: Counter[str] = field(default_factory=Counter)
    undecodable: int = 0

    async def on_event(self, msg: Msg) -> None:
        from shared.schemas import Event, SchemaError

        try:
            event = Event.decode(msg.data)
        except SchemaError:
            self.undecodable += 1
            return
        if event.kind == "error":
            self.codes[event.code] += 1


@dataclass
class Publisher:
    """One session's stand-in for preprocess: recorded conditioning at ``fps`` on an absolute
    schedule, skipping ahead instead of bursting when this process falls behind."""

    published: int = 0
    skipped: int = 0

    async def run(
        self,
        nc: Any,
        subject: str,
        session_id: str,
        recorded: Sequence[Conditioning],
        fps: float,
        offset_s: float,
        stop: asyncio.Event,
    ) -> None:
        from shared.client import publish_frame
        from shared.headers import FrameMeta, now_ns

        period = 1.0 / fps
        start = time.monotonic() + offset_s
        seq = 0
        while not stop.is_set():
            delay = start + seq * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > period:
                missed = int(-delay / period)
                self.skipped += missed
                seq += missed
            cond = dataclasses.replace(recorded[seq % len(recorded)], session_id=session_id, seq=seq)
            meta = FrameMeta(session_id, seq, now_ns(), cond.width, cond.height).stamp("preprocess", "out")
            if await publish_frame(nc, subject, cond.encode(), meta):
                self.published += 1
            seq += 1


async def admit_all(
    admission: Admission, session_ids: Sequence[str], parallel: int
) -> tuple[list[str], dict[str, str]]:
    """Admit sessions as ingest would, ``parallel`` at a time; (admitted, refused id -> code)."""
    from shared.errors import CodedError

    admitted: list[str] = []
    refused: dict[str, str] = {}
    gate = asyncio.Semaphore(max(1, parallel))

    async def one(sid: str) -> None:
        async with gate:
            try:
                await admission.admit(sid)
                admitted.append(sid)
            except CodedError as exc:
                refused[sid] = exc.code

    await asyncio.gather(*(one(sid) for sid in session_ids))
    order = {sid: i for i, sid in enumerate(session_ids)}
    return sorted(admitted, key=order.__getitem__), refused


async def measure(
    url: str, generator_pids: list[int], recorded: list[Conditioning], args: argparse.Namespace
) -> dict:
    from runtime.bus import connect
    from runtime.fleet.view import open_view
    from runtime.settings import BaseSettings
    from services.garments.starter import add_starter_garments
    from services.ingest.admission import Admission
    from shared.garment_client import GarmentClient
    from shared.headers import now_ns
    from shared.subjects import Channel, Subjects

    subjects = Subjects(BaseSettings.from_env().subject_prefix)
    nc = await connect(url, "bench-load")
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    view = None
    try:
        await add_starter_garments(GarmentClient(nc, subjects, timeout_s=60), [args.garment])
        view = await open_view(nc.jetstream(), subjects)
        now = time.time_ns

        def live_workers() -> list[str]:
            return [w.worker_id for w in view.workers("generator") if w.alive(now())]

        if not await probe.wait_for(lambda: len(live_workers()) >= args.workers, WORKERS_TIMEOUT_S, 0.1):
            raise RuntimeError(f"{len(live_workers())} of {args.workers} workers hold a lease: see the logs")
        outputs, errors = Outputs(), Errors()
        await nc.subscribe(
            subjects.all_sessions(Channel.OUTPUT), cb=outputs.on_frame, pending_msgs_limit=65536
        )
        await nc.subscribe(subjects.all_sessions(Channel.EVENTS), cb=errors.on_event)
        await nc.flush()

        asked = [f"load-{i:03d}" for i in range(args.sessions + args.extra)]
        t_admit = time.monotonic()
        admitted, refused = await admit_all(Admission(view, ["generator"]), asked, args.admit_parallel)
        admit_s = time.monotonic() - t_admit
        placement = placement_spread(view.owned("generator"), live_workers())

        publishers = {sid: Publisher() for sid in admitted}
        for i, sid in enumerate(admitted):  # spread over one frame period: no synchronised bursts
            offset = (i / max(1, len(admitted))) / args.fps
            run = publishers[sid].run(nc, subjects.conditioning(sid), sid, recorded, args.fps, offset, stop)
            tasks.append(asyncio.create_task(run, name=f"publish:{sid}"))
        t_warm = time.monotonic()
        # a session with no output by then is reported starved, not waited for
        await probe.wait_for(lambda: all(outputs.arrivals.get(s) for s in admitted), WARMUP_TIMEOUT_S, 0.1)
        warmup_s = time.monotonic() - t_warm
        await asyncio.sleep(1.0)  # past the first frames' garment fetch and renderer opening

        pids_nats = child_pids("nats-server")
        me = os.getpid()
        published_before = sum(p.published for p in publishers.values())
        skipped_before = sum(p.skipped for p in publishers.values())
        cpu_before = (cpu_total(generator_pids), cpu_total(pids_nats), process_cpu_s(me))
        t0_ns, t0 = now_ns(), time.monotonic()
        await asyncio.sleep(args.seconds)
        t1_ns, window_s = now_ns(), time.monotonic() - t0
        cpu_after = (cpu_total(generator_pids), cpu_total(pids_nats), process_cpu_s(me))
        published = sum(p.published for p in publishers.values()) - published_before
        skipped = sum(p.skipped for p in publishers.values()) - skipped_before
        stop.set()
        await asyncio.wait(tasks, timeout=5.0)
        final_placement = placement_spread(view.owned("generator"), live_workers())
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        if view is not None:
            await view.close()
        await nc.drain()

    fps = fps_by_session(outputs.arrivals, admitted, t0_ns, t1_ns)
    fps_values = list(fps.values())
    lat = [ms for t, ms in outputs.latency_ms if t0_ns <= t < t1_ns]
    gen_cpu_s = cpu_after[0] - cpu_before[0]
    starved = sorted(sid for sid, v in fps.items() if v < args.fps - 1)
    report: dict[str, Any] = {
        "bench": "load",
        "sessions": len(admitted),
        "sessions_asked": len(asked),
        "workers": args.workers,
        "capacity_per_worker": args.capacity,
        "fps": args.fps,
        "service_ms": args.service_ms,
        "fps_out": {
            "p05": round(nearest_rank(fps_values, 5), 2),
            "p50": round(nearest_rank(fps_values, 50), 2),
            "min": round(min(fps_values, default=0.0), 2),
        },
        "latency_ms": {f"p{q}": round(nearest_rank(lat, q), 2) for q in (50, 95, 99)},
        "placement": placement,
        "placement_after_window": final_placement["per_worker"],
        "rejected_at_capacity": sum(1 for code in refused.values() if code == "at_capacity"),
        "rejected_other": dict(Counter(c for c in refused.values() if c != "at_capacity")),
        "admitted_beyond_capacity": max(0, len(admitted) - args.workers * args.capacity),
        "admitted_starved": len(starved),
        "admitted_never_served": sorted(s for s in admitted if not outputs.arrivals.get(s)),
        "starved_sessions": starved,
        "control_plane_cpu_ms_per_session_s": round(
            cpu_ms_per_session_s(gen_cpu_s, len(admitted), window_s), 3
        ),
        "generator_cpu_ms_per_frame": round(gen_cpu_s * 1e3 / max(1, sum(fps_values) * window_s), 3),
        "cpu_cores": {
            "generators": round(gen_cpu_s / window_s, 3),
            "nats_server": round((cpu_after[1] - cpu_before[1]) / window_s, 3),
            "bench_client": round((cpu_after[2] - cpu_before[2]) / window_s, 3),
        },
        "fps_in": round(published / window_s / max(1, len(admitted)), 2),
        "publisher_skipped": skipped,
        "generator_errors": dict(errors.codes),
        "undecodable_events": errors.undecodable,
        "admit_s": round(admit_s, 2),
        "admit_parallel": args.admit_parallel,
        "warmup_s": round(warmup_s, 2),
        "window_s": round(window_s, 2),
        "conditioning": f"{recorded[0].width}x{recorded[0].height}, {len(recorded)} MediaPipe frames",
    }
    beyond = max(0, len(asked) - args.workers * args.capacity)
    report["goals"] = goals(report, args.fps, beyond)
    return report


def run(args: argparse.Namespace) -> dict[str, Any]:
    from harness.stack import Stack

    recorded = record_conditioning(RECORDED_FRAMES, args.width, args.height)
    env = {
        "CHAMELEON_BACKEND": "sim",
        "CHAMELEON_MAX_SESSIONS": str(args.capacity),
        "CHAMELEON_SIM_SERVICE_MS": str(args.service_ms),
        "CHAMELEON_DEFAULT_GARMENT": args.garment,
        "CHAMELEON_SESSION_IDLE_S": "30",  # a worker slow to start must not idle a session out
    }
    started = time.monotonic()
    stack = Stack(
        ["garments", "generator"],
        env=env,
        workers=args.workers,
        log_dir=Path(args.logs) if args.logs else None,
        ready_timeout_s=120.0,
    )
    with stack:
        stack_start_s = time.monotonic() - started
        pids = [c.proc.pid for c in stack.children if c.name == "generator"]
        report = asyncio.run(measure(stack.url, pids, recorded, args))
        stopping = time.monotonic()
    report["stack_start_s"] = round(stack_start_s, 1)
    report["stack_stop_s"] = round(time.monotonic() - stopping, 1)
    report.update(provenance())
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chameleon bench load",
        description="The fleet at scale: sim generator workers, admitted sessions, recorded conditioning.",
    )
    p.add_argument("--json", action="store_true", help="print only the JSON report")
    p.add_argument("--workers", type=int, default=8, help="generator worker processes")
    p.add_argument("--sessions", type=int, default=32, help="sessions to serve")
    p.add_argument("--extra", type=int, default=4, help="sessions asked for beyond --sessions")
    p.add_argument("--fps", type=float, default=15.0, help="conditioning rate of each session")
    p.add_argument("--service-ms", type=float, default=40.0, help="sim service time per frame")
    p.add_argument("--capacity", type=int, default=4, help="sessions per worker (CHAMELEON_MAX_SESSIONS)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window")
    p.add_argument("--width", type=int, default=320, help="recorded conditioning width")
    p.add_argument("--height", type=int, default=240, help="recorded conditioning height")
    p.add_argument("--garment", default=GARMENT, help="the sessions' garment")
    p.add_argument(
        "--admit-parallel",
        type=int,
        default=1,
        help="admissions in flight at once (1: one after another; ingest admits concurrently)",
    )
    p.add_argument("--logs", default="out/logs/load", help="folder for service logs ('' : stderr)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.workers < 1 or args.sessions < 1 or args.capacity < 1 or args.fps <= 0:
        _parser().error("--workers, --sessions, --capacity and --fps must be positive")
    from harness import progress

    with progress.elapsed("bench load", json=args.json):
        report = run(args)
    return emit(report, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
