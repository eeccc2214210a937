"""The ``chameleon`` command: one argparse parser with a sub-command (and a help line) per command;
each command gets its parsed arguments and the settings ``main`` read once from the environment.
Nothing runs at import.

The offline commands (``bench``, ``eval``, ``inspect``, ``train``) live in ``tools/``; the CLI
imports none of them. Each is an entry point of the group ``chameleon.tools`` in pyproject.toml
(``bench.fuzz = "tools.bench.fuzz:main"``), found by name when it is run; its help line is the
first sentence of its module's docstring, read without importing it.

Every command that talks to NATS gives up after a bound (``--timeout``, default
``CHAMELEON_CONNECT_TIMEOUT_S`` or 5 s) with one line naming the server, and exits non-zero: a
command line must never retry forever against a server that is not there."""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from runtime.logging import configure_logging
from runtime.service import cap_blas_threads
from runtime.settings import BaseSettings, SettingsError, env_value
from shared.auth import KeysFileError
from shared.client import NatsUnavailable

GARMENTS_HELP = "add, list and show garments; load the starter catalogue"
TOOLS_GROUP = "chameleon.tools"  # entry points: ``<command>.<name>`` or ``<command>`` -> ``module:main``
TOOL_COMMANDS = {
    "bench": "benchmarks: each prints one JSON object as its last line",
    "eval": "quality evaluations: swap policies, the warp renderer, real media, garments from photos, drift",
    "inspect": "look inside the student: where a new chunk attends",
    "train": "train the small student (docs/training.md)",
}


DEFAULT_CONNECT_TIMEOUT_S = 5.0
EXIT_NO_NATS = 2


def _nats_url_or_exit(settings: BaseSettings) -> str:
    url = settings.nats_url
    if not url:
        raise UsageError("set NATS_URL (or run `chameleon up` first, which prints it)")
    return url


def _existing_file(path: str, flag: str) -> str:
    """``path`` if it is a readable file; else a one-line mistake naming ``flag``."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag} {path}: {'is a folder' if p.is_dir() else 'no such file'}")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{flag} {path}: not readable")
    return path


def connect_timeout_s(env: Mapping[str, str] | None = None) -> float:
    """``CHAMELEON_CONNECT_TIMEOUT_S``, else 5 s: the default of every command's ``--timeout``."""
    raw = (os.environ if env is None else env).get("CHAMELEON_CONNECT_TIMEOUT_S", "")
    try:
        value = float(raw) if raw else DEFAULT_CONNECT_TIMEOUT_S
    except ValueError:
        raise SettingsError(f"CHAMELEON_CONNECT_TIMEOUT_S={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise SettingsError(f"CHAMELEON_CONNECT_TIMEOUT_S={raw!r} must be positive")
    return value


def _add_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to reach NATS (and, where one is sent, for JetStream to store a message) "
        "before giving up (default: CHAMELEON_CONNECT_TIMEOUT_S or 5)",
    )


def _add_token(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--token",
        default=os.environ.get("CHAMELEON_TOKEN", ""),
        help="session token from `chameleon session create` (default: CHAMELEON_TOKEN); "
        "without one: CHAMELEON_NATS_USER/PASSWORD, or none (an open server)",
    )


def _credentials(args: argparse.Namespace, session_id: str):  # type: ignore[no-untyped-def]
    """The credentials of ``--token`` (checked to be for ``session_id``), else None: the
    environment's."""
    from shared.auth import NatsCredentials, TokenFormatError, read_token

    if not args.token:
        return None
    try:
        claims = read_token(args.token)
    except TokenFormatError as exc:
        raise SettingsError(f"--token / CHAMELEON_TOKEN is not a session token ({exc})") from None
    if claims.session_id != session_id:
        raise SettingsError(f"the token is for session {claims.session_id!r}, not {session_id!r}")
    return NatsCredentials(token=args.token)


