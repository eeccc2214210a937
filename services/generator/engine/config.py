"""Every size of the generation engine in one frozen dataclass.

Sizes live here (never as literals inside modules) so that a checkpoint can be validated against
the config it was trained with, and so that the same code runs the CPU-sized ``tiny`` student and
the paper-sized ``paper`` backbone (random weights, for GPU benchmarking).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EngineConfig:
    """Sizes of the causal video student, its autoencoder and its KV cache.

    Frame counts are in LATENT frames unless the name says ``pixel``. ``window_frames`` is the whole
    per-layer cache budget (reference + garment + sink + FIFO), as in the paper's "23 latent frames
    in all"; ``sink_frames`` counts the two in-context frames plus the first generated chunk.
    """

    name: str
    num_layers: int
    num_heads: int
    head_dim: int
    mlp_hidden: int
    freq_dim: int
    latent_channels: int
    patch_size: int
    pixel_height: int
    pixel_width: int
    vae_spatial: int
    vae_temporal: int
    ae_channels: int
    cond_channels: int
    chunk_frames: int
    timesteps: tuple[float, ...]
    timestep_shift: float
    window_frames: int
    sink_frames: int
    context_frames: int = 2
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.head_dim % 2:
            problems.append("head_dim must be even (RoPE rotates pairs)")
        if self.head_dim // 2 < 3:
            problems.append("head_dim must give at least one RoPE pair per axis (>= 6)")
        for side in ("pixel_height", "pixel_width"):
            if getattr(self, side) % (self.vae_spatial * self.patch_size):
                problems.append(f"{side} must be divisible by vae_spatial * patch_size")
        if self.vae_spatial < 1 or self.vae_spatial & (self.vae_spatial - 1):
            problems.append("vae_spatial must be a power of two")
        if self.vae_temporal < 1:
            problems.append("vae_temporal must be >= 1")
        if self.context_frames != 2:
            problems.append("context_frames is reference + garment = 2")
        if self.sink_frames < self.context_frames:
            problems.append("sink_frames counts the in-context frames, so it must be >= 2")
        if self.window_frames <= self.sink_frames:
            problems.append("window_frames must exceed sink_frames (room for a FIFO)")
        if self.chunk_frames < 1:
            problems.append("chunk_frames must be >= 1")
        ts = list(self.timesteps)
        if not ts or any(not 0 < t <= 1000 for t in ts) or ts != sorted(ts, reverse=True):
            problems.append("timesteps must be strictly positive, <= 1000 and descending")
        if problems:
            raise ValueError(f"invalid EngineConfig {self.name!r}: " + "; ".join(problems))

    @property
    def hidden(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def latent_height(self) -> int:
        return self.pixel_height // self.vae_spatial

    @property
    def latent_width(self) -> int:
        return self.pixel_width // self.vae_spatial

    @property
    def grid_height(self) -> int:
        return self.latent_height // self.patch_size

    @property
    def grid_width(self) -> int:
        return self.latent_width // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_height * self.grid_width

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def sink_video_frames(self) -> int:
        """Generated frames kept forever as attention sink (the first chunk at paper scale)."""
        return self.sink_frames - self.context_frames

    @property
    def fifo_frames(self) -> int:
        return self.window_frames - self.sink_frames

    @property
    def latent_cond_channels(self) -> int:
        """A latent frame covers ``vae_temporal`` pixel frames; their conditioning is stacked."""
        return self.cond_channels * self.vae_temporal

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["timesteps"] = list(self.timesteps)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown EngineConfig fields: {unknown}")
        values = dict(data)
        values["timesteps"] = tuple(float(t) for t in values["timesteps"])
        return cls(**values)

    def size_differences(self, other: EngineConfig) -> dict[str, tuple[Any, Any]]:
        """Fields (other than the name) whose values differ: what makes weights incompatible."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine if k != "name" and mine[k] != theirs[k]}


TINY = EngineConfig(
    name="tiny",
    num_layers=2,
    num_heads=4,
    head_dim=16,
    mlp_hidden=128,
    freq_dim=32,
    latent_channels=8,
    patch_size=2,
    pixel_height=64,
    pixel_width=64,
    vae_spatial=8,
    vae_temporal=4,
    ae_channels=16,
    cond_channels=4,
    chunk_frames=3,
    timesteps=(1000.0, 750.0, 500.0, 250.0),
    timestep_shift=5.0,
    window_frames=11,
    sink_frames=5,
)
"""CPU-sized student: 64x64 pixels, 16 tokens per latent frame, FIFO of two chunks."""

PAPER = EngineConfig(
    name="paper",
    num_layers=30,
    num_heads=24,
    head_dim=128,
    mlp_hidden=14336,
    freq_dim=256,
    latent_channels=48,
    patch_size=2,
    pixel_height=704,
    pixel_width=1280,
    vae_spatial=16,
    vae_temporal=4,
    ae_channels=32,
    cond_channels=4,
    chunk_frames=3,
    timesteps=(1000.0, 750.0, 500.0, 250.0),
    timestep_shift=5.0,
    window_frames=23,
    sink_frames=5,
)
"""Wan2.2-TI2V-5B-shaped backbone (880 tokens per latent frame) for GPU benchmarks."""

CONFIGS: dict[str, EngineConfig] = {"tiny": TINY, "paper": PAPER}


def get_config(name: str) -> EngineConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown engine config {name!r}; known: {sorted(CONFIGS)}") from None
