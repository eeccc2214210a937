"""``chameleon bench failover``: what a shopper sees when a worker or a NATS node dies (issue #12).

Three phases, each on its own ``harness.stack.Stack`` (garments, ingest, 2 preprocess and 2
generator workers, warp backend), each with one session: a moving camera over the real sample
photo at ``--fps``, a ``Watcher`` on the output, and a swap every ``--swap-interval`` seconds
cycling catalogue garments. After ``--before`` seconds the phase's victim is SIGKILLed while swaps
are in flight, swapping goes on for ``--after`` seconds, then the bench waits until every stored
swap has an answer (or ``--settle`` passes) and looks at the last frames:

- ``generator``: the process that owns the session's generator (``FleetView.owner``);
- ``preprocess``: the process that owns the session's preprocess;
- ``nats_node``: one node of a 3-node JetStream cluster (children get the URL list and R3): the
  node the generator owner is connected to, else the preprocess owner's, else another one, never
  the bench's own; the report says what it led and which clients it served.

Per phase:

- ``resume_s``: the largest gap between consecutive output frames the viewer accepted, over the
  pairs that end after the kill (the outage as the shopper sees it, including the last frame
  before the kill); ``first_frame_after_kill_s`` and ``first_new_epoch_s`` beside it;
- ``lost_swaps``: swaps stored in the control stream whose event id never got ``swap_applied``
  or ``swap_superseded``; an error answer is listed under ``swap_errors`` and counts as lost;
- ``stale_epoch_frames_delivered``: accepted frames whose epoch is below one already seen (0 by
  construction of the ``Watcher``), and ``stale_epoch_frames_dropped``: what it dropped;
- ``garment_after_matches_last_request``: the last output frames show the last swap's garment.

The JSON report is the LAST line printed; the generator phase's figures are also its top level.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from harness import probe
from tools.bench.common import emit, provenance

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg

    from harness.stack import Stack
    from services.watch.client import Watcher
    from shared.subjects import Subjects

PHASES = ("generator", "preprocess", "nats_node")
PIPELINE = ["garments", "ingest", "preprocess", "generator"]
DEFAULT_GARMENTS = "tee-red-solid,shirt-blue-checks,tee-yellow-dots,jacket-denim-solid,tee-navy-stripes"
ANSWERED = ("swap_applied", "swap_superseded")
LAST_FRAMES = 5  # the last frames whose garment is checked
FIRST_FRAME_TIMEOUT_S = 60.0
PUBLISH_TIMEOUT_S = 2.0  # one JetStream request; a swap is retried (same event id) until stored
STORE_GIVE_UP_S = 20.0
GOAL_RESUME_S = {"generator": 2.0, "preprocess": 2.0, "nats_node": 5.0}


# -- the arithmetic (pure) ----------------------------------------------------------------------------
def largest_gap_s(times_ns: Sequence[int], kill_ns: int) -> float | None:
    """The longest wait between consecutive output frames over the pairs whose later frame came
    after the kill, the last frame before the kill included; None when nothing came after it."""
    ordered = sorted(times_ns)
    after = [i for i, t in enumerate(ordered) if t > kill_ns]
    if not after:
        return None
    first = after[0]
    previous = ordered[first - 1] if first > 0 else kill_ns
    gaps = [ordered[first] - previous] + [ordered[i] - ordered[i - 1] for i in after[1:]]
    return max(gaps) / 1e9


def first_after_s(times_ns: Sequence[int], since_ns: int) -> float | None:
    """Seconds from ``since_ns`` to the first time after it, or None."""
    later = [t for t in times_ns if t > since_ns]
    return (min(later) - since_ns) / 1e9 if later else None


def first_new_epoch_s(frames: Sequence[tuple[int, int]], kill_ns: int) -> float | None:
    """Seconds from the kill to the first frame of an epoch newer than any seen before the kill,
    from ``(receive_ns, epoch)`` pairs; None when the epoch never changed."""
    before = max((e for t, e in frames if t <= kill_ns), default=0)
    newer = [t for t, e in frames if t > kill_ns and e > before]
    return (min(newer) - kill_ns) / 1e9 if newer else None


def lost_swaps(sent: Iterable[str], answers: Mapping[str, Iterable[str]]) -> list[str]:
    """Swaps (event ids, in order) never answered ``swap_applied`` or ``swap_superseded``."""
    return [e for e in sent if not any(kind in ANSWERED for kind in answers.get(e, ()))]


def stale_epochs(epochs: Iterable[int]) -> int:
    """Frames, in arrival order, whose epoch is below one that came before them."""
    newest, stale = 0, 0
    for epoch in epochs:
        if epoch < newest:
            stale += 1
        newest = max(newest, epoch)
    return stale


def garment_matches(last_garments: Sequence[str | None], requested: str | None) -> bool:
    """Every one of the last frames shows the last requested garment (and there are frames)."""
    return requested is not None and bool(last_garments) and all(g == requested for g in last_garments)


def answer_of(kind: str, code: str) -> str:
    """What an event says about the control message it answers: ``swap_applied``, ``error``, or
    its code (a superseded swap is ``kind=status, code=swap_superseded``; older generators sent
    ``kind=swap_superseded``, which the event schema refuses)."""
    return kind if kind in ("swap_applied", "error") else code or kind


def event_answer(raw: bytes) -> tuple[str, str, str, bool]:
    """``(kind, code, event_id, schema_ok)`` of one event; an event ``Event.decode`` refuses (a
    kind the schema does not list) is still read from its msgpack map, and flagged."""
    from shared.schemas import Event, SchemaError

    try:
        ev = Event.decode(raw)
        return ev.kind, ev.code, str(ev.data.get("event_id") or ""), True
    except SchemaError:
        try:
            data = msgpack.unpackb(raw, raw=False)
        except Exception:
            return "", "", "", False
        if not isinstance(data, dict):
            return "", "", "", False
        inner = data.get("data") if isinstance(data.get("data"), dict) else {}
        return str(data.get("kind", "")), str(data.get("code", "")), str(inner.get("event_id") or ""), False


# -- what the client sees -------------------------------------------------------------------------------
@dataclass
class SwapRecord:
    event_id: str
    garment_id: str
    sent_ns: int
    stored_ns: int = 0  # 0: never stored (the stream had no leader for STORE_GIVE_UP_S)
    attempts: int = 0


@dataclass
class Answers:
    """The session's events: each control event id's answers, with when they came."""

    by_event: dict[str, list[str]] = field(default_factory=dict)
    first_ns: dict[str, int] = field(default_factory=dict)
    codes: dict[str, str] = field(default_factory=dict)  # event id -> error code
    schema_refused: Counter[str] = field(default_factory=Counter)  # kind -> events Event.decode refuses
    errors: Counter[str] = field(default_factory=Counter)  # every error event by code
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_event(self, msg: Msg) -> None:
        from shared.headers import now_ns

        kind, code, event_id, ok = event_answer(msg.data)
        if not ok:
            self.schema_refused[kind or "?"] += 1
        if kind == "error":
            self.errors[code] += 1
        if not event_id:
            return
        self.by_event.setdefault(event_id, []).append(answer_of(kind, code))
        self.first_ns.setdefault(event_id, now_ns())
        if kind == "error":
            self.codes[event_id] = code
        self.changed.set()


async def store_control(nc: NATS, subjects: Subjects, msg: Any, replicas: int) -> tuple[int, int]:
    """Publish a control message until JetStream stores it, with its event id each time (the
    stream's duplicate window stores it once): ``(stored_ns or 0, attempts)``."""
    from shared import control
    from shared.headers import now_ns

    attempts = 0
    deadline = time.monotonic() + STORE_GIVE_UP_S
    while time.monotonic() < deadline:
        attempts += 1
        try:
            await control.publish_control(nc, subjects, msg, replicas=replicas, timeout_s=PUBLISH_TIMEOUT_S)
            return now_ns(), attempts
        except Exception:  # no leader, no responders, a timeout: the same event id again
            await asyncio.sleep(0.1)
    return 0, attempts


class Swapper:
    """Sends a swap every ``interval_s``, each retried with its event id until JetStream stores it."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        session_id: str,
        garments: list[str],
        interval_s: float,
        replicas: int,
    ) -> None:
        self.nc, self.subjects, self.session_id = nc, subjects, session_id
        self.garments, self.interval_s, self.replicas = garments, interval_s, replicas
        self.sent: list[SwapRecord] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        from shared import control
        from shared.headers import now_ns

        i = 1  # garments[0] is the start's
        next_at = time.monotonic()
        while not self.stop.is_set():
            msg = control.swap(self.session_id, self.garments[i % len(self.garments)])
            record = SwapRecord(msg.event_id, msg.garment_id or "", now_ns())
            self.sent.append(record)
            record.stored_ns, record.attempts = await store_control(
                self.nc, self.subjects, msg, self.replicas
            )
            i += 1
            next_at += self.interval_s
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), max(0.0, next_at - time.monotonic()))


# -- the cluster's roles --------------------------------------------------------------------------------
def _monitor(port: int, path: str) -> dict[str, Any]:
    return probe.get_json(port, path, timeout_s=2)


def clients_by_node(monitor_ports: Sequence[int]) -> list[list[str]]:
    """For each node, the names of its client connections (services are named after themselves)."""
    out: list[list[str]] = []
    for port in monitor_ports:
        try:
            conns = _monitor(port, "/connz?limit=1024").get("connections") or []
        except (OSError, ValueError):
            conns = []
        out.append(sorted(c.get("name", "") for c in conns))
    return out


def subscribers_by_node(monitor_ports: Sequence[int], subject: str) -> list[list[str]]:
    """For each node, the names of its client connections subscribed to ``subject``."""
    out: list[list[str]] = []
    for port in monitor_ports:
        try:
            conns = _monitor(port, "/connz?subs=1&limit=1024").get("connections") or []
        except (OSError, ValueError):
            out.append([])
            continue
        out.append([c.get("name", "") for c in conns if subject in (c.get("subscriptions_list") or [])])
    return out


async def stream_replicas(nc: NATS, stream: str) -> int | None:
    """The replicas a stream is configured with (None: not there, or no answer)."""
    with contextlib.suppress(Exception):
        return (await nc.jetstream(timeout=2.0).stream_info(stream)).config.num_replicas or 1
    return None


async def cluster_roles(nc: NATS, stack: Stack, subjects: Subjects) -> dict[str, str]:
    """Which node leads the JetStream meta group and each stream and bucket the fleet uses."""
    from harness.natsserver import EmbeddedCluster

    assert isinstance(stack.nats, EmbeddedCluster)
    roles: dict[str, str] = {}
    node = next(n for n in stack.nats.nodes if n.running)
    with contextlib.suppress(OSError, ValueError, KeyError):
        roles["meta"] = _monitor(node.monitor_port, "/jsz")["meta_cluster"]["leader"]
    js = nc.jetstream(timeout=2.0)
    streams = {
        "control": subjects.control_stream,
        "owners": f"KV_{subjects.owner_bucket}",
        "workers": f"KV_{subjects.worker_bucket}",
        "sessions": f"KV_{subjects.session_bucket}",
    }
    for role, stream in streams.items():
        with contextlib.suppress(Exception):
            info = await js.stream_info(stream)
            roles[role] = info.cluster.leader if info.cluster else ""
    return roles


# -- one phase -----------------------------------------------------------------------------------------------
@dataclass
class Victim:
    what: str  # generator-2, preprocess-1, chameleon-1 ...
    kill: Any  # () -> None
    detail: dict[str, Any] = field(default_factory=dict)


def _child(stack: Stack, worker_id: str) -> Any:
    for child in stack.children:
        if child.worker_id == worker_id:
            return child
    raise RuntimeError(f"no stack child {worker_id!r} (children: {[c.worker_id for c in stack.children]})")


def _kill_child(child: Any) -> None:
    os.kill(child.proc.pid, signal.SIGKILL)
    child.proc.wait()


async def choose_victim(
    phase: str, stack: Stack, nc: NATS, view: Any, subjects: Subjects, sid: str
) -> Victim:
    """The process or node this phase kills, and what is known about it beforehand."""
    if phase in ("generator", "preprocess"):
        held = view.owner(phase, sid)
        if held is None:
            raise RuntimeError(f"session {sid} has no {phase} owner")
        child = _child(stack, held[0].worker_id)
        return Victim(
            child.worker_id,
            lambda: _kill_child(child),
            {"epoch_before": held[0].epoch, "pid": child.proc.pid},
        )
    from harness.natsserver import EmbeddedCluster

    cluster = stack.nats
    assert isinstance(cluster, EmbeddedCluster)
    ports = [n.monitor_port for n in cluster.nodes]
    own_port = nc.connected_url.port if nc.connected_url else None
    own = next((i for i, n in enumerate(cluster.nodes) if n.port == own_port), -1)
    gen = subscribers_by_node(ports, subjects.conditioning(sid))
    pre = subscribers_by_node(ports, subjects.ingested(sid))
    roles = await cluster_roles(nc, stack, subjects)
    candidates = [i for i in range(cluster.size) if i != own]
    index = next((i for i in candidates if gen[i]), next((i for i in candidates if pre[i]), candidates[0]))
    name = cluster.nodes[index].server_name
    detail = {
        "node": name,
        "led": sorted(role for role, leader in roles.items() if leader == name),
        "leaders": roles,
        "generator_owner_connected_here": bool(gen[index]),
        "preprocess_owner_connected_here": bool(pre[index]),
        "bench_client_node": cluster.nodes[own].server_name if own >= 0 else "",
        "clients_here": clients_by_node(ports)[index],
    }
    return Victim(name, lambda: cluster.kill_node(index), detail)


async def _wait_for(predicate: Any, timeout_s: float, event: asyncio.Event | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if event is not None:
            event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, 0.5))
        else:
            await asyncio.sleep(min(left, 0.1))
    return True


def phase_report(
    phase: str,
    watcher: Watcher,
    cond_watcher: Watcher | None,
    swapper: Swapper,
    answers: Answers,
    kill_ns: int,
) -> dict[str, Any]:
    """The figures of one phase from what the client recorded."""
    frames = watcher.frames
    times = [r.recv_ns for r in frames]
    stored = [s for s in swapper.sent if s.stored_ns]
    lost = lost_swaps([s.event_id for s in stored], answers.by_event)
    kinds = Counter(k for s in stored for k in set(answers.by_event.get(s.event_id, ())))
    last_requested = stored[-1].garment_id if stored else None
    answer_s = [
        (answers.first_ns[s.event_id] - s.sent_ns) / 1e9 for s in stored if s.event_id in answers.first_ns
    ]
    around = [
        (answers.first_ns[s.event_id] - s.sent_ns) / 1e9
        for s in stored
        if s.event_id in answers.first_ns and s.sent_ns >= kill_ns - 3e9
    ]
    after = [r for r in frames if r.recv_ns > kill_ns]
    report: dict[str, Any] = {
        "resume_s": _round(largest_gap_s(times, kill_ns)),
        "first_frame_after_kill_s": _round(first_after_s(times, kill_ns)),
        "first_new_epoch_s": _round(first_new_epoch_s([(r.recv_ns, r.meta.epoch) for r in frames], kill_ns)),
        "lost_swaps": len(lost),
        "lost_swap_ids": lost[:10],
        "lost_swaps_sent_s_after_kill": [
            round((s.sent_ns - kill_ns) / 1e9, 2) for s in stored if s.event_id in set(lost)
        ][:10],
        "swaps_sent": len(swapper.sent),
        "swaps_stored": len(stored),
        "swaps_never_stored": len(swapper.sent) - len(stored),
        "swap_answers": dict(kinds),
        "swap_errors": dict(Counter(answers.codes[e] for e in lost if e in answers.codes)),
        "swap_answer_s_max": _round(max(answer_s, default=None)),
        "swap_answer_s_max_around_kill": _round(max(around, default=None)),
        "swap_store_retries": sum(max(0, s.attempts - 1) for s in swapper.sent),
        "stale_epoch_frames_delivered": stale_epochs(r.meta.epoch for r in frames),
        "stale_epoch_frames_dropped": watcher.stale_epoch,
        "garment_after_matches_last_request": garment_matches(
            [r.meta.garment_id for r in frames[-LAST_FRAMES:]], last_requested
        ),
        "last_requested_garment": last_requested,
        "last_frames_garments": sorted({str(r.meta.garment_id) for r in frames[-LAST_FRAMES:]}),
        "frames_out": len(frames),
        "frames_out_after_kill": len(after),
        "output_epochs": len({r.meta.epoch for r in frames}),
        "error_events": dict(answers.errors),
        "events_refused_by_schema": dict(answers.schema_refused),
    }
    if cond_watcher is not None:
        cond = [(r.recv_ns, r.meta.epoch) for r in cond_watcher.frames]
        report["conditioning_resume_s"] = _round(largest_gap_s([t for t, _ in cond], kill_ns))
        report["conditioning_first_new_epoch_s"] = _round(first_new_epoch_s(cond, kill_ns))
        report["conditioning_stale_epoch_dropped"] = cond_watcher.stale_epoch
    report["goal_met"] = (
        report["resume_s"] is not None
        and report["resume_s"] <= GOAL_RESUME_S[phase]
        and report["lost_swaps"] == 0
        and report["swaps_never_stored"] == 0
        and report["stale_epoch_frames_delivered"] == 0
        and report["garment_after_matches_last_request"]
    )
    return report


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


async def run_phase(phase: str, stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    from runtime.bus import connect
    from runtime.fleet.view import open_view
    from runtime.media import read_image, sample_photo
    from runtime.settings import BaseSettings
    from services.camera.client import run_camera
    from services.camera.source import MotionCamera
    from services.garments.starter import add_starter_garments
    from services.watch.client import Watcher
    from shared import control
    from shared.garment_client import GarmentClient
    from shared.headers import now_ns
    from shared.subjects import Channel, Subjects

    subjects = Subjects(BaseSettings.from_env().subject_prefix)
    replicas = 3 if phase == "nats_node" else 1
    garments = [g for g in args.garments.split(",") if g]
    sid = f"failover-{phase.replace('_', '-')}"
    nc = await connect(stack.url, f"bench-failover-{phase}")
    tasks: list[asyncio.Task[Any]] = []
    view = None
    camera_stop = asyncio.Event()
    try:
        await add_starter_garments(GarmentClient(nc, subjects, timeout_s=60), garments)
        view = await open_view(nc.jetstream(), subjects, replicas)
        answers = Answers()
        await nc.subscribe(subjects.events(sid), cb=answers.on_event)
        watcher = Watcher(nc, subjects, sid, keep_frames=False)
        await watcher.start()
        cond_watcher = None
        if phase == "preprocess":
            cond_watcher = Watcher(nc, subjects, sid, keep_frames=False, channel=Channel.CONDITIONING)
            await cond_watcher.start()
        control_before = await stream_replicas(nc, subjects.control_stream)
        start = control.start(sid, garments[0], "auto", args.width, args.height, args.fps)
        started_ns, start_attempts = await store_control(nc, subjects, start, replicas)
        if not started_ns:
            raise RuntimeError(f"{phase}: the start was not stored within {STORE_GIVE_UP_S:.0f} s")
        photo = read_image(sample_photo("bus.jpg", fetch=True))
        frames = MotionCamera(photo, args.width, args.height).frames()
        tasks.append(
            asyncio.create_task(
                run_camera(nc, subjects, sid, frames, args.fps, stop=camera_stop), name="camera"
            )
        )
        if not await _wait_for(lambda: bool(watcher.frames), FIRST_FRAME_TIMEOUT_S):
            raise RuntimeError(f"{phase}: no output within {FIRST_FRAME_TIMEOUT_S:.0f} s: see {args.logs}")
        first_frame_s = (watcher.frames[0].recv_ns - start.published_ns) / 1e9
        swapper = Swapper(nc, subjects, sid, garments, args.swap_interval, replicas)
        tasks.append(asyncio.create_task(swapper.run(), name="swapper"))
        await asyncio.sleep(args.before)

        victim = await choose_victim(phase, stack, nc, view, subjects, sid)
        in_flight = sum(1 for s in swapper.sent if s.event_id not in answers.first_ns)
        kill_ns = now_ns()
        await asyncio.to_thread(victim.kill)
        await asyncio.sleep(args.after)
        swapper.stop.set()
        await tasks[-1]
        stored = [s.event_id for s in swapper.sent if s.stored_ns]
        settled = await _wait_for(
            lambda: not lost_swaps(stored, answers.by_event), args.settle, answers.changed
        )
        await asyncio.sleep(1.0)  # a few frames after the last answer, for the garment check
        camera_stop.set()
        await asyncio.wait(tasks, timeout=5.0)
        await watcher.stop()
        if cond_watcher is not None:
            await cond_watcher.stop()
        new_owner = view.owner("generator" if phase != "preprocess" else "preprocess", sid)
        report = phase_report(phase, watcher, cond_watcher, swapper, answers, kill_ns)
        report.update(
            victim=victim.what,
            victim_detail=victim.detail,
            swaps_in_flight_at_kill=in_flight,
            owner_after=new_owner[0].worker_id if new_owner else None,
            owner_after_epoch=new_owner[0].epoch if new_owner else None,
            owner_after_reason=new_owner[0].reason if new_owner else None,
            # an epoch is the wall-clock millisecond of the owner change (runtime.fleet.records.next_epoch)
            kill_to_owner_change_s=_round((new_owner[0].epoch * 1e6 - kill_ns) / 1e9)
            if new_owner and new_owner[0].epoch * 1_000_000 > kill_ns
            else None,
            settled=settled,
            first_output_after_start_s=round(first_frame_s, 2),
            control_stream_replicas_before_client=control_before,
            control_stream_replicas_after=await stream_replicas(nc, subjects.control_stream),
            start_store_attempts=start_attempts,
        )
        return report
    finally:
        camera_stop.set()
        for task in tasks:
            task.cancel()
        if view is not None:
            with contextlib.suppress(Exception):
                await view.close()
        with contextlib.suppress(Exception):
            await nc.drain()


def run_stack_phase(phase: str, args: argparse.Namespace) -> dict[str, Any]:
    from harness.stack import Stack

    env = {
        "CHAMELEON_OUT_WIDTH": str(args.width),
        "CHAMELEON_OUT_HEIGHT": str(args.height),
        "CHAMELEON_DEFAULT_GARMENT": args.garments.split(",")[0],
    }
    if args.backend:
        env["CHAMELEON_BACKEND"] = args.backend
    stack = Stack(
        PIPELINE,
        env=env,
        workers=2,
        log_dir=Path(args.logs) / phase if args.logs else None,
        nats_cluster=3 if phase == "nats_node" else 1,
        ready_timeout_s=120.0,
    )
    started = time.monotonic()
    with stack:
        start_s = time.monotonic() - started
        report = asyncio.run(run_phase(phase, stack, args))
    report["stack_start_s"] = round(start_s, 1)
    return report


HEADLINE = ("resume_s", "lost_swaps", "stale_epoch_frames_delivered", "stale_epoch_frames_dropped")


def summarise(results: Mapping[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"bench": "failover"}
    gen = results.get("generator")
    if gen is not None:  # the generator phase is the headline, as issue #12 names its keys
        report.update({k: gen[k] for k in HEADLINE})
        report["garment_after_matches_last_request"] = gen["garment_after_matches_last_request"]
    for phase, figures in results.items():
        report[phase] = figures
    report["goals"] = {phase: figures["goal_met"] for phase, figures in results.items()}
    report["settings"] = {
        "fps": args.fps,
        "size": f"{args.width}x{args.height}",
        "swap_interval_s": args.swap_interval,
        "before_s": args.before,
        "after_s": args.after,
        "workers": 2,
    }
    report.update(provenance())
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chameleon bench failover",
        description="Kill a session's generator owner, its preprocess owner and a NATS node mid-stream.",
    )
    p.add_argument("--json", action="store_true", help="print only the JSON report")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--backend", default="", help="generator backend (default: the stack's, warp on CPU)")
    p.add_argument("--garments", default=DEFAULT_GARMENTS, help="comma-separated garment ids to cycle")
    p.add_argument("--swap-interval", type=float, default=0.3, help="seconds between swaps")
    p.add_argument("--before", type=float, default=3.0, help="seconds of swaps before the kill")
    p.add_argument("--after", type=float, default=5.0, help="seconds of swaps after the kill")
    p.add_argument("--settle", type=float, default=15.0, help="seconds to wait for every swap's answer")
    p.add_argument("--logs", default="out/logs/failover", help="folder for service logs ('' : stderr)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        _parser().error(f"unknown phase {unknown[0]!r}; one of {', '.join(PHASES)}")
    from harness import progress

    with progress.elapsed(f"bench failover ({', '.join(phases)})", json=args.json):
        results = {phase: run_stack_phase(phase, args) for phase in phases}
    report = summarise(results, args)
    return emit(report, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
