"""Self-forcing: the student rolls out a stream through its own KV cache, with gradients.

Teacher forcing conditions every chunk on ground-truth context; at inference the context is the
student's own output (exposure bias). A rollout here runs exactly the engine's streaming algorithm
(``Engine.generate_latents``, ``StudentStream.swap``): per chunk, noise from the session's own
generator, the few denoising steps with fresh noise between them, one t = 0 pass whose K/V are
committed (sink first, then the FIFO ring), and at a swap the paper's three operations (withdraw,
reference = encode(decode(last latent)[-1]), joint prefill) with RoPE positions and noise
restarted. ``test_self_forcing_rollout`` proves it equal to the engine's output in float64.

The difference is the cache: the engine writes K/V in place into preallocated buffers (right for
inference, fatal for autograd, which would see its saved views overwritten), while
``RolloutCache`` keeps per-frame K/V tensors and concatenates them in the engine's row order, so
gradients flow through everything a chunk attended to. As in Self-Forcing, only the last
``grad_steps`` denoising steps of each chunk are differentiated (earlier ones run without a
graph: their output only sets where the last step starts); ``cache_grad`` keeps the t = 0 cache
passes (and the swap's prefill) in the graph so later chunks backpropagate into earlier ones.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from services.generator.engine.autoencoder import CausalVideoAutoencoder
from services.generator.engine.config import EngineConfig
from services.generator.engine.sampler import FlowMatchSchedule
from services.generator.engine.session import noise_seed
from services.generator.engine.transformer import CausalVideoDiT

KV = tuple[Tensor, Tensor]


class RolloutCache:
    """A differentiable stand-in for ``KVCache`` with the same segments and the same row order.

    Attention view per layer: ``[current | reference | garment | sink | FIFO ring slots]``, the
    ring written at a head pointer that wraps, so eviction replaces the oldest slot exactly as
    the engine's ring does. Nothing is written in place.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.layers = config.num_layers
        self.tokens_per_frame = config.tokens_per_frame
        self.context: list[KV | None] = [None] * self.layers
        self.pending: list[KV | None] = [None] * self.layers  # K/V of the latest forward
        self.prefilling = False
        self.withdraw_history()

    def withdraw_history(self) -> None:
        """Drop sink and FIFO (rescheduling op 2): the next committed chunk forms the new sink."""
        self.sink: list[list[KV]] = []  # per frame: K/V of every layer
        self.ring: list[list[KV] | None] = [None] * self.config.fifo_frames
        self.head = 0

    def attend(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor, None]:
        """Remember this forward's K/V, return them followed by everything visible."""
        self.pending[layer] = (keys, values)
        if self.prefilling:
            return keys, values, None
        parts = [(keys, values)]
        context = self.context[layer]
        if context is not None:
            parts.append(context)
        parts += [frame[layer] for frame in self.sink]
        parts += [slot[layer] for slot in self.ring if slot is not None]
        return torch.cat([k for k, _ in parts], 1), torch.cat([v for _, v in parts], 1), None

    def _pending(self) -> list[KV]:
        if any(p is None for p in self.pending):
            raise RuntimeError("no forward has run through the cache")
        return [p for p in self.pending if p is not None]

    def commit_context(self) -> None:
        """The last forward was the joint [reference | garment] prefill: keep it as the context."""
        self.context = list(self._pending())
        self.prefilling = False

    def commit_frames(self, frames: int) -> None:
        """The last forward was a chunk's t = 0 pass: each frame enters the sink until it is full,
        then the ring slot at the head (evicting the oldest)."""
        tpf = self.tokens_per_frame
        pending = self._pending()
        for i in range(frames):
            rows = slice(i * tpf, (i + 1) * tpf)
            frame = [(k[:, rows], v[:, rows]) for k, v in pending]
            if len(self.sink) < self.config.sink_video_frames:
                self.sink.append(frame)
            elif self.config.fifo_frames:
                self.ring[self.head] = frame
                self.head = (self.head + 1) % self.config.fifo_frames


