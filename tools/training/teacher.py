"""The tiny bidirectional teacher (and the DMD critic, which is the same kind of network).

Distribution-matching distillation needs the score of the data distribution at ANY noise level,
so the teacher is a plain flow-matching denoiser over a whole segment of video: continuous sigma
(one per sample, drawn from the shifted uniform the student's schedule uses), every video frame
attending to every other (bidirectional), the in-context reference and garment in front at t = 0,
positions 0 and 1, exactly as the student sees them. It samples with many Euler steps of the
probability-flow ODE. The network is the engine's ``CausalVideoDiT``: only the mask differs, so
the teacher is trained "with the same code" and can be warm-started from the student's weights.

A *segment* is what the stream generates between two (re)starts: the first chunks after
``start`` (first latent = one image) or the chunks after a full swap (reference = the decoded last
frame); its video frames always begin at RoPE position ``context_frames``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from services.generator.engine.config import EngineConfig
from services.generator.engine.transformer import CausalVideoDiT


def bidirectional_mask(
    frames: int, tokens_per_frame: int, *, context_frames: int = 2, device: torch.device | str = "cpu"
) -> Tensor:
    """Boolean (N, N) mask for [context | video]: context sees context (as in the student's
    prefill, so the in-context K/V mean the same thing), video sees everything."""
    is_video = torch.arange(context_frames + frames, device=device) >= context_frames
    allowed = is_video[:, None] | ~is_video[None, :]
    return allowed.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


def shifted(sigma: Tensor, shift: float) -> Tensor:
    """The engine's timestep shift on a tensor: more mass at high noise."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def sample_sigma(
    batch: int,
    config: EngineConfig,
    generator: torch.Generator,
    *,
    low: float = 0.0,
    high: float = 1.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Continuous sigmas (B,): u ~ U(low, high), shifted like the student's schedule."""
    u = low + (high - low) * torch.rand(batch, generator=generator, dtype=dtype)
    return shifted(u, config.timestep_shift).to(device)


def segment_velocity(
    model: CausalVideoDiT,
    config: EngineConfig,
    noisy: Tensor,
    sigma: Tensor,
    reference: Tensor,
    garment: Tensor,
    cond: Tensor,
) -> Tensor:
    """Velocity of a noisy segment (B, F, C, h, w) at per-sample ``sigma`` (B,), bidirectionally,
    given the in-context reference and garment (B, 1, C, h, w) and the video's conditioning."""
    b, frames = noisy.shape[:2]
    ctx, dev = config.context_frames, noisy.device
    latents = torch.cat([reference, garment, noisy], dim=1)
    timesteps = torch.cat(
        [torch.zeros(b, ctx, device=dev, dtype=noisy.dtype), (sigma * 1000.0)[:, None].expand(b, frames)], 1
    )
    positions = torch.arange(ctx + frames, device=dev)[None].expand(b, -1)
    zero = torch.zeros(b, ctx, *cond.shape[2:], device=dev, dtype=cond.dtype)
    mask = bidirectional_mask(frames, config.tokens_per_frame, context_frames=ctx, device=dev)
    out = model(latents, timesteps, positions, torch.cat([zero, cond], 1), attn_mask=mask)
    assert out is not None
    return out[:, ctx:]


def predict_clean(
    model: CausalVideoDiT,
    config: EngineConfig,
    noisy: Tensor,
    sigma: Tensor,
    reference: Tensor,
    garment: Tensor,
    cond: Tensor,
) -> Tensor:
    """x0 = x_t - sigma v: the denoiser's clean estimate (the score, up to scale, in DMD)."""
    v = segment_velocity(model, config, noisy, sigma, reference, garment, cond)
    return noisy - sigma[:, None, None, None, None] * v


def denoiser_loss(
    model: CausalVideoDiT,
    config: EngineConfig,
    video: Tensor,
    cond: Tensor,
    reference: Tensor,
    garment: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """Flow-matching loss (v = eps - x0) at one continuous sigma per sample, video tokens only.

    The teacher learns it on real clips, the DMD critic on the student's (detached) rollouts."""
    b = video.shape[0]
    sigma = sample_sigma(b, config, generator, device=video.device, dtype=video.dtype)
    noise = torch.randn(video.shape, generator=generator, dtype=video.dtype).to(video.device)
    s = sigma[:, None, None, None, None]
    noisy = (1.0 - s) * video + s * noise
    v = segment_velocity(model, config, noisy, sigma, reference, garment, cond)
    return F.mse_loss(v, noise - video)


@torch.no_grad()
def sample(
    model: CausalVideoDiT,
    config: EngineConfig,
    reference: Tensor,
    garment: Tensor,
    cond: Tensor,
    generator: torch.Generator,
    *,
    steps: int = 32,
) -> Tensor:
    """Teacher sampling: ``steps`` Euler steps of the probability-flow ODE from sigma = 1 to 0
    on the shifted grid, for a segment of ``cond.shape[1]`` latent frames."""
    b, frames = cond.shape[:2]
    shape = (b, frames, config.latent_channels, config.latent_height, config.latent_width)
    dev, dtype = reference.device, reference.dtype
    x = torch.randn(shape, generator=generator, dtype=dtype).to(dev)
    grid = shifted(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), config.timestep_shift)
    for s, s_next in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        sigma = torch.full((b,), s, device=dev, dtype=dtype)
        v = segment_velocity(model, config, x, sigma, reference, garment, cond)
        x = x + (s_next - s) * v
    return x
