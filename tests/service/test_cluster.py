"""A three-node JetStream cluster on loopback: it forms, replicated streams and buckets keep their
data when a node is SIGKILLed, clients on the URL list carry on within seconds, and the node
rejoins. Real nats-server processes throughout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.errors import APIError
from structlog.testing import capture_logs

from harness.natsserver import EmbeddedCluster, reserve_port
from runtime.bus import ConnectionState, connect
from runtime.jetstream import control_stream, key_value, object_store
from runtime.jetstream import leader_get as runtime_leader_get
from services.garments.store import blobs_config, index_config
from shared import control
from shared.subjects import Subjects

pytestmark = pytest.mark.service

FAILOVER_S = 5.0  # a client on the URL list publishes and receives again within this
LEADER_ELECTION_S = 15.0  # a lost Raft leader: 4-9 s before a follower campaigns, then the vote


def _node_of_client(cluster: EmbeddedCluster, nc: NATS) -> int:
    port = nc.connected_url.port if nc.connected_url else None
    return next(i for i, node in enumerate(cluster.nodes) if node.port == port)


async def _round_trip(nc: NATS, subject: str, timeout_s: float = 0.5) -> bool:
    """Publish on ``subject`` and receive it back through the cluster, or False."""
    got = asyncio.Event()

    async def received(_msg: object) -> None:
        got.set()

    sub = await nc.subscribe(subject, cb=received)
    try:
        await nc.flush(timeout=timeout_s)
        await nc.publish(subject, b"ping")
        await asyncio.wait_for(got.wait(), timeout_s)
        return True
    except (asyncio.TimeoutError, nats.errors.Error):
        return False
    finally:
        await sub.unsubscribe()


def test_cluster_forms_with_named_nodes_and_a_meta_leader(nats_cluster: EmbeddedCluster) -> None:
    names = {node.server_name for node in nats_cluster.nodes}
    assert len(names) == 3
    assert nats_cluster.url.split(",") == nats_cluster.urls and len(set(nats_cluster.urls)) == 3
    assert len({node.workdir for node in nats_cluster.nodes}) == 3
    assert all(node.healthy() for node in nats_cluster.nodes)

    async def replicated() -> list[str]:
        nc = await nats.connect(servers=nats_cluster.urls)
        try:
            js = nc.jetstream()
            info = await js.add_stream(StreamConfig(name="FORMED", subjects=["formed.>"], num_replicas=3))
            return [info.cluster.leader, *(p.name for p in info.cluster.replicas)]
        finally:
            await nc.close()

    assert set(asyncio.run(replicated())) == names


async def _answered(call, deadline: float):  # type: ignore[no-untyped-def]
    """``await call()`` once JetStream answers: right after a server starts, or an R3 stream or
    bucket is created, its Raft group may not have a leader yet for a moment (a loaded machine)."""
    while True:
        try:
            return await call()
        except (
            nats.errors.NoRespondersError,
            nats.errors.TimeoutError,
            nats.js.errors.APIError,
            nats.js.errors.NoStreamResponseError,
        ):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _replicated_data(nc: NATS) -> None:
    """An R3 stream with 20 messages and an R3 KV bucket with one key."""
    js = nc.jetstream()
    deadline = time.monotonic() + 10
    await _answered(
        lambda: js.add_stream(StreamConfig(name="KEPT", subjects=["kept.>"], num_replicas=3)), deadline
    )
    # the id makes a retry after a timeout stored once: the tests count the messages
    await _answered(lambda: js.publish("kept.a", b"m0", headers={"Nats-Msg-Id": "m0"}), deadline)
    for i in range(1, 20):
        await js.publish("kept.a", f"m{i}".encode())
    kv = await js.create_key_value(KeyValueConfig(bucket="KEPT_KV", replicas=3))
    await _answered(lambda: kv.put("owner", b"generator-1"), deadline)


async def _assert_data_kept(js: JetStreamContext, messages: int) -> None:
    assert (await js.get_msg("KEPT", 1)).data == b"m0"
    assert (await js.stream_info("KEPT")).state.messages == messages
    assert (await (await js.key_value("KEPT_KV")).get("owner")).value == b"generator-1"


def _meta_leader(cluster: EmbeddedCluster) -> str:
    node = next(n for n in cluster.nodes if n.running)
    with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}/jsz", timeout=2) as resp:
        return json.loads(resp.read())["meta_cluster"]["leader"]


async def _move_leaders(nc: NATS, to: str, streams: list[str]) -> None:
    """Step the streams' leaders down onto node ``to`` (a preferred placement: a transfer, no
    election wait), so a test kills a node whose roles it knows."""
    js = nc.jetstream(timeout=2.0)
    preferred = json.dumps({"placement": {"preferred": to}}).encode()
    deadline = time.monotonic() + 15.0
    for stream in streams:
        while (await js.stream_info(stream)).cluster.leader != to:
            assert time.monotonic() < deadline, f"{stream} did not move to {to}"
            with contextlib.suppress(nats.errors.Error):
                await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", preferred, timeout=2)
            await asyncio.sleep(0.2)


def _not_meta_leader(cluster: EmbeddedCluster) -> tuple[int, int]:
    """A node that does not lead the meta group (so the JetStream API keeps answering while it is
    down; moving the meta leader needs the system account) and another node."""
    meta = cluster.node_of(_meta_leader(cluster))
    victim = next(i for i in range(cluster.size) if i != meta)
    return victim, meta


async def _client_on(cluster: EmbeddedCluster, first: int) -> NATS:
    """A nats-py client on the whole URL list, connected to node ``first``."""
    urls = [cluster.urls[first], *(u for i, u in enumerate(cluster.urls) if i != first)]
    nc = await nats.connect(
        servers=urls, dont_randomize=True, max_reconnect_attempts=-1, reconnect_time_wait=0.1
    )
    assert _node_of_client(cluster, nc) == first
    return nc


async def _wait_writable(nc: NATS, bound_s: float, since: float) -> int:
    """Retry until a publish to the R3 stream, a put to the R3 bucket and a core round trip have
    each worked, within ``bound_s`` of ``since``; returns the publish's stream sequence."""
    js = nc.jetstream(timeout=1.0)

    async def published() -> int:
        return (await js.publish("kept.a", b"after")).seq

    async def put() -> int:
        return await (await js.key_value("KEPT_KV")).put("probe", b"after")

    async def round_trip() -> int:
        if not await _round_trip(nc, "live.check"):
            raise nats.errors.TimeoutError
        return 1

    results = []
    for attempt in (published, put, round_trip):
        while True:
            try:
                results.append(await attempt())
                break
            except (nats.errors.Error, asyncio.TimeoutError):
                pass
            waited = time.monotonic() - since
            assert waited < bound_s, f"{attempt.__name__}: nothing within {bound_s:.0f} s of the kill"
            await asyncio.sleep(0.1)
    return results[0]


