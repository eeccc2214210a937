"""Few-step flow-matching schedule of the student (Self-Forcing style).

Each step predicts the clean latent ``x0 = x_t - sigma * v`` and re-noises it to the next, lower
sigma with FRESH noise; the last step's ``x0`` is the chunk's output. Sigmas are the config's
timesteps / 1000 with the usual flow-matching shift applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .config import EngineConfig


def shift_sigma(sigma: float, shift: float) -> float:
    """Spend more of the few steps at high noise, where layout is decided."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


@dataclass(frozen=True)
class FlowMatchSchedule:
    sigmas: tuple[float, ...]

    @classmethod
    def from_config(cls, config: EngineConfig) -> FlowMatchSchedule:
        return cls(tuple(shift_sigma(t / 1000.0, config.timestep_shift) for t in config.timesteps))

    @property
    def model_timesteps(self) -> tuple[float, ...]:
        """What the network is conditioned on (0..1000)."""
        return tuple(s * 1000.0 for s in self.sigmas)

    @staticmethod
    def predict_clean(x_t: Tensor, velocity: Tensor, sigma: float) -> Tensor:
        return x_t - sigma * velocity

    @staticmethod
    def add_noise(clean: Tensor, noise: Tensor, sigma: float) -> Tensor:
        return (1.0 - sigma) * clean + sigma * noise
