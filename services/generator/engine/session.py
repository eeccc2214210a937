"""Session-facing API: ``Engine`` (shared model + cache pool) and ``StudentStream`` (one stream).

A session starts from a reference image (the person) and a garment image, produces a chunk of
pixel frames per ``step`` and can ``swap`` the garment at any chunk boundary with the paper's three
training-free rescheduling operations. The engine knows nothing of transport: the generator
service wraps these calls and runs them off its event loop.
"""

from __future__ import annotations

from types import TracebackType

import numpy as np
import torch
from torch import Tensor

from .autoencoder import CausalVideoAutoencoder
from .conditioning import (
    conditioning_to_latent,
    frames_to_uint8,
    image_to_tensor,
    pixel_frames_in_chunk,
)
from .config import EngineConfig
from .kv_cache import AttentionContext, KVBatch, KVCache
from .pool import CachePool
from .sampler import FlowMatchSchedule
from .transformer import CausalVideoDiT
from .weights import build_modules, load_weights

Conditioning = np.ndarray | Tensor | None


def noise_seed(seed: int, withdraws: int) -> int:
    """Seed of a session's noise generator after ``withdraws`` history withdraws (swaps).

    0 withdraws (from the start): the session seed itself. After the k-th withdraw: a hash of
    (seed, k), so two swaps never replay the same noise. Reseeding at every withdraw makes the
    noise after a swap depend only on the seed and the swap count, not on how many chunks (noise
    draws) came before it.
    """
    if withdraws == 0:
        return seed
    entropy = [seed & 0xFFFF_FFFF_FFFF_FFFF, withdraws]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


