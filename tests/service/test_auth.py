"""Per-session credentials enforced by a real nats-server with authorization on: the auth service
answers its callout in this event loop, clients connect with tokens, services with their users.

A refusal is asserted as what the server says ("permissions violation" for that subject reaching
the client's ``error_cb``, "Authorization Violation" at connect), never inferred from a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig
from nats.js.errors import KeyNotFoundError

from harness.natsserver import EmbeddedNats
from harness.stack import KEYS_FILE
from runtime.bus import connect
from runtime.service import serve_in_task
from services.auth.handlers import AuthHandlers
from services.auth.keys import AuthKeys
from services.auth.settings import AuthSettings
from shared import control
from shared.auth import ADMIN_USER, SYSTEM_USER, NatsCredentials
from shared.client import NatsRefused, explain_token
from shared.subjects import Channel, Subjects
from shared.tokens import mint

pytestmark = pytest.mark.service

ROOT = Path(__file__).resolve().parents[2]
S = Subjects()
WAIT_S = 5.0


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As ``chameleon up --data-dir`` leaves it: the keys file that ``session create`` reads."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def keys(data_dir: Path) -> AuthKeys:
    return AuthKeys.load_or_create(data_dir / KEYS_FILE)


@pytest.fixture(scope="module")
def secure_nats(keys: AuthKeys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(store_dir=tmp_path_factory.mktemp("nats"), auth=keys.server_auth(S)).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def auth_service(
    secure_nats: EmbeddedNats, keys: AuthKeys, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[AuthHandlers]:
    """The auth service as ``chameleon up`` runs it (its own user, the system user for kicks)."""
    for name, value in keys.credentials("auth").env().items():
        monkeypatch.setenv(name, value)
    settings = AuthSettings(
        nats_url=secure_nats.url,
        auth_issuer_seed=keys.issuer_seed,
        auth_token_public_key=keys.token_public,
        auth_sys_user=SYSTEM_USER,
        auth_sys_password=keys.passwords[SYSTEM_USER],
    )
    async with serve_in_task("auth", settings, lambda ctx: AuthHandlers(ctx, settings)) as handlers:
        yield handlers


@dataclass
class Client:
    """A raw nats-py connection that records what the server tells it."""

    nc: NATS
    errors: list[str] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    async def refused(self, subject: str, timeout_s: float = WAIT_S) -> str:
        """The server's permissions violation for ``subject`` (fails if none comes)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for e in self.errors:  # the server's message spells the subject in lower case
                if "permissions violation" in e.lower() and f'"{subject.lower()}"' in e.lower():
                    return e
            await asyncio.sleep(0.02)
        raise AssertionError(f"no permissions violation for {subject}; errors: {self.errors}")


async def open_client(url: str, creds: NatsCredentials, reconnect: bool = False, name: str = "") -> Client:
    client = Client(nc=NATS())

    async def on_error(exc: Exception) -> None:
        client.errors.append(str(exc))

    async def on_disconnect() -> None:
        client.disconnected.set()

    await client.nc.connect(
        url,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        allow_reconnect=reconnect,
        max_reconnect_attempts=3,
        reconnect_time_wait=0.1,
        connect_timeout=2,
        name=name or None,
        **creds.connect_options(),
    )
    return client


def token(keys: AuthKeys, session_id: str, ttl_s: float = 60) -> NatsCredentials:
    return NatsCredentials(token=mint(keys.token_seed, session_id, ttl_s))


async def settled(nc: NATS) -> None:
    """Every command queued on ``nc`` has reached the server. Two flushes: nats-py 2.16 writes a
    flush's PING ahead of the SUB/UNSUB still queued for its flusher task, so one PONG does not
    prove the subscription is in place (seen in the server's trace)."""
    await nc.flush()
    await nc.flush()


async def received(nc: NATS, subject: str, send: Callable[[], Awaitable[None]]) -> list[str]:
    """Subjects that arrive on ``subject`` at ``nc`` after ``send()`` (the first, plus any that
    come with it)."""
    got: list[str] = []
    arrived = asyncio.Event()

    async def cb(msg: Msg) -> None:
        got.append(msg.subject)
        arrived.set()

    sub = await nc.subscribe(subject, cb=cb)
    await settled(nc)
    await send()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(arrived.wait(), WAIT_S)
    await asyncio.sleep(0.1)
    await sub.unsubscribe()
    return got


