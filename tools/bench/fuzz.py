"""``chameleon bench fuzz``: hostile input against a secure stack, every message accounted for
(issue #13).

A secure ``Stack`` (auth, garments, ingest, preprocess, generator with the warp backend), each
service logging to its own file. A good session streams the moving sample photo at 15 fps with its
own token and a ``Watcher`` on its output; its fps is measured before the fuzz and during it. A
second session's token then sends ``--messages`` hostile messages at ``--rate``:

- on its own camera subject: random bytes, truncated and corrupt JPEGs, a JPEG whose header lies
  about its size, valid JPEGs with absurd headers (seq 2^70, negative, a capture time in the
  future or in 1970, another session's id, huge widths, a bad trace, an unknown schema, an absurd
  owner epoch), msgpack garbage and control messages as frames, no headers at all;
- on its own control subject: random bytes, msgpack garbage, control maps of the wrong type,
  version, fields or field types, valid controls naming another session (start, swap, stop),
  swaps to unknown or malformed garments, unknown actions, empty event ids, a JPEG;
- garment ``get``/``list`` requests with junk (request/reply: each is answered or times out);
- publishes to subjects the token does not allow (the good session's camera and control, the
  service planes, the JetStream, KV and system APIs): the server refuses each one ("Permissions
  Violation", counted through ``error_cb``);
- the same camera/control/garment messages over connections with no credentials, a garbage
  token, an expired token and a token signed with another key: the server refuses the connection
  ("Authorization Violation"), so every message meant for it counts as refused.

While the fuzz runs the fuzz session also sends one valid frame a second, so its control consumer
stays bound (a session whose frames all fail goes idle and its control waits, stored, for its
return); those frames are not fuzz messages.

Every message ends in exactly one place:

- ``answered_with_error``: an answer of its own: an error event carrying the control message's
  event id (the generator answers each control message), or a garment error reply;
- ``answered_ok``: an answer that is not an error (a garment list for a junk category);
- ``counted_in_metrics``: no answer of its own, but counted by the services: a camera frame is
  rejected by code, dropped by reason or forwarded (``chameleon_frames_{rejected,dropped,out}_total``
  at ingest, the good session's and the keepalive frames taken out: both are sent between two
  quiet scrapes, so their numbers are exact), a control message the generator applied or found a
  duplicate of (``chameleon_control_total``);
- ``refused_by_server``: permission violations and refused connections;
- ``unaccounted`` = sent - answered_with_error - answered_ok - counted_in_metrics - refused_by_server.

Also reported: service processes that died (``crashes``), the good session's fps during over
before (``neighbour_fps_ratio``), and the lines written to the service log files from the first
scrape to the last over the messages sent (``log_lines_per_message``).

Then the **connection flood** (``flood``, ``--flood`` attempts, 0: none): that many connection
attempts from one other address (``127.0.0.2``, raw TCP speaking the NATS protocol: INFO,
CONNECT with a token, PING), each with one of ``--flood-tokens`` valid session tokens, at
``--flood-rate`` a second (at most ``FLOOD_PARALLEL`` in flight); every admitted connection is
held open until the phase ends, as a client hoarding connections would. Meanwhile the good
session streams on (``neighbour_fps_ratio``: its fps during the flood over before it) and
``FLOOD_GOOD_SESSIONS`` other sessions connect from ``127.0.0.1`` with their own tokens: every
one must get in. The auth service's refusals by limit (session, address) come from its
``/healthz``. The JSON report is the LAST line printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from harness import probe
from harness.session import open_session
from tools.bench.common import child_pids, cpu_total, emit, provenance
from tools.samples import with_sof_size

SERVICES = ["garments", "ingest", "preprocess", "generator"]  # + auth: a secure stack starts it
GARMENT = "tee-red-solid"
ROUTE_WEIGHTS = {"camera": 40, "control": 25, "garments": 10, "forbidden": 15, "no_credentials": 10}
NO_CREDENTIAL_BATCH = 50  # messages meant for one refused connection attempt
CREDENTIAL_VARIANTS = ("none", "garbage_token", "expired_token", "foreign_key_token")
KEEPALIVE_SEQ = 10**9  # the fuzz session's valid frames: a seq range no fuzz frame uses
GOALS = {"crashes": 0, "unaccounted": 0, "neighbour_fps_ratio": 0.9, "log_lines_per_message": 0.1}
FLOOD_SOURCE = "127.0.0.2"  # the flood's own address on loopback: the good sessions use 127.0.0.1
FLOOD_PARALLEL = 50  # connection attempts in flight at once
FLOOD_GOOD_SESSIONS = 8
FLOOD_TIMEOUT_S = 5.0


# -- the arithmetic (pure) ----------------------------------------------------------------------------
Sample = tuple[str, dict[str, str], float]


def parse_metrics(text: str) -> list[Sample]:
    """Prometheus text exposition → ``(name, labels, value)`` samples, read by prometheus_client's
    own parser (the services write it with the same library)."""
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def metric_sum(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def metric_by(samples: Iterable[Sample], name: str, label: str) -> dict[str, float]:
    """Samples named ``name`` summed by the value of one label."""
    out: Counter[str] = Counter()
    for n, lab, v in samples:
        if n == name:
            out[lab.get(label, "")] += v
    return dict(out)


def delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """``after - before`` per key, zeros left out (a counter absent before was 0)."""
    keys = set(after) | set(before)
    return {
        k: after.get(k, 0.0) - before.get(k, 0.0)
        for k in sorted(keys)
        if after.get(k, 0.0) != before.get(k, 0.0)
    }


def unaccounted(sent: int, answered: int, answered_ok: int, counted: int, refused: int) -> int:
    """Messages that ended nowhere: neither answered, nor counted by a service, nor refused by the
    server. Negative means something was counted twice: a bug in the accounting, not a success."""
    return sent - answered - answered_ok - counted - refused


def fps_between(arrivals: Iterable[tuple[int, int]], start_ns: int, end_ns: int) -> float:
    """Distinct frames (by seq) per second among ``(receive_ns, seq)`` arrivals in the window."""
    span_s = (end_ns - start_ns) / 1e9
    if span_s <= 0:
        raise ValueError("empty window")
    return len({seq for t, seq in arrivals if start_ns <= t < end_ns}) / span_s


def ratio(during: float, before: float) -> float:
    return during / before if before > 0 else 0.0


def count_lines(data: bytes) -> int:
    """Complete lines (newline-terminated) in ``data``."""
    return data.count(b"\n")


def goals(report: Mapping[str, Any]) -> dict[str, bool]:
    out = {
        "no_crashes": report["crashes"] == GOALS["crashes"],
        "none_unaccounted": report["unaccounted"] == GOALS["unaccounted"],
        "neighbour_fps_ratio_ge_0_9": report["neighbour_fps_ratio"] >= GOALS["neighbour_fps_ratio"],
        "log_lines_per_message_le_0_1": report["log_lines_per_message"] <= GOALS["log_lines_per_message"],
    }
    flood = report.get("flood")
    if flood:
        out.update(flood_goals(flood))
    return out


def flood_goals(flood: Mapping[str, Any]) -> dict[str, bool]:
    """The flood's goals: the neighbour keeps 0.9 of its fps, every good session gets in, and the
    flood holds no more than one address may (``CHAMELEON_MAX_CONNECTIONS_PER_ADDRESS``)."""
    return {
        "flood_neighbour_fps_ratio_ge_0_9": flood["neighbour_fps_ratio"] >= GOALS["neighbour_fps_ratio"],
        "flood_every_good_session_connects": flood["good_sessions_connected"] == flood["good_sessions_tried"]
        and flood["good_sessions_tried"] > 0,
        "flood_held_at_most_the_address_limit": flood["admitted"] <= flood["address_limit"],
    }


# -- the messages ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """One hostile message: where it goes and what it is."""

    route: str  # camera | control | garments_get | garments_list | forbidden | no_credentials
    family: str
    payload: bytes
    headers: dict[str, str] | None = None
    subject: str = ""  # forbidden: the subject; no_credentials: the inner route's subject
    fresh: bool = False  # headers get the capture time of the moment they are sent

    def headers_now(self) -> dict[str, str] | None:
        """The headers as sent: a frame meant to be judged on its payload or on one absurd
        header must not be dropped as stale first, so its capture time is now."""
        if not self.fresh or self.headers is None:
            return self.headers
        from shared.headers import H_CAPTURE_NS, H_TRACE, now_ns

        t = now_ns()
        return {**self.headers, H_CAPTURE_NS: str(t), H_TRACE: f"camera.out={t}"}


@dataclass
class Material:
    """What the probes are made of: real JPEGs of the sample photo and the session ids."""

    fuzz: str
    neighbour: str
    prefix: str
    good_jpeg: bytes
    small_jpeg: bytes
    width: int
    height: int


def _headers(m: Material, seq: int, capture_ns: int | None = None, **override: str) -> dict[str, str]:
    from shared.headers import FrameMeta, now_ns

    meta = FrameMeta(m.fuzz, seq, capture_ns or now_ns(), m.width, m.height).stamp("camera", "out")
    h = meta.to_headers()
    h.update(override)
    return h


def _msgpack_junk(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return rng.choice([0, -1, 2**63 - 1, -(2**63), 2**64 - 1, rng.randrange(-(10**9), 10**9)])
    if kind == 1:
        return rng.choice(["", "start", "swap", "x" * rng.randrange(1, 3000), "\u202e\x00\ufffd"])
    if kind == 2:
        return rng.random() * 10 ** rng.randrange(-5, 300)
    if kind == 3:
        return rng.randbytes(rng.randrange(0, 200))
    if kind == 4:
        return [_msgpack_junk(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    if kind == 5:
        return {
            str(_msgpack_junk(rng, 3))[:40]: _msgpack_junk(rng, depth + 1) for _ in range(rng.randrange(0, 5))
        }
    return {"type": "control", "v": 1, "action": rng.choice(["start", "swap", "stop", 7, None])}


def _pack(obj: Any) -> bytes:
    import msgpack

    return msgpack.packb(obj, use_bin_type=True)


def _control_dict(m: Material, rng: random.Random, **fields: Any) -> dict[str, Any]:
    from shared.headers import now_ns

    d: dict[str, Any] = {
        "type": "control",
        "v": 1,
        "action": "swap",
        "session_id": m.fuzz,
        "event_id": f"fz{rng.getrandbits(64):016x}",
        "published_ns": now_ns(),
        "garment_id": GARMENT,
        "backend": "auto",
        "width": 0,
        "height": 0,
        "fps": 0.0,
    }
    d.update(fields)
    return d


def _corrupt_scan(jpeg: bytes, rng: random.Random) -> bytes:
    sos = jpeg.index(b"\xff\xda")
    start = sos + 2 + ((jpeg[sos + 2] << 8) | jpeg[sos + 3])
    out = bytearray(jpeg)
    for _ in range(rng.randrange(1, 64)):
        out[rng.randrange(start, len(out) - 2)] = rng.randrange(0, 255)
    return bytes(out)


def camera_probe(m: Material, rng: random.Random, seq: int) -> Probe:
    from shared.headers import H_CAPTURE_NS, H_EPOCH, H_SCHEMA, H_SEQ, H_SESSION, H_TRACE, H_WIDTH, now_ns

    good = m.good_jpeg
    family = rng.choice(
        [
            "random_bytes",
            "no_headers",
            "truncated_jpeg",
            "corrupt_scan",
            "lying_size_jpeg",
            "absurd_seq",
            "future_capture",
            "ancient_capture",
            "wrong_session_header",
            "absurd_size",
            "bad_trace",
            "bad_schema",
            "absurd_epoch",
            "msgpack_frame",
            "control_as_frame",
        ]
    )
    h = _headers(m, seq)
    payload = good
    if family == "random_bytes":
        payload = rng.randbytes(rng.randrange(0, 20_000))
    elif family == "no_headers":
        payload, h = rng.randbytes(rng.randrange(0, 5000)), None
    elif family == "truncated_jpeg":
        payload = good[: rng.randrange(2, len(good) - 16)]
    elif family == "corrupt_scan":
        payload = _corrupt_scan(good, rng)
    elif family == "lying_size_jpeg":
        payload = with_sof_size(m.small_jpeg, m.width, m.height)
    elif family == "absurd_seq":
        h[H_SEQ] = rng.choice([str(2**70), "-5", "1.5", "0x10", " 7", "", "9" * 40])
    elif family == "future_capture":
        h[H_CAPTURE_NS] = str(now_ns() + rng.randrange(10**12, 10**18))  # >= 1000 s ahead
    elif family == "ancient_capture":
        h[H_CAPTURE_NS] = rng.choice(["1", str(10**18)])
    elif family == "wrong_session_header":
        h[H_SESSION] = rng.choice([m.neighbour, "../x", "*", "", "a" * 300])
    elif family == "absurd_size":
        h[H_WIDTH] = rng.choice(["1000000", "0", "60000", "-640", "6.4e2"])
    elif family == "bad_trace":
        h[H_TRACE] = rng.choice(["x=1;;", "camera.sideways=5", "camera.out=-1", "a.in=1;" * 40])
    elif family == "bad_schema":
        h[H_SCHEMA] = rng.choice(["99", "abc", "-1"])
    elif family == "absurd_epoch":
        h[H_EPOCH] = rng.choice([str(2**53 - 1), str(2**53), "-1", str(2**64)])
    elif family == "msgpack_frame":
        payload = _pack(_msgpack_junk(rng))
    elif family == "control_as_frame":
        payload = _pack(_control_dict(m, rng))
    keeps_time = family not in ("future_capture", "ancient_capture", "bad_trace", "no_headers")
    return Probe("camera", family, payload, h, fresh=keeps_time)


def control_probe(m: Material, rng: random.Random) -> Probe:
    family = rng.choice(
        [
            "random_bytes",
            "msgpack_junk",
            "wrong_type",
            "unknown_fields",
            "wrong_field_types",
            "other_session",
            "invalid_session_id",
            "unknown_garment",
            "malformed_garment",
            "unknown_action",
            "empty_event_id",
            "absurd_limits",
            "jpeg_as_control",
        ]
    )
    if family == "random_bytes":
        return Probe("control", family, rng.randbytes(rng.randrange(1, 4000)))
    if family == "msgpack_junk":
        return Probe("control", family, _pack(_msgpack_junk(rng)))
    if family == "jpeg_as_control":
        return Probe("control", family, m.small_jpeg)
    fields: dict[str, Any] = {}
    if family == "wrong_type":
        fields = rng.choice([{"type": "event"}, {"v": 2}, {"type": None}, {"v": "1"}])
    elif family == "unknown_fields":
        fields = {"admin": True, "x" * rng.randrange(1, 50): 1}
    elif family == "wrong_field_types":
        fields = rng.choice([{"width": "wide"}, {"published_ns": "now"}, {"fps": [1]}, {"event_id": 7}])
    elif family == "other_session":  # valid in every field but the session: someone else's
        fields = {"session_id": m.neighbour, "action": rng.choice(["start", "swap", "stop"])}
        if fields["action"] == "start":
            fields.update(width=4096, height=4096)
    elif family == "invalid_session_id":
        fields = {"session_id": rng.choice(["../../x", "*", "", "a" * 200, "_svc"])}
    elif family == "unknown_garment":
        fields = {"garment_id": f"no-such-{rng.getrandbits(32):08x}"}
    elif family == "malformed_garment":
        fields = {"garment_id": rng.choice(["../../etc/passwd", "x" * 5000, "a.b", "*", "\x00"])}
    elif family == "unknown_action":
        fields = {"action": rng.choice(["explode", "", "STOP", "start "])}
    elif family == "empty_event_id":
        fields = {"event_id": ""}
    elif family == "absurd_limits":
        fields = rng.choice(
            [{"action": "start", "width": -1}, {"action": "start", "fps": 1e9}, {"backend": "gpu9"}]
        )
    return Probe("control", family, _pack(_control_dict(m, rng, **fields)))


def garment_probe(m: Material, rng: random.Random) -> Probe:
    verb = rng.choice(["get", "list"])
    family = rng.choice(["random_bytes", "msgpack_junk", "absurd_id", "wrong_type"])
    if family == "random_bytes":
        payload = rng.randbytes(rng.randrange(0, 3000))
    elif family == "msgpack_junk":
        payload = _pack(_msgpack_junk(rng))
    elif family == "absurd_id":
        value = rng.choice(["../../etc/passwd", "x" * 5000, "", "*", "\u202e", "tee-red-solid\x00"])
        key, typ = ("garment_id", "garment_get") if verb == "get" else ("category", "garment_list")
        payload = _pack({"type": typ, "v": 1, key: value})
    else:
        payload = _pack({"type": "garment_encode" if verb == "get" else "control", "v": 1})
    return Probe(f"garments_{verb}", family, payload)


def forbidden_subjects(m: Material) -> list[str]:
    p, f, n = m.prefix, m.fuzz, m.neighbour
    return [
        f"{p}.{n}.camera",
        f"{p}.{n}.control",
        f"{p}.{f}.ingested",
        f"{p}.{f}.cond",
        f"{p}.{n}.out",
        f"{p}.{n}.events",
        f"{p}._svc.garments.encode",
        "$JS.API.STREAM.NAMES",
        f"$KV.{p.upper()}_SESSIONS.{n}",
        "$SYS.REQ.SERVER.PING",
    ]


def plan(m: Material, n: int, seed: int) -> list[Probe]:
    """``n`` probes, drawn by ``seed`` (the same seed gives the same messages, bar time stamps)."""
    rng = random.Random(seed)
    routes = list(ROUTE_WEIGHTS)
    weights = list(ROUTE_WEIGHTS.values())
    forbidden = forbidden_subjects(m)
    probes: list[Probe] = []
    for i in range(n):
        route = rng.choices(routes, weights)[0]
        if route == "camera":
            probes.append(camera_probe(m, rng, i))
        elif route == "control":
            probes.append(control_probe(m, rng))
        elif route == "garments":
            probes.append(garment_probe(m, rng))
        elif route == "forbidden":
            inner = rng.choice([camera_probe(m, rng, i), control_probe(m, rng)])
            subject = rng.choice(forbidden)
            probes.append(
                Probe("forbidden", inner.family, inner.payload, inner.headers, subject, inner.fresh)
            )
        else:
            inner = rng.choice([camera_probe(m, rng, i), control_probe(m, rng), garment_probe(m, rng)])
            probes.append(Probe("no_credentials", inner.family, inner.payload, inner.headers, inner.route))
    return probes


# -- the clients ----------------------------------------------------------------------------------------
@dataclass
class FuzzClient:
    """The fuzz session's connection and what came back to it."""

    nc: Any = None
    violations: Counter[str] = field(default_factory=Counter)  # "publish:<subject>" -> violations
    other_errors: list[str] = field(default_factory=list)
    control_answers: Counter[str] = field(default_factory=Counter)  # error code -> control errors
    control_ok_events: int = 0
    frame_error_events: Counter[str] = field(default_factory=Counter)
    frame_errors_suppressed: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    garment_error: Counter[str] = field(default_factory=Counter)
    garment_ok: int = 0
    garment_timeouts: int = 0
    garment_other: Counter[str] = field(default_factory=Counter)

    async def on_error(self, exc: Exception) -> None:
        text = str(exc)
        m = re.search(r'permissions violation for (publish|subscription) to "([^"]+)"', text, re.I)
        if m:
            self.violations[f"{m.group(1).lower()}:{m.group(2).lower()}"] += 1
        else:
            self.other_errors.append(text[:200])

    async def on_event(self, msg: Any) -> None:
        from shared.schemas import Event, SchemaError

        try:
            ev = Event.decode(msg.data)
        except SchemaError:
            return
        if ev.kind == "session_started":
            self.started.set()
        if ev.kind == "error" and "event_id" in ev.data:
            self.control_answers[ev.code] += 1
        elif ev.kind == "error":
            self.frame_error_events[ev.code] += 1
            self.frame_errors_suppressed += int(ev.data.get("suppressed", 0) or 0)
        elif "event_id" in ev.data and ev.code == "swap_superseded":
            self.control_ok_events += 1
        else:
            self.statuses[ev.code] += 1

    async def request(self, subject: str, payload: bytes, timeout_s: float, gate: asyncio.Semaphore) -> None:
        import msgpack

        async with gate:
            try:
                reply = await self.nc.request(subject, payload, timeout=timeout_s)
            except TimeoutError:
                self.garment_timeouts += 1
                return
            except Exception as exc:  # no responders, connection trouble: not an answer
                self.garment_other[type(exc).__name__] += 1
                return
        try:
            body = msgpack.unpackb(reply.data, raw=False)
            ok = bool(body.get("ok")) if isinstance(body, dict) else False
            code = str(body.get("error_code", "")) if isinstance(body, dict) else "undecodable"
        except Exception:
            ok, code = False, "undecodable_reply"
        if ok:
            self.garment_ok += 1
        else:
            self.garment_error[code or "error"] += 1


