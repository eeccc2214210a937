"""What an on-call engineer reads: every service's registry carries the process's own figures and
the glass-to-glass histogram; the endpoint answers /metrics and /healthz exactly and 404 elsewhere;
the watchdog turns a hang into an exit a restart policy sees; progress bars only for a person."""

from __future__ import annotations

import asyncio
import io
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import progress
from runtime.metrics import HealthServer, ServiceMetrics
from runtime.service import Watchdog

pytestmark = pytest.mark.unit


def _families(text: bytes) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def test_every_service_exports_process_metrics_and_glass_to_glass() -> None:
    m = ServiceMetrics("generator")
    m.glass_to_glass.observe(0.120)
    families = _families(m.render())
    for name in ("process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds", "python_info"):
        assert name in families, sorted(families)
    g2g = families["chameleon_glass_to_glass_seconds"]
    assert g2g.type == "histogram" and "capture" in g2g.documentation.lower()
    count = next(s for s in g2g.samples if s.name.endswith("_count"))
    assert count.value == 1 and count.labels == {"service": "generator"}


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_health_endpoint_answers_its_two_paths_exactly() -> None:
    healthy = {"status": "ok"}
    server = HealthServer(ServiceMetrics("ingest"), lambda: dict(healthy), "127.0.0.1", 0)
    port = await server.start()
    try:
        status, body = await asyncio.to_thread(_get, port, "/metrics")
        assert status == 200 and b"process_open_fds" in body
        assert (await asyncio.to_thread(_get, port, "/metrics?name[]=x"))[0] == 200
        for path in ("/metricsXYZ", "/metrics/", "/healthzz", "/", "/favicon.ico"):
            assert (await asyncio.to_thread(_get, port, path))[0] == 404, path
        assert (await asyncio.to_thread(_get, port, "/healthz"))[0] == 200
        healthy["status"] = "unhealthy"
        assert (await asyncio.to_thread(_get, port, "/healthz"))[0] == 503
    finally:
        await server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_fires_after_the_limit_unhealthy_or_stuck() -> None:
    clock, state = Clock(), {"ok": True}
    dog = Watchdog(5.0, lambda: state["ok"], on_hung=lambda _r: None, clock=clock)
    for _ in range(20):  # healthy and beating: never
        clock.now += 1
        dog.beat()
        assert dog.check() is None
    state["ok"] = False
    clock.now += 4
    dog.beat()
    assert dog.check() is None  # unhealthy 4 s of 5
    clock.now += 1.5
    dog.beat()
    assert dog.check() == "unhealthy for 5.5 s"
    state["ok"] = True
    dog.beat()
    assert dog.check() is None
    clock.now += 6  # no beat: the event loop is stuck
    assert dog.check() == "event loop stuck for 6.0 s"


async def test_watchdog_sees_a_blocked_event_loop() -> None:
    fired: list[str] = []
    dog = Watchdog(0.3, lambda: True, on_hung=fired.append)
    task = asyncio.create_task(dog.run(interval_s=0.05))
    await asyncio.sleep(0.2)
    assert not fired
    time.sleep(0.8)  # noqa: ASYNC251 (a handler stuck in a blocking call: what the dog must see)
    await asyncio.sleep(0.05)
    task.cancel()
    assert fired and fired[0].startswith("event loop stuck")
    dog.stop()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_drawn_on_a_terminal_only_and_never_with_json() -> None:
    assert progress.wanted(False, Terminal()) and not progress.wanted(True, Terminal())
    assert not progress.wanted(False, io.StringIO())  # a pipe or a file
    tty, pipe, as_json = Terminal(), io.StringIO(), Terminal()
    for stream, json in ((tty, False), (pipe, False), (as_json, True)):
        with progress.steps(3, "clips", json=json, stream=stream) as bar:
            bar.update(3)
    assert "clips" in tty.getvalue() and "0/3" in tty.getvalue()
    assert pipe.getvalue() == "" and as_json.getvalue() == ""
    tty = Terminal()
    with progress.elapsed("soak", 10, stream=tty, interval_s=0.05):
        time.sleep(1.2)
    assert "soak" in tty.getvalue() and "1/10" in tty.getvalue()
