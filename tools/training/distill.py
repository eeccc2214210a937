"""``chameleon train --stage dmd --from CHECKPOINT``: the paper's second training stage, tiny.

Phase ``teacher``: a bidirectional teacher (``teacher.py``), warm-started from the checkpoint's
transformer (same architecture, only the mask differs), trained by flow matching at continuous
sigma on the same procedural clips and sample layouts as the student (start and restart).

Phase ``dmd``: the student (from the checkpoint) streams swap clips through its own KV cache
(``self_forcing.rollout``: start in garment A, swap to B after ``SWAP_CHUNK`` chunks, exactly
what ``chameleon eval swap`` and the service run), then per segment (before / after the swap)
the DMD gradient of ``dmd.py`` (teacher vs fake-score critic) drives the student, optionally
reward-weighted per frame and optionally plus a rollout-vs-ground-truth regression. The critic
(initialised from the teacher) learns flow matching on the student's detached rollouts, with
``critic_steps`` critic updates per student update (DMD2's two time-scale rule).

Resumable like the first stage (``DIR/train_state.pt``, same command again); writes
``DIR/<config>.safetensors`` (student + the checkpoint's autoencoder, loadable by the engine),
``DIR/<config>_teacher.safetensors``, ``DIR/<config>.json`` and ``DIR/<config>.log``.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from services.generator.engine.autoencoder import CausalVideoAutoencoder
from services.generator.engine.config import EngineConfig, get_config
from services.generator.engine.transformer import CausalVideoDiT
from services.generator.engine.weights import build_modules, load_weights, save_weights
from tools.training.common import (
    STUDENT_WARMUP,
    ProgressLog,
    ResumableRun,
    StudentSampler,
    TrainConfig,
    TrainState,
    build_pool,
    clip_conditioning_latent,
    encode_pool,
    lr_scale,
    over_budget,
    record_step,
    to_unit,
)
from tools.training.data import make_clip
from tools.training.dmd import Segment, dmd_frame_loss, dmd_gradient, reward_weights
from tools.training.self_forcing import RolloutPlan, rollout
from tools.training.teacher import denoiser_loss, sample

SWAP_SEED = 20_000  # swap clips for DMD rollouts: disjoint from training (0..) and evaluation (100000..)
STREAM_CHUNKS = 3  # chunks per rolled-out stream: the evaluation's 33 frames
SWAP_CHUNK = 2  # the swap lands after this many chunks (pixel frame 21, as in the evaluation)
CHECK_CLIPS = 8  # swap clips of the teacher-vs-student check


@dataclass
class SwapPool:
    """Encoded swap clips: a stream starts in A from the reference and swaps to B."""

    video: Tensor  # (N, F, C, h, w): ground-truth latents of the whole stream
    cond: Tensor  # (N, F, 4 * Cc, h, w)
    reference: Tensor  # (N, 1, C, h, w): frame 0 in garment A
    garment_a: Tensor  # (N, 1, C, h, w)
    garment_b: Tensor  # (N, 1, C, h, w)

    def __len__(self) -> int:
        return self.video.shape[0]


def stream_frames(config: EngineConfig) -> tuple[int, int]:
    """Pixel frames of a rolled-out stream and the pixel frame of its swap (33 and 21 for tiny)."""
    latents = STREAM_CHUNKS * config.chunk_frames
    swap_latent = SWAP_CHUNK * config.chunk_frames
    return 1 + config.vae_temporal * (latents - 1), 1 + config.vae_temporal * (swap_latent - 1)


def _swap_clip(args: tuple[int, int, int, tuple[int, int]]) -> tuple[Tensor, ...]:
    seed, frames, swap, size = args
    c = make_clip(seed, frames, size=size, swap_frame=swap)
    return (
        torch.from_numpy(c.frames).permute(0, 3, 1, 2),
        torch.from_numpy(c.conditioning),
        torch.from_numpy(c.reference).permute(2, 0, 1),
        torch.from_numpy(c.garment_images[c.garment_a]).permute(2, 0, 1),
        torch.from_numpy(c.garment_images[c.garment_b]).permute(2, 0, 1),
    )


@torch.no_grad()
def build_swap_pool(
    autoencoder: CausalVideoAutoencoder, config: EngineConfig, clips: int, workers: int, device: str
) -> SwapPool:
    """Render ``clips`` swap clips (seeds from ``SWAP_SEED``) and encode them once."""
    frames, swap = stream_frames(config)
    size = (config.pixel_height, config.pixel_width)
    jobs = [(SWAP_SEED + i, frames, swap, size) for i in range(clips)]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as procs:
            made = procs.map(_swap_clip, jobs, chunksize=8)
    else:
        made = [_swap_clip(job) for job in jobs]
    video, cond, ref, gar_a, gar_b = (torch.stack(parts) for parts in zip(*made, strict=True))

    def encoded(fn: Any, x: Tensor) -> Tensor:
        return torch.cat([fn(to_unit(x[i : i + 16]).to(device)) for i in range(0, len(x), 16)])

    return SwapPool(
        video=encoded(autoencoder.encode, video),
        cond=clip_conditioning_latent(cond, config).to(device),
        reference=encoded(autoencoder.encode_image, ref),
        garment_a=encoded(autoencoder.encode_image, gar_a),
        garment_b=encoded(autoencoder.encode_image, gar_b),
    )


@dataclass
class DistillRun(ResumableRun):
    """Student, teacher, critic, frozen autoencoder, their optimisers and the run's state."""

    SAVED: ClassVar[tuple[str, ...]] = (
        "student",
        "teacher",
        "critic",
        "teacher_opt",
        "student_opt",
        "critic_opt",
    )

    config: TrainConfig
    engine_config: EngineConfig
    student: CausalVideoDiT
    teacher: CausalVideoDiT
    critic: CausalVideoDiT
    autoencoder: CausalVideoAutoencoder
    teacher_opt: torch.optim.Optimizer
    student_opt: torch.optim.Optimizer
    critic_opt: torch.optim.Optimizer
    progress: ProgressLog
    rng: torch.Generator
    state: TrainState = field(default_factory=lambda: TrainState(phase="teacher", history={}))
    checks: dict[str, Any] = field(default_factory=dict)

    def _extra_state(self) -> dict[str, Any]:
        """The sampling generator's position and the teacher-vs-student checks."""
        return {"rng": self.rng.get_state(), "checks": self.checks}

    def _restore_extra(self, saved: dict[str, Any]) -> None:
        self.rng.set_state(saved["rng"])
        self.checks = saved["checks"]

    def over_budget(self, phase: str, start: float, minutes: float | None) -> bool:
        return over_budget(self.state, self.progress, phase, start, minutes)

    def finish_step(self, phase: str, start: float, loss: Tensor, detail: dict[str, float]) -> None:
        record_step(self.state, self.config, self.progress, self.save_state, phase, start, loss, detail)


