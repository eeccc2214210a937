"""Training sees what inference sees: the noisy copy of the teacher-forcing sequence gets the
positions, conditioning and context that streaming inference gives the same frames, and the loss
is the inference network's velocity error on those frames (float64, exact to 1e-10)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from services.generator.engine import TINY, Engine
from services.generator.engine.sampler import FlowMatchSchedule
from services.generator.engine.transformer import CausalVideoDiT
from tools.training.train import student_loss

pytestmark = pytest.mark.unit

CHUNKS = 3
CTX = TINY.context_frames
FRAMES = CHUNKS * TINY.chunk_frames


def _latents(seed: int, frames: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (1, frames, TINY.latent_channels, TINY.latent_height, TINY.latent_width)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _training_forward(
    engine: Engine, video: torch.Tensor, cond: torch.Tensor, ref: torch.Tensor, gar: torch.Tensor, seed: int
) -> tuple[float, dict[str, Any], torch.Tensor]:
    """``student_loss`` on one sample: the loss, the arguments of its forward and its output."""
    seen: dict[str, Any] = {}
    signature = inspect.signature(CausalVideoDiT.forward)

    def keep(module, args, kwargs, output):
        seen["inputs"] = signature.bind(module, *args, **kwargs).arguments
        seen["output"] = output

    handle = engine.transformer.register_forward_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            loss = student_loss(
                engine.transformer, TINY, video, cond, ref, gar, torch.Generator().manual_seed(seed)
            )
    finally:
        handle.remove()
    return float(loss), seen["inputs"], seen["output"]


@dataclass
class Layout:
    """One training sample built from streamed chunks, and the same noisy chunks streamed."""

    video: torch.Tensor  # the clean latents streaming generated, used as the training video
    loss: float
    inputs: dict[str, Any]  # the training forward's arguments
    output: torch.Tensor  # the training forward's output (whole sequence)
    streamed: torch.Tensor  # the engine's output for the training's noisy chunks

    @property
    def noisy(self) -> slice:
        return slice(CTX + FRAMES, None)


def _layout(seed: int) -> Layout:
    engine = Engine.build(TINY, dtype=torch.float64, max_sessions=1, seed=0)
    ref, gar = _latents(1, 1), _latents(2, 1)
    g = torch.Generator().manual_seed(3)
    shape = (TINY.chunk_frames, TINY.latent_cond_channels, TINY.latent_height, TINY.latent_width)
    conds = [torch.rand(shape, generator=g, dtype=torch.float64) for _ in range(CHUNKS)]
    # Streaming inference: the clean chunks it generates become the training video.
    with engine.open_session(seed=4) as s:
        s.start_latents(ref, gar)
        cleans = [engine.generate_latents([s], [c]) for c in conds]
    video, cond = torch.cat(cleans, dim=1), torch.cat(conds)[None]
    loss, inputs, output = _training_forward(engine, video, cond, ref, gar, seed)
    noisy = inputs["latents"][:, CTX + FRAMES :]
    t_noisy = inputs["timesteps"][:, CTX + FRAMES :]
    # The same noisy chunks through the engine's own streaming call: a probe before each chunk
    # (scratch only, nothing committed) on a cache holding exactly the clean chunks before it.
    streamed = []
    with engine.open_session(seed=4) as s:
        s.start_latents(ref, gar)
        for b in range(CHUNKS):
            part = slice(b * TINY.chunk_frames, (b + 1) * TINY.chunk_frames)
            positions = s.next_chunk_positions()
            with torch.no_grad():
                streamed.append(
                    engine.transformer(
                        noisy[:, part], t_noisy[:, part], positions, conds[b][None], kv_cache=s.cache
                    )
                )
            assert torch.equal(engine.generate_latents([s], [conds[b]]), cleans[b])
    return Layout(video, loss, inputs, output, torch.cat(streamed, dim=1))


@pytest.mark.parametrize("seed", [0, 1])
def test_noisy_copy_sees_what_streaming_inference_gives_the_same_frames(seed: int) -> None:
    """Positions, conditioning, context and visible clean chunks: equal outputs in float64."""
    layout = _layout(seed)
    torch.testing.assert_close(layout.output[:, layout.noisy], layout.streamed, rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_is_the_streamed_velocity_error_on_the_noisy_frames(seed: int) -> None:
    """x_t = (1 - s) x0 + s eps at the model time it is labelled with (0..1000, one of the sampler's
    sigmas), eps unit noise, loss = mean (v - (eps - x0))^2 over the noisy frames only."""
    layout = _layout(seed)
    sigma = layout.inputs["timesteps"][:, layout.noisy] / 1000.0
    sigmas = torch.tensor(FlowMatchSchedule.from_config(TINY).sigmas, dtype=torch.float64)
    assert torch.isclose(sigma[..., None], sigmas, rtol=0, atol=1e-12).any(-1).all()
    s = sigma[:, :, None, None, None]
    eps = (layout.inputs["latents"][:, layout.noisy] - (1.0 - s) * layout.video) / s
    assert abs(float(eps.std()) - 1.0) < 0.1 and abs(float(eps.mean())) < 0.1
    expected = float((layout.streamed - (eps - layout.video)).pow(2).mean())
    assert layout.loss == pytest.approx(expected, rel=1e-10, abs=0)