async def test_a_node_kill_loses_nothing_and_the_client_carries_on_within_5_s(
    nats_cluster: EmbeddedCluster,
) -> None:
    """The client's own node dies (a follower of every group): it reconnects to a survivor and
    publishes and receives within 5 s; the node comes back and catches up."""
    victim, other = _not_meta_leader(nats_cluster)
    setup = await nats.connect(servers=nats_cluster.urls)
    await _replicated_data(setup)
    await _move_leaders(setup, nats_cluster.nodes[other].server_name, ["KEPT", "KV_KEPT_KV"])
    await setup.close()
    nc = await _client_on(nats_cluster, victim)
    try:
        nats_cluster.kill_node(victim)
        assert await _wait_writable(nc, FAILOVER_S, time.monotonic()) == 21
        assert _node_of_client(nats_cluster, nc) != victim
        js = nc.jetstream(timeout=2.0)
        await _assert_data_kept(js, 21)

        await asyncio.to_thread(nats_cluster.start_node, victim)  # returns once its /healthz is 200
        deadline = time.monotonic() + 15.0
        for stream in ("KEPT", "KV_KEPT_KV"):  # the leader sees the node's replica catch up
            while not all(p.current for p in (await js.stream_info(stream)).cluster.replicas):
                assert time.monotonic() < deadline, f"{stream} replica on the restarted node not current"
                await asyncio.sleep(0.2)
            info = await js.stream_info(stream)
            assert {info.cluster.leader, *(p.name for p in info.cluster.replicas)} == {
                n.server_name for n in nats_cluster.nodes
            }
    finally:
        await nc.close()


