"""The ``chameleon`` command. Each sub-command parses its own arguments and gets the settings
``main`` read once from the environment; nothing runs at import.

Every command that talks to NATS gives up after a bound (``--timeout``, default
``CHAMELEON_CONNECT_TIMEOUT_S`` or 5 s) with one line naming the server, and exits non-zero: a
command line must never retry forever against a server that is not there."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from shared.bus import NatsUnavailable
from shared.logging import configure_logging
from shared.service import cap_blas_threads
from shared.settings import BaseSettings, SettingsError

# Benchmarks and tools living in their own packages: name -> module with ``main(argv) -> int``.
DELEGATES: dict[tuple[str, str], str] = {
    ("bench", "preprocess"): "tools.bench.preprocess",
    ("bench", "garments"): "tools.bench.garments",
    ("bench", "engine"): "tools.bench.engine",
    ("bench", "capacity"): "tools.bench.capacity",
    ("bench", "failover"): "tools.bench.failover",
    ("bench", "load"): "tools.bench.load",
    ("bench", "fuzz"): "tools.bench.fuzz",
    ("bench", "soak"): "tools.bench.soak",
    ("bench", "gpu"): "tools.bench.gpu",
    ("bench", "browser"): "tools.bench.browser",
    ("inspect", "attention"): "tools.inspect_attention",
    ("eval", "swap"): "tools.training.evaluate",
    ("eval", "render"): "tools.eval.render",
    ("eval", "drift"): "tools.eval.drift",
    ("eval", "garments"): "tools.eval.garments",
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
        default=connect_timeout_s(),
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
def cmd_camera(argv: list[str], settings: BaseSettings) -> int:
    p = argparse.ArgumentParser(prog="chameleon camera", description="publish camera frames")
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
    args = p.parse_args(argv)
    credentials = _credentials(args, args.session)

    from services.camera.client import run_camera
    from services.camera.source import Motion, MotionCamera, video_frames, webcam_frames
    from shared.bus import connect
    from shared.media import read_image
    from shared.subjects import Subjects

    if args.video:
        frames = video_frames(args.video, loop=args.loop)
    elif args.webcam is not None:
        frames = webcam_frames(args.webcam)
    else:
        motion = None if args.motion else Motion.still()
        frames = MotionCamera(read_image(args.image), args.width, args.height, motion).frames()

    async def go() -> None:
        nc = await connect(
            _nats_url_or_exit(settings),
            f"camera-{args.session}",
            give_up_after_s=args.timeout,
            credentials=credentials,
        )
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        report = await run_camera(
            nc,
            Subjects(settings.subject_prefix),
            args.session,
            frames,
            args.fps,
            args.frames,
            stop=stop,
        )
        await nc.drain()
        print(json.dumps({"published": report.published, "skipped": report.skipped}))

    asyncio.run(go())
    return 0


def cmd_watch(argv: list[str], settings: BaseSettings) -> int:
    p = argparse.ArgumentParser(prog="chameleon watch", description="receive generated frames")
    p.add_argument("--session", required=True)
    p.add_argument("--out", help="write the frames to this video file")
    p.add_argument("--fps", type=float, default=15.0, help="frame rate of the written video")
    p.add_argument("--frames", type=int, default=None, help="stop after N frames")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    _add_timeout(p)
    _add_token(p)
    args = p.parse_args(argv)
    credentials = _credentials(args, args.session)

    from services.watch.client import Watcher
    from shared.bus import connect
    from shared.subjects import Subjects

    async def go() -> dict:
        nc = await connect(
            _nats_url_or_exit(settings),
            f"watch-{args.session}",
            give_up_after_s=args.timeout,
            credentials=credentials,
        )
        w = Watcher(nc, Subjects(settings.subject_prefix), args.session, keep_frames=bool(args.out))
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
        await nc.drain()
        summary = w.summary()
        if args.out:
            summary["video_frames"] = w.write_video(args.out, args.fps)
        return summary

    print(json.dumps(asyncio.run(go())))
    return 0


# -- up / demo ----------------------------------------------------------------------------------------
def cmd_up(argv: list[str], settings: BaseSettings) -> int:
    from services.cli.stack import Stack, available_services, default_data_dir

    p = argparse.ArgumentParser(
        prog="chameleon up", description="run NATS and every service, restarting any that exits or hangs"
    )
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
    args = p.parse_args(argv)
    if args.workers < 1 or args.nats_cluster < 1:
        p.error("--workers and --nats-cluster must be at least 1")
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
            asyncio.run(
                _load_catalogue(stack.url, settings.subject_prefix, args.timeout, stack.admin_credentials)
            )
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


async def _load_catalogue(
    url: str,
    subject_prefix: str,
    connect_timeout: float,
    credentials=None,  # type: ignore[no-untyped-def]
) -> None:
    from services.garments.starter import load_catalogue
    from shared.bus import connect
    from shared.garment_client import GarmentClient
    from shared.subjects import Subjects
    from tools.product_photos import catalogue_product_photos

    nc = await connect(url, "up-catalogue", give_up_after_s=connect_timeout, credentials=credentials)
    try:  # the catalogue as a shop would photograph it, through the real `garments add` path
        await load_catalogue(
            GarmentClient(nc, Subjects(subject_prefix), timeout_s=60), photos=catalogue_product_photos
        )
    finally:
        await nc.drain()


def cmd_demo(argv: list[str], settings: BaseSettings) -> int:
    from services.cli import demo

    p = argparse.ArgumentParser(prog="chameleon demo", description="run the pipeline on a sample input")
    demo.add_arguments(p)
    return demo.run(p.parse_args(argv), settings)


def cmd_bench(argv: list[str], settings: BaseSettings) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        names = ["transport"] + [k[1] for k in DELEGATES if k[0] == "bench"]
        print(f"usage: chameleon bench {{{','.join(names)}}} [--json] ...")
        return 0 if argv else 2
    if argv[0] == "transport":
        from tools.bench import transport as bench_transport

        return bench_transport.main(argv[1:])
    return _delegate("bench", argv)


def _delegate(group: str, argv: list[str]) -> int:
    if not argv:
        print(f"usage: chameleon {group} NAME ...", file=sys.stderr)
        return 2
    module = DELEGATES.get((group, argv[0]))
    if module is None:
        print(f"unknown: chameleon {group} {argv[0]}", file=sys.stderr)
        return 2
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        print(f"chameleon {group} {argv[0]} is not available in this build ({exc})", file=sys.stderr)
        return 2
    return int(mod.main(argv[1:]) or 0)


def cmd_garments(argv: list[str], settings: BaseSettings) -> int:
    try:
        from services.garments import cli
    except ModuleNotFoundError as exc:
        print(f"the garment service is not available in this build ({exc})", file=sys.stderr)
        return 2
    from tools.product_photos import catalogue_product_photos

    return int(cli.main(argv, connect_timeout_s=connect_timeout_s(), photos=catalogue_product_photos) or 0)


def cmd_swap(argv: list[str], settings: BaseSettings) -> int:
    p = argparse.ArgumentParser(prog="chameleon swap", description="change a session's garment")
    p.add_argument("--session", required=True)
    p.add_argument("--garment", required=True)
    p.add_argument("--event-id", help="idempotency key (default: a new one)")
    p.add_argument("--wait", type=float, default=5.0, help="seconds to wait for swap_applied (0: no wait)")
    _add_timeout(p)
    _add_token(p)
    args = p.parse_args(argv)
    credentials = _credentials(args, args.session)

    import nats.errors
    import nats.js.errors

    from shared import control
    from shared.bus import connect
    from shared.schemas import Event
    from shared.subjects import Subjects

    async def go() -> int:
        subjects = Subjects(settings.subject_prefix)
        url = _nats_url_or_exit(settings)
        nc = await connect(url, f"swap-{args.session}", give_up_after_s=args.timeout, credentials=credentials)
        outcome: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        msg = control.swap(args.session, args.garment, args.event_id)

        async def on_event(m) -> None:  # type: ignore[no-untyped-def]
            ev = Event.decode(m.data)
            mine = ev.data.get("event_id") == msg.event_id
            if mine and not outcome.done():
                outcome.set_result(ev)

        await nc.subscribe(subjects.events(args.session), cb=on_event)
        stored = control.publish_control(  # a session client may publish, not create the stream
            nc,
            subjects,
            msg,
            replicas=settings.js_replicas,
            timeout_s=args.timeout,
            ensure_stream=credentials is None,
        )
        unavailable = (
            asyncio.TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.ServiceUnavailableError,
        )
        try:  # the whole exchange is bounded, not each of its JetStream requests
            seq = await asyncio.wait_for(stored, args.timeout)
        except unavailable as exc:
            await nc.close()
            print(
                f"chameleon swap: JetStream at {url} did not store the swap within {args.timeout:g} s "
                f"({type(exc).__name__})",
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
        await nc.drain()
        print(json.dumps(result))
        return 1 if result.get("kind") == "error" else 0

    return asyncio.run(go())


def cmd_session(argv: list[str], settings: BaseSettings) -> int:
    """``chameleon session create SESSION``: a bearer token for one session, signed with the token
    key of a secure ``chameleon up`` (its data dir), expiring after ``--ttl`` seconds."""
    from datetime import datetime, timezone

    from services.auth.keys import AuthKeys
    from services.cli.stack import KEYS_FILE, default_data_dir
    from shared.auth import read_token
    from shared.subjects import InvalidSessionId
    from shared.tokens import DEFAULT_TTL_S, MAX_TTL_S, KeysError, mint

    p = argparse.ArgumentParser(prog="chameleon session", description="per-session credentials")
    sub = p.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="mint a token that opens one session and nothing else")
    create.add_argument("session")
    create.add_argument("--ttl", type=float, default=DEFAULT_TTL_S, help=f"seconds (at most {MAX_TTL_S:.0f})")
    create.add_argument(
        "--data-dir", type=Path, default=None, help=f"that of `chameleon up` (default: {default_data_dir()})"
    )
    create.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    keys_file = data_dir / KEYS_FILE
    if not keys_file.exists():
        print(
            f"chameleon session: no keys at {keys_file}: run `chameleon up` (secure) first", file=sys.stderr
        )
        return 2
    try:
        token = mint(AuthKeys.load(keys_file).token_seed, args.session, args.ttl)
    except (KeysError, InvalidSessionId, ValueError) as exc:
        print(f"chameleon session: {exc}", file=sys.stderr)
        return 2
    url, ws_url = settings.nats_url, os.environ.get("CHAMELEON_WS_URL", "")
    if (data_dir / UP_RECORD).exists():
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = json.loads((data_dir / UP_RECORD).read_text())
            url = url or record["nats_url"]
            ws_url = ws_url or record.get("ws_url") or ""
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


def cmd_auth(argv: list[str], settings: BaseSettings) -> int:
    """``chameleon auth init --out DIR``: a deployment's keys file and the nats-server config that
    trusts it (accounts, service users, the auth callout, a WebSocket listener), as ``chameleon up``
    makes for its embedded server; compose runs it once into a volume (docs/security.md)."""
    from services.auth.keys import AuthKeys
    from services.cli.stack import KEYS_FILE
    from shared.natsserver import server_config
    from shared.subjects import Subjects

    p = argparse.ArgumentParser(prog="chameleon auth", description="a deployment's keys and server config")
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
    args = p.parse_args(argv)
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


def cmd_train(argv: list[str], settings: BaseSettings) -> int:
    """Train the small student (autoencoder, then in-context teacher forcing; ``--stage dmd``: the
    self-forcing + distribution-matching stage from a checkpoint): docs/training.md."""
    from tools.training import train

    return int(train.main(argv) or 0)


def cmd_media(argv: list[str], settings: BaseSettings) -> int:
    """Extract the sample photos into the media cache (part of set-up)."""
    from shared.media import ensure_sample_media

    path = ensure_sample_media(fetch=True)
    print(json.dumps({"media_dir": str(path), "files": sorted(p.name for p in Path(path).iterdir())}))
    return 0


COMMANDS: dict[str, Callable[[list[str], BaseSettings], int]] = {
    "camera": cmd_camera,
    "watch": cmd_watch,
    "up": cmd_up,
    "demo": cmd_demo,
    "bench": cmd_bench,
    "garments": cmd_garments,
    "swap": cmd_swap,
    "session": cmd_session,
    "auth": cmd_auth,
    "inspect": lambda argv, _settings: _delegate("inspect", argv),
    "eval": lambda argv, _settings: _delegate("eval", argv),
    "train": cmd_train,
    "media": cmd_media,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: chameleon {" + ",".join(COMMANDS) + "} [options]   (chameleon CMD --help)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    settings = BaseSettings.from_env()
    configure_logging(settings.log_level, settings.log_json, service=f"cli-{argv[0]}")
    cap_blas_threads()
    with contextlib.suppress(KeyboardInterrupt):
        try:
            return COMMANDS[argv[0]](argv[1:], settings)
        except NatsUnavailable as exc:  # one line, no traceback: the server is simply not there
            print(f"chameleon {argv[0]}: {exc}", file=sys.stderr)
            return EXIT_NO_NATS
        except SettingsError as exc:
            print(f"chameleon {argv[0]}: {exc}", file=sys.stderr)
            return 2
    return 130


if __name__ == "__main__":
    sys.exit(main())
