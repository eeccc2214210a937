"""On a CUDA box: bf16 streaming, and a masked batched step (sessions at different fill levels)."""

from __future__ import annotations

import pytest
import torch

from services.generator.engine import TINY, Engine

pytestmark = [
    pytest.mark.unit,
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_bf16_masked_batched_step_matches_single_steps_on_cuda() -> None:
    engine = Engine.build(TINY, device="cuda", dtype=torch.bfloat16, max_sessions=4)
    shape = (1, 1, TINY.latent_channels, TINY.latent_height, TINY.latent_width)
    ref = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    gar = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    sessions = [engine.open_session(seed=i % 2) for i in range(4)]
    for i, s in enumerate(sessions):
        s.start_latents(ref, gar)
        for _ in range(1 + 3 * (i % 2)):  # two fill levels: the batch needs a key mask
            s.step_latents()
    alone = [sessions[0].step_latents(), sessions[1].step_latents()]
    batched = engine.generate_latents(
        [sessions[2], sessions[3]], [s.latent_conditioning(None) for s in sessions[2:]]
    )
    for a, b in zip(alone, batched.split(1), strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=0.05, atol=0.05)
    for s in sessions:
        s.release()