def start_distill(config: TrainConfig) -> DistillRun:
    """Student and autoencoder from ``--from``; teacher and critic start as copies of the student
    (or the teacher from ``--teacher-from``); then the saved state if there is one."""
    if config.from_checkpoint is None:
        raise ValueError("--stage dmd needs --from CHECKPOINT (a teacher-forced student)")
    torch.set_num_threads(config.threads)
    ec = get_config(config.config_name)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    student, autoencoder = build_modules(ec, seed=config.seed, device=config.device)
    load_weights(config.from_checkpoint, ec, student, autoencoder)
    autoencoder.eval().requires_grad_(False)
    teacher = copy.deepcopy(student)
    phase = "teacher"
    if config.teacher_from is not None:
        _, donor = build_modules(ec, seed=config.seed, device=config.device)
        load_weights(config.teacher_from, ec, teacher, donor)
        phase = "dmd"
    critic = copy.deepcopy(teacher)
    betas = (0.0, 0.999)  # DMD2: no momentum for the adversarial pair
    run = DistillRun(
        config,
        ec,
        student,
        teacher,
        critic,
        autoencoder,
        teacher_opt=torch.optim.AdamW(teacher.parameters(), lr=config.teacher_lr, weight_decay=0.01),
        student_opt=torch.optim.AdamW(student.parameters(), lr=config.dmd_lr, betas=betas, weight_decay=0.0),
        critic_opt=torch.optim.AdamW(critic.parameters(), lr=config.critic_lr, betas=betas, weight_decay=0.0),
        progress=ProgressLog(out / f"{ec.name}.log"),
        rng=torch.Generator().manual_seed(config.seed + 2),
        state=TrainState(phase=phase, history={}),
    )
    if run.state_path.exists():
        run.resume()
    else:
        run.progress(
            "train_dmd_start",
            f"dmd stage from {config.from_checkpoint} (teacher: {config.teacher_from or 'train it'})",
            source=str(config.from_checkpoint),
        )
    return run


