"""Fixtures for the warp renderer: the real bus photo through real MediaPipe, catalogue garments
through the real encoder. Built once per test session (MediaPipe and encoding take seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from services.generator.rendering import FrameInput, Garment
from tools.samples import catalogue_garment, preprocessed_frames


@pytest.fixture(scope="session")
def bus_frame(bus_photo: np.ndarray) -> FrameInput:
    # as a stream shows the person once tracking has settled: pose runs on every k-th frame and
    # the landmarks are smoothed, so the hands still move a few pixels over the first frames
    frame = preprocessed_frames([bus_photo], warmup=6)[0]
    if frame.landmarks is None or frame.garment_mask is None:
        pytest.fail("MediaPipe found no body in the bus photo")
    return frame


@pytest.fixture(scope="session")
def red_tee() -> Garment:
    return catalogue_garment("tee-red-solid")


@pytest.fixture(scope="session")
def blue_shirt() -> Garment:
    return catalogue_garment("shirt-blue-checks")
