"""Process start-up: CHAMELEON_NICE lowers a service's CPU priority (and never raises it), and a
started service process, like the CLI, runs numpy's OpenBLAS on one thread unless
OPENBLAS_NUM_THREADS says otherwise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
CHILD = "from runtime.service import apply_niceness; import sys; print(apply_niceness(int(sys.argv[1])))"
# Runs a module as ``python -m`` would and, once it has finished, prints the OpenBLAS threads in
# force in its process: the most any loaded OpenBLAS may use (numpy's is loaded by then, if not
# before, and reads OPENBLAS_NUM_THREADS as it loads).
BLAS_PROBE = """
import atexit, json, runpy, sys
from threadpoolctl import threadpool_info

def report():
    import numpy
    threads = [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"]
    print(json.dumps({"openblas_threads": max(threads, default=0)}), flush=True)

atexit.register(report)
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
DEFAULT_POOL = (
    "import numpy; from threadpoolctl import threadpool_info; "
    "print(max(i['num_threads'] for i in threadpool_info()))"
)


def _niceness_after(increment: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(increment)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


@pytest.mark.unit
def test_niceness_goes_up_by_the_increment_in_its_own_process() -> None:
    base = os.nice(0)
    if base + 3 > 19:
        pytest.skip(f"this process already runs at niceness {base}")
    assert _niceness_after(3) == base + 3
    assert _niceness_after(0) == base  # 0 and negatives never raise the priority
    assert _niceness_after(-5) == base
    assert os.nice(0) == base  # the parent is untouched


@pytest.mark.unit
def test_setting() -> None:
    assert BaseSettings.from_env({"CHAMELEON_NICE": "5"}).nice == 5
    assert BaseSettings.from_env({}).nice == 0


def _env(openblas_threads: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env.pop("CHAMELEON_METRICS_PORT", None)
    if openblas_threads is not None:
        env["OPENBLAS_NUM_THREADS"] = openblas_threads
    return {**env, **extra}


@pytest.fixture(scope="module")
def default_openblas_threads() -> int:
    """What OpenBLAS uses where nothing caps it; with one thread there is nothing to cap."""
    out = subprocess.run(
        [sys.executable, "-c", DEFAULT_POOL], capture_output=True, text=True, check=True, env=_env(None)
    )
    threads = int(out.stdout.split()[-1])
    if threads < 2:
        pytest.skip(f"OpenBLAS runs {threads} thread here by default: no cap to observe")
    return threads


def _probe_result(stdout: str) -> int:
    return int(json.loads(stdout.strip().splitlines()[-1])["openblas_threads"])


@pytest.mark.service
@pytest.mark.parametrize(("explicit", "expected"), [(None, 1), ("2", 2)])
def test_a_started_service_runs_openblas_on_one_thread_unless_told(
    nats_url: str, tmp_path: Path, default_openblas_threads: int, explicit: str | None, expected: int
) -> None:
    """The ingest service as ``python -m`` starts it: connected and serving, then SIGTERM."""
    log = tmp_path / "ingest.log"
    env = _env(explicit, NATS_URL=nats_url, CHAMELEON_LOG_JSON="1")
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", BLAS_PROBE, "services.ingest.main"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "service_started" not in log.read_text():
            assert proc.poll() is None, f"ingest exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"ingest not started in 60 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert _probe_result(stdout) == min(expected, default_openblas_threads)


@pytest.mark.unit
@pytest.mark.parametrize(("explicit", "expected"), [(None, 1), ("2", 2)])
def test_the_cli_runs_openblas_on_one_thread_unless_told(
    default_openblas_threads: int, explicit: str | None, expected: int
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", BLAS_PROBE, "services.cli.main", "bench", "--help"],
        cwd=ROOT,
        env=_env(explicit),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert _probe_result(out.stdout) == min(expected, default_openblas_threads)
