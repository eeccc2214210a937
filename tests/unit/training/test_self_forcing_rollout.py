"""The differentiable self-forcing rollout is the engine's streaming inference, and it carries
gradients through the KV cache (float64, tiny sizes, random weights: equality needs no training)."""

from __future__ import annotations

import pytest
import torch

from services.generator.engine import TINY, Engine
from tools.training.self_forcing import RolloutPlan, rollout

pytestmark = pytest.mark.unit

C, H, W = TINY.latent_channels, TINY.latent_height, TINY.latent_width
CHUNK = TINY.chunk_frames


def _random(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _engine_stream(
    engine: Engine,
    ref: torch.Tensor,
    gars: list[torch.Tensor],
    cond: torch.Tensor,
    seed: int,
    swap_after: int | None,
) -> list[torch.Tensor]:
    """One session through the engine's own streaming path (``generate_latents`` and ``swap``)."""
    out = []
    with engine.open_session(seed=seed) as session:
        session.start_latents(ref, gars[0])
        for c in range(cond.shape[1] // CHUNK):
            if c == swap_after:
                session.swap_latents(gars[1])
            out.append(engine.generate_latents([session], [cond[0, c * CHUNK : (c + 1) * CHUNK]]))
    return out


@pytest.mark.parametrize("swap_after", [None, 3])
def test_rollout_equals_the_engine_stream_in_float64(swap_after: int | None) -> None:
    """Five chunks: the fourth evicts from the FIFO (sink 3 + ring 6 frames), and with a swap
    after it the fifth runs after withdraw + decoded-reference prefill with restarted positions
    and noise. Two sessions in one rollout batch, each equal to its own engine session."""
    engine = Engine.build(TINY, dtype=torch.float64, max_sessions=1, seed=3)
    chunks, seeds = 5, [11, 12]
    ref, gar_a, gar_b = (_random(i, 2, 1, C, H, W) for i in (1, 2, 3))
    cond = _random(4, 2, chunks * CHUNK, TINY.latent_cond_channels, H, W).abs()
    with torch.no_grad():
        rolled = rollout(
            engine.transformer,
            engine.autoencoder,
            TINY,
            reference=ref,
            garments=[gar_a, gar_b],
            cond=cond,
            seeds=seeds,
            swap_after=swap_after,
        )
    for b, seed in enumerate(seeds):
        expected = _engine_stream(
            engine, ref[b : b + 1], [gar_a[b : b + 1], gar_b[b : b + 1]], cond[b : b + 1], seed, swap_after
        )
        for c, (got, want) in enumerate(zip(rolled.chunks, expected, strict=True)):
            torch.testing.assert_close(got[b : b + 1], want, rtol=0, atol=1e-10, msg=f"sample {b} chunk {c}")
    assert rolled.segment_chunks == ([0] if swap_after is None else [0, swap_after])


@pytest.mark.parametrize("cache_grad", [True, False])
def test_gradients_flow_through_the_cache_into_earlier_chunks(cache_grad: bool) -> None:
    """Chunk 1 attends to chunk 0's clean K/V: with ``cache_grad`` its output has a gradient with
    respect to chunk 0's conditioning; without, exactly none (only chunk 1's own)."""
    engine = Engine.build(TINY, dtype=torch.float64, max_sessions=1, seed=3)
    ref, gar = _random(1, 1, 1, C, H, W), _random(2, 1, 1, C, H, W)
    cond = _random(4, 1, 2 * CHUNK, TINY.latent_cond_channels, H, W).abs().requires_grad_(True)
    rolled = rollout(
        engine.transformer,
        engine.autoencoder,
        TINY,
        reference=ref,
        garments=[gar],
        cond=cond,
        seeds=[0],
        plan=RolloutPlan(grad_steps=1, cache_grad=cache_grad),
    )
    (grad,) = torch.autograd.grad(rolled.chunks[1].square().sum(), cond, retain_graph=True)
    per_chunk = grad.abs().flatten(2).amax(-1).amax(0).view(2, CHUNK).amax(-1)
    assert per_chunk[1] > 0
    assert (per_chunk[0] > 0) == cache_grad
    params = torch.autograd.grad(rolled.chunks[0].sum(), engine.transformer.head.weight)[0]
    assert params.abs().sum() > 0  # the last denoising step trains the student