# -- camera / watch ---------------------------------------------------------------------------------
def add_camera(p: argparse.ArgumentParser) -> None:
    p.add_argument("--session", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video")
    src.add_argument("--image")
    src.add_argument("--webcam", type=int)
    p.add_argument("--motion", action="store_true", help="with --image: a moving camera over it")
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--frames", type=int, default=None, help="stop after N frames")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--loop", action="store_true", help="with --video: loop forever")
    _add_timeout(p)
    _add_token(p)


async def _session(args: argparse.Namespace, settings: BaseSettings, role: str):  # type: ignore[no-untyped-def]
    """The client side of ``--session`` (``shared.client.Session``), connected within ``--timeout``
    with ``--token`` or the environment's credentials; connection changes are logged."""
    from runtime.bus import connect
    from shared.client import Session
    from shared.subjects import Subjects

    credentials = _credentials(args, args.session)
    url = _nats_url_or_exit(settings)
    nc = await connect(url, f"{role}-{args.session}", give_up_after_s=args.timeout, credentials=credentials)
    return Session(
        nc,
        args.session,
        Subjects(settings.subject_prefix),
        ensure_stream=credentials is None,  # a session token may publish control, not make the stream
        timeout_s=args.timeout,
        replicas=settings.js_replicas,
    )


def cmd_camera(args: argparse.Namespace, settings: BaseSettings) -> int:
    _credentials(args, args.session)  # a wrong token fails before a camera opens

    from runtime.media import MediaError, read_image
    from services.camera.client import run_camera
    from services.camera.source import Motion, MotionCamera, SourceError, video_frames, webcam_frames

    _nats_url_or_exit(settings)  # before a webcam's light goes on
    try:  # every source opens here: a missing file or camera is one line, before NATS
        if args.video:
            frames = video_frames(_existing_file(args.video, "--video"), loop=args.loop)
        elif args.webcam is not None:
            frames = webcam_frames(args.webcam)
        else:
            motion = None if args.motion else Motion.still()
            photo = read_image(_existing_file(args.image, "--image"))
            frames = MotionCamera(photo, args.width, args.height, motion).frames()
    except (SourceError, MediaError) as exc:
        raise UsageError(str(exc)) from None

    async def go() -> None:
        session = await _session(args, settings, "camera")
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        report = await run_camera(
            session.nc, session.subjects, session.session_id, frames, args.fps, args.frames, stop=stop
        )
        await session.close()
        counts = {"published": report.published, "skipped": report.skipped}
        print(json.dumps({**counts, "link_dropped": report.link_dropped}))

    asyncio.run(go())
    return 0


def add_watch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--session", required=True)
    p.add_argument("--out", help="write the frames to this video file")
    p.add_argument("--fps", type=float, default=15.0, help="frame rate of the written video")
    p.add_argument("--frames", type=int, default=None, help="stop after N frames")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    _add_timeout(p)
    _add_token(p)


def cmd_watch(args: argparse.Namespace, settings: BaseSettings) -> int:
    from services.watch.client import Watcher

    async def go() -> dict:
        session = await _session(args, settings, "watch")
        w = Watcher(session.nc, session.subjects, session.session_id, keep_frames=bool(args.out))
        await w.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        deadline = time.monotonic() + args.seconds if args.seconds else None
        while not stop.is_set():
            if args.frames and len(w.frames) >= args.frames:
                break
            if deadline and time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        await w.stop()
        await session.close()
        summary = w.summary()
        if args.out:
            summary["video_frames"] = w.write_video(args.out, args.fps)
        return summary

    print(json.dumps(asyncio.run(go())))
    return 0


