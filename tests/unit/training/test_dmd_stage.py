"""The second stage's pieces: the bidirectional teacher, the DMD direction and its reward
weighting (stand-in networks that know the answer, float64), how ``distill.py`` wires them
(which network is the teacher, what the critic learns on, the context of each segment), and a
tiny end-to-end run of ``--stage dmd`` that resumes and whose result the engine loads."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from services.generator.engine import TINY, Engine
from services.generator.engine.sampler import shift_sigma
from services.generator.engine.weights import build_modules, save_weights
from tools.training import distill
from tools.training.common import ProgressLog, TrainConfig
from tools.training.distill import DistillRun, SwapPool, critic_update, student_update
from tools.training.dmd import Segment, dmd_frame_loss, dmd_gradient, reward_weights
from tools.training.evaluate import compare
from tools.training.self_forcing import reference_from_last_frame, rollout
from tools.training.teacher import (
    bidirectional_mask,
    denoiser_loss,
    sample,
    sample_sigma,
    segment_velocity,
)
from tools.training.train import parse_config, train

pytestmark = pytest.mark.unit

C, H, W = TINY.latent_channels, TINY.latent_height, TINY.latent_width
CTX = TINY.context_frames


def _random(seed: int, *shape: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class KnowsTheAnswer(nn.Module):
    """Stand-in denoiser whose data distribution is one point ``clean`` (B, F, C, h, w): the exact
    flow-matching velocity is ``(x_t - clean) / sigma``, with sigma read from the model time.
    It keeps the model times of its video frames (``times``); with ``trainable`` its one parameter
    (a gain of 1) lets an optimiser step it."""

    def __init__(self, clean: Tensor, *, trainable: bool = False) -> None:
        super().__init__()
        self.clean = clean
        self.gain = nn.Parameter(torch.ones((), dtype=clean.dtype), requires_grad=trainable)
        self.times: list[Tensor] = []

    def forward(
        self, latents: Tensor, timesteps: Tensor, positions: Tensor, cond: Tensor, **_: object
    ) -> Tensor:
        self.times.append(timesteps[:, CTX:].detach().clone())
        sigma = (timesteps[:, CTX:] / 1000.0)[..., None, None, None]
        out = torch.zeros_like(latents)
        out[:, CTX:] = self.gain * (latents[:, CTX:] - self.clean) / sigma
        return out


class RolloutIsAParameter(nn.Module):
    """Stand-in student whose rollout is its parameter: a student step moves the rollout itself."""

    def __init__(self, video: Tensor) -> None:
        super().__init__()
        self.video = nn.Parameter(video.clone())


def _distill_run(
    tmp_path: Path, student: nn.Module, teacher: nn.Module, critic: nn.Module, autoencoder: nn.Module
) -> DistillRun:
    """A ``DistillRun`` around the given networks, with plain SGD so a step is the gradient."""

    def sgd(module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(module.parameters(), lr=0.1)

    return DistillRun(
        TrainConfig(out=str(tmp_path)),
        TINY,
        student,
        teacher,
        critic,
        autoencoder,
        teacher_opt=sgd(teacher),
        student_opt=sgd(student),
        critic_opt=sgd(critic),
        progress=ProgressLog(tmp_path / "tiny.log"),
        rng=torch.Generator().manual_seed(0),
    )


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


def test_teacher_samples_on_the_shifted_grid() -> None:
    """The model times the teacher is asked at are the engine's shifted sigmas of an even grid from
    1 (landing on the data point alone holds for any grid that reaches 0)."""
    ref, gar, cond = _context(1, 3)
    teacher = KnowsTheAnswer(_random(3, 1, 3, C, H, W))
    sample(teacher, TINY, ref, gar, cond, torch.Generator().manual_seed(0), steps=7)
    asked = [float(t.unique()) for t in teacher.times]
    expected = [1000.0 * shift_sigma(1.0 - i / 7, TINY.timestep_shift) for i in range(7)]
    assert asked == pytest.approx(expected, rel=0, abs=1e-9)


def test_training_sigmas_follow_the_shifted_uniform() -> None:
    """Quantile q of the drawn sigmas is the engine's shift of low + (high - low) q: over the whole
    range (the teacher's and critic's loss, through ``denoiser_loss``) and over DMD's range."""
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)

    def expected(low: float, high: float) -> Tensor:
        shift = TINY.timestep_shift
        return torch.tensor([shift_sigma(low + (high - low) * float(p), shift) for p in q], dtype=q.dtype)

    draws = sample_sigma(20_000, TINY, torch.Generator().manual_seed(0), low=0.02, high=0.98)
    torch.testing.assert_close(torch.quantile(draws.double(), q), expected(0.02, 0.98), rtol=0, atol=0.015)
    video = _random(3, 4096, 1, C, H, W)
    ref, gar, cond = (x.expand(4096, -1, -1, -1, -1) for x in _context(1, 1))
    denoiser = KnowsTheAnswer(video)
    denoiser_loss(denoiser, TINY, video, cond, ref, gar, torch.Generator().manual_seed(1))
    (times,) = denoiser.times
    sigmas = times[:, 0] / 1000.0
    torch.testing.assert_close(torch.quantile(sigmas, q), expected(0.0, 1.0), rtol=0, atol=0.015)


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