async def test_a_token_opens_its_session_and_nothing_else(
    secure_nats: EmbeddedNats, keys: AuthKeys, auth_service: AuthHandlers
) -> None:
    url = secure_nats.url
    admin = await open_client(url, keys.credentials(ADMIN_USER))
    # named after another session: the permissions come from the token, never from what the
    # client calls itself
    alice = await open_client(url, token(keys, "alice"), name="bob")
    try:
        # its own camera reaches the services; its own output and events reach it
        cameras = S.all_sessions(Channel.CAMERA)
        got = await received(admin.nc, cameras, lambda: alice.nc.publish(S.camera("alice"), b"jpeg"))
        assert got == [S.camera("alice")]
        for subject in (S.output("alice"), S.events("alice")):
            got = await received(alice.nc, subject, lambda s=subject: admin.nc.publish(s, b"x"))
            assert got == [subject]
        # its receiver reports reach the generator, which fits its output quality to them
        generator = await open_client(url, keys.credentials("generator"))
        try:
            reports = S.all_sessions(Channel.FEEDBACK)
            got = await received(generator.nc, reports, lambda: alice.nc.publish(S.feedback("alice"), b"r"))
            assert got == [S.feedback("alice")]
        finally:
            await generator.nc.close()
        # a control event goes through the JetStream publish path, acknowledged by the stream
        await control.ensure_control_stream(admin.nc.jetstream(), S)
        seq = await control.publish_control(alice.nc, S, control.swap("alice", "tee"), ensure_stream=False)
        assert seq >= 1

        # the garment list is a request it may make (answered in the services' account)
        async def answer(msg: Msg) -> None:
            await msg.respond(b"catalogue")

        await admin.nc.subscribe(S.garments("list"), cb=answer)
        await settled(admin.nc)
        assert (await alice.nc.request(S.garments("list"), b"", timeout=WAIT_S)).data == b"catalogue"

        # another session's subjects, and everything at once, are refused by the server
        await alice.nc.publish(S.camera("bob"), b"jpeg")
        await alice.refused(S.camera("bob"))
        await alice.nc.publish(S.control("bob"), b"x")
        await alice.refused(S.control("bob"))
        await alice.nc.publish(S.feedback("bob"), b"x")
        await alice.refused(S.feedback("bob"))
        for subject in (S.output("bob"), S.events("bob"), "chameleon.>", ">", S.camera("alice")):
            await alice.nc.subscribe(subject)
            await alice.refused(subject)
        await alice.nc.publish(S.garments("encode"), b"x")
        await alice.refused(S.garments("encode"))
        assert alice.nc.is_connected  # refused, not disconnected
    finally:
        await alice.nc.close()
        await admin.nc.close()


async def test_a_token_cannot_touch_streams_buckets_or_consumers(
    secure_nats: EmbeddedNats, keys: AuthKeys, auth_service: AuthHandlers
) -> None:
    admin = await open_client(secure_nats.url, keys.credentials(ADMIN_USER))
    alice = await open_client(secure_nats.url, token(keys, "alice"))
    try:
        js = admin.nc.jetstream()
        kv = await js.create_key_value(KeyValueConfig(bucket=S.garment_bucket))
        await kv.put("garment.tee", b"genuine")
        await control.ensure_control_stream(js, S)
        attempts = [
            f"$JS.API.STREAM.INFO.{S.control_stream}",
            f"$JS.API.STREAM.DELETE.KV_{S.garment_bucket}",
            f"$JS.API.STREAM.PURGE.{S.control_stream}",
            f"$JS.API.STREAM.CREATE.{S.control_stream}",
            f"$JS.API.CONSUMER.CREATE.{S.control_stream}.spy.chameleon.bob.control",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{S.control_stream}.spy",
            f"$JS.API.DIRECT.GET.KV_{S.garment_bucket}.$KV.{S.garment_bucket}.garment.tee",
            f"$KV.{S.garment_bucket}.garment.tee",
            f"$O.{S.garment_objects}.C.x",
            "$JS.API.INFO",
            "$SYS.REQ.USER.AUTH",
        ]
        inbox = alice.nc.new_inbox()
        for subject in attempts:
            await alice.nc.publish(subject, b"{}", reply=inbox)
            await alice.refused(subject)
        assert (await kv.get("garment.tee")).value == b"genuine"
        assert (await js.stream_info(S.control_stream)).config.name == S.control_stream
    finally:
        await alice.nc.close()
        await admin.nc.close()