# -- up / demo ----------------------------------------------------------------------------------------
def add_up(p: argparse.ArgumentParser) -> None:
    from harness.stack import default_data_dir

    p.add_argument("--services", help="comma-separated subset (default: all that exist)")
    p.add_argument("--no-catalogue", action="store_true", help="do not load the starter catalogue")
    p.add_argument("--workers", type=int, default=1, help="processes of each of preprocess and generator")
    p.add_argument(
        "--hang-timeout",
        type=float,
        default=5.0,
        help="seconds without a healthy /healthz before a service is killed and restarted",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"JetStream store of the embedded server, kept across runs (default: {default_data_dir()})",
    )
    p.add_argument(
        "--nats-cluster",
        type=int,
        default=1,
        metavar="N",
        help="run an N-node JetStream cluster (3: streams and buckets get 3 replicas) instead of one server",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="no authorization: anyone who can reach the server may do anything (experiments only)",
    )
    p.add_argument(
        "--web-port",
        type=int,
        default=int(os.environ.get("CHAMELEON_WEB_PORT") or 8080),
        help="the shopper page's port on 127.0.0.1 (0: a free one); the URL is printed",
    )
    p.add_argument(
        "--metrics-port-base",
        type=int,
        default=0,
        metavar="PORT",
        help="serve each service's /metrics and /healthz on a stable port from PORT on (service k, "
        "worker i: PORT + 10*k + i - 1; the ports are printed); default: a free port each",
    )
    _add_timeout(p)


def cmd_up(args: argparse.Namespace, settings: BaseSettings) -> int:
    from harness.natsserver import NatsServerError
    from harness.stack import Stack, StackError, available_services, default_data_dir, stable_port_span

    if args.workers < 1 or args.nats_cluster < 1:
        raise UsageError("--workers and --nats-cluster must be at least 1")
    if args.metrics_port_base and not 1024 <= args.metrics_port_base <= 65535 - stable_port_span():
        raise UsageError(f"--metrics-port-base must be 1024 to {65535 - stable_port_span()}")
    if settings.nats_url and (args.nats_cluster > 1 or args.data_dir):
        print(
            "chameleon up: NATS_URL is set, so no embedded server: --nats-cluster/--data-dir unused",
            file=sys.stderr,
        )
    secure = not args.insecure and not settings.nats_url
    if args.insecure:
        print(
            "chameleon up: --insecure: NATS is OPEN. Anyone who can reach it may read every session's "
            "video, publish into any session and delete the streams. Experiments only.",
            file=sys.stderr,
            flush=True,
        )
    elif settings.nats_url:
        print(
            "chameleon up: NATS_URL is set: authorization is that server's own config (docs/security.md); "
            "services connect with CHAMELEON_NATS_USER/PASSWORD from the environment, if any",
            file=sys.stderr,
        )
    names = args.services.split(",") if args.services else available_services()
    stack = Stack(
        names,
        nats_url=settings.nats_url,
        workers=args.workers,
        data_dir=args.data_dir or default_data_dir(),
        nats_cluster=args.nats_cluster,
        hang_timeout_s=args.hang_timeout,
        secure=secure,
        web_port=args.web_port,
        metrics_port_base=args.metrics_port_base,
    )
    stopped = False

    def on_signal(*_: object) -> None:
        nonlocal stopped
        stopped = True

    try:
        stack.start()
    except NatsServerError as exc:
        if "in use by another nats-server" in str(exc):
            raise UsageError(
                f"{stack.data_dir} is in use by another `chameleon up` (or nats-server): stop it, "
                "or give this one its own --data-dir"
            ) from None
        raise UsageError(f"the embedded nats-server did not start: {str(exc).splitlines()[0]}") from None
    except StackError as exc:
        raise UsageError(str(exc)) from None
    try:
        if "garments" in names and not args.no_catalogue:
            starter = _add_starter_garments(
                stack.url, settings.subject_prefix, args.timeout, stack.admin_credentials
            )
            asyncio.run(starter)
        data_dir = str(stack.data_dir) if stack.nats is not None else None
        workers = {c.worker_id: c.health_port for c in stack.children}
        auth = "on" if secure else "off"
        print(
            json.dumps(
                {
                    "nats_url": stack.url,
                    "ws_url": stack.ws_url or None,
                    "web_url": stack.web_url or None,
                    "data_dir": data_dir,
                    "auth": auth,
                    "services": workers,
                }
            )
        )
        if stack.web_url:
            print(f"chameleon up: the shopper page is at {stack.web_url}", flush=True)
        if secure and stack.data_dir is not None:
            _record_url(stack.data_dir, stack.url, stack.ws_url)
            print(
                f"export NATS_URL={stack.url}   # then: chameleon session create NAME (a token for "
                "camera / watch / swap --token); Ctrl-C stops all",
                flush=True,
            )
        else:
            print(
                f"export NATS_URL={stack.url}   # then: chameleon camera / watch; Ctrl-C stops all",
                flush=True,
            )
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not stopped:
            for action in stack.supervise_once():
                print(f"chameleon up: {action}", file=sys.stderr, flush=True)
            time.sleep(0.5)
    finally:
        stack.stop()
        if secure and stack.data_dir is not None:  # the URL it recorded is gone with it
            (stack.data_dir / UP_RECORD).unlink(missing_ok=True)
    return 0


