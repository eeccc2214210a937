"""``chameleon up`` supervises: a worker that dies or hangs is killed if need be and started again
while its siblings run on, workers get their own ids and health ports, and the embedded server's
JetStream store outlives the stack. Real service processes and real nats-servers throughout."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import psutil
import pytest
from nats.js.api import StreamConfig

from harness import stack as stack_module
from harness.natsserver import EmbeddedNats, NatsServerError
from harness.stack import Stack

pytestmark = pytest.mark.service

ROOT = Path(__file__).resolve().parents[2]


def _supervise_until(stack: Stack, done: Callable[[], bool], timeout_s: float = 20.0) -> list[str]:
    """Run supervision passes, as ``chameleon up`` does, until ``done``; what they did."""
    actions: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"not done after {timeout_s:.0f} s; supervision did {actions}"
        actions += stack.supervise_once()
        time.sleep(0.1)
    return actions


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


@pytest.fixture
def stacks() -> Iterator[list[Stack]]:
    """Stacks a test started; stopped whatever happens."""
    started: list[Stack] = []
    yield started
    for stack in started:
        stack.stop()


def test_a_killed_worker_is_restarted_with_back_off_and_its_sibling_runs_on(
    nats_url: str, stacks: list[Stack], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack_module, "SCALED_SERVICES", ("passthrough",))  # the cheapest service
    stack = Stack(["passthrough"], nats_url=nats_url, workers=2, log_dir=tmp_path / "logs")
    stacks.append(stack.start())
    victim, sibling = stack.children
    assert [victim.worker_id, sibling.worker_id] == ["passthrough-1", "passthrough-2"]
    assert victim.health_port != sibling.health_port
    assert _environ(victim.proc.pid)["CHAMELEON_WORKER_ID"] == "passthrough-1"
    assert _environ(sibling.proc.pid)["CHAMELEON_WORKER_ID"] == "passthrough-2"
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["passthrough-1.log", "passthrough-2.log"]
    old_pid, sibling_pid = victim.proc.pid, sibling.proc.pid

    os.kill(old_pid, signal.SIGKILL)
    actions = _supervise_until(stack, lambda: victim.restarts == 1 and stack._probe(victim))
    assert actions == ["passthrough-1 exited", "passthrough-1 restarted"]
    assert victim.proc.pid != old_pid
    assert _environ(victim.proc.pid)["CHAMELEON_WORKER_ID"] == "passthrough-1"
    assert victim.backoff_s == 2 * stack.restart_min_s  # the next crash within 30 s waits longer
    assert sibling.proc.pid == sibling_pid and sibling.proc.poll() is None
    assert {k: v["status"] for k, v in stack.health().items()} == {
        "passthrough-1": "ok",
        "passthrough-2": "ok",
    }


def test_a_hung_worker_is_killed_and_restarted(nats_url: str, stacks: list[Stack]) -> None:
    stack = Stack(["passthrough"], nats_url=nats_url, hang_timeout_s=1.0)
    stacks.append(stack.start())
    child = stack.children[0]
    hung = child.proc
    os.kill(hung.pid, signal.SIGSTOP)  # alive, holding its port, answering nothing
    stopped_at = time.monotonic()
    actions = _supervise_until(stack, lambda: child.restarts == 1 and stack._probe(child))
    assert actions[0] == "passthrough-1 hung"
    assert actions[-1] == "passthrough-1 restarted"
    assert hung.returncode == -signal.SIGKILL
    assert time.monotonic() - stopped_at >= stack.hang_timeout_s
    assert child.proc.pid != hung.pid and stack.health()["passthrough-1"]["status"] == "ok"


def test_the_data_dir_outlives_the_stack(stacks: list[Stack], tmp_path: Path) -> None:
    data = tmp_path / "data" / "nats"
    stack = Stack(["passthrough"], data_dir=data)
    stacks.append(stack.start())

    async def store() -> None:
        nc = await nats.connect(stack.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="KEPT", subjects=["kept.>"]))
        await js.publish("kept.a", b"still here")
        await nc.close()

    asyncio.run(store())
    stack.stop()
    assert (data / "jetstream").is_dir()

    async def read(url: str) -> bytes:
        nc = await nats.connect(url)
        try:
            return (await nc.jetstream().get_msg("KEPT", 1)).data
        finally:
            await nc.close()

    with EmbeddedNats(store_dir=data) as server:
        assert asyncio.run(read(server.url)) == b"still here"
    assert (data / "jetstream").is_dir()  # an explicit store is never removed


def test_a_second_stack_on_the_same_data_dir_is_refused(stacks: list[Stack], tmp_path: Path) -> None:
    """Two servers writing one JetStream store would corrupt it."""
    first = Stack([], data_dir=tmp_path / "nats")
    stacks.append(first.start())
    second = Stack([], data_dir=tmp_path / "nats")
    stacks.append(second)
    with pytest.raises(NatsServerError, match="in use by another nats-server"):
        second.start()
    first.stop()
    stacks.append(Stack([], data_dir=tmp_path / "nats").start())  # free again once stopped


def test_a_cluster_stack_gives_children_every_url_and_three_replicas(
    stacks: list[Stack], tmp_path: Path
) -> None:
    data = tmp_path / "cluster"
    stack = Stack(["passthrough"], data_dir=data, nats_cluster=3)
    stacks.append(stack.start())
    assert len(stack.url.split(",")) == 3
    env = _environ(stack.children[0].proc.pid)
    assert env["NATS_URL"] == stack.url and env["CHAMELEON_JS_REPLICAS"] == "3"
    assert stack.health()["passthrough-1"]["status"] == "ok"
    stack.stop()
    assert sorted(p.name for p in data.iterdir()) == ["node-0", "node-1", "node-2"]


def test_ingest_admits_only_the_stateful_stages_the_stack_runs() -> None:
    def admitted(services: list[str]) -> str:
        return Stack(services)._child_env("ingest", "ingest-1", 1)["CHAMELEON_ADMIT_STAGES"]

    assert admitted(["ingest", "passthrough"]) == ""
    assert admitted(["garments", "ingest", "preprocess"]) == "preprocess"
    assert admitted(["garments", "ingest", "preprocess", "generator"]) == "preprocess,generator"
    env = Stack(["ingest", "preprocess"], env={"CHAMELEON_WORKER_ID": "shared"})._child_env(
        "preprocess", "preprocess-2", 1
    )
    assert env["CHAMELEON_WORKER_ID"] == "preprocess-2"  # never one id for several workers
    assert env.get("CHAMELEON_ADMIT_STAGES") == os.environ.get("CHAMELEON_ADMIT_STAGES")  # ingest's alone


def _child_pids(parent: int, module: str) -> list[int]:
    return [p.pid for p in psutil.Process(parent).children() if module in " ".join(p.cmdline())]


def test_chameleon_up_restarts_a_killed_service_and_keeps_its_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "nats"
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "CHAMELEON_NATS_URL")}
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "up",
            "--services",
            "passthrough",
            "--data-dir",
            str(data),
        ],
        cwd=ROOT,
        env={**env, "CHAMELEON_LOG_LEVEL": "warning"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    for stream in (up.stdout, up.stderr):
        threading.Thread(target=lambda s=stream: [lines.put(line) for line in s], daemon=True).start()

    def wait_for(text: str, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} within {timeout_s:.0f} s") from None
            if text in line:
                return line

    try:
        banner = json.loads(wait_for('"nats_url"'))
        # secure by default: the auth service runs beside what was asked for
        assert banner["data_dir"] == str(data) and list(banner["services"]) == ["auth-1", "passthrough-1"]
        (child,) = _child_pids(up.pid, "services.passthrough.main")
        os.kill(child, signal.SIGKILL)
        wait_for("chameleon up: passthrough-1 restarted")
        assert up.poll() is None  # the stack lives on
        up.send_signal(signal.SIGTERM)
        assert up.wait(20) == 0
        assert (data / "jetstream").is_dir()
    finally:
        if up.poll() is None:  # SIGTERM first: up stops its services and server itself
            up.terminate()
            try:
                up.wait(20)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()


def _free_base(span: int) -> int:
    """A base port with ``span`` free ports above it (checked, not guessed)."""
    import random
    import socket

    for _ in range(50):
        base = random.randrange(20000, 60000 - span)
        try:
            held = []
            for port in range(base, base + span):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return base
    raise AssertionError("no free port range")


def test_metrics_port_base_gives_stable_ports_that_survive_a_restart(
    nats_url: str, stacks: list[Stack]
) -> None:
    base = _free_base(stack_module.stable_port_span())
    stack = Stack(["passthrough"], nats_url=nats_url, metrics_port_base=base, restart_min_s=0.1)
    stacks.append(stack)
    stack.start()
    child = stack.children[0]
    expected = base + stack_module.PORT_STRIDE * list(stack_module.SERVICE_MODULES).index("passthrough")
    assert child.health_port == expected
    assert stack_module.stable_port(base, "generator", 2) == base + 10 * 4 + 1
    child.proc.kill()
    _supervise_until(
        stack, lambda: child.restarts == 1 and child.healthy_at is not None and stack._probe(child)
    )
    assert child.health_port == expected  # a scraper outside finds it where it was