async def test_expired_forged_and_missing_tokens_are_refused_at_connect(
    secure_nats: EmbeddedNats, keys: AuthKeys, auth_service: AuthHandlers
) -> None:
    other = AuthKeys.generate()
    genuine = mint(keys.token_seed, "alice", 60)
    scheme, _claims, signature = genuine.split(".")
    bob_claims = mint(keys.token_seed, "bob", 60).split(".")[1]
    refused = {
        "expired": NatsCredentials(token=mint(keys.token_seed, "alice", 5, now=time.time() - 10)),
        "forged": NatsCredentials(token=mint(other.token_seed, "alice", 60)),
        "tampered": NatsCredentials(token=f"{scheme}.{bob_claims}.{signature}"),
        "none": NatsCredentials(),
        "wrong password": NatsCredentials(user="generator", password="guess"),
    }
    for why, creds in refused.items():
        with pytest.raises(NatsRefused, match="Authorization Violation"):
            await connect(secure_nats.url, f"refused-{why}", give_up_after_s=WAIT_S, credentials=creds)
    assert auth_service.authorizer.refused_total >= 4  # the service users' wrong password too
    nc = await connect(
        secure_nats.url, "genuine", give_up_after_s=WAIT_S, credentials=NatsCredentials(token=genuine)
    )
    await nc.close()


async def test_a_token_that_expires_while_connected_is_disconnected(
    secure_nats: EmbeddedNats, keys: AuthKeys, auth_service: AuthHandlers
) -> None:
    creds = token(keys, "alice", ttl_s=1.5)
    client = await open_client(secure_nats.url, creds, reconnect=True)
    try:
        await asyncio.wait_for(client.disconnected.wait(), 4.0)  # the user JWT's exp, by the server
        assert "expired" in str(client.nc.last_error).lower(), client.nc.last_error
        with pytest.raises(NatsRefused):  # and connecting again with it is refused
            await connect(secure_nats.url, "again", give_up_after_s=WAIT_S, credentials=creds)
    finally:
        await client.nc.close()


async def test_stopping_a_session_disconnects_its_clients_only(
    secure_nats: EmbeddedNats, keys: AuthKeys, auth_service: AuthHandlers
) -> None:
    admin = await open_client(secure_nats.url, keys.credentials(ADMIN_USER))
    alice = await open_client(secure_nats.url, token(keys, "carol"), reconnect=True)
    bob = await open_client(secure_nats.url, token(keys, "dave"))
    old = alice.nc.options["token"]
    try:
        await admin.nc.publish(S.control("carol"), control.stop("carol").encode())
        await asyncio.wait_for(alice.disconnected.wait(), WAIT_S)
        await asyncio.sleep(0.5)
        assert not alice.nc.is_connected and bob.nc.is_connected
        assert auth_service.kicked == 1
        with pytest.raises(NatsRefused):  # its tokens issued before the stop are revoked
            await connect(
                secure_nats.url, "old", give_up_after_s=WAIT_S, credentials=NatsCredentials(token=old)
            )
        fresh = await connect(
            secure_nats.url, "fresh", give_up_after_s=WAIT_S, credentials=token(keys, "carol")
        )
        await fresh.close()
    finally:
        for c in (alice, bob, admin):
            await c.nc.close()


