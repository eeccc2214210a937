"""Backend selection. ``auto`` picks the student when CUDA and a checkpoint are present (the paper's
real-time path needs a GPU), otherwise the CPU ``warp`` renderer; ``sim`` (a stand-in for a GPU in
load tests) is only ever chosen by name."""

from __future__ import annotations

from services.generator.rendering import Backend
from services.generator.settings import GeneratorSettings
from shared.schemas import BACKENDS


def resolve(name: str, settings: GeneratorSettings) -> str:
    if name in BACKENDS:
        return name
    if name not in ("auto", ""):
        raise ValueError(f"unknown backend {name!r}; one of auto, {', '.join(BACKENDS)}")
    from services.generator.student_backend import student_available

    return "student" if student_available(settings, require_cuda=True) else "warp"


def make_backend(name: str, settings: GeneratorSettings) -> Backend:
    if name == "warp":
        from services.generator.warp import WarpBackend, WarpConfig

        return WarpBackend(WarpConfig(pixel_budget=settings.warp_pixel_budget))
    if name == "student":
        from services.generator.student_backend import StudentBackend

        return StudentBackend.from_settings(settings)
    if name == "sim":
        from services.generator.sim_backend import SimBackend

        return SimBackend(settings.sim_service_ms, settings.max_sessions)
    raise ValueError(f"unknown backend {name!r}")
