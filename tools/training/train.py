"""Train the tiny student on procedural clips: autoencoder first, then the causal student.

``python -m tools.training.train --config tiny --steps N --seed S --out DIR`` (= ``chameleon train``)

Phase 1 (autoencoder): L1 + MSE reconstruction of short videos (Wan time structure: first latent =
one frame, later latents = 4 frames) and of single images (references and garment flat-lays), with
a small penalty keeping the latents near unit power (the sampler draws unit-variance noise).

Phase 2 (student, paper "streaming distillation", first stage only): in-context teacher forcing.
The sequence is ``[reference | garment | clean video | noisy video]`` with the engine's
``teacher_forcing_mask``; each noisy chunk gets its own sigma drawn from the student's few-step
schedule; clean and noisy copies share RoPE positions and conditioning; flow-matching loss
(``v = eps - x0``) on the noisy video tokens only. The second stage (teacher, self-forcing
rollouts, DMD) is ``--stage dmd --from CHECKPOINT``: ``distill.py``.

Two sample layouts, mixed per batch: a *start* (reference = frame 0 in garment A, video from the
image-first latent in B) and a *restart*, the state a full swap leaves behind: the reference is
encode(decode(the previous latent in A)[-1]) (sometimes blurred, as generated frames are) and the
video resumes in B with a 4-frame latent at the first video RoPE position.

Every option is a field of ``TrainConfig`` (in ``common.py`` with the rest both stages share);
the CLI flags are generated from it. Progress goes to stderr as structlog events and to
``DIR/<config>.log`` as plain lines; ``DIR/train_state.pt`` makes a run resumable (same command
again); the result is ``DIR/<config>.safetensors`` (engine ``save_weights``) and
``DIR/<config>.json`` (config, data seed, steps, loss summary).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from runtime.logging import configure_logging
from runtime.settings import BaseSettings
from services.generator.engine.autoencoder import CausalVideoAutoencoder
from services.generator.engine.config import EngineConfig, get_config
from services.generator.engine.sampler import FlowMatchSchedule
from services.generator.engine.transformer import CausalVideoDiT, teacher_forcing_mask
from services.generator.engine.weights import build_modules, load_weights, save_weights
from tools.training.common import (
    STUDENT_WARMUP,
    ClipPool,
    ProgressLog,
    ResumableRun,
    StudentSampler,
    TrainConfig,
    TrainState,
    build_pool,
    encode_pool,
    lr_scale,
    over_budget,
    record_step,
    to_unit,
)
from tools.training.distill import train_dmd

LATENT_POWER_WEIGHT = 0.05


def cli_flag(option: dataclasses.Field[Any]) -> str:
    """The flag of a ``TrainConfig`` field."""
    return option.metadata["flag"] or "--" + option.name.replace("_", "-")


def _flag_type(hint: Any) -> Callable[[str], Any]:
    """What argparse converts a flag's text with: the field's type without its ``| None``."""
    return next((t for t in typing.get_args(hint) if t is not type(None)), hint)


def build_parser() -> argparse.ArgumentParser:
    """One flag per ``TrainConfig`` field, parsed into that field (``dest`` = field name)."""
    parser = argparse.ArgumentParser(prog="chameleon train", description=__doc__.splitlines()[0])
    hints = typing.get_type_hints(TrainConfig)
    for option in dataclasses.fields(TrainConfig):
        flag = cli_flag(option)
        parser.add_argument(
            flag,
            dest=option.name,
            metavar=flag.removeprefix("--").replace("-", "_").upper(),
            type=_flag_type(hints[option.name]),
            default=option.default,
            help=option.metadata["doc"],
        )
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """``chameleon train`` flags -> ``TrainConfig``."""
    return TrainConfig(**vars(build_parser().parse_args(argv)))


def autoencoder_loss(
    autoencoder: CausalVideoAutoencoder, video: Tensor, images: Tensor
) -> tuple[Tensor, dict[str, float]]:
    """Reconstruction of a (B, 1 + 4k, 3, H, W) video and of (B, 3, H, W) single images."""
    lat_v = autoencoder.encode(video)
    rec_v = autoencoder.decode_raw(lat_v, first_is_image=True)
    lat_i = autoencoder.encode_image(images)
    rec_i = autoencoder.decode_raw(lat_i, first_is_image=True)[:, 0]
    rec = F.l1_loss(rec_v, video) + F.mse_loss(rec_v, video) + F.l1_loss(rec_i, images)
    power = torch.cat([lat_v.flatten(), lat_i.flatten()]).pow(2).mean()
    loss = rec + LATENT_POWER_WEIGHT * (power - 1.0).pow(2)
    return loss, {"rec": rec.item(), "latent_power": power.item()}


def student_loss(
    transformer: CausalVideoDiT,
    config: EngineConfig,
    video_latent: Tensor,
    cond_latent: Tensor,
    reference_latent: Tensor,
    garment_latent: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """In-context teacher forcing flow-matching loss on the noisy video tokens only.

    ``video_latent`` (B, F, C, h, w) with F a multiple of ``chunk_frames``; reference and garment
    (B, 1, C, h, w). Each noisy chunk gets a sigma from the student's few-step schedule.
    """
    b, frames = video_latent.shape[:2]
    dev, dtype = video_latent.device, video_latent.dtype
    chunk = config.chunk_frames
    chunks = frames // chunk
    schedule = torch.tensor(FlowMatchSchedule.from_config(config).sigmas, dtype=dtype)
    pick = torch.randint(len(schedule), (b, chunks), generator=generator)
    sigma = schedule[pick].repeat_interleave(chunk, dim=1).to(dev)  # (B, F)
    noise = torch.randn(video_latent.shape, generator=generator, dtype=dtype).to(dev)
    s = sigma[:, :, None, None, None]
    noisy = (1.0 - s) * video_latent + s * noise
    target = noise - video_latent

    context = config.context_frames
    latents = torch.cat([reference_latent, garment_latent, video_latent, noisy], dim=1)
    timesteps = torch.cat([torch.zeros(b, context + frames, device=dev), sigma * 1000.0], dim=1)
    video_pos = torch.arange(frames, device=dev) + context
    positions = torch.cat([torch.arange(context, device=dev), video_pos, video_pos])[None].expand(b, -1)
    zero_cond = torch.zeros(b, context, *cond_latent.shape[2:], device=dev)
    cond = torch.cat([zero_cond, cond_latent, cond_latent], dim=1)
    mask = teacher_forcing_mask(chunks, chunk, config.tokens_per_frame, context_frames=context).to(dev)
    out = transformer(latents, timesteps, positions, cond, attn_mask=mask)
    assert out is not None
    return F.mse_loss(out[:, context + frames :], target)


@dataclass
class TrainRun(ResumableRun):
    """What one run builds and mutates, passed between the steps of ``train``."""

    SAVED: ClassVar[tuple[str, ...]] = ("transformer", "autoencoder", "ae_opt", "opt")
    config: TrainConfig
    engine_config: EngineConfig
    transformer: CausalVideoDiT
    autoencoder: CausalVideoAutoencoder
    ae_opt: torch.optim.Optimizer
    opt: torch.optim.Optimizer
    progress: ProgressLog
    state: TrainState = field(default_factory=TrainState)

    def over_budget(self, phase: str, start: float, minutes: float | None) -> bool:
        return over_budget(self.state, self.progress, phase, start, minutes)

    def finish_step(self, phase: str, start: float, loss: Tensor, detail: dict[str, float]) -> None:
        """Step count, elapsed time, the logged loss history and periodic checkpoints: both phases."""
        record_step(self.state, self.config, self.progress, self.save_state, phase, start, loss, detail)


def start_run(config: TrainConfig) -> TrainRun:
    """Fresh modules and optimisers, then the saved state in ``out`` if there is one, else the
    autoencoder of ``autoencoder_from`` (so ablations of the student phase share one autoencoder)."""
    torch.set_num_threads(config.threads)
    engine_config = get_config(config.config_name)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    transformer, autoencoder = build_modules(engine_config, seed=config.seed, device=config.device)
    run = TrainRun(
        config,
        engine_config,
        transformer,
        autoencoder,
        ae_opt=torch.optim.Adam(autoencoder.parameters(), lr=config.ae_lr),
        opt=torch.optim.AdamW(transformer.parameters(), lr=config.lr, weight_decay=0.01),
        progress=ProgressLog(out / f"{engine_config.name}.log"),
    )
    if run.state_path.exists():
        run.resume()
    elif config.autoencoder_from is not None:
        donor, _ = build_modules(engine_config, seed=config.seed, device=config.device)
        load_weights(config.autoencoder_from, engine_config, donor, autoencoder)
        run.state.phase = "student"
        source = config.autoencoder_from
        run.progress(
            "train_autoencoder_reused", f"autoencoder from {source}; phase 1 skipped", source=str(source)
        )
    return run


def render_pool(run: TrainRun) -> ClipPool:
    """The run's training clips, timed: rendering is its fixed start-up cost."""
    c = run.config
    t0 = time.perf_counter()
    pool = build_pool(run.engine_config, c.clips, c.clip_frames, c.seed, workers=c.workers)
    seconds = time.perf_counter() - t0
    run.progress(
        "train_data",
        f"data: {c.clips} clips x {c.clip_frames} frames (seed {c.seed}) in {seconds:.1f}s",
        clips=c.clips,
        clip_frames=c.clip_frames,
        seed=c.seed,
        seconds=round(seconds, 1),
    )
    return pool