UP_RECORD = "up.json"  # in the data dir: the URL of the running `up`, for `session create`


def _record_url(data_dir: Path, url: str, ws_url: str = "") -> None:
    record = {"nats_url": url, "ws_url": ws_url or None, "pid": os.getpid()}
    (data_dir / UP_RECORD).write_text(json.dumps(record) + "\n")


async def _add_starter_garments(
    url: str,
    subject_prefix: str,
    connect_timeout: float,
    credentials=None,  # type: ignore[no-untyped-def]
) -> None:
    from runtime.bus import connect
    from services.garments.starter import add_starter_garments
    from shared.garment_client import GarmentClient
    from shared.subjects import Subjects

    nc = await connect(url, "up-catalogue", give_up_after_s=connect_timeout, credentials=credentials)
    try:  # the catalogue as a shop would photograph it, through the real `garments add` path
        await add_starter_garments(
            GarmentClient(nc, Subjects(subject_prefix), timeout_s=60), photos=_catalogue_photos()
        )
    finally:
        await nc.drain()


def add_demo(p: argparse.ArgumentParser) -> None:
    from services.cli import demo

    demo.add_arguments(p)


def cmd_demo(args: argparse.Namespace, settings: BaseSettings) -> int:
    from services.cli import demo

    for flag in ("video", "image"):
        if getattr(args, flag, None):
            _existing_file(getattr(args, flag), f"--{flag}")

    return demo.run(args, settings)


WRITES_CATALOGUE = ("add", "load-catalogue")


def cmd_garments(argv: list[str]) -> int:
    """``chameleon garments ...``: the garment service's own command line parses ``argv``."""
    try:
        from services.garments import cli
    except ModuleNotFoundError as exc:
        print(f"the garment service is not available in this build ({exc})", file=sys.stderr)
        return 2
    from shared.auth import ADMIN_USER, ENV_TOKEN, ENV_USER

    helping = "-h" in argv or "--help" in argv
    if argv and argv[0] in WRITES_CATALOGUE and not helping and os.environ.get(ENV_TOKEN):
        if os.environ.get(ENV_USER) != ADMIN_USER:  # the server would refuse the publish, silently
            raise UsageError(
                f"`garments {argv[0]}` needs the admin user ({ENV_USER}={ADMIN_USER} and its password); "
                f"a session token ({ENV_TOKEN}) may only list and show garments"
            )
    return int(cli.main(argv, connect_timeout_s=connect_timeout_s(), photos=_catalogue_photos()) or 0)


def add_swap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--session", required=True)
    p.add_argument("--garment", required=True)
    p.add_argument("--event-id", help="idempotency key (default: a new one)")
    p.add_argument("--wait", type=float, default=5.0, help="seconds to wait for swap_applied (0: no wait)")
    _add_timeout(p)
    _add_token(p)


