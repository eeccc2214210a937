"""The sampler's arithmetic, checked by hand against a stand-in network that knows the answer.

The stand-in predicts the exact flow-matching velocity for a known clean latent ``x0`` from the
time it is given: ``v = (x_t - x0) / (t / 1000)``. A sampler that conditions the network on the
right time and predicts ``x0 = x_t - sigma * v`` therefore returns ``x0`` exactly, and every
intermediate input can be written down from the hand-computed shifted sigmas.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from services.generator.engine import TINY, Engine
from services.generator.engine.pool import CachePool
from services.generator.engine.sampler import FlowMatchSchedule
from services.generator.engine.weights import build_modules

pytestmark = pytest.mark.unit

# shift 5: sigma = 5 s / (1 + 4 s) for s = t / 1000 with t = 1000, 750, 500, 250.
HAND_SIGMAS = (1.0, 15 / 16, 5 / 6, 5 / 8)
HAND_MODEL_TIMES = (1000.0, 937.5, 2500 / 3, 625.0)


class KnowsTheAnswer(nn.Module):
    """Stand-in for ``CausalVideoDiT``: the exact velocity towards ``answer``; records its calls."""

    def __init__(self, answer: Tensor) -> None:
        super().__init__()
        self.answer = answer
        self.anchor = nn.Parameter(torch.zeros((), dtype=answer.dtype))  # gives Engine its dtype
        self.calls: list[tuple[Tensor, Tensor, Tensor]] = []

    def forward(
        self,
        latents: Tensor,
        timesteps: Tensor,
        frame_positions: Tensor,
        cond: Tensor | None = None,
        *,
        kv_cache: object = None,
        attn_mask: Tensor | None = None,
        return_output: bool = True,
    ) -> Tensor | None:
        self.calls.append((latents.clone(), timesteps.clone(), frame_positions.clone()))
        if not return_output:
            return None
        sigma = (timesteps / 1000.0)[:, :, None, None, None]
        return (latents - self.answer) / sigma


def _answer(seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (1, TINY.chunk_frames, TINY.latent_channels, TINY.latent_height, TINY.latent_width)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _sample(answer: Tensor, *, seed: int = 0) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]]]:
    """One chunk from a fresh session; the stand-in's recorded chunk calls (prefill dropped)."""
    net = KnowsTheAnswer(answer)
    _, autoencoder = build_modules(TINY, dtype=torch.float64, seed=0)
    pool = CachePool(TINY, capacity=1, dtype=torch.float64)
    engine = Engine(TINY, net, autoencoder, pool)  # type: ignore[arg-type]
    context = torch.zeros(
        1, 1, TINY.latent_channels, TINY.latent_height, TINY.latent_width, dtype=torch.float64
    )
    with engine.open_session(seed=seed) as session:
        session.start_latents(context, context)
        out = session.step_latents()
    return out, net.calls[1:]


def test_schedule_sigmas_are_the_shifted_timesteps() -> None:
    schedule = FlowMatchSchedule.from_config(TINY)
    torch.testing.assert_close(torch.tensor(schedule.sigmas), torch.tensor(HAND_SIGMAS), rtol=0, atol=1e-15)
    torch.testing.assert_close(
        torch.tensor(schedule.model_timesteps), torch.tensor(HAND_MODEL_TIMES), rtol=0, atol=1e-12
    )


def test_a_network_that_knows_the_answer_makes_the_sampler_return_it() -> None:
    answer = _answer(1)
    out, _ = _sample(answer)
    torch.testing.assert_close(out, answer, rtol=0, atol=1e-12)


def test_the_network_is_conditioned_on_shifted_model_time_from_1000_down() -> None:
    _, calls = _sample(_answer(1))
    assert len(calls) == TINY.num_steps + 1  # the denoising steps, then the clean t = 0 pass
    for (_, t, _), expected in zip(calls, (*HAND_MODEL_TIMES, 0.0), strict=True):
        torch.testing.assert_close(t, torch.full_like(t, expected), rtol=0, atol=1e-9)


def test_each_step_renoises_the_prediction_to_the_next_sigma() -> None:
    """Same seed, two answers: the noise cancels, so x_i(a) - x_i(b) = (1 - sigma_i) (a - b)."""
    a, b = _answer(1), _answer(2)
    _, calls_a = _sample(a, seed=5)
    _, calls_b = _sample(b, seed=5)
    for i, sigma in enumerate(HAND_SIGMAS):
        diff = calls_a[i][0] - calls_b[i][0]
        torch.testing.assert_close(diff, (1.0 - sigma) * (a - b), rtol=0, atol=1e-12, msg=f"step {i}")
    # The clean pass writes the K/V of the last step's prediction, the answer itself.
    torch.testing.assert_close(calls_a[-1][0], a, rtol=0, atol=1e-12)