async def test_the_server_enforces_session_limits(
    secure_nats: EmbeddedNats, keys: AuthKeys, auth_service: AuthHandlers
) -> None:
    subs = await open_client(secure_nats.url, token(keys, "alice"))
    big = await open_client(secure_nats.url, token(keys, "alice"))
    try:
        for _ in range(17):  # the CLIENTS account allows 16 per connection
            await subs.nc.subscribe(S.output("alice"))
        await asyncio.wait_for(subs.disconnected.wait(), WAIT_S)  # nats-py closes on this error
        assert "maximum subscriptions exceeded" in str(subs.nc.last_error).lower(), subs.nc.last_error
        await big.nc.publish(S.camera("alice"), b"x" * (2 * 1024 * 1024 + 1))  # over max_payload
        await asyncio.wait_for(big.disconnected.wait(), WAIT_S)
        assert not big.nc.is_connected
    finally:
        await subs.nc.close()
        await big.nc.close()


async def test_service_users_have_their_own_scopes(
    secure_nats: EmbeddedNats, keys: AuthKeys, auth_service: AuthHandlers
) -> None:
    generator = await open_client(secure_nats.url, keys.credentials("generator"))
    garments = await open_client(secure_nats.url, keys.credentials("garments"))
    ingest = await open_client(secure_nats.url, keys.credentials("ingest"))
    admin = await open_client(secure_nats.url, keys.credentials(ADMIN_USER))
    try:
        # the generator keeps session state and ends sessions: its bucket, the control purge
        gjs = generator.nc.jetstream(timeout=WAIT_S)
        sessions = await gjs.create_key_value(KeyValueConfig(bucket=S.session_bucket))
        await sessions.put("alice", b"state")
        await control.ensure_control_stream(gjs, S)
        await gjs.purge_stream(S.control_stream, subject=S.control("alice"))
        # the garment service alone writes the garment store
        kv = await garments.nc.jetstream(timeout=WAIT_S).create_key_value(
            KeyValueConfig(bucket=S.garment_bucket)
        )
        await kv.put("garment.tee", b"genuine")
        inbox = generator.nc.new_inbox()
        for subject in (
            f"$JS.API.STREAM.DELETE.KV_{S.session_bucket}",  # no deleting a bucket, not even its own
            f"$JS.API.STREAM.DELETE.KV_{S.garment_bucket}",
            f"$KV.{S.garment_bucket}.garment.tee",
            f"$JS.API.STREAM.PURGE.KV_{S.garment_bucket}",
        ):
            await generator.nc.publish(subject, b"{}", reply=inbox)
            await generator.refused(subject)
        await ingest.nc.publish(S.output("alice"), b"x")  # the output is the generator's to publish
        await ingest.refused(S.output("alice"))
        await garments.nc.publish(f"$JS.API.STREAM.DELETE.KV_{S.garment_bucket}", b"", reply=inbox)
        await garments.refused(f"$JS.API.STREAM.DELETE.KV_{S.garment_bucket}")
        assert (await kv.get("garment.tee")).value == b"genuine"
        assert (await sessions.get("alice")).value == b"state"
        await admin.nc.jetstream().delete_key_value(S.session_bucket)  # the operator may
    finally:
        for c in (generator, garments, ingest, admin):
            await c.nc.close()


