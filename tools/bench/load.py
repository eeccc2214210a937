"""``chameleon bench load``: the fleet's control plane at scale on this machine (issue #12).

N generator worker processes with the ``sim`` backend (each frame holds a worker thread for a
fixed service time, like a GPU call, and comes out as a tiny JPEG), the garment service, and an
embedded nats-server, all from ``harness.stack.Stack``. This process plays ingest and
preprocess for every session: it admits each one with ``services.ingest.admission.Admission`` (what ingest
does at a session's first frame) and publishes recorded MediaPipe conditioning straight to the
session's ``cond`` subject at the camera rate, so MediaPipe is not what limits the run.

It asks for ``sessions + extra`` sessions: those beyond the fleet's capacity must be refused with
``at_capacity``; every admitted one must keep its frame rate. Before any frame flows it measures
what the sessions cost JetStream while merely held (``jetstream_per_1000_sessions``: consumers,
nats-server memory and CPU per 1,000 sessions, over an idle phase with every session placed and
its control followed, against the same stack with none). Measured over a window after every
admitted session has produced output:

- ``fps_out``: distinct frames out per second of each admitted session (p05 and p50 over sessions);
- ``latency_ms``: publish of the conditioning -> this process receiving the output (bus + generator);
- ``placement``: owner records per live generator worker (``FleetView.owned``);
- ``control_plane_cpu_ms_per_session_s``: the generator processes' CPU time (user + system, from
  psutil) per second of one session. The sim service time is ``time.sleep``, which
  costs no CPU time, so nothing has to be subtracted for it: what remains is decode, routing,
  leases, KV watches, encode and publish;
- ``placement_ms``: ``--place`` new sessions admitted one by one during the window, while the
  fleet serves the others (admission returns once every owner has subscribed).

With ``--kill-worker``, after the window the worker holding the most sessions is SIGKILLed, every
one of its sessions (``orphaned``) gets a swap at once, and ``--after`` seconds later:

- ``failover.resume_s``: kill -> the session's first output frame from a newer owner (epoch),
  p50/p95/max over the orphaned sessions (one never resumed counts as ``not_resumed``);
- ``failover.lost_swaps``: those swaps never answered ``swap_applied`` or ``swap_superseded``;
- ``failover.stale_frames``: output frames of any session whose epoch is below one that session
  already showed (a viewer would have shown an old owner).

Goals are ratios that can fail at any rate (``fps_out`` p05 >= 0.9 x fps). The JSON report is the
LAST line printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import signal
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import probe
from tools.bench.common import child_pids, cpu_total, emit, process_cpu_s, provenance, rss_kib

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from services.ingest.admission import Admission
    from shared.schemas import Conditioning

GARMENT = "tee-red-solid"
SWAP_GARMENT = "shirt-blue-checks"  # what the orphaned sessions are swapped to after the kill
RECORDED_FRAMES = 10
WARMUP_TIMEOUT_S = 20.0
WORKERS_TIMEOUT_S = 30.0
ANSWERED = ("swap_applied", "swap_superseded")
GOAL_FPS_RATIO = 0.9  # fps_out p05 >= 0.9 x fps
GOAL_RESUME_P95_S = 3.0
GOAL_PLACEMENT_P95_MS = 150.0


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


def resume_times(
    frames: Mapping[str, Sequence[tuple[int, int]]], orphans: Mapping[str, int], kill_ns: int
) -> dict[str, float | None]:
    """For each orphaned session (-> its owner's epoch at the kill), seconds from the kill to its
    first output frame of a newer epoch, from ``(receive_ns, epoch)`` frames; None: never."""
    out: dict[str, float | None] = {}
    for sid, epoch in orphans.items():
        later = [t for t, e in frames.get(sid, ()) if t > kill_ns and e > epoch]
        out[sid] = (min(later) - kill_ns) / 1e9 if later else None
    return out


def stale_frames(frames: Mapping[str, Sequence[tuple[int, int]]]) -> int:
    """Frames, per session in arrival order, whose epoch is below one that session already showed."""
    stale = 0
    for seen in frames.values():
        newest = 0
        for _, epoch in sorted(seen):
            stale += epoch < newest
            newest = max(newest, epoch)
    return stale


def per_thousand(value: float, sessions: int) -> float:
    """``value`` (measured with ``sessions`` sessions) per 1,000 sessions."""
    if sessions <= 0:
        raise ValueError("no sessions to divide by")
    return value * 1000.0 / sessions


def goals(report: Mapping[str, Any], fps: float, extra_asked: int) -> dict[str, bool]:
    """The goals for this bench, judged on the report: each a ratio or a count that can fail at
    any rate (at 1 fps, "fps - 1" could not)."""
    out = {
        "fps_out_p05_ge_0_9_fps": report["fps_out"]["p05"] >= GOAL_FPS_RATIO * fps,
        "placement_max_minus_min_le_1": report["placement"]["max_per_worker"]
        - report["placement"]["min_per_worker"]
        <= 1,
        "extra_rejected_at_capacity": report["rejected_at_capacity"] >= extra_asked
        and not report["rejected_other"],
        "none_admitted_and_starved": report["admitted_starved"] == 0,
    }
    placement = report.get("placement_ms")
    if placement and placement.get("placed"):
        out["placement_p95_le_150_ms"] = (
            placement["p95"] <= GOAL_PLACEMENT_P95_MS and not placement["refused"]
        )
    failover = report.get("failover")
    if failover:
        out["failover_resume_p95_le_3_s"] = (
            failover["orphaned"] > 0
            and failover["not_resumed"] == 0
            and failover["resume_s"]["p95"] <= GOAL_RESUME_P95_S
        )
        out["failover_no_lost_swaps"] = failover["lost_swaps"] == 0 and failover["swaps_sent"] > 0
        out["failover_no_stale_frames"] = failover["stale_frames"] == 0
    return out


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
    epochs: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # sid -> (recv_ns, epoch)
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
        self.epochs.setdefault(meta.session_id, []).append((t, meta.epoch))
        self.latency_ms.append((t, (t - meta.capture_ns) / 1e6))


@dataclass
class Errors:
    """Error events by code (an admitted session refused by its worker would show here)."""

    codes: Counter[str] = field(default_factory=Counter)
    undecodable: int = 0
    answered: dict[str, str] = field(default_factory=dict)  # swap event id -> applied / superseded

    async def on_event(self, msg: Msg) -> None:
        from shared.schemas import Event, SchemaError

        try:
            event = Event.decode(msg.data)
        except SchemaError:
            self.undecodable += 1
            return
        if event.kind == "error":
            self.codes[event.code] += 1
        answer = event.kind if event.kind == "swap_applied" else event.code
        if answer in ANSWERED and event.data.get("event_id"):
            self.answered.setdefault(str(event.data["event_id"]), answer)


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
        from shared.client import frame_slot, publish_frame
        from shared.headers import FrameMeta, now_ns

        period = 1.0 / fps
        start = time.monotonic() + offset_s
        seq = 0
        while not stop.is_set():
            missed = await frame_slot(start, seq, period)
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


async def server_figures(nc: Any, stream: str, seconds: float, workers: Sequence[int]) -> dict[str, float]:
    """nats-server's CPU (cores, over ``seconds``) and memory (MiB, at the end) summed over every
    node this process started, the generator workers' CPU, and the consumers of ``stream``."""
    pids = child_pids("nats-server")
    cpu0, gen0 = cpu_total(pids), cpu_total(workers)
    await asyncio.sleep(seconds)
    cpu = (cpu_total(pids) - cpu0) / seconds
    gen = (cpu_total(workers) - gen0) / seconds
    rss = sum(rss_kib(pid) for pid in pids) / 1024
    consumers = 0
    with contextlib.suppress(Exception):
        consumers = (await nc.jetstream(timeout=10).stream_info(stream)).state.consumer_count or 0
    return {"cpu_cores": cpu, "rss_mb": rss, "consumers": consumers, "generator_cpu_cores": gen}


async def place_while_busy(admission: Admission, count: int, over_s: float) -> tuple[list[float], int]:
    """Admit ``count`` new sessions one at a time, spread over ``over_s``: (ms each, refused)."""
    from shared.errors import CodedError

    took, refused = [], 0
    for i in range(count):
        await asyncio.sleep(over_s / max(1, count))
        started = time.perf_counter()
        try:
            await admission.admit(f"placed-{i:03d}")
            took.append((time.perf_counter() - started) * 1e3)
        except CodedError:
            refused += 1
    return took, refused


async def store_swaps(nc: Any, subjects: Any, sessions: Sequence[str], parallel: int = 64) -> dict[str, str]:
    """One swap per session, stored in the control stream (retried until JetStream takes it):
    session -> event id."""
    from shared import control

    gate = asyncio.Semaphore(parallel)
    sent: dict[str, str] = {}

    async def one(sid: str) -> None:
        msg = control.swap(sid, SWAP_GARMENT)
        async with gate:
            await control.publish_control(nc, subjects, msg, deadline_s=20.0)
        sent[sid] = msg.event_id

    await asyncio.gather(*(one(sid) for sid in sessions))
    return sent


async def measure(
    url: str, stack: Any, generator_pids: list[int], recorded: list[Conditioning], args: argparse.Namespace
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
    replicas = max(1, min(3, args.nats_cluster))
    nc = await connect(url, "bench-load")
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    view = None
    failover: dict[str, Any] | None = None
    try:
        await add_starter_garments(GarmentClient(nc, subjects, timeout_s=60), [args.garment, SWAP_GARMENT])
        view = await open_view(nc.jetstream(timeout=10), subjects, replicas)
        now = time.time_ns

        def live_workers() -> list[str]:
            return [w.worker_id for w in view.workers("generator") if w.alive(now())]

        if not await probe.wait_for(lambda: len(live_workers()) >= args.workers, WORKERS_TIMEOUT_S, 0.1):
            raise RuntimeError(f"{len(live_workers())} of {args.workers} workers hold a lease: see the logs")
        outputs, errors = Outputs(), Errors()
        await nc.subscribe(
            subjects.all_sessions(Channel.OUTPUT), cb=outputs.on_frame, pending_msgs_limit=1_000_000
        )
        await nc.subscribe(
            subjects.all_sessions(Channel.EVENTS), cb=errors.on_event, pending_msgs_limit=1_000_000
        )
        await nc.flush()
        empty = await server_figures(nc, subjects.control_stream, args.idle_seconds, generator_pids)

        asked = [f"load-{i:04d}" for i in range(args.sessions + args.extra)]
        admission = Admission(view, ["generator"])
        t_admit = time.monotonic()
        admitted, refused = await admit_all(admission, asked, args.admit_parallel)
        admit_s = time.monotonic() - t_admit
        placement = placement_spread(view.owned("generator"), live_workers())
        # held, not yet streaming: what the sessions themselves cost JetStream (their control followed)
        await asyncio.sleep(2.0)  # every owner binds its sessions' control
        held = await server_figures(nc, subjects.control_stream, args.idle_seconds, generator_pids)

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
        placing = asyncio.create_task(place_while_busy(admission, args.place, args.seconds * 0.8))
        await asyncio.sleep(args.seconds)
        t1_ns, window_s = now_ns(), time.monotonic() - t0
        cpu_after = (cpu_total(generator_pids), cpu_total(pids_nats), process_cpu_s(me))
        published = sum(p.published for p in publishers.values()) - published_before
        skipped = sum(p.skipped for p in publishers.values()) - skipped_before
        placed_ms, placed_refused = await placing

        if args.kill_worker:
            failover = await kill_busiest(stack, view, nc, subjects, outputs, errors, args)
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
    starved = sorted(sid for sid, v in fps.items() if v < GOAL_FPS_RATIO * args.fps)
    n = len(admitted)
    report: dict[str, Any] = {
        "bench": "load",
        "sessions": n,
        "sessions_asked": len(asked),
        "workers": args.workers,
        "capacity_per_worker": args.capacity,
        "nats_nodes": args.nats_cluster,
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
        "placement_ms": {
            "p50": round(nearest_rank(placed_ms, 50), 1),
            "p95": round(nearest_rank(placed_ms, 95), 1),
            "max": round(max(placed_ms, default=0.0), 1),
            "placed": len(placed_ms),
            "refused": placed_refused,
        },
        "rejected_at_capacity": sum(1 for code in refused.values() if code == "at_capacity"),
        "rejected_other": dict(Counter(c for c in refused.values() if c != "at_capacity")),
        "admitted_beyond_capacity": max(0, n - args.workers * args.capacity),
        "admitted_starved": len(starved),
        "admitted_never_served": sorted(s for s in admitted if not outputs.arrivals.get(s))[:20],
        "starved_sessions": starved[:20],
        "jetstream_per_1000_sessions": {
            "consumers": round(per_thousand(held["consumers"] - empty["consumers"], n), 1),
            "server_rss_mb": round(per_thousand(held["rss_mb"] - empty["rss_mb"], n), 2),
            "server_cpu_cores": round(per_thousand(held["cpu_cores"] - empty["cpu_cores"], n), 4),
            # the workers' side of holding them (following each session's control)
            "generator_cpu_cores": round(
                per_thousand(held["generator_cpu_cores"] - empty["generator_cpu_cores"], n), 4
            ),
        },
        "jetstream_held": {k: round(v, 3) for k, v in held.items()},
        "jetstream_empty": {k: round(v, 3) for k, v in empty.items()},
        "control_plane_cpu_ms_per_session_s": round(cpu_ms_per_session_s(gen_cpu_s, n, window_s), 3),
        "generator_cpu_ms_per_frame": round(gen_cpu_s * 1e3 / max(1, sum(fps_values) * window_s), 3),
        "cpu_cores": {
            "generators": round(gen_cpu_s / window_s, 3),
            "nats_server": round((cpu_after[1] - cpu_before[1]) / window_s, 3),
            "bench_client": round((cpu_after[2] - cpu_before[2]) / window_s, 3),
        },
        "fps_in": round(published / window_s / max(1, n), 2),
        "publisher_skipped": skipped,
        "generator_errors": dict(errors.codes),
        "undecodable_events": errors.undecodable,
        "admit_s": round(admit_s, 2),
        "admit_parallel": args.admit_parallel,
        "warmup_s": round(warmup_s, 2),
        "window_s": round(window_s, 2),
        "conditioning": f"{recorded[0].width}x{recorded[0].height}, {len(recorded)} MediaPipe frames",
    }
    if failover is not None:
        report["failover"] = failover
    beyond = max(0, len(asked) - args.workers * args.capacity)
    report["goals"] = goals(report, args.fps, beyond)
    return report


async def kill_busiest(
    stack: Any, view: Any, nc: Any, subjects: Any, outputs: Outputs, errors: Errors, args: argparse.Namespace
) -> dict[str, Any]:
    """SIGKILL the worker holding the most sessions, swap each of its sessions at once, and watch
    them come back (see the module docstring)."""
    from shared.headers import now_ns

    owned = view.owned("generator")
    victim = max(owned, key=lambda w: (owned[w], w))
    child = next(c for c in stack.children if c.worker_id == victim)
    orphans = {
        sid: held[0].epoch
        for (stage, sid), held in list(view.owners.items())
        if stage == "generator" and held[0].worker_id == victim and not sid.startswith("placed-")
    }
    kill_ns = now_ns()
    os.kill(child.proc.pid, signal.SIGKILL)
    child.proc.wait()
    t_kill = time.monotonic()
    sent = await store_swaps(nc, subjects, sorted(orphans))
    stored_s = time.monotonic() - t_kill
    await asyncio.sleep(max(0.0, args.after - stored_s))
    await probe.wait_for(lambda: all(e in errors.answered for e in sent.values()), args.settle, 0.2)
    resumed = resume_times(outputs.epochs, orphans, kill_ns)
    times = [t for t in resumed.values() if t is not None]
    lost = [sid for sid, e in sent.items() if e not in errors.answered]
    return {
        "victim": victim,
        "orphaned": len(orphans),
        "resume_s": {
            "p50": round(nearest_rank(times, 50), 3),
            "p95": round(nearest_rank(times, 95), 3),
            "max": round(max(times, default=0.0), 3),
        },
        "not_resumed": sum(1 for t in resumed.values() if t is None),
        "lost_swaps": len(lost),
        "lost_swap_sessions": lost[:10],
        "swaps_sent": len(sent),
        "swaps_stored_s": round(stored_s, 2),
        "swap_answers": dict(Counter(errors.answered[e] for e in sent.values() if e in errors.answered)),
        "stale_frames": stale_frames(outputs.epochs),
    }


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
        nats_cluster=args.nats_cluster,
    )
    with stack:
        stack_start_s = time.monotonic() - started
        pids = [c.proc.pid for c in stack.children if c.name == "generator"]
        report = asyncio.run(measure(stack.url, stack, pids, recorded, args))
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
    p.add_argument("--place", type=int, default=20, help="new sessions placed one by one during the window")
    p.add_argument(
        "--kill-worker",
        action="store_true",
        help="after the window, SIGKILL the worker holding the most sessions and measure the failover",
    )
    p.add_argument("--after", type=float, default=10.0, help="seconds watched after the kill")
    p.add_argument("--settle", type=float, default=20.0, help="seconds more for every swap's answer")
    p.add_argument(
        "--idle-seconds", type=float, default=5.0, help="seconds of each JetStream cost measurement"
    )
    p.add_argument(
        "--nats-cluster", type=int, default=1, help="nats-server nodes (3: R3 streams and buckets)"
    )
    p.add_argument("--logs", default="out/logs/load", help="folder for service logs ('' : stderr)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.workers < 1 or args.sessions < 1 or args.capacity < 1 or args.fps <= 0:
        _parser().error("--workers, --sessions, --capacity and --fps must be positive")
    if args.kill_worker and args.workers < 2:
        _parser().error("--kill-worker needs --workers 2 or more")
    if args.kill_worker and (args.workers - 1) * args.capacity < args.sessions + args.place:
        _parser().error("--kill-worker: the surviving workers' --capacity cannot hold every session")
    from harness import progress

    with progress.elapsed("bench load", json=args.json):
        report = run(args)
    return emit(report, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
