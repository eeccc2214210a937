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
import signal
import sys
import time
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from runtime.logging import configure_logging
from runtime.service import cap_blas_threads
from runtime.settings import BaseSettings, SettingsError
from shared.client import NatsUnavailable

GARMENTS_HELP = "add, list and show garments; load the starter catalogue"
TOOLS_GROUP = "chameleon.tools"  # entry points: ``<command>.<name>`` or ``<command>`` -> ``module:main``
TOOL_COMMANDS = {
    "bench": "benchmarks: each prints one JSON object as its last line",
    "eval": "quality evaluations: swap policies, the warp renderer, long-rollout drift",
    "inspect": "look inside the student: where a new chunk attends",
    "train": "train the small student (docs/training.md)",
}


DEFAULT_CONNECT_TIMEOUT_S = 5.0
EXIT_NO_NATS = 2


def _nats_url_or_exit(settings: BaseSettings) -> str:
    url = settings.nats_url
    if not url:
        sys.exit("set NATS_URL (or run `chameleon up` first, which prints it)")
    return url


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

    from runtime.media import read_image
    from services.camera.client import run_camera
    from services.camera.source import Motion, MotionCamera, video_frames, webcam_frames

    if args.video:
        frames = video_frames(args.video, loop=args.loop)
    elif args.webcam is not None:
        frames = webcam_frames(args.webcam)
    else:
        motion = None if args.motion else Motion.still()
        frames = MotionCamera(read_image(args.image), args.width, args.height, motion).frames()

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
    _add_timeout(p)


def cmd_up(args: argparse.Namespace, settings: BaseSettings) -> int:
    from harness.stack import Stack, available_services, default_data_dir

    if args.workers < 1 or args.nats_cluster < 1:
        raise UsageError("--workers and --nats-cluster must be at least 1")
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
    )
    stopped = False

    def on_signal(*_: object) -> None:
        nonlocal stopped
        stopped = True

    stack.start()
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
    try:
        await add_starter_garments(GarmentClient(nc, Subjects(subject_prefix), timeout_s=60))
    finally:
        await nc.drain()


def add_demo(p: argparse.ArgumentParser) -> None:
    from services.cli import demo

    demo.add_arguments(p)


def cmd_demo(args: argparse.Namespace, settings: BaseSettings) -> int:
    from services.cli import demo

    return demo.run(args, settings)


def cmd_garments(argv: list[str]) -> int:
    """``chameleon garments ...``: the garment service's own command line parses ``argv``."""
    try:
        from services.garments import cli
    except ModuleNotFoundError as exc:
        print(f"the garment service is not available in this build ({exc})", file=sys.stderr)
        return 2
    return int(cli.main(argv, connect_timeout_s=connect_timeout_s()) or 0)


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
    from shared.tokens import KeysError, mint

    data_dir = args.data_dir or default_data_dir()
    keys_file = data_dir / KEYS_FILE
    if not keys_file.exists():
        print(
            f"chameleon session: no keys at {keys_file}: run `chameleon up` (secure) first", file=sys.stderr
        )
        return 2
    try:
        keys = AuthKeys.load(keys_file)
        token = mint(keys.token_seed, args.session, args.ttl)
    except (KeysError, InvalidSessionId, ValueError) as exc:
        print(f"chameleon session: {exc}", file=sys.stderr)
        return 2
    url, ws_url = settings.nats_url, os.environ.get("CHAMELEON_WS_URL", "")
    if (data_dir / UP_RECORD).exists():
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = json.loads((data_dir / UP_RECORD).read_text())
            url = url or record["nats_url"]
            ws_url = ws_url or record.get("ws_url") or ""
    if url and (refusal := _token_refused(url, token, keys.token_public, keys_file)):
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


def _token_refused(url: str, token: str, ours: str, keys_file: Path) -> str:
    """Why the server at ``url`` would refuse a token just minted from ``keys_file``, with the fix,
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
            f"the server at {url} refuses tokens signed with the keys in {keys_file} (token key "
            f"{ours[:12]}…; it expects {theirs[:12]}…): pass the --data-dir of the `chameleon up` that "
            f"runs it (its first JSON line names it), or point NATS_URL at the server of {keys_file.parent}"
        )
    if verdict.auth_error:  # the session is at its connection limit, say: the token itself is good
        print(f"chameleon session: note: {url} would refuse it now: {verdict.auth_error}", file=sys.stderr)
    return ""


def add_auth(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    init = sub.add_parser("init", help="make (or keep) the keys and write nats.conf beside them")
    init.add_argument("--out", type=Path, required=True, help="folder of auth-keys.json and nats.conf")
    init.add_argument("--listen", default="0.0.0.0:4222", help="client listener")
    init.add_argument("--http", default="0.0.0.0:8222", help="monitor (/healthz); empty: none")
    init.add_argument("--websocket", default="0.0.0.0:8443", help="browser listener; empty: none")
    init.add_argument(
        "--ws-origin", action="append", default=[], help="a page origin browsers may connect from (repeat)"
    )
    init.add_argument("--store-dir", default="/data", help="JetStream store, as the server sees it")
    init.add_argument("--owner", type=int, default=None, help="uid that owns both files (the services' user)")


def cmd_auth(args: argparse.Namespace, settings: BaseSettings) -> int:
    """``chameleon auth init --out DIR``: a deployment's keys file and the nats-server config that
    trusts it (accounts, service users, the auth callout, a WebSocket listener), as ``chameleon up``
    makes for its embedded server; compose runs it once into a volume (docs/security.md)."""
    from harness.natsserver import server_config
    from harness.stack import KEYS_FILE
    from services.auth.keys import AuthKeys
    from shared.subjects import Subjects

    keys_file, conf = args.out / KEYS_FILE, args.out / "nats.conf"
    created = not keys_file.exists()
    keys = AuthKeys.load_or_create(keys_file)  # kept across runs: tokens and passwords stay valid
    lines = server_config(
        args.listen,
        args.store_dir,
        http=args.http,
        websocket=args.websocket,
        websocket_origins=tuple(args.ws_origin),
        auth=keys.server_auth(Subjects(settings.subject_prefix)),
    )
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    if args.owner is not None:
        for path in (keys_file, conf):
            os.chown(path, args.owner, -1)
    print(json.dumps({"keys_file": str(keys_file), "nats_conf": str(conf), "created": created}))
    return 0


def cmd_media(args: argparse.Namespace, settings: BaseSettings) -> int:
    """Extract the sample photos into the media cache (part of set-up)."""
    from runtime.media import ensure_sample_media

    path = ensure_sample_media(fetch=True)
    print(json.dumps({"media_dir": str(path), "files": sorted(p.name for p in Path(path).iterdir())}))
    return 0


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
    "media": ("extract the sample photos into the media cache", _no_arguments, cmd_media),
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chameleon", description="FashionChameleon: real-time garment swapping")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (line, add, _run) in COMMANDS.items():
        add(sub.add_parser(name, help=line, description=line))
    for name, line in {"garments": GARMENTS_HELP, **TOOL_COMMANDS}.items():
        sub.add_parser(name, help=line, add_help=False)  # each parses its own arguments; listed for --help
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
        except (SettingsError, UsageError) as exc:
            print(f"chameleon {argv[0]}: {exc}", file=sys.stderr)
            return 2
    return 130


def _start(command: str) -> BaseSettings:
    """What every command does first: the settings, logging, one BLAS thread."""
    settings = BaseSettings.from_env()
    configure_logging(settings.log_level, settings.log_json, service=f"cli-{command}")
    cap_blas_threads()
    return settings


if __name__ == "__main__":
    sys.exit(main())