async def test_session_create_mints_a_token_the_cli_clients_use(
    secure_nats: EmbeddedNats, keys: AuthKeys, data_dir: Path, auth_service: AuthHandlers, tmp_path: Path
) -> None:
    """``chameleon session create``, then ``camera --token`` and ``swap --token``, as a user runs
    them (subprocesses; the auth service answers from this test's event loop)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_URL", "CHAMELEON_"))}
    env["NATS_URL"] = secure_nats.url

    def chameleon(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "services.cli.main", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)

    made = await asyncio.to_thread(
        chameleon, "session", "create", "erin", "--ttl", "120", "--data-dir", str(data_dir), "--json"
    )
    assert made.returncode == 0, made.stderr
    session = json.loads(made.stdout.strip().splitlines()[-1])
    assert set(session) == {"session_id", "nats_url", "ws_url", "token", "expires_at"}
    assert (session["session_id"], session["nats_url"]) == ("erin", secure_nats.url)
    assert session["ws_url"] is None  # no `up` recorded one, and no CHAMELEON_WS_URL
    assert session["expires_at"].endswith("Z")
    tok = session["token"]

    admin = await open_client(secure_nats.url, keys.credentials(ADMIN_USER))
    try:
        await control.ensure_control_stream(admin.nc.jetstream(), S)
        frames: list[str] = []

        async def on_frame(msg: Msg) -> None:
            frames.append(msg.subject)

        await admin.nc.subscribe(S.camera("erin"), cb=on_frame)
        await settled(admin.nc)
        photo = tmp_path / "p.jpg"
        cv2.imwrite(str(photo), np.full((120, 160, 3), 128, np.uint8))
        camera = await asyncio.to_thread(
            chameleon, "camera", "--session", "erin", "--image", str(photo), "--frames", "3", "--fps", "5",
            "--token", tok,
        )  # fmt: skip
        assert camera.returncode == 0, camera.stderr[-2000:]
        assert json.loads(camera.stdout.strip().splitlines()[-1])["published"] == 3
        await asyncio.sleep(0.2)
        assert frames == [S.camera("erin")] * 3

        swap = await asyncio.to_thread(
            chameleon, "swap", "--session", "erin", "--garment", "tee", "--wait", "0", "--token", tok
        )
        assert swap.returncode == 0, swap.stderr[-2000:]
        assert json.loads(swap.stdout.strip().splitlines()[-1])["stream_seq"] >= 1

        other = await asyncio.to_thread(
            chameleon, "swap", "--session", "frank", "--garment", "x", "--token", tok
        )
        assert other.returncode == 2 and "for session 'erin'" in other.stderr
        expired = mint(keys.token_seed, "erin", 5, now=time.time() - 60)
        late = await asyncio.to_thread(
            chameleon, "swap", "--session", "erin", "--garment", "x", "--token", expired
        )
        assert late.returncode == 2 and "refused the credentials" in late.stderr, late.stderr[-2000:]
    finally:
        await admin.nc.close()


async def test_a_stop_outlives_an_auth_service_restart(
    secure_nats: EmbeddedNats, keys: AuthKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop is kept in the ``<P>_REVOKED`` bucket: a restarted auth service (here: a new one)
    still refuses the stopped session's older tokens, and admits a fresh one."""
    for name, value in keys.credentials("auth").env().items():
        monkeypatch.setenv(name, value)
    settings = AuthSettings(
        nats_url=secure_nats.url, auth_issuer_seed=keys.issuer_seed, auth_token_public_key=keys.token_public
    )
    admin = await open_client(secure_nats.url, keys.credentials(ADMIN_USER))
    old = token(keys, "frank")
    try:
        async with serve_in_task("auth", settings, lambda ctx: AuthHandlers(ctx, settings)) as first:
            kv = await admin.nc.jetstream().key_value(S.revocation_bucket)
            stored = None
            stop = control.stop("frank").encode()
            for attempt in range(int(WAIT_S / 0.05)):  # until the stop is kept in the bucket
                if attempt % 20 == 0:  # a stop's delivery is test_stopping_a_session's subject; this
                    await admin.nc.publish(S.control("frank"), stop)  # one's is the restart: again
                    await admin.nc.flush()
                with contextlib.suppress(KeyNotFoundError):
                    stored = await kv.get("frank")
                    break
                await asyncio.sleep(0.05)
            assert stored is not None and "frank" in first.authorizer.revoked
        async with serve_in_task("auth", settings, lambda ctx: AuthHandlers(ctx, settings)) as second:
            assert "frank" in second.authorizer.revoked
            with pytest.raises(NatsRefused):
                await connect(secure_nats.url, "old", give_up_after_s=WAIT_S, credentials=old)
            await asyncio.sleep(0.01)  # a token issued after the stop (claims carry milliseconds)
            fresh = await connect(
                secure_nats.url, "fresh", give_up_after_s=WAIT_S, credentials=token(keys, "frank")
            )
            await fresh.close()
    finally:
        await admin.nc.close()


