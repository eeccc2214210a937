"""The shopper page in a real, headless Chromium (Debian's, never a downloaded one), fed by
Chromium's fake webcam playing a y4m file made from the sample photo with camera motion, against
a real ``chameleon up``. ``chameleon bench browser --json``: what the page itself measured over
``--seconds`` while a garment is clicked every few seconds; the browser test uses the same harness.

Keys: ``fps_displayed``, ``latency_ms`` {p50, p95} (capture stamp to draw, in the page),
``swap_click_to_display_ms`` {p50, p95} (click to the first drawn frame with the new garment),
``frames_dropped_by_page`` (camera frames not sent because the last one was still in flight, plus
output frames replaced before they were drawn).
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
def browser_page(y4m: Path, chromium: str, width: int = 1280, height: int = 800) -> Iterator[Any]:
    """A Playwright page in headless Chromium with the fake webcam playing ``y4m``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={y4m}"],
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


def click_garment(page: Any, garment_id: str) -> None:
    page.click(f'button[data-garment-id="{garment_id}"]')


# -- the benchmark ----------------------------------------------------------------------------------------
def percentiles(values: list[float]) -> dict[str, float]:
    from runtime.metrics import percentiles as nearest_rank

    p = nearest_rank(values, (50, 95))
    return {"p50": round(p["p50"], 1), "p95": round(p["p95"], 1)}


def run(seconds: float, clicks: int, workdir: Path, fake_frames: int = 60) -> dict[str, Any]:
    chromium = check_ready()
    workdir.mkdir(parents=True, exist_ok=True)
    y4m = fake_webcam(workdir / "webcam.y4m", fake_frames)
    with Up(workdir / "nats", workdir / "up.log") as up, browser_page(y4m, chromium) as page:
        page.goto(up.web_url)
        wait_for_frames(page, 15, 120)
        garments = stats(page)["garments"]
        warm = stats(page)
        t0 = time.monotonic()
        assert up.proc is not None
        cpu0 = (tree_cpu_s(up.proc.pid), tree_cpu_s(os.getpid(), "chrom"))
        interval = seconds / (clicks + 1)
        clicked = 0
        while time.monotonic() - t0 < seconds:
            if clicked < clicks and time.monotonic() - t0 >= interval * (clicked + 1):
                in_effect = stats(page)["garment_in_effect"]
                choices = [g for g in garments if g != in_effect]
                click_garment(page, choices[clicked % len(choices)])
                clicked += 1
            time.sleep(0.1)
        page.wait_for_timeout(1500)  # the last click's frames
        end = stats(page)
        elapsed = time.monotonic() - t0
        cpu1 = (tree_cpu_s(up.proc.pid), tree_cpu_s(os.getpid(), "chrom"))
        page.screenshot(path=str(workdir / "page.png"))
    latencies = end["latency_all_ms"][warm["latency_ms"]["count"] :]
    return {
        "bench": "browser",
        **provenance(),
        "seconds": round(elapsed, 1),
        "fps_displayed": round((end["frames_drawn"] - warm["frames_drawn"]) / elapsed, 2),
        "fps_sent": round((end["frames_sent"] - warm["frames_sent"]) / elapsed, 2),
        "latency_ms": percentiles(latencies),
        "swap_click_to_display_ms": percentiles(end["swap_ms"]),
        # where the latency goes (last 600 frames): the page's encode + upload, the services,
        # delivery + decode + draw
        "latency_parts_ms": end["latency_parts_ms"],
        "swaps_clicked": clicked,
        "swaps_displayed": len(end["swap_ms"]),
        "frames_dropped_by_page": end["frames_dropped_by_page"] - warm["frames_dropped_by_page"],
        "camera_frames_dropped": end["camera_frames_dropped"] - warm["camera_frames_dropped"],
        "output_frames_replaced": end["output_frames_replaced"] - warm["output_frames_replaced"],
        # cores busy during the run: the services (and nats-server) vs the browser (encode, decode, draw)
        "cpu_cores": {
            "services": round((cpu1[0] - cpu0[0]) / elapsed, 2),
            "browser": round((cpu1[1] - cpu0[1]) / elapsed, 2),
        },
        "machine_load_1m": round(os.getloadavg()[0], 2),
        "page_errors": end["errors"],
        "screenshot": str(workdir / "page.png"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chameleon bench browser", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--clicks", type=int, default=6, help="garment clicks, evenly spread (at least 5)")
    p.add_argument("--workdir", type=Path, default=ROOT / "out" / "bench-browser")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        report = run(args.seconds, args.clicks, args.workdir)
    except BrowserUnavailable as exc:
        print(f"chameleon bench browser: {exc}", file=sys.stderr)
        return 2
    return emit(report, args.json)


if __name__ == "__main__":
    sys.exit(main())