class SessionNoise:
    """Per-sample noise generators that draw exactly like ``StudentStream``'s: seeded with the
    session seed at start, reseeded with ``noise_seed(seed, k)`` at the k-th withdraw."""

    def __init__(self, seeds: list[int], device: torch.device | str) -> None:
        self.seeds = seeds
        self.generators = [torch.Generator(device=device) for _ in seeds]
        self.restart(0)

    def restart(self, withdraws: int) -> None:
        for g, seed in zip(self.generators, self.seeds, strict=True):
            g.manual_seed(noise_seed(seed, withdraws))

    def draw(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
        """One (1, *shape[1:]) draw per sample, concatenated: the engine's batched order."""
        one = (1, *shape[1:])
        return torch.cat([torch.randn(one, generator=g, device=device, dtype=dtype) for g in self.generators])


@dataclass
class Rollout:
    """What a rollout produced: the clean latents of every chunk and each segment's context."""

    chunks: list[Tensor] = field(default_factory=list)  # (B, chunk_frames, C, h, w) each
    references: list[Tensor] = field(default_factory=list)  # reference latent per segment
    segment_chunks: list[int] = field(default_factory=list)  # first chunk index of each segment

    def segment(self, index: int) -> Tensor:
        """The latents of segment ``index`` (its chunks, concatenated on frames)."""
        bounds = [*self.segment_chunks, len(self.chunks)]
        return torch.cat(self.chunks[bounds[index] : bounds[index + 1]], dim=1)


@dataclass(frozen=True)
class RolloutPlan:
    """How much of the graph a rollout keeps (sizes and switches, not tensors)."""

    grad_steps: int = 1  # last denoising steps of each chunk that carry gradients
    cache_grad: bool = True  # backpropagate through the t = 0 cache passes and prefills


def _prefill(model: CausalVideoDiT, cache: RolloutCache, reference: Tensor, garment: Tensor) -> None:
    """Joint t = 0 forward of [reference | garment] at positions 0 and 1, attending to each other."""
    b = reference.shape[0]
    cache.prefilling = True
    zeros = torch.zeros(b, 2, device=reference.device, dtype=reference.dtype)
    positions = torch.arange(2, device=reference.device)[None].expand(b, -1)
    model(torch.cat([reference, garment], 1), zeros, positions, None, kv_cache=cache, return_output=False)
    cache.commit_context()


def reference_from_last_frame(autoencoder: CausalVideoAutoencoder, last_chunk: Tensor) -> Tensor:
    """encode(decode(last latent)[-1]) alone, as ``StudentStream.reference_from_last_frame``."""
    frame = autoencoder.decode(last_chunk[:, -1:], first_is_image=False)[:, -1]
    return autoencoder.encode_image(frame)


def rollout(
    model: CausalVideoDiT,
    autoencoder: CausalVideoAutoencoder,
    config: EngineConfig,
    *,
    reference: Tensor,
    garments: list[Tensor],
    cond: Tensor,
    seeds: list[int],
    swap_after: int | None = None,
    plan: RolloutPlan = RolloutPlan(),
) -> Rollout:
    """Stream ``cond.shape[1] // chunk_frames`` chunks for a batch of sessions.

    ``reference`` and ``garments[0]`` (B, 1, C, h, w) start the stream; with ``swap_after = k``
    the stream swaps to ``garments[1]`` after k chunks (``StudentStream.swap``). ``cond``
    (B, F, 4 * Cc, h, w) is the latent conditioning of the whole stream; ``seeds`` the session
    seeds (one noise generator each). Gradients follow ``plan`` when grad mode is on.
    """
    chunk = config.chunk_frames
    chunks = cond.shape[1] // chunk
    b, dev, dtype = reference.shape[0], reference.device, reference.dtype
    schedule = FlowMatchSchedule.from_config(config)
    sigmas = schedule.sigmas
    shape = (b, chunk, config.latent_channels, config.latent_height, config.latent_width)
    noise = SessionNoise(seeds, dev)
    cache = RolloutCache(config)
    keep_cache = torch.is_grad_enabled() and plan.cache_grad
    out = Rollout(references=[reference], segment_chunks=[0])
    with torch.set_grad_enabled(keep_cache):
        _prefill(model, cache, reference, garments[0])
    since_restart = 0
    for c in range(chunks):
        if swap_after is not None and c == swap_after:
            cache.withdraw_history()
            since_restart = 0
            noise.restart(1)
            with torch.set_grad_enabled(keep_cache):
                new_reference = reference_from_last_frame(autoencoder, out.chunks[-1])
                _prefill(model, cache, new_reference, garments[1])
            out.references.append(new_reference)
            out.segment_chunks.append(c)
        positions = (torch.arange(chunk, device=dev) + config.context_frames + since_restart)[None]
        positions = positions.expand(b, -1)
        chunk_cond = cond[:, c * chunk : (c + 1) * chunk]
        x = noise.draw(shape, dev, dtype)
        clean = x
        for i, sigma in enumerate(sigmas):
            tracked = i >= len(sigmas) - plan.grad_steps
            grad = torch.enable_grad() if tracked else torch.no_grad()
            with grad if torch.is_grad_enabled() else contextlib.nullcontext():
                t = torch.full((b, chunk), sigma * 1000.0, device=dev, dtype=dtype)
                velocity = model(x, t, positions, chunk_cond, kv_cache=cache)
                clean = schedule.predict_clean(x, velocity, sigma)
            if i + 1 < len(sigmas):
                x = schedule.add_noise(clean, noise.draw(shape, dev, dtype), sigmas[i + 1])
        with torch.set_grad_enabled(keep_cache):
            zero_t = torch.zeros(b, chunk, device=dev, dtype=dtype)
            model(clean, zero_t, positions, chunk_cond, kv_cache=cache, return_output=False)
        cache.commit_frames(chunk)
        since_restart += chunk
        out.chunks.append(clean)
    return out