async def _auth_settings(
    secure_nats: EmbeddedNats, keys: AuthKeys, monkeypatch: pytest.MonkeyPatch
) -> AuthSettings:
    for name, value in keys.credentials("auth").env().items():
        monkeypatch.setenv(name, value)
    return AuthSettings(
        nats_url=secure_nats.url,
        auth_issuer_seed=keys.issuer_seed,
        auth_token_public_key=keys.token_public,
        auth_sys_user=SYSTEM_USER,
        auth_sys_password=keys.passwords[SYSTEM_USER],
    )


async def test_a_stop_published_while_no_auth_service_runs_is_applied_when_one_starts(
    secure_nats: EmbeddedNats, keys: AuthKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop is stored in the control stream; the auth service's durable consumer of it
    delivers the stop when a service starts, and it is applied with its stored time: the older
    tokens are refused, one minted after the stop opens the session anew."""
    settings = await _auth_settings(secure_nats, keys, monkeypatch)
    admin = await open_client(secure_nats.url, keys.credentials(ADMIN_USER))
    old = token(keys, "gina")
    try:
        await asyncio.sleep(0.01)  # the stop comes after the old token (claims carry milliseconds)
        await control.publish_control(admin.nc, S, control.stop("gina"))  # no auth service runs
        await asyncio.sleep(0.01)
        fresh_token = token(keys, "gina")  # minted after the stop, before any service heard of it
        async with serve_in_task("auth", settings, lambda ctx: AuthHandlers(ctx, settings)) as auth:
            for _ in range(int(WAIT_S / 0.05)):  # the consumer delivers in the background
                if "gina" in auth.authorizer.revoked:
                    break
                await asyncio.sleep(0.05)
            assert "gina" in auth.authorizer.revoked
            with pytest.raises(NatsRefused):
                await connect(secure_nats.url, "old", give_up_after_s=WAIT_S, credentials=old)
            fresh = await connect(secure_nats.url, "fresh", give_up_after_s=WAIT_S, credentials=fresh_token)
            await fresh.close()
    finally:
        await admin.nc.close()


async def test_a_stop_another_replica_kept_is_applied_here_and_kicks_what_it_covers(
    secure_nats: EmbeddedNats, keys: AuthKeys, auth_service: AuthHandlers
) -> None:
    """A replica that took a stop from the stream keeps it in the bucket; every replica watches
    the bucket, so one that admitted the session's client kicks it, and refuses its token."""
    admin = await open_client(secure_nats.url, keys.credentials(ADMIN_USER))
    ivan = await open_client(secure_nats.url, token(keys, "ivan"))
    judy = await open_client(secure_nats.url, token(keys, "judy"))
    old = ivan.nc.options["token"]
    try:
        kv = await admin.nc.jetstream().key_value(S.revocation_bucket)
        await kv.put("ivan", repr(time.time()).encode())  # as another replica keeps a stop
        await asyncio.wait_for(ivan.disconnected.wait(), WAIT_S)
        assert judy.nc.is_connected
        with pytest.raises(NatsRefused):
            await connect(
                secure_nats.url, "old", give_up_after_s=WAIT_S, credentials=NatsCredentials(token=old)
            )
    finally:
        for c in (ivan, judy, admin):
            await c.nc.close()


async def _attempts(url: str, creds: NatsCredentials, n: int) -> tuple[list[Client], list[str]]:
    """``n`` connects at once with ``creds``: the clients admitted, the errors of the others."""
    results = await asyncio.gather(*(open_client(url, creds) for _ in range(n)), return_exceptions=True)
    admitted = [r for r in results if isinstance(r, Client)]
    return admitted, [str(r) for r in results if not isinstance(r, Client)]


async def test_one_token_gets_its_share_of_connections_and_a_freed_one_is_reused(
    secure_nats: EmbeddedNats, keys: AuthKeys, auth_service: AuthHandlers
) -> None:
    """50 connects on one token: 4 admitted (CHAMELEON_MAX_CONNECTIONS_PER_SESSION), the rest
    refused, and told why when they ask; another session still connects; a connection closed
    frees its place (the server's disconnect event reaches the auth service)."""
    greedy = token(keys, "greedy")
    admitted, errors = await _attempts(secure_nats.url, greedy, 50)
    other = None
    try:
        assert len(admitted) == 4, errors[:3]
        assert len(errors) == 46 and all("authorization violation" in e.lower() for e in errors), errors[:3]
        why = await explain_token(secure_nats.url, greedy.token)
        assert "session greedy already has 4 connections" in why.auth_error, why
        assert "CHAMELEON_MAX_CONNECTIONS_PER_SESSION=4" in why.auth_error
        other = await open_client(secure_nats.url, token(keys, "neighbour"))
        await admitted.pop().nc.close()
        again = None
        for _ in range(int(WAIT_S / 0.1)):  # the disconnect event comes within milliseconds
            with contextlib.suppress(Exception):
                again = await open_client(secure_nats.url, greedy)
                break
            await asyncio.sleep(0.1)
        assert again is not None, "a freed connection was never available again"
        admitted.append(again)
        assert auth_service.authorizer.ledger.count("greedy") == 4
    finally:
        for c in [*admitted, *([other] if other else [])]:
            await c.nc.close()


async def test_one_address_gets_its_share_of_connections(
    secure_nats: EmbeddedNats, keys: AuthKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = dataclasses.replace(
        await _auth_settings(secure_nats, keys, monkeypatch), max_connections_per_address=6
    )
    async with serve_in_task("auth", settings, lambda ctx: AuthHandlers(ctx, settings)):
        admitted: list[Client] = []
        try:
            for session in ("addr-a", "addr-b"):
                got, _errors = await _attempts(secure_nats.url, token(keys, session), 4)
                admitted += got
            assert len(admitted) == 6
            with pytest.raises(NatsRefused) as refused:
                await connect(
                    secure_nats.url, "seventh", give_up_after_s=WAIT_S, credentials=token(keys, "c")
                )
            assert "address 127.0.0.1 already has 6 connections" in refused.value.auth_error
        finally:
            for c in admitted:
                await c.nc.close()


async def test_a_refused_client_is_told_why(
    secure_nats: EmbeddedNats, keys: AuthKeys, auth_service: AuthHandlers
) -> None:
    """The server says "Authorization Violation" and nothing more; the thin client asks the auth
    service and puts its reason in the error (``auth_error``)."""
    other = AuthKeys.generate()
    cases = {
        "forged": (
            mint(other.token_seed, "kim", 60),
            f"bad token signature: this deployment's token key is {keys.token_public}",
        ),
        "expired": (mint(keys.token_seed, "kim", 5, now=time.time() - 60), "token expired"),
    }
    for why, (tok, reason) in cases.items():
        with pytest.raises(NatsRefused) as refused:
            await connect(
                secure_nats.url, why, give_up_after_s=WAIT_S, credentials=NatsCredentials(token=tok)
            )
        assert refused.value.auth_error == reason, why
        assert reason in str(refused.value)
    fine = await explain_token(secure_nats.url, mint(keys.token_seed, "kim", 60))
    assert fine.asked and fine.admitted
    assert auth_service.authorizer.explaining.count("") <= 1  # explain connections end, and are counted


async def test_session_create_refuses_keys_that_are_not_the_servers(
    secure_nats: EmbeddedNats, auth_service: AuthHandlers, tmp_path: Path
) -> None:
    """``up --data-dir D`` runs, and ``session create`` reads another data dir's keys (the default
    one, from an earlier run): it refuses, with the fix, instead of printing a token the server
    would refuse with a bare "Authorization Violation"."""
    stale = tmp_path / "earlier-run"
    AuthKeys.load_or_create(stale / KEYS_FILE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_URL", "CHAMELEON_"))}
    env["NATS_URL"] = secure_nats.url
    cmd = [sys.executable, "-m", "services.cli.main", "session", "create", "lee", "--data-dir", str(stale)]
    made = await asyncio.to_thread(
        subprocess.run, cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )
    assert made.returncode == 2 and made.stdout == "", made.stdout
    assert f"refuses tokens signed with the keys in {stale / KEYS_FILE}" in made.stderr, made.stderr
    assert "pass the --data-dir of the `chameleon up` that runs it" in made.stderr