def train_teacher(run: DistillRun) -> None:
    """Phase ``teacher``: flow matching at continuous sigma, bidirectional, segments of 1-3 chunks
    in the student's start and restart layouts; warm-up then cosine, gradients clipped at 1."""
    c, ec, state = run.config, run.engine_config, run.state
    pool = build_pool(ec, c.clips, c.clip_frames, c.seed, workers=c.workers)
    encoded = encode_pool(run.autoencoder, pool, ec, c.device)
    sampler = StudentSampler.fit(encoded, ec, c.restart_p, c.device)
    run.progress(
        "train_teacher_data",
        f"teacher: {c.clips} clips, segments of up to {sampler.span} latent frames, restart share "
        f"{sampler.restart_p}",
        clips=c.clips,
        span=sampler.span,
    )
    run.teacher.train()
    start = time.perf_counter() - state.elapsed_s
    while state.step < c.teacher_steps:
        if run.over_budget("teacher", start, c.teacher_minutes):
            break
        scale = lr_scale(state.step, c.teacher_steps, state.elapsed_s, c.teacher_minutes, STUDENT_WARMUP)
        for group in run.teacher_opt.param_groups:
            group["lr"] = c.teacher_lr * scale
        idx = torch.randint(len(encoded), (c.batch,), generator=run.rng)
        video, cond, ref = sampler(idx, run.rng)
        chunks = sampler.span // ec.chunk_frames
        span = ec.chunk_frames * int(torch.randint(1, chunks + 1, (1,), generator=run.rng))
        garment = encoded.garment[idx]
        loss = denoiser_loss(run.teacher, ec, video[:, :span], cond[:, :span], ref, garment, run.rng)
        run.teacher_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.teacher.parameters(), 1.0)
        run.teacher_opt.step()
        run.finish_step("teacher", start, loss, {"lr": c.teacher_lr * scale})
    run.teacher.eval()
    save_weights(run.out / f"{ec.name}_teacher.safetensors", ec, run.teacher, run.autoencoder)
    state.phase, state.step, state.elapsed_s = "dmd", 0, 0.0
    run.critic.load_state_dict(run.teacher.state_dict())
    run.save_state()


def _segments(run: DistillRun, pool: SwapPool, idx: Tensor, seeds: list[int]) -> list[Segment]:
    """Roll out the student on the swap clips ``idx``; the segments before and after the swap."""
    ec = run.engine_config
    plan = RolloutPlan(grad_steps=run.config.grad_steps, cache_grad=True)
    rolled = rollout(
        run.student,
        run.autoencoder,
        ec,
        reference=pool.reference[idx],
        garments=[pool.garment_a[idx], pool.garment_b[idx]],
        cond=pool.cond[idx],
        seeds=seeds,
        swap_after=SWAP_CHUNK,
        plan=plan,
    )
    cut = SWAP_CHUNK * ec.chunk_frames
    gt, cond = pool.video[idx], pool.cond[idx]
    return [
        Segment(rolled.segment(0), pool.reference[idx], pool.garment_a[idx], cond[:, :cut], gt[:, :cut]),
        Segment(
            rolled.segment(1), rolled.references[1].detach(), pool.garment_b[idx], cond[:, cut:], gt[:, cut:]
        ),
    ]


def student_update(run: DistillRun, segments: list[Segment]) -> dict[str, float]:
    """One student step: (reward-weighted) DMD per frame, plus the optional regression."""
    c, ec = run.config, run.engine_config
    video = torch.cat([s.video for s in segments], 1)
    target = torch.cat([s.target for s in segments], 1)
    frame_dmd = torch.cat(
        [dmd_frame_loss(s.video, dmd_gradient(run.teacher, run.critic, ec, s, run.rng)) for s in segments], 1
    )
    weights = (
        torch.ones_like(frame_dmd) if c.reward_tau is None else reward_weights(video, target, c.reward_tau)
    )
    dmd = (weights * frame_dmd).mean()
    regression = (video - target).square().mean()
    loss = dmd + c.regression * regression if c.regression else dmd
    run.student_opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.student.parameters(), 1.0)
    run.student_opt.step()
    return {"dmd": dmd.item(), "regression": regression.item(), "weight_max": float(weights.max())}


def critic_update(run: DistillRun, segments: list[Segment]) -> Tensor:
    """The fake score learns the student's current distribution (flow matching on rollouts)."""
    ec = run.engine_config
    loss = sum(
        denoiser_loss(run.critic, ec, s.video.detach(), s.cond, s.reference, s.garment, run.rng)
        for s in segments
    )
    assert isinstance(loss, Tensor)
    run.critic_opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.critic.parameters(), 1.0)
    run.critic_opt.step()
    return loss


@torch.no_grad()
def teacher_vs_student(run: DistillRun, pool: SwapPool) -> dict[str, float]:
    """Latent MSE against the ground truth on ``CHECK_CLIPS`` swap clips: the student's rollout
    (both segments) and a teacher sample of each segment with the same context."""
    c, ec = run.config, run.engine_config
    idx = torch.arange(min(CHECK_CLIPS, len(pool)))
    segments = _segments(run, pool, idx, seeds=idx.tolist())
    g = torch.Generator().manual_seed(c.seed)
    student, teacher = [], []
    for s in segments:
        x = sample(run.teacher, ec, s.reference, s.garment, s.cond, g, steps=c.teacher_sample_steps)
        teacher.append((x - s.target).square().mean().item())
        student.append((s.video - s.target).square().mean().item())
    return {
        "student_mse_before_swap": round(student[0], 5),
        "student_mse_after_swap": round(student[1], 5),
        "teacher_mse_before_swap": round(teacher[0], 5),
        "teacher_mse_after_swap": round(teacher[1], 5),
    }


