"""Shared fixtures: a real nats-server per test session (on a loopback port it picks and logs
itself, JetStream on) unless ``NATS_URL`` points at one, private servers and three-node clusters a
test may break, and the real sample photos (skipped with a reason when absent)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from harness.natsserver import EmbeddedCluster, EmbeddedNats
from runtime.media import MediaError, read_image, sample_photo


@pytest.fixture(scope="session")
def nats_server() -> Iterator[EmbeddedNats | None]:
    """The session's nats-server. None when NATS_URL is set (an external server is used)."""
    if os.environ.get("NATS_URL"):
        yield None
        return
    server = EmbeddedNats().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def nats_url(nats_server: EmbeddedNats | None) -> str:
    return nats_server.url if nats_server else os.environ["NATS_URL"]


@pytest.fixture
def restartable_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A private server a test may stop and restart (same port, same JetStream store)."""
    server = EmbeddedNats(store_dir=tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A private three-node JetStream cluster (formed, meta leader elected) whose nodes a test
    may kill and restart."""
    cluster = EmbeddedCluster(3, store_dir=tmp_path / "cluster").start()
    try:
        yield cluster
    finally:
        cluster.close()


def _photo(name: str) -> np.ndarray:
    try:
        return read_image(sample_photo(name, fetch=os.environ.get("CHAMELEON_FETCH_MEDIA") == "1"))
    except MediaError as exc:
        pytest.skip(f"real sample photo {name} unavailable ({exc}); run `make media`")


@pytest.fixture(scope="session")
def bus_photo() -> np.ndarray:
    """810x1080 street photo with one full-body person (from the ultralytics wheel)."""
    return _photo("bus.jpg")


@pytest.fixture(scope="session")
def zidane_photo() -> np.ndarray:
    """1280x720 photo of two men, upper body (from the ultralytics wheel)."""
    return _photo("zidane.jpg")


@pytest.fixture(scope="session")
def cameraman_photo() -> np.ndarray:
    """512x512 grey photo (read as BGR) of a man bent over a camera, filling the frame (scikit-image)."""
    return _photo("camera.png")


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _docker_available() -> bool:
    import shutil
    import subprocess

    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """gpu and docker tiers skip themselves, with the reason, where their peer cannot exist."""
    needs = {"gpu": _cuda_available, "docker": _docker_available}
    for marker, probe in needs.items():
        marked = [i for i in items if i.get_closest_marker(marker)]
        if marked and not probe():
            skip = pytest.mark.skip(reason=f"no {'CUDA GPU' if marker == 'gpu' else 'Docker engine'} here")
            for item in marked:
                item.add_marker(skip)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test (two shared cores: stable timings and results), restored
    after it. torch is imported here, not at collection: most tests never need it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