async def open_raw(url: str, creds: Any, client: FuzzClient | None = None, name: str = "fuzz") -> Any:
    """A nats-py connection that reports the server's errors to ``client`` and never reconnects."""
    from nats.aio.client import Client as NATS

    nc = NATS()

    async def ignore(_exc: Exception) -> None:
        return None

    await nc.connect(
        url,
        name=name,
        error_cb=client.on_error if client else ignore,
        allow_reconnect=False,
        connect_timeout=3,
        **(creds.connect_options() if creds is not None else {}),
    )
    return nc


@dataclass
class Refusals:
    """Connection attempts with bad credentials, and the messages each was meant to carry."""

    attempts: Counter[str] = field(default_factory=Counter)  # variant -> refused attempts
    refused_messages: int = 0
    admitted: Counter[str] = field(default_factory=Counter)  # variant -> attempts that connected (!)
    other: Counter[str] = field(default_factory=Counter)
    unrefused_messages: int = 0

    async def attempt(self, url: str, variant: str, token: str, batch: Sequence[Probe]) -> None:
        try:
            nc = await _connect_plain(url, {"token": token} if token else {})
        except Exception as exc:
            if "authorization violation" in str(exc).lower() or type(exc).__name__ == "AuthorizationError":
                self.attempts[variant] += 1
                self.refused_messages += len(batch)
            else:
                self.other[f"{variant}:{type(exc).__name__}"] += 1
                self.unrefused_messages += len(batch)
            return
        self.admitted[variant] += 1  # a security failure: the report shows it
        self.unrefused_messages += len(batch)
        await nc.close()


