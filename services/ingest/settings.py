"""Ingest settings (``CHAMELEON_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.settings import BaseSettings


@dataclass(frozen=True)
class IngestSettings(BaseSettings):
    max_frame_bytes: int = 2 * 1024 * 1024  # larger JPEGs are rejected before decoding
    max_input_pixels: int = 4096 * 4096
    min_input_side: int = 16
    max_aspect: float = 4.0  # wider/taller inputs are rejected (nothing to find in a sliver)
    out_width: int = 640  # default session resolution; a session's start message overrides it
    out_height: int = 480
    # the largest box a session's start may ask for (the default box above, when larger, wins)
    max_session_width: int = 1280
    max_session_height: int = 720
    jpeg_quality: int = 85
    deadline_ms: float = 500.0  # frames older than this when ingest sees them are dropped
    max_clock_skew_ms: float = 2000.0  # frames captured further in the future are rejected (clock_skew)
    session_idle_s: float = 30.0
    # stages a session needs an owner in before its frames go on (docs/fleet.md); empty: admit all
    admit_stages: str = "preprocess,generator"
    admit_retry_s: float = 2.0  # a session refused at_capacity is asked to retry after this long