async def test_a_leader_kill_loses_nothing_and_writes_resume_after_the_election(
    nats_cluster: EmbeddedCluster,
) -> None:
    """The node leading the stream and the KV bucket dies: core messaging never stops, and
    JetStream writes resume once the survivors elect a leader. nats-server's Raft waits 4-9 s
    (fixed in server/raft.go) for a lost leader before it campaigns, hence the longer bound."""
    victim, survivor = _not_meta_leader(nats_cluster)
    victim_name = nats_cluster.nodes[victim].server_name
    setup = await nats.connect(servers=nats_cluster.urls)
    await _replicated_data(setup)
    await _move_leaders(setup, victim_name, ["KEPT", "KV_KEPT_KV"])
    await setup.close()
    nc = await _client_on(nats_cluster, survivor)
    try:
        nats_cluster.kill_node(victim)
        killed_at = time.monotonic()
        assert await _round_trip(nc, "live.core", timeout_s=FAILOVER_S)
        assert await _wait_writable(nc, LEADER_ELECTION_S, killed_at) == 21
        js = nc.jetstream(timeout=2.0)
        await _assert_data_kept(js, 21)
        kv = await js.key_value("KEPT_KV")
        await kv.put("owner", b"generator-2")
        assert (await kv.get("owner")).value == b"generator-2"
        assert (await js.stream_info("KEPT")).cluster.leader != victim_name
    finally:
        await nc.close()


async def test_bus_connect_takes_the_url_list_and_reconnects_to_a_survivor(
    nats_cluster: EmbeddedCluster,
) -> None:
    state = ConnectionState()
    dead = reserve_port()  # a URL that refuses connections, first in the list: the others are tried too
    try:
        url = f"nats://127.0.0.1:{dead.getsockname()[1]},{nats_cluster.url}"
        nc = await connect(url, "cluster-test", state, give_up_after_s=5)
    finally:
        dead.close()
    try:
        assert nc.is_connected and state.connected
        nats_cluster.kill_node(_node_of_client(nats_cluster, nc))
        deadline = time.monotonic() + FAILOVER_S
        while not (state.reconnects and await _round_trip(nc, "live.bus")):
            assert time.monotonic() < deadline, "the client did not move to a surviving node within 5 s"
            await asyncio.sleep(0.1)
        assert state.connected
    finally:
        await nc.close()


async def test_replicas_reach_the_control_stream_and_garment_buckets(nats_cluster: EmbeddedCluster) -> None:
    subjects = Subjects("clusterrep")
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        js = nc.jetstream()
        await control.ensure_control_stream(js, subjects, replicas=3)
        await control.ensure_control_stream(js, subjects)  # a client without the setting: no shrinking
        assert (await js.stream_info(subjects.control_stream)).config.num_replicas == 3
        kv = await key_value(js, index_config(subjects.garment_bucket, replicas=3))
        blobs = await object_store(js, blobs_config(subjects.garment_objects, replicas=3))
        assert (await kv.status()).stream_info.config.num_replicas == 3
        assert (await blobs.status()).stream_info.config.num_replicas == 3
    finally:
        await nc.close()


async def test_an_existing_stream_that_cannot_grow_replicas_does_not_stop_start_up(nats_url: str) -> None:
    """One server cannot hold three replicas: the update fails, is logged, and the stream is used."""
    subjects = Subjects("growfail")
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await control.ensure_control_stream(js, subjects)
        with capture_logs() as logs:
            await control_stream(js, subjects, replicas=3)
        assert [e["event"] for e in logs] == ["control_stream_update_failed"]
        assert (await js.stream_info(subjects.control_stream)).config.num_replicas == 1
        seq = await control.publish_control(nc, subjects, control.stop("s1"), replicas=3)
        assert seq == 1
        with pytest.raises(APIError):  # but a stream that cannot be made at all is an error
            await control.ensure_control_stream(js, Subjects("growfail2"), replicas=3)
    finally:
        await nc.close()


