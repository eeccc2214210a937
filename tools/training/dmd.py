"""Distribution-matching distillation losses (DMD / DMD2), per frame, with the paper's reward
weighting as an option.

The student's rollout ``x`` is noised to a random continuous sigma; the teacher's clean estimate
(the score of the data distribution) and the critic's (the score of the student's own
distribution, a "fake score" trained on the student's samples) are compared. Their difference is
the gradient of the KL divergence between the two distributions with respect to ``x``, so the
generator loss ``0.5 * ||x - sg(x - g)||^2`` has exactly ``g`` as its gradient. ``g`` is
normalised per sample by the mean distance between ``x`` and the teacher's estimate (DMD's
normaliser), which keeps its scale constant across noise levels.

Reward weighting (paper, "gradient-reweighted DMD"): each frame's loss is weighted by
``softmax(-reward / tau)`` over the frames of a sample (times the frame count, so the mean weight
is 1): weak frames get more weight. Our reward is a fidelity score in (0, 1]:
``exp(-mse(frame, ground truth) / mean mse of the batch)`` in latent space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from services.generator.engine.config import EngineConfig
from services.generator.engine.transformer import CausalVideoDiT
from tools.training.teacher import predict_clean, sample_sigma


@dataclass(frozen=True)
class Segment:
    """A generated segment and what conditions it: the unit the teacher and critic score."""

    video: Tensor  # (B, F, C, h, w), from the student's rollout (carries its gradient)
    reference: Tensor  # (B, 1, C, h, w)
    garment: Tensor  # (B, 1, C, h, w)
    cond: Tensor  # (B, F, 4 * Cc, h, w)
    target: Tensor  # (B, F, C, h, w): the ground-truth latents of the same frames


def dmd_gradient(
    teacher: CausalVideoDiT,
    critic: CausalVideoDiT,
    config: EngineConfig,
    segment: Segment,
    generator: torch.Generator,
    *,
    sigma_range: tuple[float, float] = (0.02, 0.98),
) -> Tensor:
    """The DMD direction (B, F, C, h, w) for ``segment.video`` (no graph): fake minus real x0,
    normalised per sample by mean |x - real x0|."""
    x = segment.video.detach()
    with torch.no_grad():
        b = x.shape[0]
        sigma = sample_sigma(
            b, config, generator, low=sigma_range[0], high=sigma_range[1], device=x.device, dtype=x.dtype
        )
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        s = sigma[:, None, None, None, None]
        noisy = (1.0 - s) * x + s * noise
        args = (noisy, sigma, segment.reference, segment.garment, segment.cond)
        real = predict_clean(teacher, config, *args)
        fake = predict_clean(critic, config, *args)
        scale = (x - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
        return (fake - real) / scale


def dmd_frame_loss(video: Tensor, gradient: Tensor) -> Tensor:
    """Per-frame (B, F) surrogate whose gradient with respect to ``video`` is ``gradient``
    (divided by the elements per frame, the mean)."""
    target = (video - gradient).detach()
    return 0.5 * (video - target).square().mean(dim=(2, 3, 4))


def reward_weights(video: Tensor, target: Tensor, tau: float) -> Tensor:
    """(B, F) weights ``F * softmax(-reward / tau)`` over each sample's frames (mean 1), reward =
    ``exp(-mse / batch mean mse)`` in (0, 1]; no graph."""
    with torch.no_grad():
        mse = (video - target).square().mean(dim=(2, 3, 4))
        reward = torch.exp(-mse / mse.mean().clamp_min(1e-12))
        return video.shape[1] * torch.softmax(-reward / tau, dim=1)
