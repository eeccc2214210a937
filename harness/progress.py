"""Progress bars for the commands that take longer than a few seconds (tqdm, a maintained library).

A bar is drawn only for a person: on standard error, when it is a terminal, and never with
``--json`` (a machine reads that output, and a pipe or a log file must not fill with carriage
returns). Two shapes: ``steps`` for work counted in units (clips, phases, messages) and
``elapsed`` for work known only by its expected duration, ticked from a thread so the measured
code is not touched.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

from tqdm import tqdm


def wanted(json: bool = False, stream: IO[str] | None = None) -> bool:
    """Whether to draw: not for ``--json``, and only onto a terminal."""
    stream = sys.stderr if stream is None else stream
    if json:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced (a test's capture)
        return False


def steps(
    total: int | None, desc: str, *, json: bool = False, unit: str = "it", stream: IO[str] | None = None
) -> Any:
    """A bar over ``total`` units (``.update(n)``, a context manager); silent where not ``wanted``."""
    stream = sys.stderr if stream is None else stream
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=stream,
        disable=not wanted(json, stream),
        leave=False,
        dynamic_ncols=True,
    )


@contextlib.contextmanager
def elapsed(
    desc: str,
    total_s: float | None = None,
    *,
    json: bool = False,
    interval_s: float = 0.5,
    stream: IO[str] | None = None,
) -> Iterator[Any]:
    """A bar of seconds spent (out of ``total_s``, the expected duration, when known) while the
    block runs; a thread moves it, so the work inside needs no hook."""
    bar = steps(round(total_s) if total_s else None, desc, json=json, unit="s", stream=stream)
    if bar.disable:
        yield bar
        bar.close()
        return
    done = threading.Event()
    start = time.monotonic()

    def tick() -> None:
        shown = 0
        while not done.wait(interval_s):
            now = int(time.monotonic() - start)
            if total_s:
                now = min(now, round(total_s))
            if now > shown:
                bar.update(now - shown)
                shown = now

    ticker = threading.Thread(target=tick, name="progress", daemon=True)
    ticker.start()
    try:
        yield bar
    finally:
        done.set()
        ticker.join()
        bar.close()
