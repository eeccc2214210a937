"""The shopper page in a real, headless Chromium (Debian's, never a downloaded one), fed by
Chromium's fake webcam playing a y4m file made from the sample photo with camera motion, against
a real ``chameleon up``, with ALL the browser's traffic through a simulated access link
(``tools.linksim``, a SOCKS5 proxy: round trip, jitter, bandwidth caps, stalls).
``chameleon bench browser --json``: what the page itself measured over ``--seconds`` while a
garment is clicked every few seconds; the browser tests use the same harness.

With ``--rtt-ms``/``--uplink-kbps``/``--downlink-kbps``/``--jitter-ms``/``--stall-s`` the same page
runs twice in one run: on the loopback link (``loopback``), then on the shaped one (the top-level
keys), each a fresh page load and session. ``--suite`` runs the cases of issue 28 beside loopback
and says which goal each met.

Keys: ``fps_displayed``, ``fps_sent``, ``latency_ms`` {p50, p95} (capture stamp to draw, in the
page), ``swap_click_to_display_ms`` {p50, p95} (click to the first drawn frame with the new
garment), ``frames_dropped_by_page`` (camera frames not sent because the link was full, plus output
frames replaced before they were drawn), ``uplink_kbps`` (what crossed the link), ``stall``
{recovery_ms, stale_frames_shown} when the link stalled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from tools.bench.common import emit, provenance, tree_cpu_s
from tools.linksim.model import LinkSpec
from tools.linksim.proxy import ProxyThread

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
)


class BrowserUnavailable(RuntimeError):
    """No Chromium, no Playwright or no built page: the reason says which and how to get it."""


def chromium_path() -> str:
    """Debian's Chromium (``CHAMELEON_CHROMIUM`` overrides the path)."""
    path = os.environ.get("CHAMELEON_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        raise BrowserUnavailable(
            f"no Chromium at {path}: `apt-get install chromium` (make test does it when run as root)"
        )
    return path


def check_ready() -> str:
    """The Chromium path, or ``BrowserUnavailable`` with what is missing."""
    path = chromium_path()
    try:
        import playwright  # noqa: F401
    except ImportError:
        raise BrowserUnavailable("the playwright package is not installed: `make setup`") from None
    if not (ROOT / "web" / "dist" / "app.js").is_file():
        raise BrowserUnavailable("the page is not built: install Node.js and run `make web`")
    return path


# -- the fake webcam --------------------------------------------------------------------------------
def write_y4m(path: Path, frames: Iterator[np.ndarray], fps: int = 15) -> int:
    """BGR frames as a 4:2:0 y4m file, what Chromium's fake capture device plays (looping)."""
    count = 0
    with open(path, "wb") as f:
        for frame in frames:
            h, w = frame.shape[:2]
            if count == 0:
                f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
            f.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
            count += 1
    return count


def fake_webcam(path: Path, frames: int = 60, fps: int = 15) -> Path:
    """The sample photo through a slowly moving camera, 640x480: a real person for the pipeline."""
    from runtime.media import read_image, sample_photo
    from services.camera.source import Motion, MotionCamera

    camera = MotionCamera(read_image(str(sample_photo("bus.jpg"))), 640, 480, Motion(period=frames))
    write_y4m(path, camera.frames(frames), fps)
    return path