def test_a_student_step_moves_the_rollout_toward_the_teacher_and_away_from_the_critic(
    tmp_path: Path,
) -> None:
    """``student_update`` with a teacher and a critic that denoise to different known points: the
    rollout (here the student's parameter) moves along teacher minus critic in each segment."""
    ref, gar, cond = _context(1, 3)
    real, fake = _random(2, 1, 3, C, H, W), _random(3, 1, 3, C, H, W)
    student = RolloutIsAParameter(_random(1, 1, 6, C, H, W))
    run = _distill_run(tmp_path, student, KnowsTheAnswer(real), KnowsTheAnswer(fake), nn.Identity())
    before = student.video.detach().clone()
    halves = (slice(0, 3), slice(3, 6))
    student_update(run, [Segment(student.video[:, h], ref, gar, cond, before[:, h]) for h in halves])
    for part in halves:
        moved = (student.video.detach() - before)[:, part].flatten()
        cosine = F.cosine_similarity(moved, (real - fake).flatten(), dim=0)
        assert float(cosine) > 0.999, f"moved along teacher - critic: cosine {float(cosine):.3f}"


def test_the_critic_learns_on_the_students_own_detached_rollout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``critic_update`` gives the critic's denoising loss each segment's rollout (not the ground
    truth), cut from the student's graph: the student gets no gradient from the critic's loss."""
    seen: list[tuple[nn.Module, Tensor]] = []

    def spy(model: nn.Module, config: object, video: Tensor, *rest: object) -> Tensor:
        seen.append((model, video))
        return denoiser_loss(model, config, video, *rest)

    monkeypatch.setattr(distill, "denoiser_loss", spy)
    ref, gar, cond = _context(1, 3)
    student = RolloutIsAParameter(_random(1, 1, 6, C, H, W))
    critic = KnowsTheAnswer(_random(3, 1, 3, C, H, W), trainable=True)
    run = _distill_run(tmp_path, student, KnowsTheAnswer(_random(2, 1, 3, C, H, W)), critic, nn.Identity())
    truth = _random(4, 1, 6, C, H, W)
    halves = (slice(0, 3), slice(3, 6))
    segments = [Segment(2.0 * student.video[:, h], ref, gar, cond, truth[:, h]) for h in halves]
    critic_update(run, segments)
    assert [model for model, _ in seen] == [critic, critic]
    for (_, video), segment in zip(seen, segments, strict=True):
        assert torch.equal(video, segment.video) and not video.requires_grad
    assert student.video.grad is None
    assert float(critic.gain.detach()) != 1.0, "the critic took a step"


def test_segments_carry_each_side_of_the_swap_with_its_own_context(tmp_path: Path) -> None:
    """Before the swap: garment A, the pool's reference, the first chunks' conditioning and ground
    truth, and the stream in A alone; after it: garment B, the reference rebuilt from the last
    frame before the swap, the later conditioning and ground truth."""
    student, autoencoder = build_modules(TINY, seed=0, dtype=torch.float64)
    run = _distill_run(tmp_path, student, student, student, autoencoder)
    frames, cut = distill.STREAM_CHUNKS * TINY.chunk_frames, distill.SWAP_CHUNK * TINY.chunk_frames
    ref, gar_a, gar_b = (_random(i, 2, 1, C, H, W) for i in (1, 2, 3))
    cond = _random(4, 2, frames, TINY.latent_cond_channels, H, W).abs()
    pool = SwapPool(_random(5, 2, frames, C, H, W), cond, ref, gar_a, gar_b)
    idx = torch.tensor([1])
    with torch.no_grad():
        before, after = distill._segments(run, pool, idx, seeds=[7])
        alone = rollout(
            student,
            autoencoder,
            TINY,
            reference=ref[idx],
            garments=[gar_a[idx]],
            cond=cond[idx, :cut],
            seeds=[7],
        )
        rebuilt = reference_from_last_frame(autoencoder, before.video[:, -TINY.chunk_frames :])
    torch.testing.assert_close(before.video, alone.segment(0), rtol=0, atol=1e-12)
    assert torch.equal(before.reference, ref[idx]) and torch.equal(before.garment, gar_a[idx])
    assert torch.equal(before.cond, cond[idx, :cut]) and torch.equal(before.target, pool.video[idx, :cut])
    torch.testing.assert_close(after.reference, rebuilt, rtol=0, atol=1e-12)
    assert torch.equal(after.garment, gar_b[idx]) and after.video.shape[1] == frames - cut
    assert torch.equal(after.cond, cond[idx, cut:]) and torch.equal(after.target, pool.video[idx, cut:])


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