class Engine:
    """One worker's model, autoencoder and cache pool; runs single or batched session steps."""

    def __init__(
        self,
        config: EngineConfig,
        transformer: CausalVideoDiT,
        autoencoder: CausalVideoAutoencoder,
        pool: CachePool,
    ) -> None:
        self.config = config
        self.transformer = transformer
        self.autoencoder = autoencoder
        self.pool = pool
        param = next(transformer.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.schedule = FlowMatchSchedule.from_config(config)

    @classmethod
    def build(
        cls,
        config: EngineConfig,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_sessions: int | None = 1,
        memory_budget_bytes: int | None = None,
        weights: str | None = None,
        seed: int | None = 0,
    ) -> Engine:
        """Build modules (random init), optionally load a checkpoint, preallocate the pool."""
        transformer, autoencoder = build_modules(config, device=device, dtype=dtype, seed=seed)
        if weights is not None:
            load_weights(weights, config, transformer, autoencoder)
        pool = CachePool(
            config,
            capacity=max_sessions,
            memory_budget_bytes=memory_budget_bytes,
            device=device,
            dtype=dtype,
        )
        return cls(config, transformer, autoencoder, pool)

    @property
    def chunk_shape(self) -> tuple[int, int, int, int, int]:
        """Latent shape of one session's chunk: (1, chunk_frames, C, h, w)."""
        cfg = self.config
        return (1, cfg.chunk_frames, cfg.latent_channels, cfg.latent_height, cfg.latent_width)

    def open_session(self, *, seed: int = 0) -> StudentStream:
        """Admit a session (raises ``AtCapacity`` when the pool is full)."""
        return StudentStream(self, self.pool.acquire(), seed=seed)

    # --------------------------------------------------------------------------- primitives
    @torch.no_grad()
    def encode_image(self, image: np.ndarray | Tensor) -> Tensor:
        """HxWx3 uint8 image (or (1, 3, H, W) tensor in [-1, 1]) -> one latent frame."""
        if isinstance(image, np.ndarray):
            image = image_to_tensor(image, self.config, device=self.device, dtype=self.dtype)
        return self.autoencoder.encode_image(image)

    @torch.no_grad()
    def prefill_context(self, session: StudentStream, reference: Tensor, garment: Tensor) -> None:
        """Joint t = 0 forward of [reference | garment] that (re)writes both in-context slots.

        Both slots are always recomputed together: in the prefill they attend to each other, so
        recomputing only one would leave the other's K/V conditioned on stale content.
        """
        cache = session.cache
        cache.begin_context_prefill()
        latents = torch.cat([reference, garment], dim=1)
        zeros = torch.zeros(1, 2, device=self.device, dtype=self.dtype)
        positions = torch.arange(2, device=self.device)[None]
        try:
            self.transformer(latents, zeros, positions, None, kv_cache=cache, return_output=False)
        except BaseException:
            cache.cancel_context_prefill()
            raise
        cache.commit_context()
        session.reference_latent, session.garment_latent = reference, garment

    @torch.no_grad()
    def generate_latents(self, sessions: list[StudentStream], conditioning: list[Tensor]) -> Tensor:
        """Denoise one chunk for each session in ONE batched forward per step, then commit.

        Per session: noise from its own generator, its own RoPE positions and cache. After the
        last step one more forward at t = 0 writes the CLEAN K/V of the chunk (Self-Forcing).
        """
        cfg = self.config
        frames = cfg.chunk_frames
        for s in sessions:
            s.require_started()
        context: AttentionContext = (
            sessions[0].cache if len(sessions) == 1 else KVBatch([s.cache for s in sessions])
        )
        positions = torch.cat([s.next_chunk_positions() for s in sessions])
        cond = torch.stack(conditioning).to(self.dtype)
        shape = self.chunk_shape

        def noise() -> Tensor:
            return torch.cat(
                [
                    torch.randn(shape, generator=s.generator, device=self.device, dtype=self.dtype)
                    for s in sessions
                ]
            )

        batch = len(sessions)
        x = noise()
        clean = x
        sigmas = self.schedule.sigmas
        for i, sigma in enumerate(sigmas):
            t = torch.full((batch, frames), sigma * 1000.0, device=self.device, dtype=self.dtype)
            velocity = self.transformer(x, t, positions, cond, kv_cache=context)
            clean = self.schedule.predict_clean(x, velocity, sigma)
            if i + 1 < len(sigmas):
                x = self.schedule.add_noise(clean, noise(), sigmas[i + 1])
        zero_t = torch.zeros(batch, frames, device=self.device, dtype=self.dtype)
        self.transformer(clean, zero_t, positions, cond, kv_cache=context, return_output=False)
        for b, s in enumerate(sessions):
            ids = list(range(s.latent_frames_total, s.latent_frames_total + frames))
            s.cache.commit_frames(ids)
            s.frames_since_restart += frames
            s.latent_frames_total += frames
            s.last_latents = clean[b : b + 1]
        return clean

    @torch.no_grad()
    def step_batch(
        self, sessions: list[StudentStream], conditioning: list[Conditioning] | None = None
    ) -> list[np.ndarray]:
        """One chunk for several sessions through shared forwards; per-session uint8 frames."""
        if conditioning is None:
            conditioning = [None] * len(sessions)
        first = [s.latent_frames_total == 0 for s in sessions]
        cond = [s.latent_conditioning(c) for s, c in zip(sessions, conditioning, strict=True)]
        latents = self.generate_latents(sessions, cond)
        pixels = self.autoencoder.decode(latents, first_is_image=False)
        trim = self.config.vae_temporal - 1
        return [frames_to_uint8(pixels[b, trim:] if f else pixels[b]) for b, f in enumerate(first)]


class StudentStream:
    """One stream's state: its KV cache (owned, from the pool), noise generator and latents."""

    def __init__(self, engine: Engine, cache: KVCache, *, seed: int = 0) -> None:
        self.engine = engine
        self.cache = cache
        self.seed = seed
        self.withdraws = 0  # since start: which noise stream the generator draws from
        self.generator = torch.Generator(device=engine.device)
        self.generator.manual_seed(seed)
        self.reference_latent: Tensor | None = None
        self.garment_latent: Tensor | None = None
        self.last_latents: Tensor | None = None
        self.frames_since_restart = 0  # latent frames since start or withdraw: RoPE positions
        self.latent_frames_total = 0  # frames since start: ids, and the image-first decode rule
        self.released = False

    # -------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> StudentStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    @property
    def started(self) -> bool:
        return self.reference_latent is not None

    def require_started(self) -> None:
        if self.released:
            raise RuntimeError("session was released")
        if not self.started:
            raise RuntimeError("call start() before step()")

    def release(self) -> None:
        """Give the cache slot back to the pool; idempotent."""
        if not self.released:
            self.engine.pool.release(self.cache)
            self.released = True

    def start(self, reference_image: np.ndarray, garment_image: np.ndarray) -> None:
        """Encode reference and garment alone and prefill their in-context K/V."""
        self.start_latents(self.engine.encode_image(reference_image), self.engine.encode_image(garment_image))

    def start_latents(self, reference_latent: Tensor, garment_latent: Tensor) -> None:
        if self.released:
            raise RuntimeError("session was released")
        self.cache.reset()
        self.frames_since_restart = 0
        self.latent_frames_total = 0
        self.last_latents = None
        self.restart_noise(withdraws=0)
        self.engine.prefill_context(self, reference_latent, garment_latent)

    # ------------------------------------------------------------------------------ steps
    @property
    def pixel_frames_next_chunk(self) -> int:
        """How many conditioning frames ``step`` expects (9 for the stream's first chunk)."""
        first = self.latent_frames_total == 0
        return pixel_frames_in_chunk(self.engine.config, first_is_image=first)

    def next_chunk_positions(self) -> Tensor:
        """Absolute RoPE frame positions (1, chunk_frames) of the next chunk."""
        cfg = self.engine.config
        first = cfg.context_frames + self.frames_since_restart
        return (torch.arange(cfg.chunk_frames, device=self.engine.device) + first)[None]

    def latent_conditioning(self, conditioning: Conditioning) -> Tensor:
        return conditioning_to_latent(
            conditioning,
            self.engine.config,
            first_is_image=self.latent_frames_total == 0,
            device=self.engine.device,
            dtype=self.engine.dtype,
        )

    def step_latents(self, conditioning: Conditioning = None) -> Tensor:
        """Generate the next chunk; returns its clean latents (1, chunk_frames, C, h, w)."""
        return self.engine.generate_latents([self], [self.latent_conditioning(conditioning)])

    def step(self, conditioning: Conditioning = None) -> np.ndarray:
        """Generate the next chunk; returns its pixel frames, (T, H, W, 3) uint8.

        ``conditioning`` holds the chunk's pose/mask maps, (T, H, W, cond_channels) with T =
        ``pixel_frames_next_chunk``, or None for none.
        """
        return self.engine.step_batch([self], [conditioning])[0]

    # ------------------------------------------------------------------------ rescheduling
    def swap(self, new_garment_image: np.ndarray) -> None:
        """Change the garment at this chunk boundary (paper, "training-free rescheduling").

        Withdraw history (op 2), rebuild the reference from the last generated frame (op 3) and
        refresh the garment (op 1); ops 1 and 3 share ONE joint prefill. Work: one decode of one
        latent, two single-image encodes, one prefill of two frames, whatever the history length.
        """
        self.swap_latents(self.engine.encode_image(new_garment_image))

    def swap_latents(self, garment_latent: Tensor) -> None:
        self.require_started()
        self.withdraw_history_kv()
        reference = self.reference_from_last_frame()
        self.engine.prefill_context(self, reference, garment_latent)

    def refresh_garment_kv(self, new_garment_image: np.ndarray | Tensor) -> None:
        """Garment KV refresh (paper, rescheduling op 1): encode the new garment, run one t = 0
        forward at its slot and replace the garment K/V in every layer.

        The reference slot is recomputed in the same forward (with the current reference latent)
        because reference and garment attend to each other in the prefill. Alone, this does not
        change the clothes (paper Fig. 2): history still dominates attention.
        """
        self.require_started()
        latent = (
            self.engine.encode_image(new_garment_image)
            if isinstance(new_garment_image, np.ndarray)
            else new_garment_image
        )
        assert self.reference_latent is not None
        self.engine.prefill_context(self, self.reference_latent, latent)

    def withdraw_history_kv(self) -> None:
        """Historical KV withdraw (paper, rescheduling op 2): drop the sink chunk and the FIFO.

        New frames attend mostly to history (paper Fig. 2), which would keep drawing the old
        garment. RoPE frame positions restart after the in-context frames (our choice, see
        docs/engine.md): the stream continues like a fresh image-to-video start, and so does
        its noise: the generator restarts from ``noise_seed(seed, withdraws so far)``.
        """
        self.require_started()
        self.cache.withdraw_history()
        self.frames_since_restart = 0
        self.restart_noise(withdraws=self.withdraws + 1)

    def restart_noise(self, *, withdraws: int) -> None:
        """Reseed the noise generator as after ``withdraws`` withdraws (0 = a fresh start)."""
        self.withdraws = withdraws
        self.generator.manual_seed(noise_seed(self.seed, withdraws))

    def reference_from_last_frame(self) -> Tensor:
        """encode(decode(last latent)[-1]) as ONE image: the new reference latent.

        Decoding then re-encoding alone avoids the distribution mismatch of reusing a video latent
        as an image latent (paper Fig. 5). Before any chunk exists the reference is unchanged.
        """
        if self.last_latents is None:
            assert self.reference_latent is not None
            return self.reference_latent
        auto = self.engine.autoencoder
        with torch.no_grad():
            last_frame = auto.decode(self.last_latents[:, -1:], first_is_image=False)[:, -1]
            return auto.encode_image(last_frame)

    def disentangle_reference_kv(self) -> None:
        """Reference KV disentangle (paper, rescheduling op 3): decode the last latent, take the
        last pixel frame, re-encode it alone and recompute the reference K/V (jointly with the
        current garment, so nothing of an older garment survives in the reference K/V).
        """
        self.require_started()
        assert self.garment_latent is not None
        self.engine.prefill_context(self, self.reference_from_last_frame(), self.garment_latent)
