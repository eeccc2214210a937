"""The second stage's pieces: the bidirectional teacher, the DMD direction and its reward
weighting (stand-in networks that know the answer, float64), and a tiny end-to-end run of
``--stage dmd`` that resumes and whose result the engine loads."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from services.generator.engine import TINY, Engine
from services.generator.engine.weights import build_modules, save_weights
from tools.training.common import TrainConfig
from tools.training.dmd import Segment, dmd_frame_loss, dmd_gradient, reward_weights
from tools.training.evaluate import compare
from tools.training.teacher import bidirectional_mask, denoiser_loss, sample, segment_velocity
from tools.training.train import parse_config, train

pytestmark = pytest.mark.unit

C, H, W = TINY.latent_channels, TINY.latent_height, TINY.latent_width
CTX = TINY.context_frames


def _random(seed: int, *shape: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class KnowsTheAnswer(nn.Module):
    """Stand-in denoiser whose data distribution is one point ``clean`` (B, F, C, h, w): the exact
    flow-matching velocity is ``(x_t - clean) / sigma``, with sigma read from the model time."""

    def __init__(self, clean: Tensor) -> None:
        super().__init__()
        self.clean = clean

    def forward(
        self, latents: Tensor, timesteps: Tensor, positions: Tensor, cond: Tensor, **_: object
    ) -> Tensor:
        sigma = (timesteps[:, CTX:] / 1000.0)[..., None, None, None]
        out = torch.zeros_like(latents)
        out[:, CTX:] = (latents[:, CTX:] - self.clean) / sigma
        return out


def _context(batch: int, frames: int) -> tuple[Tensor, Tensor, Tensor]:
    cond = _random(9, batch, frames, TINY.latent_cond_channels, H, W).abs()
    return _random(7, batch, 1, C, H, W), _random(8, batch, 1, C, H, W), cond


def test_teacher_attends_bidirectionally_and_context_only_to_context() -> None:
    mask = bidirectional_mask(3, 1, context_frames=CTX)
    assert mask.tolist() == [
        [True, True, False, False, False],
        [True, True, False, False, False],
        *[[True] * 5] * 3,
    ]
    teacher, _ = build_modules(TINY, seed=0, dtype=torch.float64)
    ref, gar, cond = _context(1, 6)
    video = _random(1, 1, 6, C, H, W).requires_grad_(True)
    v = segment_velocity(teacher, TINY, video, torch.tensor([0.5], dtype=torch.float64), ref, gar, cond)
    (grad,) = torch.autograd.grad(v[:, 0].square().sum(), video)
    assert (grad.abs().flatten(2).amax(-1) > 0).all(), "the first frame sees the last (bidirectional)"


def test_teacher_sampler_lands_on_the_data_point() -> None:
    """Euler on the probability-flow ODE with the exact velocity of a one-point distribution ends
    exactly there: catches a flipped step, a wrong time scale or a grid that does not reach 0."""
    ref, gar, cond = _context(2, 3)
    clean = _random(3, 2, 3, C, H, W)
    x = sample(KnowsTheAnswer(clean), TINY, ref, gar, cond, torch.Generator().manual_seed(0), steps=7)
    torch.testing.assert_close(x, clean, rtol=0, atol=1e-9)


def test_denoiser_loss_is_zero_for_the_exact_velocity() -> None:
    video = _random(3, 2, 6, C, H, W)
    ref, gar, cond = _context(2, 6)
    loss = denoiser_loss(KnowsTheAnswer(video), TINY, video, cond, ref, gar, torch.Generator().manual_seed(1))
    assert float(loss) < 1e-18
    wrong = denoiser_loss(
        KnowsTheAnswer(video + 0.1), TINY, video, cond, ref, gar, torch.Generator().manual_seed(1)
    )
    assert float(wrong) > 1e-4


def test_dmd_direction_is_fake_minus_real_over_the_mean_distance_to_real() -> None:
    """Teacher and critic that denoise to known points: the direction is exactly
    (fake - real) / mean |x - real| per sample, and zero when the critic is the teacher."""
    ref, gar, cond = _context(2, 3)
    x, real, fake = _random(1, 2, 3, C, H, W), _random(2, 2, 3, C, H, W), _random(3, 2, 3, C, H, W)
    seg = Segment(x, ref, gar, cond, target=x)
    g = dmd_gradient(KnowsTheAnswer(real), KnowsTheAnswer(fake), TINY, seg, torch.Generator().manual_seed(0))
    scale = (x - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    torch.testing.assert_close(g, (fake - real) / scale, rtol=1e-9, atol=1e-9)
    same = dmd_gradient(
        KnowsTheAnswer(real), KnowsTheAnswer(real), TINY, seg, torch.Generator().manual_seed(0)
    )
    assert float(same.abs().max()) < 1e-9


def test_dmd_surrogate_has_the_direction_as_its_gradient() -> None:
    video = _random(1, 2, 3, C, H, W).requires_grad_(True)
    direction = _random(2, 2, 3, C, H, W)
    (grad,) = torch.autograd.grad(dmd_frame_loss(video, direction).sum(), video)
    torch.testing.assert_close(grad * (C * H * W), direction)


def test_reward_weights_favour_weak_frames_with_mean_one() -> None:
    target = torch.zeros(2, 4, C, H, W, dtype=torch.float64)
    video = target + torch.tensor([0.1, 0.2, 0.4, 0.8], dtype=torch.float64)[None, :, None, None, None]
    w = reward_weights(video, target, tau=0.2)
    torch.testing.assert_close(w.mean(dim=1), torch.ones(2, dtype=torch.float64))
    assert (w[:, 1:] > w[:, :-1]).all(), "a worse frame (lower reward) gets more weight"
    flat = reward_weights(video, target, tau=1e9)
    torch.testing.assert_close(flat, torch.ones_like(flat))


def test_dmd_stage_runs_resumes_and_loads_through_the_engine(tmp_path: Path) -> None:
    start = tmp_path / "start.safetensors"
    transformer, autoencoder = build_modules(TINY, seed=0)
    save_weights(start, TINY, transformer, autoencoder)
    config = parse_config(
        [
            "--stage",
            "dmd",
            "--from",
            str(start),
            "--out",
            str(tmp_path / "run"),
            "--threads",
            "1",
            "--clips",
            "2",
            "--clip-frames",
            "9",
            "--batch",
            "2",
            "--teacher-steps",
            "2",
            "--dmd-steps",
            "2",
            "--dmd-clips",
            "2",
            "--dmd-batch",
            "1",
            "--critic-steps",
            "2",
            "--teacher-sample-steps",
            "2",
            "--log-every",
            "1",
            "--reward-tau",
            "0.2",
            "--regression",
            "0.5",
        ]
    )
    assert config.from_checkpoint == str(start) and config.reward_tau == 0.2
    summary = train(config)
    out = tmp_path / "run"
    log = (out / "tiny.log").read_text()
    assert re.search(r"teacher step 2 loss \d+\.\d{4} lr", log)
    assert re.search(r"dmd step 2 loss \d+\.\d{4} dmd \d+\.\d{4} regression \d+\.\d{4} weight_max", log)
    assert set(summary["checks"]) == {"before", "after"}
    assert json.loads((out / "tiny.json").read_text())["stage"] == "dmd"
    engine = Engine.build(TINY, weights=str(out / "tiny.safetensors"))
    moved = [
        not torch.equal(a, b)
        for a, b in zip(engine.transformer.parameters(), transformer.parameters(), strict=True)
    ]
    assert any(moved), "the student was updated"
    torch.testing.assert_close(engine.autoencoder.state_dict(), autoencoder.state_dict())  # frozen
    Engine.build(TINY, weights=str(out / "tiny_teacher.safetensors"))
    resumed = train(dataclasses.replace(config, dmd_steps=3))
    assert resumed["dmd_steps"] == 3 and "resumed from" in (out / "tiny.log").read_text()


def test_dmd_stage_needs_a_checkpoint() -> None:
    with pytest.raises(ValueError, match="--from"):
        train(TrainConfig(stage="dmd"))


def test_comparison_reports_deltas_and_the_psnr_goal() -> None:
    def report(psnr_after: float) -> dict:
        row = {"ghost_ratio": 0.05, "continuity": 4.0, "psnr": 22.0, "psnr_after": psnr_after}
        return {"weights": "w", "policies": {"full": row}, "goals": {"full_ghost_le_0.2x_refresh_only": True}}

    out = compare(report(23.7), report(22.6))
    assert out["delta"]["full"]["psnr_after"] == pytest.approx(1.1)
    assert out["goals"]["full_psnr_after_gain_ge_1db"] and out["goals"]["full_ghost_le_0.2x_refresh_only"]
    assert not compare(report(23.5), report(22.6))["goals"]["full_psnr_after_gain_ge_1db"]
