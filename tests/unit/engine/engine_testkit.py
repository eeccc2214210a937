"""Helpers shared by the engine tests (a uniquely named module: tests have no packages)."""

from __future__ import annotations

import torch

from services.generator.engine import TINY, Engine, StudentStream


def make_engine(dtype: torch.dtype = torch.float64, sessions: int = 4, seed: int = 0) -> Engine:
    return Engine.build(TINY, dtype=dtype, max_sessions=sessions, seed=seed)


def random_latent(seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (1, 1, TINY.latent_channels, TINY.latent_height, TINY.latent_width)
    return torch.randn(shape, generator=g, dtype=dtype)


def random_conditioning(session: StudentStream, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    frames = session.pixel_frames_next_chunk
    return torch.rand(frames, TINY.pixel_height, TINY.pixel_width, TINY.cond_channels, generator=g)