async def test_the_reads_that_decide_come_from_the_leader(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """docs/fleet.md, "Reads on a cluster": on a secure three-node cluster (service users as
    ``chameleon up`` makes them, R3 buckets), a write through one node is what the reads that
    decide return through another, every time: a new owner's session state, a lease's liveness,
    a kept stop. The services may not use direct gets on those buckets at all (any replica may
    answer one, a lagging follower too), and with no leader the read fails instead of answering."""
    from runtime import revocations
    from runtime.fleet.records import WorkerLease, lease_key
    from runtime.fleet.view import open_view
    from services.auth.keys import AuthKeys
    from services.generator.state import SessionStore
    from shared.auth import NatsCredentials
    from shared.schemas import SessionState

    s = Subjects()
    keys = AuthKeys.generate()
    cluster = EmbeddedCluster(3, store_dir=tmp_path / "cluster", auth=keys.server_auth(s)).start()
    clients: list[NATS] = []
    violations: list[str] = []

    async def user(node: int, role: str) -> NATS:
        async def on_error(exc: Exception) -> None:
            violations.append(str(exc))

        creds: NatsCredentials = keys.credentials(role)
        nc = await nats.connect(cluster.nodes[node].url, error_cb=on_error, **creds.connect_options())
        clients.append(nc)
        return nc

    try:
        near = await user(0, "generator")
        writer = near.jetstream(timeout=3)
        store_near = await SessionStore.open(writer, s, 3)
        leader = cluster.node_of((await writer.stream_info(f"KV_{s.session_bucket}")).cluster.leader)
        follower = next(i for i in (2, 1, 0) if i != leader)  # reads through a follower of the bucket
        far = await user(follower, "generator")
        reader = far.jetstream(timeout=3)
        store_far = await SessionStore.open(reader, s, 3)
        view_far = await open_view(reader, s, 3)
        workers_near = await writer.key_value(s.worker_bucket)
        for i in range(20):
            state = SessionState("s1", f"garment-{i}", applied_events=[f"e{i}"], swap_published_ns=i + 1)
            await store_near.kv.put("s1", state.encode())
            loaded = await store_far.load("s1")
            assert loaded is not None and (loaded.garment_id, loaded.swap_published_ns) == (
                f"garment-{i}",
                i + 1,
            )
            renewed = time.time_ns() if i % 2 else time.time_ns() - 10**10  # alive, then lapsed 10 s ago
            lease = WorkerLease("w1", "generator", 4, renewed, 1000)
            await workers_near.put(lease_key("generator", "w1"), lease.encode())
            assert await view_far.confirm_lapsed("generator", "w1") is (i % 2 == 0), i
        stops_near = await revocations.open_bucket(writer, s, 3)
        stops_far = await revocations.open_bucket(reader, s, 3)
        await revocations.keep(stops_near, "s1", 200.0)
        await revocations.keep(stops_far, "s1", 100.0)  # an earlier stop heard later never wins
        await revocations.keep(stops_far, "s2", 50.0)
        assert revocations.stopped_at((await stops_near.get("s1")).value) == 200.0
        # a direct get, which a follower may answer, is not the generator's to make
        inbox = far.new_inbox()
        await far.publish(
            f"$JS.API.DIRECT.GET.KV_{s.session_bucket}.$KV.{s.session_bucket}.s1", b"", reply=inbox
        )
        await far.flush()
        await asyncio.sleep(0.2)
        assert any("permissions violation" in v.lower() and "direct.get" in v.lower() for v in violations)
        # no leader (the leader and the other node gone): the follower's read fails, never stale
        for i in range(3):
            if i != follower:
                cluster.kill_node(i)
        with pytest.raises(Exception):  # noqa: B017  (a timeout or no responders, either is right)
            await runtime_leader_get(far.jetstream(timeout=2), s.session_bucket, "s1")
        assert await store_far.load("s1") is None  # unavailable: logged, nothing stale returned
    finally:
        for nc in clients:
            with contextlib.suppress(Exception):
                await nc.close()
        cluster.close()
