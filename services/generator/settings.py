"""Generator settings (``CHAMELEON_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.settings import BaseSettings, SettingsError


@dataclass(frozen=True)
class GeneratorSettings(BaseSettings):
    backend: str = "auto"  # auto: student when CUDA and a checkpoint exist, else warp
    default_garment: str = "tee-red-solid"  # used when a session starts by frames alone
    max_sessions: int = 8  # this worker's capacity in the fleet (sessions placed here at most)
    session_idle_s: float = 5.0  # no frames this long: the camera went away; free the cache and slot
    out_jpeg_quality: int = 95  # output is compared with the input outside the garment
    out_min_jpeg_quality: int = 50  # how low a viewer's slow downlink may take its session's output
    garment_cache_size: int = 64  # decoded garments kept per worker, shared by sessions
    garment_timeout_s: float = 2.0
    control_durable: str = "generator"  # prefix of each session's durable control consumer
    control_ack_wait_s: float = 2.0  # a swap its owner did not acknowledge goes to the next owner after this
    student_config: str = "tiny"
    student_checkpoint: str = ""  # safetensors; empty: the packaged checkpoint if any
    student_device: str = "auto"  # auto: cuda when available, else cpu
    sim_service_ms: float = 40.0  # backend=sim: time each frame holds its worker, like a GPU call
    # backend=warp: frame pixels of the upper body drawn at full size; a larger one is drawn on
    # the frame shrunk to fit (docs/warp.md, "Speed"): a close-up's CPU against its fidelity
    warp_pixel_budget: int = 64_000

    def __post_init__(self) -> None:
        if self.warp_pixel_budget < 0:
            raise SettingsError(f"CHAMELEON_WARP_PIXEL_BUDGET={self.warp_pixel_budget}: 0 (off) or more")
