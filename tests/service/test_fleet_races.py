"""The fleet's guarantees where they are decided, against a real nats-server but without worker
processes: two placers racing for one session, a member whose lease writes fail while another's
succeed, a drain whose own renewal fails, and an admission that cannot place every stage. Each
test is the one that goes red when its guarantee is broken (docs/fleet.md)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import nats.errors
import pytest
from service_testkit import until

from runtime.bus import connect
from runtime.fleet.member import FleetMember
from runtime.fleet.records import Ownership, WorkerLease, lease_key
from runtime.fleet.view import FleetView, assign, open_view
from runtime.jetstream import leader_get
from services.ingest.admission import Admission
from shared.errors import CodedError
from shared.subjects import Subjects

pytestmark = pytest.mark.service
STAGE = "generator"


@pytest.fixture
async def subjects() -> Subjects:
    return Subjects(f"fr{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def views(nats_url: str, subjects: Subjects) -> AsyncIterator[list[FleetView]]:
    """Two processes' views of the fleet, each on its own connection."""
    conns = [await connect(nats_url, f"placer-{i}") for i in range(2)]
    opened = [await open_view(nc.jetstream(), subjects) for nc in conns]
    try:
        yield opened
    finally:
        for view in opened:
            await view.close()
        for nc in conns:
            await nc.close()


async def test_two_placers_racing_for_one_session_never_both_win(views: list[FleetView]) -> None:
    """Both have read the same record (or none) and re-place the session at the same instant:
    compare-and-set lets exactly one through, and the record names that one."""
    one, two = views
    for i in range(10):
        session = f"race-{i}"
        created = await asyncio.gather(
            assign(one, STAGE, session, "w1", "placed", None),
            assign(two, STAGE, session, "w2", "placed", None),
        )
        assert sum(r is not None for r in created) == 1, created
        await until(lambda s=session: one.owner(STAGE, s) is not None and two.owner(STAGE, s) is not None)
        held = one.owner(STAGE, session)
        assert held == two.owner(STAGE, session)
        moved = await asyncio.gather(
            assign(one, STAGE, session, "w3", "failover", held),
            assign(two, STAGE, session, "w4", "failover", held),
        )
        winners = [r for r in moved if r is not None]
        assert len(winners) == 1, moved
        stored = await leader_get(one.js, one.owners_kv._name, f"{STAGE}.{session}")
        assert stored is not None and Ownership.decode(stored.value).worker_id == winners[0].worker_id


async def _member(nats_url: str, subjects: Subjects, worker: str, lease_s: float) -> FleetMember:
    nc = await connect(nats_url, worker)

    async def serve(session_id: str, record: Ownership) -> None:
        return None

    async def unserve(session_id: str, reason: str) -> None:
        return None

    member = FleetMember(nc.jetstream(), subjects, STAGE, worker, 4, lease_s, serve, unserve)
    await member.start()
    return member


async def _close(*members: FleetMember) -> None:
    for member in members:
        await member.close()
        await member.js._nc.close()


def _lease_writes_fail(member: FleetMember) -> None:
    """This member's lease renewals fail from now on (its path to the registry is broken), while
    it still hears the others' renewals."""
    assert member.view is not None

    async def refused(*_args: object, **_kw: object) -> int:
        raise nats.errors.TimeoutError

    member.view.workers_kv.put = refused  # type: ignore[method-assign]


async def test_a_member_whose_renewals_fail_stops_publishing_before_anyone_may_take_over(
    nats_url: str, subjects: Subjects
) -> None:
    """Fencing: another worker may take the session a full lease after the owner's last renewal;
    the owner must have stopped publishing by three quarters of one, so the two never overlap."""
    lease_s = 2.0
    owner = await _member(nats_url, subjects, "wa", lease_s)
    other = await _member(nats_url, subjects, "wb", lease_s)
    try:
        assert owner.view is not None
        await assign(owner.view, STAGE, "fenced", "wa", "placed", None)
        await until(lambda: owner.may_publish("fenced"))
        await until(lambda: other.view is not None and other.view.lease(STAGE, "wa") is not None)
        _lease_writes_fail(owner)
        last_renewal = owner._renewed_mono
        while owner.may_publish("fenced"):
            assert time.monotonic() - last_renewal < 2 * lease_s, "never stopped publishing"
            await asyncio.sleep(0.02)
        stopped_after = time.monotonic() - last_renewal
        held = owner.view.owner(STAGE, "fenced")
        assert held is not None and held[0].worker_id == "wa", "stopped only once replaced: not fenced"
        assert stopped_after < 0.75 * lease_s + 0.3, stopped_after  # + one polling and renewal period
    finally:
        await _close(owner, other)


async def test_a_draining_member_whose_renewal_fails_still_hands_its_sessions_to_another(
    nats_url: str, subjects: Subjects
) -> None:
    """SIGTERM while the registry refuses this worker's writes: the others never see it draining,
    and it looks the least loaded; its sessions must still go elsewhere, never back to itself."""
    owner = await _member(nats_url, subjects, "wa", 2.0)
    other = await _member(nats_url, subjects, "wb", 2.0)
    try:
        assert owner.view is not None
        await assign(owner.view, STAGE, "leaving", "wa", "placed", None)
        for busy in ("b1", "b2"):  # the other worker is the busier one
            await assign(owner.view, STAGE, busy, "wb", "placed", None)
        await until(lambda: "leaving" in owner.serving and len(other.serving) == 2)
        _lease_writes_fail(owner)
        await owner.drain(timeout_s=2.0)
        held = owner.view.owner(STAGE, "leaving")
        assert held is not None and held[0].worker_id == "wb" and held[0].reason == "drain", held
    finally:
        await _close(owner, other)


async def test_an_admission_that_cannot_place_every_stage_leaves_nothing_half_placed(
    views: list[FleetView],
) -> None:
    """Preprocess has room, the generator is full: the session is refused (at_capacity) and its
    preprocess record, placed first, is taken back."""
    view = views[0]
    now = time.time_ns()
    for stage, worker, capacity in (("preprocess", "p1", 4), ("generator", "g1", 1)):
        lease = WorkerLease(worker, stage, capacity, now, 60_000)
        await view.workers_kv.put(lease_key(stage, worker), lease.encode())
    await assign(view, "generator", "running", "g1", "placed", None)  # its one slot is taken
    await until(lambda: len(view.leases) == 2)
    admission = Admission(view, ["preprocess", "generator"], ready_timeout_s=0.1)
    with pytest.raises(CodedError) as refused:
        await admission.admit("half")
    assert refused.value.code == "at_capacity" and refused.value.data["stage"] == "generator"
    assert view.owner("preprocess", "half") is None
    assert await leader_get(view.js, view.owners_kv._name, "preprocess.half") is None
