"""Generator settings (``CHAMELEON_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.settings import BaseSettings


@dataclass(frozen=True)
class GeneratorSettings(BaseSettings):
    backend: str = "auto"  # auto: student when CUDA and a checkpoint exist, else warp
    default_garment: str = "tee-red-solid"  # used when a session starts by frames alone
    max_sessions: int = 8  # admission control: more sessions get an at_capacity error
    session_idle_s: float = 30.0  # no frames this long: release the session's cache
    out_jpeg_quality: int = 95  # output is compared with the input outside the garment
    garment_cache_size: int = 64  # decoded garments kept per worker, shared by sessions
    garment_timeout_s: float = 2.0
    control_durable: str = "generator"  # JetStream durable consumer of the control stream
    control_ack_wait_s: float = 30.0
    student_config: str = "tiny"
    student_checkpoint: str = ""  # safetensors; empty: the packaged checkpoint if any
    student_device: str = "auto"  # auto: cuda when available, else cpu