# -- `chameleon up` ---------------------------------------------------------------------------------
@dataclass
class Up:
    """A real ``chameleon up`` (secure, its own data dir, the page on a free port)."""

    data_dir: Path
    log_path: Path
    extra: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # added to the services' environment
    proc: subprocess.Popen[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _log: IO[str] | None = None

    def start(self, timeout_s: float = 180.0) -> Up:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NATS_URL", "CHAMELEON_NATS_URL", "CHAMELEON_TOKEN")
        }
        env.update(self.env)
        self._log = open(self.log_path, "w")
        cmd = [
            sys.executable,
            "-m",
            "services.cli.main",
            "up",
            "--web-port",
            "0",
            "--data-dir",
            str(self.data_dir),
        ]
        self.proc = subprocess.Popen(
            [*cmd, *self.extra],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        found = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                if not found.is_set() and line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        self.info = json.loads(line)
                        found.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not found.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text()[-3000:]
                raise RuntimeError(f"chameleon up did not start (see {self.log_path}):\n{tail}")
        return self

    @property
    def web_url(self) -> str:
        return str(self.info["web_url"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Up:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the page -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def browser_page(
    y4m: Path,
    chromium: str,
    width: int = 1280,
    height: int = 800,
    proxy: tuple[str, int] | None = None,
) -> Iterator[Any]:
    """A Playwright page in headless Chromium with the fake webcam playing ``y4m``; with ``proxy``
    every connection it makes (loopback included) goes through that SOCKS5 proxy."""
    from playwright.sync_api import sync_playwright

    via = []
    if proxy is not None:
        via = [f"--proxy-server=socks5://{proxy[0]}:{proxy[1]}", "--proxy-bypass-list=<-loopback>"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={y4m}", *via],
        )
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            context.grant_permissions(["camera"])
            yield context.new_page()
        finally:
            browser.close()


def stats(page: Any) -> dict[str, Any]:
    return page.evaluate("() => window.chameleon.stats()")


def wait_for_frames(page: Any, count: int, timeout_s: float) -> None:
    page.wait_for_function(
        f"() => window.chameleon && window.chameleon.stats().frames_drawn >= {count}",
        timeout=timeout_s * 1000,
    )


def colour_fraction(page: Any, channel: str) -> float:
    """Fraction of the output canvas's pixels clearly of one colour (``red``, ``green``, ``blue``)."""
    index = {"red": 0, "green": 1, "blue": 2}[channel]
    return page.evaluate(
        """(i) => {
          const c = document.getElementById('output');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let n = 0;
          for (let p = 0; p < d.length; p += 4) {
            const v = d[p + i], a = d[p + (i + 1) % 3], b = d[p + (i + 2) % 3];
            if (v > a + 40 && v > b + 40) n++;
          }
          return n / (d.length / 4);
        }""",
        index,
    )


def start_camera(page: Any, timeout_s: float = 60.0) -> None:
    """Press the page's "Start camera" once it is ready (nothing is captured before, as for a
    shopper), and wait until the camera runs."""
    page.wait_for_selector("#camera-toggle:not([disabled])", timeout=timeout_s * 1000)
    page.click("#camera-toggle")
    page.wait_for_function("() => window.chameleon.stats().camera === 'on'", timeout=timeout_s * 1000)


def click_garment(page: Any, garment_id: str) -> None:
    page.click(f'button[data-garment-id="{garment_id}"]')


# -- what a case measured (pure: from the page's draw log and the proxy's counters) --------------------
def percentiles(values: list[float]) -> dict[str, float]:
    from runtime.metrics import percentiles as nearest_rank

    p = nearest_rank(values, (50, 95))
    return {"p50": round(p["p50"], 1), "p95": round(p["p95"], 1)}


@dataclass(frozen=True)
class Case:
    """One page load on one link for ``seconds``; a stall of ``stall_s`` begins ``stall_at_s`` in."""

    name: str
    link: LinkSpec
    seconds: float
    clicks: int = 0
    stall_s: float = 0.0
    stall_at_s: float = 4.0


def case_name(link: LinkSpec, stall_s: float = 0.0) -> str:
    """``loopback``, ``rtt_100``, ``uplink_2000``, ``rtt_100_stall_2s`` …: the names goals use."""
    d = link.describe()
    parts = [
        f"{key}_{value:g}"
        for key, value in (
            ("rtt", d["rtt_ms"]),
            ("jitter", d["jitter_ms"]),
            ("uplink", d["uplink_kbps"]),
            ("downlink", d["downlink_kbps"]),
        )
        if value
    ]
    if stall_s:
        parts.append(f"stall_{stall_s:g}s")
    return "_".join(parts) or "loopback"


def suite(seconds: float, clicks: int) -> list[Case]:
    """The cases of issue 28, each measured beside loopback in the same run."""
    return [
        Case("loopback", LinkSpec(), seconds, clicks),
        Case("rtt_100", LinkSpec.of(rtt_ms=100), seconds, clicks),
        Case("rtt_200", LinkSpec.of(rtt_ms=200), seconds, clicks),
        Case("uplink_2000", LinkSpec.of(uplink_kbps=2000), max(60.0, seconds), clicks),
        Case("rtt_100_stall_2s", LinkSpec.of(rtt_ms=100), 12.0, 0, stall_s=2.0, stall_at_s=4.0),
    ]


def window_metrics(draw_log: list[list[float]], t0_ms: float, t1_ms: float) -> dict[str, Any]:
    """Frames drawn in [t0, t1): fps, latency, and the p95 of the first and last thirds (a backlog
    that grows shows as a last third far above the first)."""
    drawn = [(t, lat) for t, lat in draw_log if t0_ms <= t < t1_ms]
    span_s = max(1e-3, (t1_ms - t0_ms) / 1000)
    third = (t1_ms - t0_ms) / 3
    first = [lat for t, lat in drawn if t < t0_ms + third]
    last = [lat for t, lat in drawn if t >= t1_ms - third]
    return {
        "fps_displayed": round(len(drawn) / span_s, 2),
        "latency_ms": percentiles([lat for _, lat in drawn]),
        "latency_p95_first_last_third_ms": [percentiles(first)["p95"], percentiles(last)["p95"]],
    }


def stall_metrics(
    draw_log: list[list[float]], stall_start_ms: float, stall_s: float, before_p95_ms: float
) -> dict[str, Any]:
    """After the link stalled: ``recovery_ms`` from the stall's end to the first frame drawn at
    the link's usual latency (at most its p95 before the stall + 200 ms), and
    ``stale_frames_shown``: frames drawn after the stall began that were more than 500 ms older
    than usual (queued before or during the stall)."""
    end = stall_start_ms + stall_s * 1000
    after = [(t, lat) for t, lat in draw_log if t >= stall_start_ms]
    fresh = [t for t, lat in after if t >= end and lat <= before_p95_ms + 200]
    return {
        "stall_s": stall_s,
        "recovery_ms": round(fresh[0] - end, 1) if fresh else None,
        "stale_frames_shown": sum(1 for _, lat in after if lat > before_p95_ms + 500),
        "frames_drawn_during_stall": sum(1 for t, _ in after if t < end),
    }


def goals(cases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Issue 28's goals for the cases that ran, each against loopback of the same run."""
    out: dict[str, dict[str, Any]] = {}
    loop = cases.get("loopback")
    if loop is None:
        return out

    def goal(name: str, value: float | None, limit: float, at_most: bool) -> None:
        met = value is not None and (value <= limit if at_most else value >= limit)
        out[name] = {"value": value, ("max" if at_most else "min"): round(limit, 1), "met": met}

    p95 = loop["latency_ms"]["p95"]
    if (c := cases.get("rtt_100")) is not None:
        goal("rtt_100.fps_displayed", c["fps_displayed"], 14, at_most=False)
        goal("rtt_100.latency_p95_ms", c["latency_ms"]["p95"], p95 + 110, at_most=True)
    if (c := cases.get("rtt_200")) is not None:
        goal("rtt_200.fps_displayed", c["fps_displayed"], 13, at_most=False)
    if (c := cases.get("uplink_2000")) is not None:
        goal("uplink_2000.fps_displayed", c["fps_displayed"], 12, at_most=False)
        goal("uplink_2000.latency_p95_ms", c["latency_ms"]["p95"], p95 + 200, at_most=True)
        last_third = c["latency_p95_first_last_third_ms"][1]
        goal("uplink_2000.latency_p95_last_third_ms", last_third, p95 + 200, at_most=True)
    for name, c in cases.items():
        if "stall" in c:
            goal(f"{name}.recovery_ms", c["stall"]["recovery_ms"], 1000, at_most=True)
            goal(f"{name}.stale_frames_shown", c["stall"]["stale_frames_shown"], 0, at_most=True)
    return out


# -- the benchmark ----------------------------------------------------------------------------------------
def run_case(page: Any, url: str, proxy: ProxyThread, case: Case, warmup_s: float, up_pid: int) -> dict:
    """A fresh page load (a new session) on ``case.link``, measured for ``case.seconds``."""
    proxy.reshape(case.link)
    page.goto(url)
    start_camera(page, 120)
    wait_for_frames(page, 15, 120)
    page.wait_for_timeout(warmup_s * 1000)
    garments = stats(page)["garments"]
    warm = stats(page)
    counters = proxy.proxy.stats
    bytes0 = (counters.bytes_up, counters.bytes_down)
    cpu0 = (tree_cpu_s(up_pid), tree_cpu_s(os.getpid(), "chrom"))
    t0, t0_ms = time.monotonic(), time.time() * 1000
    interval = case.seconds / (case.clicks + 1)
    clicked, stall_ms = 0, None
    while time.monotonic() - t0 < case.seconds:
        elapsed = time.monotonic() - t0
        if clicked < case.clicks and elapsed >= interval * (clicked + 1):
            in_effect = stats(page)["garment_in_effect"]
            choices = [g for g in garments if g != in_effect]
            click_garment(page, choices[clicked % len(choices)])
            clicked += 1
        if case.stall_s and stall_ms is None and elapsed >= case.stall_at_s:
            stall_ms = time.time() * 1000
            proxy.stall(case.stall_s)
        time.sleep(0.05)
    if case.clicks:
        page.wait_for_timeout(1500)  # the last click's frames
    end = stats(page)
    t1_ms = time.time() * 1000
    elapsed = time.monotonic() - t0
    cpu1 = (tree_cpu_s(up_pid), tree_cpu_s(os.getpid(), "chrom"))
    log = end["draw_log"]
    report: dict[str, Any] = {
        "link": case.link.describe(),
        "seconds": round(elapsed, 1),
        **window_metrics(log, t0_ms, t1_ms),
        "fps_sent": round((end["frames_sent"] - warm["frames_sent"]) / elapsed, 2),
        "uplink_kbps": round((counters.bytes_up - bytes0[0]) * 8 / elapsed / 1000, 1),
        "downlink_kbps": round((counters.bytes_down - bytes0[1]) * 8 / elapsed / 1000, 1),
        "swap_click_to_display_ms": percentiles(end["swap_ms"][len(warm["swap_ms"]) :]),
        # where the latency goes (last 600 frames): the page's encode + upload, the services,
        # delivery + decode + draw
        "latency_parts_ms": end["latency_parts_ms"],
        "swaps_clicked": clicked,
        "swaps_displayed": len(end["swap_ms"]) - len(warm["swap_ms"]),
        "frames_dropped_by_page": end["frames_dropped_by_page"] - warm["frames_dropped_by_page"],
        "camera_frames_dropped": end["camera_frames_dropped"] - warm["camera_frames_dropped"],
        "output_frames_replaced": end["output_frames_replaced"] - warm["output_frames_replaced"],
        "send": end.get("send"),  # the page's pacing and link fitting, as it last stood
        # cores busy during the case: the services (and nats-server) vs the browser
        "cpu_cores": {
            "services": round((cpu1[0] - cpu0[0]) / elapsed, 2),
            "browser": round((cpu1[1] - cpu0[1]) / elapsed, 2),
        },
        "machine_load_1m": round(os.getloadavg()[0], 2),
        "page_errors": end["errors"],
    }
    if stall_ms is not None:
        before = window_metrics(log, t0_ms, stall_ms)["latency_ms"]["p95"]
        report["stall"] = stall_metrics(log, stall_ms, case.stall_s, before)
    return report


def run(cases: list[Case], workdir: Path, warmup_s: float = 3.0, fake_frames: int = 60) -> dict[str, Any]:
    chromium = check_ready()
    workdir.mkdir(parents=True, exist_ok=True)
    y4m = fake_webcam(workdir / "webcam.y4m", fake_frames)
    results: dict[str, dict[str, Any]] = {}
    with (
        Up(workdir / "nats", workdir / "up.log") as up,
        ProxyThread(LinkSpec()) as proxy,
        browser_page(y4m, chromium, proxy=proxy.address) as page,
    ):
        assert up.proc is not None
        for case in cases:
            results[case.name] = run_case(page, up.web_url, proxy, case, warmup_s, up.proc.pid)
        page.screenshot(path=str(workdir / "page.png"))
    shaped = [name for name in results if name != "loopback"]
    headline = results[shaped[0]] if len(shaped) == 1 else results.get("loopback", {})
    return {
        "bench": "browser",
        **provenance(),
        **(headline if len(results) <= 2 else {}),
        "cases": results,
        "goals": goals(results),
        "screenshot": str(workdir / "page.png"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chameleon bench browser", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--clicks", type=int, default=6, help="garment clicks, evenly spread (at least 5)")
    p.add_argument("--workdir", type=Path, default=ROOT / "out" / "bench-browser")
    p.add_argument("--rtt-ms", type=float, default=0.0, help="the link's round trip (half each way)")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="up to this much extra delay each way")
    p.add_argument("--uplink-kbps", type=float, default=0.0, help="page to server cap; 0: none")
    p.add_argument("--downlink-kbps", type=float, default=0.0, help="server to page cap; 0: none")
    p.add_argument("--stall-s", type=float, default=0.0, help="stall the link this long, 4 s in")
    p.add_argument("--warmup-s", type=float, default=3.0, help="after the first frames, before measuring")
    p.add_argument("--suite", action="store_true", help="every case of issue 28 beside loopback")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    loopback = Case("loopback", LinkSpec(), args.seconds, args.clicks)
    link = LinkSpec.of(args.rtt_ms, args.jitter_ms, args.uplink_kbps, args.downlink_kbps)
    if args.suite:
        cases = suite(args.seconds, args.clicks)
    elif link.is_null and not args.stall_s:
        cases = [loopback]
    else:
        shaped = Case(case_name(link, args.stall_s), link, args.seconds, args.clicks, args.stall_s)
        cases = [loopback, shaped]
    try:
        report = run(cases, args.workdir, args.warmup_s)
    except BrowserUnavailable as exc:
        print(f"chameleon bench browser: {exc}", file=sys.stderr)
        return 2
    return emit(report, args.json)


if __name__ == "__main__":
    sys.exit(main())
