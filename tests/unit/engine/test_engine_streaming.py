"""Invariant 1: chunk-by-chunk cached inference equals one full block-causal forward."""

from __future__ import annotations

import functools

import pytest
import torch
from engine_testkit import random_conditioning, random_latent

from services.generator.engine import TINY, Engine
from services.generator.engine.transformer import teacher_forcing_mask

pytestmark = pytest.mark.unit


def _keep_keys(
    store: dict[int, torch.Tensor],
    layer: int,
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None,
) -> None:
    store[layer] = k


def test_streaming_equals_full_teacher_forcing_forward(engine64: Engine) -> None:
    cfg = TINY
    chunks = 1 + cfg.fifo_frames // cfg.chunk_frames  # sink chunk + a full FIFO: no eviction yet
    calls: list[tuple[tuple, dict, torch.Tensor | None]] = []

    def record(module, args, kwargs, output):
        calls.append((args, kwargs, output))

    handle = engine64.transformer.register_forward_hook(record, with_kwargs=True)
    session = engine64.open_session(seed=3)
    try:
        ref, gar = random_latent(1), random_latent(2)
        session.start_latents(ref, gar)
        conds, cleans = [], []
        for c in range(chunks):
            cond = session.latent_conditioning(random_conditioning(session, 10 + c))
            conds.append(cond)
            cleans.append(engine64.generate_latents([session], [cond]))
        assert session.cache.evicted_total == 0
        steps = cfg.num_steps
        assert len(calls) == 1 + chunks * (steps + 1)
        layout = session.cache.layout
        cached_keys = session.cache.keys[:, layout.sink_offset : layout.total_tokens].clone()
    finally:
        handle.remove()
        session.release()

    tpf = cfg.tokens_per_frame
    mask = teacher_forcing_mask(chunks, cfg.chunk_frames, tpf)
    video_pos = torch.arange(cfg.chunk_frames * chunks) + 2
    positions = torch.cat([torch.arange(2), video_pos, video_pos])[None]
    zero_cond = torch.zeros(2, *conds[0].shape[1:], dtype=torch.float64)
    cond = torch.cat([zero_cond, *conds, *conds])[None]
    clean_video = torch.cat(cleans, dim=1)
    n_clean = 2 + chunks * cfg.chunk_frames

    for step in range(steps):
        denoise_calls = [calls[1 + c * (steps + 1) + step] for c in range(chunks)]
        noisy = torch.cat([args[0] for args, _, _ in denoise_calls], dim=1)
        t_noisy = torch.cat([args[1] for args, _, _ in denoise_calls], dim=1)
        latents = torch.cat([ref, gar, clean_video, noisy], dim=1)
        timesteps = torch.cat([torch.zeros(1, n_clean, dtype=torch.float64), t_noisy], dim=1)
        captured: dict[int, torch.Tensor] = {}
        probe = functools.partial(_keep_keys, captured)
        for block in engine64.transformer.blocks:
            block.attn.probe = probe
        try:
            with torch.no_grad():
                full = engine64.transformer(latents, timesteps, positions, cond, attn_mask=mask)
        finally:
            for block in engine64.transformer.blocks:
                block.attn.probe = None
        streamed = torch.cat([out for _, _, out in denoise_calls], dim=1)
        torch.testing.assert_close(full[:, n_clean:], streamed, rtol=0, atol=1e-10)
        # The clean K/V the cache holds are the full forward's keys at the clean positions.
        clean_keys = torch.stack([captured[i][0, 2 * tpf : n_clean * tpf] for i in range(cfg.num_layers)])
        torch.testing.assert_close(cached_keys, clean_keys, rtol=0, atol=1e-10)


def test_mask_is_block_causal() -> None:
    m = teacher_forcing_mask(2, 1, 1)  # frames: ctx0 ctx1 clean0 clean1 noisy0 noisy1
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 1, 0],
            [1, 1, 1, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m, expected)