async def _connect_plain(url: str, opts: dict[str, Any]) -> Any:
    from nats.aio.client import Client as NATS

    nc = NATS()
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    try:
        await nc.connect(
            url, name="fuzz-nocreds", error_cb=on_error, allow_reconnect=False, connect_timeout=3, **opts
        )
    except Exception as exc:
        raise RuntimeError(f"{exc}; {' '.join(errors)}") from None
    return nc


def bad_tokens(token_seed: str, session_id: str) -> dict[str, str]:
    from services.auth.keys import AuthKeys
    from shared.tokens import mint

    return {
        "none": "",
        "garbage_token": "cht1.bm90IGpzb24.c2lnbmF0dXJl",
        "expired_token": mint(token_seed, session_id, 1.0, now=time.time() - 120),
        "foreign_key_token": mint(AuthKeys.generate().token_seed, session_id, 600.0),
    }


# -- the connection flood -------------------------------------------------------------------------------
@dataclass
class Flood:
    """Connection attempts of the flood, and the connections it holds."""

    attempts: int = 0
    admitted: int = 0
    refused: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # neither admitted nor refused: why
    held: list[asyncio.StreamWriter] = field(default_factory=list)
    seconds: float = 0.0

    async def attempt(self, host: str, port: int, token: str, source: str) -> None:
        """One connect as a raw client from ``source``: PONG admitted, -ERR refused."""
        self.attempts += 1
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, local_addr=(source, 0)), FLOOD_TIMEOUT_S
            )
            info = await asyncio.wait_for(reader.readline(), FLOOD_TIMEOUT_S)
            if not info.startswith(b"INFO"):
                raise ConnectionError(f"no INFO: {info[:40]!r}")
            connect = {"verbose": False, "pedantic": False, "auth_token": token, "name": "flood"}
            connect.update(lang="raw", version="0", protocol=1, headers=True, no_responders=True)
            writer.write(f"CONNECT {json.dumps(connect)}\r\nPING\r\n".encode())
            await writer.drain()
            answer = await asyncio.wait_for(reader.readline(), FLOOD_TIMEOUT_S)
        except Exception as exc:
            self.failed[type(exc).__name__] += 1
            if writer is not None:
                writer.close()
            return
        if answer.startswith(b"PONG"):
            self.admitted += 1
            self.held.append(writer)  # held until the flood ends
        elif answer.startswith(b"-ERR") and b"authorization violation" in answer.lower():
            self.refused += 1
            writer.close()
        else:
            self.failed[answer[:40].decode(errors="replace").strip()] += 1
            writer.close()

    async def run(
        self, url: str, tokens: Sequence[str], attempts: int, source: str, rate: float = 0.0
    ) -> None:
        """``attempts`` connects, ``rate`` a second (0: as fast as ``FLOOD_PARALLEL`` at once go)."""
        from urllib.parse import urlsplit

        where = urlsplit(url.split(",")[0])
        host, port = where.hostname or "127.0.0.1", where.port or 4222
        gate = asyncio.Semaphore(FLOOD_PARALLEL)
        t0 = time.monotonic()

        async def one(i: int) -> None:
            if rate > 0:
                await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            async with gate:
                await self.attempt(host, port, tokens[i % len(tokens)], source)

        await asyncio.gather(*(one(i) for i in range(attempts)))
        self.seconds = time.monotonic() - t0

    def release(self) -> None:
        for writer in self.held:
            writer.close()
        self.held.clear()