def cmd_swap(args: argparse.Namespace, settings: BaseSettings) -> int:
    import nats.errors
    import nats.js.errors

    from shared import control
    from shared.schemas import Event

    async def go() -> int:
        session = await _session(args, settings, "swap")
        outcome: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        msg = control.swap(args.session, args.garment, args.event_id)

        def on_event(ev: Event) -> None:
            if ev.data.get("event_id") == msg.event_id and not outcome.done():
                outcome.set_result(ev)

        await session.events(on_event)
        unavailable = (
            asyncio.TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.ServiceUnavailableError,
        )
        try:  # the whole exchange is bounded, not each of its JetStream requests
            seq = await asyncio.wait_for(session.send(msg), args.timeout)
        except unavailable as exc:
            await session.nc.close()
            print(
                f"chameleon swap: JetStream at {settings.nats_url} did not store the swap within "
                f"{args.timeout:g} s ({type(exc).__name__})",
                file=sys.stderr,
            )
            return EXIT_NO_NATS
        result: dict = {"event_id": msg.event_id, "stream_seq": seq}
        if args.wait > 0:
            try:
                ev = await asyncio.wait_for(outcome, args.wait)
                result.update(kind=ev.kind, code=ev.code, message=ev.message, **ev.data)
            except TimeoutError:
                result["kind"] = "pending"  # stored durably: applied when a generator serves the session
        await session.close()
        print(json.dumps(result))
        return 1 if result.get("kind") == "error" else 0

    return asyncio.run(go())