def _log_check(run: DistillRun, name: str, check: dict[str, float]) -> None:
    run.checks[name] = check
    text = " ".join(f"{k} {v:.4f}" for k, v in check.items())
    run.progress("train_dmd_check", f"check {name}: {text}", check=name, **check)


def train_student_dmd(run: DistillRun) -> None:
    """Phase ``dmd``: every iteration rolls out ``dmd_batch`` streams and updates the critic;
    every ``critic_steps``-th also updates the student (its rollout then carries gradients)."""
    c, state = run.config, run.state
    frames, _ = stream_frames(run.engine_config)
    pool = build_swap_pool(run.autoencoder, run.engine_config, c.dmd_clips, c.workers, c.device)
    run.progress(
        "train_dmd_data",
        f"dmd: {c.dmd_clips} swap clips x {frames} frames (seeds from {SWAP_SEED}), swap after chunk "
        f"{SWAP_CHUNK}, reward_tau {c.reward_tau}, regression {c.regression}",
        clips=c.dmd_clips,
    )
    if "before" not in run.checks:
        _log_check(run, "before", teacher_vs_student(run, pool))
    start = time.perf_counter() - state.elapsed_s
    detail: dict[str, float] = {}
    while state.step < c.dmd_steps:
        if run.over_budget("dmd", start, c.dmd_minutes):
            break
        scale = lr_scale(state.step, c.dmd_steps, state.elapsed_s, c.dmd_minutes)
        for group in run.student_opt.param_groups:
            group["lr"] = c.dmd_lr * scale
        for group in run.critic_opt.param_groups:
            group["lr"] = c.critic_lr * scale
        idx = torch.randint(len(pool), (c.dmd_batch,), generator=run.rng)
        seeds = torch.randint(2**31 - 1, (c.dmd_batch,), generator=run.rng).tolist()
        train_student = (state.step + 1) % c.critic_steps == 0
        run.student.train(train_student)
        with torch.set_grad_enabled(train_student):
            segments = _segments(run, pool, idx, seeds)
        if train_student:
            detail = {**student_update(run, segments), "lr": c.dmd_lr * scale}
        critic = critic_update(run, segments)
        run.finish_step("dmd", start, critic, detail)  # the logged loss is the critic's
    run.student.eval()
    _log_check(run, "after", teacher_vs_student(run, pool))
    state.phase = "done"
    run.save_state()


def write_result(run: DistillRun) -> dict[str, Any]:
    """Student (+ the frozen autoencoder) through ``save_weights``, the teacher likewise, and
    ``<config>.json``."""
    c, ec, state = run.config, run.engine_config, run.state
    for module in (run.student, run.teacher, run.autoencoder):
        module.eval().cpu()
    weights = run.out / f"{ec.name}.safetensors"
    save_weights(weights, ec, run.student, run.autoencoder)
    save_weights(run.out / f"{ec.name}_teacher.safetensors", ec, run.teacher, run.autoencoder)
    summary = {
        "stage": "dmd",
        "config": ec.to_dict(),
        "from": str(c.from_checkpoint),
        "teacher_from": str(c.teacher_from) if c.teacher_from else None,
        "device": str(c.device),
        "options": {
            k: getattr(c, k)
            for k in (
                "seed clips batch teacher_steps teacher_minutes teacher_lr dmd_steps dmd_minutes "
                "dmd_batch dmd_clips dmd_lr critic_lr critic_steps grad_steps reward_tau regression"
            ).split()
        },
        "dmd_steps": state.step,
        "dmd_seconds": round(state.elapsed_s, 1),
        "checks": run.checks,
        "loss": dict(state.history),
        "weights": weights.name,
        "weights_bytes": weights.stat().st_size,
    }
    (run.out / f"{ec.name}.json").write_text(json.dumps(summary, indent=1))
    run.progress("train_saved", f"saved {weights}", weights=str(weights))
    return summary


def train_dmd(config: TrainConfig) -> dict[str, Any]:
    """Both phases of the stage (each skipped when done); returns the ``<config>.json`` summary."""
    run = start_distill(config)
    if run.state.phase == "done" and run.state.step < config.dmd_steps:
        run.state.phase = "dmd"  # resumed with a larger step budget: keep going
    if run.state.phase == "teacher":
        train_teacher(run)
    if run.state.phase == "dmd":
        train_student_dmd(run)
    return write_result(run)