def flood_worker() -> None:
    """The flood's own process (``python -c "from tools.bench.fuzz import flood_worker; ..."``): its
    orders as one JSON line on stdin (url, tokens, attempts, source); one JSON line of figures on
    stdout once every attempt is answered; it then holds what it got until stdin closes. Apart
    from the measuring client, and at nice 19, as a client on another machine would be: its own
    CPU is not the servers' cost."""
    import sys

    os.nice(19)
    orders = json.loads(sys.stdin.readline())

    async def go() -> None:
        flood = Flood()
        await flood.run(orders["url"], orders["tokens"], orders["attempts"], orders["source"], orders["rate"])
        figures = {"attempts": flood.attempts, "admitted": flood.admitted, "refused": flood.refused}
        figures.update(failed=dict(flood.failed), seconds=flood.seconds)
        print(json.dumps(figures), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until released
        flood.release()

    asyncio.run(go())


async def good_sessions_connect(stack: Any, prefix: str, n: int) -> tuple[int, list[str]]:
    """``n`` new sessions connect from 127.0.0.1 with their own tokens: (connected, errors)."""
    from shared.client import connect

    connected, errors = 0, []
    for i in range(n):
        try:
            nc = await connect(
                stack.url,
                f"good-{i}",
                credentials=stack.session_credentials(f"{prefix}-{i}"),
                give_up_after_s=10,
            )
        except Exception as exc:
            errors.append(str(exc)[:200])
            continue
        connected += 1
        await nc.close()
    return connected, errors


def auth_health(stack: Any) -> dict[str, Any]:
    child = next((c for c in stack.children if c.name == "auth"), None)
    if child is None:
        return {}
    try:
        return probe.get_json(child.health_port)
    except (OSError, ValueError):
        return {}


async def connection_flood(
    stack: Any, subjects: Any, live: Any, frames: Any, first_seq: int, fps_before: float, args: Any
) -> dict[str, Any]:
    """Phase C (see the module docstring): the flood from ``FLOOD_SOURCE`` while the good session
    streams and new good sessions connect; its figures and goals."""
    from services.auth.settings import AuthSettings
    from services.camera.client import run_camera
    from shared.tokens import mint

    tokens = [mint(stack.keys.token_seed, f"flood-{i:04d}", 600) for i in range(max(1, args.flood_tokens))]
    before = auth_health(stack).get("refused_for_limits", {})
    stop = asyncio.Event()
    session = live.client
    cam = asyncio.create_task(
        run_camera(session.nc, subjects, session.session_id, frames, args.fps, stop=stop, first_seq=first_seq)
    )
    await asyncio.sleep(1.0)  # the camera's first frames through before the window opens
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from tools.bench.fuzz import flood_worker; flood_worker()",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert worker.stdin is not None and worker.stdout is not None
    orders = {"url": stack.url, "tokens": tokens, "attempts": args.flood, "source": FLOOD_SOURCE}
    orders["rate"] = args.flood_rate
    cpu_pids = [c.proc.pid for c in stack.children if c.name == "auth"]
    cpu_before = (cpu_total(cpu_pids), cpu_total(child_pids("nats-server")))
    t0 = time.time_ns()
    worker.stdin.write((json.dumps(orders) + "\n").encode())
    await worker.stdin.drain()
    await asyncio.sleep(0.2)  # the flood has begun: the good sessions connect while it runs
    connected, errors = await good_sessions_connect(stack, "flood-good", FLOOD_GOOD_SESSIONS)
    figures = json.loads(await asyncio.wait_for(worker.stdout.readline(), 300))
    held_s = (time.time_ns() - t0) / 1e9
    if held_s < args.flood_hold:  # the neighbour is measured over at least this long
        await asyncio.sleep(args.flood_hold - held_s)
    t1 = time.time_ns()
    cpu_after = (cpu_total(cpu_pids), cpu_total(child_pids("nats-server")))
    stop.set()
    await cam
    after = auth_health(stack).get("refused_for_limits", {})
    worker.stdin.close()  # the worker lets its connections go and exits
    await asyncio.wait_for(worker.wait(), 30)
    arrivals = [(r.recv_ns, r.meta.seq) for r in live.watcher.frames]
    fps_during = fps_between(arrivals, t0, t1)
    window_s = (t1 - t0) / 1e9
    report: dict[str, Any] = {
        "attempts": figures["attempts"],
        "admitted": figures["admitted"],
        "refused": figures["refused"],
        "failed": figures["failed"],
        "refused_by_limit": delta(after, before),
        "tokens": len(tokens),
        "source": FLOOD_SOURCE,
        "address_limit": AuthSettings.from_env().max_connections_per_address,
        "attempts_per_s": round(figures["attempts"] / max(figures["seconds"], 1e-9), 1),
        "flood_s": round(figures["seconds"], 2),
        "window_s": round(window_s, 2),
        "cpu_cores": {  # over the window: what answering the flood costs the servers
            "auth": round((cpu_after[0] - cpu_before[0]) / window_s, 3),
            "nats_server": round((cpu_after[1] - cpu_before[1]) / window_s, 3),
        },
        "good_sessions_tried": FLOOD_GOOD_SESSIONS,
        "good_sessions_connected": connected,
        "good_session_errors": errors[:3],
        "neighbour_fps_before": round(fps_before, 2),
        "neighbour_fps_during": round(fps_during, 2),
        "neighbour_fps_ratio": round(ratio(fps_during, fps_before), 3),
    }
    report["goals"] = flood_goals(report)
    return report


# -- the stack's side ---------------------------------------------------------------------------------
def scrape(stack: Any) -> dict[str, list[Sample]]:
    out = {}
    for c in stack.children:
        try:
            out[c.worker_id] = parse_metrics(probe.get(c.health_port, "/metrics", timeout_s=3).decode())
        except OSError:
            out[c.worker_id] = []
    return out


FRAME_METRICS = (
    "chameleon_frames_rejected_total",
    "chameleon_frames_dropped_total",
    "chameleon_frames_out_total",
)


def ingest_frames(samples: Mapping[str, list[Sample]]) -> float:
    """Every frame ingest handled: rejected, dropped or forwarded (the stack runs one ingest)."""
    s = samples.get("ingest-1", [])
    return sum(metric_sum(s, name) for name in FRAME_METRICS)


def control_outcomes(samples: Mapping[str, list[Sample]]) -> dict[str, float]:
    return metric_by(samples.get("generator-1", []), "chameleon_control_total", "outcome")


def service_deltas(after: Mapping[str, list[Sample]], before: Mapping[str, list[Sample]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = {
        "rejected": ("chameleon_frames_rejected_total", "code"),
        "dropped": ("chameleon_frames_dropped_total", "reason"),
        "control": ("chameleon_control_total", "outcome"),
        "garment_requests": ("chameleon_garment_requests_total", "outcome"),
    }
    for worker in sorted(after):
        d = {}
        for key, (name, label) in names.items():
            change = delta(
                metric_by(after[worker], name, label), metric_by(before.get(worker, []), name, label)
            )
            if change:
                d[key] = {k: int(v) for k, v in change.items()}
        for key, name in (
            ("frames_in", "chameleon_frames_in_total"),
            ("frames_out", "chameleon_frames_out_total"),
        ):
            change = metric_sum(after[worker], name) - metric_sum(before.get(worker, []), name)
            if change:
                d[key] = int(change)
        if d:
            out[worker] = d
    return out


def log_sizes(log_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(log_dir.glob("*.log"))}


def log_written(log_dir: Path, since: Mapping[str, int]) -> tuple[int, Counter[str], int]:
    """Lines written to each log since ``since`` (byte sizes): total, by event, and non-JSON."""
    total, raw = 0, 0
    events: Counter[str] = Counter()
    for p in sorted(log_dir.glob("*.log")):
        with open(p, "rb") as f:
            f.seek(since.get(p.name, 0))
            data = f.read()
        total += count_lines(data)
        for line in data.splitlines():
            try:
                events[f"{p.stem}:{json.loads(line).get('event', '?')}"] += 1
            except (ValueError, AttributeError):
                raw += 1
    return total, events, raw


async def settle(read: Any, target: float, timeout_s: float, quiet_s: float = 3.0) -> float:
    """Poll ``read()`` (in a thread) until it reaches ``target`` or stops changing for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while True:
        value = await asyncio.to_thread(read)
        if value >= target:
            return value
        if value != last:
            last, since = value, time.monotonic()
        elif time.monotonic() - since >= quiet_s or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.3)


# -- the run ----------------------------------------------------------------------------------------------
async def keepalive(nc: Any, subjects: Any, m: Material, frames: Sequence[bytes], stop: asyncio.Event) -> int:
    """One valid frame a second for the fuzz session (its control consumer stays bound)."""
    from shared.client import publish_frame
    from shared.headers import FrameMeta, now_ns

    sent, seq = 0, KEEPALIVE_SEQ
    while not stop.is_set():
        meta = FrameMeta(m.fuzz, seq, now_ns(), m.width, m.height).stamp("camera", "out")
        if await publish_frame(nc, subjects.camera(m.fuzz), frames[seq % len(frames)], meta):
            sent += 1
        seq += 1
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    await nc.flush()
    return sent


@dataclass
class Sender:
    sent: Counter[str] = field(default_factory=Counter)
    families: Counter[str] = field(default_factory=Counter)
    late_s: float = 0.0
    connection_lost: str = ""


async def send_all(
    probes: Sequence[Probe],
    rate: float,
    client: FuzzClient,
    refusals: Refusals,
    url: str,
    subjects: Any,
    m: Material,
    tokens: Mapping[str, str],
    timeout_s: float,
) -> Sender:
    nc = client.nc
    s = Sender()
    gate = asyncio.Semaphore(16)
    tasks: list[asyncio.Task[None]] = []
    batch: list[Probe] = []
    variant = 0

    def flush_batch() -> None:
        nonlocal variant
        if not batch:
            return
        name = CREDENTIAL_VARIANTS[variant % len(CREDENTIAL_VARIANTS)]
        variant += 1
        tasks.append(asyncio.create_task(refusals.attempt(url, name, tokens[name], list(batch))))
        batch.clear()

    t0 = time.monotonic()
    for i, p in enumerate(probes):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        s.late_s = max(s.late_s, -delay)
        if nc.is_closed:  # kicked or closed by the server: what is left is not sent, and says so
            s.connection_lost = f"closed after {i} messages: {client.other_errors[-1:] or 'no error'}"
            break
        s.sent[p.route] += 1
        s.families[f"{p.route}:{p.family}"] += 1
        if p.route == "camera":
            await nc.publish(subjects.camera(m.fuzz), p.payload, headers=p.headers_now())
        elif p.route == "control":
            await nc.publish(subjects.control(m.fuzz), p.payload)
        elif p.route in ("garments_get", "garments_list"):
            verb = p.route.split("_", 1)[1]
            tasks.append(
                asyncio.create_task(client.request(subjects.garments(verb), p.payload, timeout_s, gate))
            )
        elif p.route == "forbidden":
            await nc.publish(p.subject, p.payload, headers=p.headers_now())
        else:
            batch.append(p)
            if len(batch) >= NO_CREDENTIAL_BATCH:
                flush_batch()
        if i % 200 == 199 and not nc.is_closed:
            await nc.flush()
    flush_batch()
    if not nc.is_closed:
        await nc.flush()
    if tasks:
        await asyncio.wait(tasks)
    return s


async def measure(stack: Any, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    from runtime.media import encode_jpeg, read_image, sample_photo
    from runtime.settings import BaseSettings
    from services.camera.client import run_camera
    from services.camera.source import MotionCamera
    from shared import control
    from shared.subjects import Channel, Subjects

    subjects = Subjects(BaseSettings.from_env().subject_prefix)
    tag = f"{random.Random(args.seed).getrandbits(24):06x}"
    neighbour, fuzz = f"good-{tag}", f"fuzz-{tag}"
    photo = read_image(sample_photo("bus.jpg", fetch=True))
    cam = MotionCamera(photo, args.width, args.height)
    keep_frames = [encode_jpeg(cam.frame(i)) for i in range(8)]
    small = encode_jpeg(MotionCamera(photo, 176, 144).frame(0))
    m = Material(fuzz, neighbour, subjects.prefix, keep_frames[0], small, args.width, args.height)
    probes = plan(m, args.messages, args.seed)

    live = await open_session(
        stack,
        subjects,
        neighbour,
        GARMENT,
        width=args.width,
        height=args.height,
        fps=args.fps,
        name="bench-fuzz",
    )
    admin, good, watcher = live.admin, live.client.nc, live.watcher
    client = FuzzClient()
    client.nc = await open_raw(stack.url, stack.session_credentials(fuzz), client, f"fuzz-{fuzz}")
    await client.nc.subscribe(subjects.events(fuzz), cb=client.on_event)
    await client.nc.flush()
    await control.publish_control(
        client.nc, subjects, control.start(fuzz, GARMENT, "warp"), ensure_stream=False
    )
    await asyncio.wait_for(client.started.wait(), 60)

    # A: warm-up (until the good session's output flows) and the baseline window
    stop_a = asyncio.Event()
    frames = cam.frames()
    cam_a = asyncio.create_task(run_camera(good, subjects, neighbour, frames, args.fps, stop=stop_a))
    keep_a = asyncio.create_task(keepalive(client.nc, subjects, m, keep_frames, stop_a))
    if not await probe.wait_for(lambda: len(watcher.frames) > 0, 120, 0.2):
        raise RuntimeError("no output for the good session within 120 s: see the service logs")
    await asyncio.sleep(args.warmup)
    t_a0 = time.time_ns()
    await asyncio.sleep(args.baseline)
    t_a1 = time.time_ns()
    stop_a.set()
    report_a = await cam_a
    await keep_a
    await asyncio.sleep(1.0)  # the last frames through ingest: the scrape below is quiet

    before = await asyncio.to_thread(scrape, stack)
    logs_before = log_sizes(log_dir)
    pids_before = {c.worker_id: c.proc.pid for c in stack.children}

    # B: the fuzz, with the good session streaming and the fuzz session's keepalive
    stop_b, stop_keep = asyncio.Event(), asyncio.Event()
    first_b = report_a.published + report_a.skipped + 1
    cam_b = asyncio.create_task(
        run_camera(good, subjects, neighbour, frames, args.fps, stop=stop_b, first_seq=first_b)
    )
    keep_b = asyncio.create_task(keepalive(client.nc, subjects, m, keep_frames, stop_keep))
    refusals = Refusals()
    tokens = bad_tokens(stack.keys.token_seed, fuzz)
    sub_refused = []
    for subject in (subjects.output(neighbour), subjects.all_sessions(Channel.OUTPUT)):
        sub = await client.nc.subscribe(subject)
        sub_refused.append(subject)
        await client.nc.flush()
        await sub.unsubscribe()
    t_b0 = time.time_ns()
    sender = await send_all(
        probes, args.rate, client, refusals, stack.url, subjects, m, tokens, args.request_timeout
    )
    t_b1 = time.time_ns()
    stop_b.set()
    report_b = await cam_b
    fuzz_s = (t_b1 - t_b0) / 1e9

    # quiet again: every camera frame handled, every control message consumed, then the last scrape
    control_sent = sender.sent["control"]
    control_before = sum(control_outcomes(before).values())
    await settle(
        lambda: sum(control_outcomes(scrape(stack)).values()) - control_before,
        control_sent,
        args.settle_timeout,
    )
    stop_keep.set()
    keep_sent = await keep_b
    await asyncio.sleep(1.0)
    frames_target = sender.sent["camera"] + keep_sent + report_b.published
    await settle(
        lambda: ingest_frames(scrape(stack)) - ingest_frames(before), frames_target, args.settle_timeout
    )
    await asyncio.sleep(0.5)
    after = await asyncio.to_thread(scrape, stack)
    lines, by_event, raw_lines = log_written(log_dir, logs_before)

    arrivals = [(r.recv_ns, r.meta.seq) for r in watcher.frames]
    fps_before = fps_between(arrivals, t_a0, t_a1)
    flood = None
    if args.flood > 0:  # C: the connection flood, its own accounting (not messages)
        first_c = first_b + report_b.published + report_b.skipped + 1
        flood = await connection_flood(stack, subjects, live, frames, first_c, fps_before, args)

    crashed = [c.worker_id for c in stack.children if c.proc.poll() is not None]
    replaced = [c.worker_id for c in stack.children if pids_before.get(c.worker_id) != c.proc.pid]
    restarts = sum(c.restarts for c in stack.children)
    await watcher.stop()
    for nc in (client.nc, good, admin):
        try:
            await asyncio.wait_for(nc.drain(), 10)
        except Exception:
            await nc.close()

    fps_during = fps_between(arrivals, t_b0 + int(args.warmup * 1e9 / 4), t_b1)

    # the accounting
    frames_counted = int(ingest_frames(after) - ingest_frames(before)) - keep_sent - report_b.published
    outcomes = delta(control_outcomes(after), control_outcomes(before))
    control_counted = int(outcomes.get("applied", 0) + outcomes.get("duplicate", 0))
    control_answered = sum(client.control_answers.values())
    garment_answered = sum(client.garment_error.values())
    forbidden_refused = min(
        sender.sent["forbidden"], sum(v for k, v in client.violations.items() if k.startswith("publish:"))
    )
    refused = forbidden_refused + refusals.refused_messages
    answered = control_answered + garment_answered
    answered_ok = client.garment_ok + client.control_ok_events
    counted = frames_counted + control_counted
    sent = sum(sender.sent.values())
    garments_sent = sender.sent["garments_get"] + sender.sent["garments_list"]
    by_route = {
        "camera": {"sent": sender.sent["camera"], "counted": frames_counted},
        "control": {
            "sent": control_sent,
            "answered_with_error": control_answered,
            "answered_ok": client.control_ok_events,
            "counted": control_counted,
            "error_codes": dict(client.control_answers),
        },
        "garments": {
            "sent": garments_sent,
            "answered_with_error": garment_answered,
            "answered_ok": client.garment_ok,
            "timed_out": client.garment_timeouts,
            "failed": dict(client.garment_other),
            "error_codes": dict(client.garment_error),
        },
        "forbidden": {
            "sent": sender.sent["forbidden"],
            "refused": forbidden_refused,
            "violations_by_subject": dict(client.violations),
        },
        "no_credentials": {
            "sent": sender.sent["no_credentials"],
            "refused": refusals.refused_messages,
            "connections_refused": dict(refusals.attempts),
            "connections_admitted": dict(refusals.admitted),
            "connect_failed_otherwise": dict(refusals.other),
        },
    }
    for route in by_route.values():
        route["unaccounted"] = route["sent"] - sum(
            route.get(k, 0) for k in ("answered_with_error", "answered_ok", "counted", "refused")
        )
    report: dict[str, Any] = {
        "bench": "fuzz",
        "sent": sent,
        "crashes": len(set(crashed) | set(replaced)) + restarts,
        "answered_with_error": answered,
        "answered_ok": answered_ok,
        "counted_in_metrics": counted,
        "refused_by_server": refused,
        "unaccounted": unaccounted(sent, answered, answered_ok, counted, refused),
        "neighbour_fps_ratio": round(ratio(fps_during, fps_before), 3),
        "neighbour_fps_before": round(fps_before, 2),
        "neighbour_fps_during": round(fps_during, 2),
        "log_lines_per_message": round(lines / max(1, sent), 4),
        "log_lines": lines,
        "raw_log_lines": raw_lines,
        "log_lines_by_event": dict(by_event.most_common(12)),
        "by_route": by_route,
        "frame_error_events": dict(client.frame_error_events),
        "frame_errors_suppressed_in_events": client.frame_errors_suppressed,
        "subscribe_refused": {s: client.violations.get(f"subscription:{s.lower()}", 0) for s in sub_refused},
        "other_client_errors": client.other_errors[:5],
        "service_deltas": service_deltas(after, before),
        "keepalive_frames": keep_sent,
        "neighbour_frames": {"before": report_a.published, "during": report_b.published},
        "crashed": sorted(set(crashed) | set(replaced)),
        "fuzz_connection_lost": sender.connection_lost,
        "families": dict(sorted(sender.families.items())),
        "rate": args.rate,
        "fuzz_s": round(fuzz_s, 1),
        "sender_max_late_s": round(sender.late_s, 2),
        "seed": args.seed,
    }
    if flood is not None:
        report["flood"] = flood
    report["goals"] = goals(report)
    return report


def run(args: argparse.Namespace) -> dict[str, Any]:
    from harness.stack import Stack

    log_dir = Path(args.logs)
    shutil.rmtree(log_dir, ignore_errors=True)  # this bench's own folder: lines are counted in it
    env = {
        "CHAMELEON_BACKEND": "warp",
        "CHAMELEON_DEFAULT_GARMENT": GARMENT,
        "CHAMELEON_OUT_WIDTH": str(args.width),
        "CHAMELEON_OUT_HEIGHT": str(args.height),
        "CHAMELEON_LOG_JSON": "true",
    }
    started = time.monotonic()
    stack = Stack(SERVICES, env=env, log_dir=log_dir, secure=True, ready_timeout_s=180.0)
    with stack:
        stack_start_s = time.monotonic() - started
        report = asyncio.run(measure(stack, args, log_dir))
    report["stack_start_s"] = round(stack_start_s, 1)
    report["seconds"] = round(time.monotonic() - started, 1)
    report.update(provenance())
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chameleon bench fuzz",
        description="Hostile messages on every subject a session token allows (and some it does not), "
        "each accounted for, while a good session streams.",
    )
    p.add_argument("--json", action="store_true", help="print only the JSON report")
    p.add_argument("--messages", type=int, default=10_000, help="hostile messages to send")
    p.add_argument("--rate", type=float, default=250.0, help="hostile messages per second")
    p.add_argument("--fps", type=float, default=15.0, help="the good session's camera rate")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--baseline", type=float, default=10.0, help="seconds of the good session's fps before")
    p.add_argument(
        "--warmup", type=float, default=4.0, help="seconds after the first output before measuring"
    )
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--request-timeout", type=float, default=5.0, help="seconds a garment request may take")
    p.add_argument(
        "--settle-timeout", type=float, default=60.0, help="seconds to wait for the services to catch up"
    )
    p.add_argument(
        "--flood",
        type=int,
        default=1000,
        help="connection attempts of the flood phase from one address (0: none)",
    )
    p.add_argument("--flood-tokens", type=int, default=125, help="session tokens the flood cycles through")
    p.add_argument(
        "--flood-rate",
        type=float,
        default=100.0,
        help="connection attempts a second (0: as fast as they go); the neighbour is measured throughout",
    )
    p.add_argument(
        "--flood-hold",
        type=float,
        default=10.0,
        help="seconds the neighbour's fps is measured during the flood",
    )
    p.add_argument("--logs", default="out/logs/fuzz", help="folder for the service logs (emptied first)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.messages < 1 or args.rate <= 0 or args.fps <= 0:
        _parser().error("--messages, --rate and --fps must be positive")
    from harness import progress

    with progress.elapsed("bench fuzz", args.messages / args.rate, json=args.json):
        report = run(args)
    return emit(report, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