def train_autoencoder(run: TrainRun, pool: ClipPool, rng: torch.Generator) -> None:
    """Phase 1 until ``ae_steps`` or the time budget, then hand the run over to the student."""
    c, state = run.config, run.state
    run.autoencoder.train()
    start = time.perf_counter() - state.elapsed_s
    while state.step < c.ae_steps:
        if run.over_budget("autoencoder", start, c.ae_minutes):
            break
        for group in run.ae_opt.param_groups:
            group["lr"] = c.ae_lr * lr_scale(state.step, c.ae_steps, state.elapsed_s, c.ae_minutes)
        idx = torch.randint(len(pool), (c.ae_batch,), generator=rng)
        first = int(torch.randint(c.clip_frames - c.ae_window + 1, (1,), generator=rng))
        video = to_unit(pool.video[idx, first : first + c.ae_window]).to(c.device)
        images = to_unit(torch.cat([pool.reference[idx[: c.ae_batch // 2]], pool.garment[idx]])).to(c.device)
        loss, parts = autoencoder_loss(run.autoencoder, video, images)
        run.ae_opt.zero_grad(set_to_none=True)
        loss.backward()
        run.ae_opt.step()
        run.finish_step("autoencoder", start, loss, parts)
    state.ae_steps_done = state.step
    state.phase, state.step, state.elapsed_s = "student", 0, 0.0
    run.save_state()


def prepare_student(run: TrainRun, pool: ClipPool) -> StudentSampler:
    """Freeze the autoencoder, encode the pool once and fit the sample layout to the clip length."""
    run.autoencoder.eval()
    for p in run.autoencoder.parameters():
        p.requires_grad_(False)
    encoded = encode_pool(run.autoencoder, pool, run.engine_config, run.config.device)
    sampler = StudentSampler.fit(encoded, run.engine_config, run.config.restart_p, run.config.device)
    total, std = encoded.video.shape[1], float(encoded.video.std())
    run.progress(
        "train_student_layout",
        f"student: {sampler.span} of {total} latent frames per sample, restart share {sampler.restart_p}, "
        f"latent std {std:.3f}",
        span=sampler.span,
        latent_frames=total,
        restart_p=sampler.restart_p,
        latent_std=round(std, 3),
    )
    return sampler


def train_student(run: TrainRun, sampler: StudentSampler, rng: torch.Generator) -> None:
    """Phase 2 until ``steps`` or the time budget: warm-up, then the cosine; gradients clipped at 1."""
    c, state = run.config, run.state
    run.transformer.train()
    start = time.perf_counter() - state.elapsed_s
    while state.step < c.steps:
        if run.over_budget("student", start, c.student_minutes):
            break
        scale = lr_scale(state.step, c.steps, state.elapsed_s, c.student_minutes, STUDENT_WARMUP)
        for group in run.opt.param_groups:
            group["lr"] = c.lr * scale
        idx = torch.randint(len(sampler.encoded), (c.batch,), generator=rng)
        video, cond, ref = sampler(idx, rng)
        garment = sampler.encoded.garment[idx]
        loss = student_loss(run.transformer, run.engine_config, video, cond, ref, garment, rng)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.transformer.parameters(), 1.0)
        run.opt.step()
        run.finish_step("student", start, loss, {"lr": c.lr * scale})
    run.save_state()


def write_result(run: TrainRun, restart_p: float) -> dict[str, Any]:
    """The weights through the engine's ``save_weights`` (what the generator loads) and the
    ``<config>.json`` summary, with the keys the shipped ``tiny.json`` has."""
    c, state, name = run.config, run.state, run.engine_config.name
    run.transformer.eval()
    run.transformer.cpu()
    run.autoencoder.cpu()
    weights = run.out / f"{name}.safetensors"
    save_weights(weights, run.engine_config, run.transformer, run.autoencoder)
    size = weights.stat().st_size
    summary = {
        "config": run.engine_config.to_dict(),
        "data": {"seed": c.seed, "clips": c.clips, "clip_frames": c.clip_frames, "restart_p": restart_p},
        "autoencoder_from": str(c.autoencoder_from) if c.autoencoder_from else None,
        "device": str(c.device),
        "autoencoder_steps": state.ae_steps_done,
        "student_steps": state.step,
        "student_seconds": round(state.elapsed_s, 1),
        "loss": dict(state.history),
        "weights": weights.name,
        "weights_bytes": size,
    }
    (run.out / f"{name}.json").write_text(json.dumps(summary, indent=1))
    run.progress("train_saved", f"saved {weights} ({size} bytes)", weights=str(weights), bytes=size)
    return summary


def train(config: TrainConfig) -> dict[str, Any]:
    """Both phases; returns the summary written to ``<config>.json``.

    Running the same config again resumes from ``out/train_state.pt``; the data and the sampling
    generator are rebuilt from ``seed``, so a resumed run draws like an uninterrupted one."""
    if config.stage == "dmd":
        return train_dmd(config)
    if config.stage != "student":
        raise ValueError(f"unknown stage {config.stage!r}; known: student, dmd")
    run = start_run(config)
    pool = render_pool(run)
    rng = torch.Generator().manual_seed(config.seed + 1)
    if run.state.phase == "autoencoder":
        train_autoencoder(run, pool, rng)
    sampler = prepare_student(run, pool)
    train_student(run, sampler, rng)
    return write_result(run, sampler.restart_p)


def save_loss_plot(summary: dict[str, Any], path: str | Path) -> None:
    """Every phase's loss curve (log scale) from a training summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = list(summary["loss"]) or ["student"]
    fig, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 3.5), squeeze=False)
    for ax, phase in zip(axes[0], phases, strict=True):
        points = np.array(summary["loss"][phase] or [[0, float("nan"), 0]])
        ax.plot(points[:, 0], points[:, 1])
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{phase} loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``chameleon train``: flags -> ``TrainConfig`` -> both phases, then the loss plot."""
    config = parse_config(argv)
    summary = train(config)
    save_loss_plot(summary, Path(config.out) / f"{config.config_name}_loss.png")
    return 0


if __name__ == "__main__":
    # ``chameleon train`` configures logging in the CLI; ``python -m`` starts here instead.
    settings = BaseSettings.from_env()
    configure_logging(settings.log_level, settings.log_json, service="train")
    raise SystemExit(main())