def add_session(p: argparse.ArgumentParser) -> None:
    from harness.stack import default_data_dir
    from shared.tokens import DEFAULT_TTL_S, MAX_TTL_S

    sub = p.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="mint a token that opens one session and nothing else")
    create.add_argument("session")
    create.add_argument("--ttl", type=float, default=DEFAULT_TTL_S, help=f"seconds (at most {MAX_TTL_S:.0f})")
    create.add_argument(
        "--data-dir", type=Path, default=None, help=f"that of `chameleon up` (default: {default_data_dir()})"
    )
    create.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_session(args: argparse.Namespace, settings: BaseSettings) -> int:
    """``chameleon session create SESSION``: a bearer token for one session, signed with the token
    key of a secure ``chameleon up`` (its data dir), expiring after ``--ttl`` seconds."""
    from datetime import datetime, timezone

    from harness.stack import KEYS_FILE, default_data_dir
    from services.auth.keys import AuthKeys
    from shared.auth import read_token
    from shared.subjects import InvalidSessionId
    from shared.tokens import KeysError, mint, public_key

    data_dir = args.data_dir or default_data_dir()
    keys_file = data_dir / KEYS_FILE
    seed = "" if args.data_dir else (env_value(os.environ, ENV_TOKEN_SEED) or "")  # compose: a secret file
    if not seed and not keys_file.exists():
        print(
            f"chameleon session: no keys at {keys_file}: run `chameleon up` (secure) first", file=sys.stderr
        )
        return 2
    try:
        token_seed = seed or AuthKeys.load(keys_file).token_seed
        token = mint(token_seed, args.session, args.ttl)
    except (KeysError, InvalidSessionId, ValueError) as exc:
        print(f"chameleon session: {exc}", file=sys.stderr)
        return 2
    url, ws_url = advertised_urls(settings.nats_url, os.environ)
    if (data_dir / UP_RECORD).exists():
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = json.loads((data_dir / UP_RECORD).read_text())
            url = url or record["nats_url"]
            ws_url = ws_url or record.get("ws_url") or ""
    check_url = settings.nats_url or url  # the one this process reaches (compose: the internal name)
    keys_source = ENV_TOKEN_SEED if seed else str(keys_file)
    if check_url and (refusal := _token_refused(check_url, token, public_key(token_seed), keys_source)):
        print(f"chameleon session: {refusal}", file=sys.stderr)
        return 2
    expires = datetime.fromtimestamp(read_token(token).expires_at, timezone.utc)
    result = {
        "session_id": args.session,
        "nats_url": url or None,
        "ws_url": ws_url or None,
        "token": token,
        "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"export CHAMELEON_TOKEN={token}   # session {args.session}, expires {result['expires_at']}")
        if url:
            print(f"export NATS_URL={url}")
    return 0


def _token_refused(url: str, token: str, ours: str, keys_source: str) -> str:
    """Why the server at ``url`` would refuse a token just minted from ``keys_source``, with the fix,
    when its keys are not those of that server; empty otherwise. Asked of the deployment's auth
    service (``shared.client.explain_token``): a server that cannot be asked gets a note on
    stderr and the token (it may be meant for later)."""
    from shared.client import explain_token

    verdict = asyncio.run(explain_token(url, token, timeout_s=connect_timeout_s()))
    if not verdict.asked:
        print(f"chameleon session: the token is not checked against {url}: {verdict.note}", file=sys.stderr)
        return ""
    if verdict.auth_error.startswith("bad token signature"):
        theirs = verdict.auth_error.rpartition(" ")[2]
        return (
            f"the server at {url} refuses tokens signed with the keys in {keys_source} (token key "
            f"{ours[:12]}…; it expects {theirs[:12]}…): pass the --data-dir of the `chameleon up` that "
            "runs it (its first JSON line names it), or point NATS_URL at the server those keys are for"
        )
    if verdict.auth_error:  # the session is at its connection limit, say: the token itself is good
        print(f"chameleon session: note: {url} would refuse it now: {verdict.auth_error}", file=sys.stderr)
    return ""


GRAFANA_PASSWORD = "grafana_admin_password"
ENV_TOKEN_SEED = "CHAMELEON_TOKEN_SEED"  # the token key's seed for `session create` (or ..._FILE)


def advertised_urls(nats_url: str, env: Mapping[str, str]) -> tuple[str, str]:
    """The NATS and WebSocket URLs a client outside is told: ``CHAMELEON_PUBLIC_NATS_URL`` (else
    ``NATS_URL``, which inside compose is an internal name) and ``CHAMELEON_WS_URL``, each with
    ``{host}`` filled by the first of ``CHAMELEON_PUBLIC_HOSTS`` (compose: one setting for all)."""
    from services.web.origins import choose_host, fill, parse_hosts

    host = choose_host("", parse_hosts(env.get("CHAMELEON_PUBLIC_HOSTS", "")))
    public = env.get("CHAMELEON_PUBLIC_NATS_URL", "")
    return fill(public or nats_url, host), fill(env.get("CHAMELEON_WS_URL", ""), host)


def add_auth(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    init = sub.add_parser(
        "init",
        help="make (or keep) the keys; write nats.conf and one file per secret beside them",
        description="A deployment's keys (auth-keys.json, kept across runs), the nats-server config "
        "that trusts them, and one file per secret (issuer_seed, token_seed, token_public_key, "
        "<user>_password) for compose to hand each service only its own (docs/security.md).",
    )
    init.add_argument(
        "--out", type=Path, required=True, help="folder of auth-keys.json, nats.conf, the secrets"
    )
    init.add_argument("--listen", default="0.0.0.0:4222", help="client listener")
    init.add_argument("--http", default="0.0.0.0:8222", help="monitor (/healthz); empty: none")
    init.add_argument("--websocket", default="0.0.0.0:8443", help="browser listener; empty: none")
    init.add_argument(
        "--ws-origin", action="append", default=[], help="a page origin browsers may connect from (repeat)"
    )
    init.add_argument(
        "--public-hosts",
        default=os.environ.get("CHAMELEON_PUBLIC_HOSTS", ""),
        help="the host names browsers reach the page by, comma-separated (default: CHAMELEON_PUBLIC_HOSTS): "
        "each gives the origins http://HOST:WEB_PORT and https://HOST",
    )
    init.add_argument("--web-port", type=int, default=8080, help="the page's port as browsers see it")
    init.add_argument("--store-dir", default="/data", help="JetStream store, as the server sees it")
    init.add_argument(
        "--owner",
        action="append",
        default=[],
        metavar="NAME=UID[:GID]",
        help="who owns a written file (nats.conf, a secret's name, or 'store' for --store-dir; "
        "repeat), so each service's user can read its own secrets and nothing else; a bare UID: every file",
    )


def _owners(specs: list[str]) -> dict[str, tuple[int, int]]:
    """``--owner`` values: ``{name: (uid, gid)}`` (``"*"`` for a bare UID: every file)."""
    owners = {}
    for spec in specs:
        name, _, ids = spec.rpartition("=")
        uid, _, gid = ids.partition(":")
        try:
            owners[name or "*"] = (int(uid), int(gid or uid))
        except ValueError:
            raise UsageError(f"--owner {spec!r}: not NAME=UID[:GID]") from None
    return owners


def cmd_auth(args: argparse.Namespace, settings: BaseSettings) -> int:
    """``chameleon auth init --out DIR``: a deployment's keys file, the nats-server config that
    trusts it (accounts, service users, the auth callout, a WebSocket listener admitting the page's
    origins only), and one file per secret; compose runs it once (docs/security.md)."""
    from harness.natsserver import server_config
    from harness.stack import KEYS_FILE
    from services.auth.keys import AuthKeys, write_secret
    from services.web.origins import page_origins, parse_hosts
    from shared.subjects import Subjects

    owners = _owners(args.owner)
    args.out.mkdir(parents=True, exist_ok=True)
    keys_file, conf = args.out / KEYS_FILE, args.out / "nats.conf"
    created = not keys_file.exists()
    keys = AuthKeys.load_or_create(keys_file)  # kept across runs: tokens and passwords stay valid
    hosts = parse_hosts(args.public_hosts)
    origins = list(dict.fromkeys([*args.ws_origin, *(page_origins(hosts, args.web_port) if hosts else [])]))
    lines = server_config(
        args.listen,
        args.store_dir,
        http=args.http,
        websocket=args.websocket,
        websocket_origins=tuple(origins),
        auth=keys.server_auth(Subjects(settings.subject_prefix)),
    )
    files = {"nats.conf": "\n".join(lines), **keys.secret_files()}
    grafana = args.out / GRAFANA_PASSWORD  # the dashboards' admin: not a NATS user, made once and kept
    files[GRAFANA_PASSWORD] = grafana.read_text().strip() if grafana.exists() else secrets.token_urlsafe(24)
    unknown = set(owners) - {*files, "store", "*"}
    if unknown:
        raise UsageError(f"--owner {sorted(unknown)[0]}: no such file (one of: {', '.join(files)}, store)")
    for name, content in files.items():
        write_secret(args.out / name, content, owners.get(name, owners.get("*")))
    if "store" in owners:  # the server's own user must write its JetStream store
        Path(args.store_dir).mkdir(parents=True, exist_ok=True)
        os.chown(args.store_dir, *owners["store"])
    print(
        json.dumps(
            {
                "keys_file": str(keys_file),
                "nats_conf": str(conf),
                "secrets": sorted(n for n in files if n != "nats.conf"),
                "ws_origins": origins,
                "created": created,
            }
        )
    )
    return 0


def cmd_media(args: argparse.Namespace, settings: BaseSettings) -> int:
    """Extract the real photos and clips into the media cache (part of set-up; each source that
    cannot be reached is named with why, and what needs it skips)."""
    from harness.real_media import fetch_all
    from runtime.media import media_dir

    sources = fetch_all()
    path = media_dir()
    files = sorted(p.name for p in Path(path).iterdir()) if path.is_dir() else []
    print(json.dumps({"media_dir": str(path), "files": files, "sources": sources}))
    return 0 if all(v == "ok" for v in sources.values()) else 1


def _no_arguments(p: argparse.ArgumentParser) -> None:
    pass


Command = Callable[[argparse.Namespace, BaseSettings], int]
# name -> (help line, arguments, run)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Command]] = {
    "camera": ("publish camera frames (a video, a photo, a webcam) into a session", add_camera, cmd_camera),
    "watch": ("receive a session's generated frames; report FPS and latency", add_watch, cmd_watch),
    "up": ("run NATS and every service, restarting any that exits or hangs", add_up, cmd_up),
    "demo": ("run the pipeline on a sample input, with swaps and measured quality", add_demo, cmd_demo),
    "swap": ("change a session's garment", add_swap, cmd_swap),
    "session": ("per-session credentials: mint a session token", add_session, cmd_session),
    "auth": ("a deployment's keys and nats-server config", add_auth, cmd_auth),
    "media": ("extract the real photos and clips into the media cache", _no_arguments, cmd_media),
}


class UsageError(ValueError):
    """Arguments that parse but do not go together."""


def tools(command: str) -> dict[str, EntryPoint]:
    """The tools of ``chameleon <command>``, by name ("" for a command that is one tool)."""
    found = {}
    for ep in entry_points(group=TOOLS_GROUP):
        group, _, name = ep.name.partition(".")
        if group == command:
            found[name] = ep
    return found


def help_line(ep: EntryPoint) -> str:
    """The first sentence of the tool module's docstring, read from its source (importing a tool
    can mean importing torch)."""
    try:
        spec = importlib.util.find_spec(ep.module)
        source = Path(spec.origin).read_text() if spec and spec.origin else ""
        text = ast.get_docstring(ast.parse(source)) or ""
    except (ImportError, OSError, SyntaxError):
        return "(not available in this build)"
    first = " ".join(text.split("\n\n")[0].split())
    if first.startswith("``chameleon") and "``:" in first:
        first = first.split("``:", 1)[1].strip()
    return first.split(". ")[0].rstrip(".")


def run_tool(command: str, argv: list[str]) -> int:
    """``chameleon <command> [NAME] ARGS``: the tool's own ``main(ARGS)``."""
    found = tools(command)
    if "" in found:  # the command is one tool
        ep, rest = found[""], argv
    else:
        p = argparse.ArgumentParser(prog=f"chameleon {command}", description=TOOL_COMMANDS[command])
        sub = p.add_subparsers(dest="name", required=True, metavar="NAME")
        for name, entry in sorted(found.items()):
            sub.add_parser(name, help=help_line(entry), add_help=False)
        ep, rest = found[p.parse_args(argv[:1]).name], argv[1:]
    try:
        tool_main = ep.load()
    except ModuleNotFoundError as exc:
        print(f"chameleon {command} {ep.name}: not available in this build ({exc})", file=sys.stderr)
        return 2
    return int(tool_main(rest) or 0)


def version() -> str:
    try:
        return metadata.version("fashion-chameleon")
    except metadata.PackageNotFoundError:  # a checkout run without installing it
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chameleon",
        description="FashionChameleon: real-time garment swapping",
        epilog="`chameleon COMMAND --help` shows a command's options without running it.",
    )
    p.add_argument("--version", action="version", version=f"chameleon {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (line, add, _run) in COMMANDS.items():
        add(sub.add_parser(name, help=line, description=line))
    for name, line in {"garments": GARMENTS_HELP, **TOOL_COMMANDS}.items():
        sub.add_parser(name, help=line, add_help=False)  # each parses its own arguments; listed for --help
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # the commands, not argparse's one-line complaint
        parser().print_help(sys.stderr)
        return 2
    known = {*COMMANDS, "garments", *TOOL_COMMANDS}
    if not argv[0].startswith("-") and argv[0] not in known:
        print(f"chameleon: unknown command {argv[0]!r} (the commands: chameleon --help)", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        try:
            if argv and argv[0] == "garments":
                _start(argv[0])
                return cmd_garments(argv[1:])
            if argv and argv[0] in TOOL_COMMANDS:
                _start(argv[0])
                return run_tool(argv[0], argv[1:])
            args = parser().parse_args(argv)
            settings = _start(args.command)
            if getattr(args, "timeout", 0) is None:
                args.timeout = connect_timeout_s()
            return COMMANDS[args.command][2](args, settings)
        except NatsUnavailable as exc:  # one line, no traceback: the server is simply not there
            print(f"chameleon {argv[0]}: {exc}", file=sys.stderr)
            return EXIT_NO_NATS
        except (SettingsError, UsageError, KeysFileError) as exc:
            print(f"chameleon {argv[0]}: {exc}", file=sys.stderr)
            return 2
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
            where = f": {exc.filename}" if exc.filename else ""
            print(f"chameleon {argv[0]}: {exc.strerror or exc}{where}", file=sys.stderr)
            return 2
    return 130


def _start(command: str) -> BaseSettings:
    """What every command does first: the settings, logging, one BLAS thread."""
    settings = BaseSettings.from_env()
    configure_logging(settings.log_level, settings.log_json, service=f"cli-{command}")
    cap_blas_threads()
    return settings


def _catalogue_photos():  # type: ignore[no-untyped-def]
    from harness.recorder import catalogue_photos_source

    return catalogue_photos_source()


if __name__ == "__main__":
    sys.exit(main())
