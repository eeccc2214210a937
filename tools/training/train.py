"""Train the tiny student on procedural clips: autoencoder first, then the causal student.

``python -m tools.training.train --config tiny --steps N --seed S --out DIR``

Phase 1 (autoencoder): L1 + MSE reconstruction of short videos (Wan time structure: first latent =
one frame, later latents = 4 frames) and of single images (references and garment flat-lays), with
a small penalty keeping the latents near unit power (the sampler draws unit-variance noise).

Phase 2 (student, paper "streaming distillation", first stage only): in-context teacher forcing.
The sequence is ``[reference | garment | clean video | noisy video]`` with the engine's
``teacher_forcing_mask``; each noisy chunk gets its own sigma drawn from the student's few-step
schedule; clean and noisy copies share RoPE positions and conditioning; flow-matching loss
(``v = eps - x0``) on the noisy video tokens only. The DMD stage is not implemented.

Two sample layouts, mixed per batch: a *start* (reference = frame 0 in garment A, video from the
image-first latent in B) and a *restart*, the state a full swap leaves behind: the reference is
encode(decode(the previous latent in A)[-1]) (sometimes blurred, as generated frames are) and the
video resumes in B with a 4-frame latent at the first video RoPE position.

Progress goes to stderr and to ``DIR/<config>.log``; ``DIR/train_state.pt`` makes a run resumable
(same command again); the result is ``DIR/<config>.safetensors`` (engine ``save_weights``) and
``DIR/<config>.json`` (config, data seed, steps, loss summary).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from services.generator.engine.autoencoder import CausalVideoAutoencoder
from services.generator.engine.config import EngineConfig, get_config
from services.generator.engine.sampler import FlowMatchSchedule
from services.generator.engine.transformer import CausalVideoDiT, teacher_forcing_mask
from services.generator.engine.weights import build_modules, load_weights, save_weights
from tools.training.data import Clip, make_clip

LATENT_POWER_WEIGHT = 0.05
RESTART_P = 0.5  # share of student samples in the post-swap restart layout
RESTART_BLUR = 1.0  # pixels (64x64 frames): half the restart references are blurred this much


@dataclass
class ClipPool:
    """Clips as uint8 tensors (pixels in [0, 255]) so a few hundred fit in memory."""

    video: Tensor  # (N, T, 3, H, W) uint8
    cond: Tensor  # (N, T, H, W, Cc) uint8
    reference: Tensor  # (N, 3, H, W) uint8
    garment: Tensor  # (N, 3, H, W) uint8
    restart_window: Tensor  # (N, 4, 3, H, W) uint8: latent ``restart_at - 1`` worn in garment A
    restart_at: Tensor  # (N,) long: first video latent of the restart sample

    def __len__(self) -> int:
        return self.video.shape[0]


def to_unit(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return x.float() / 127.5 - 1.0


def _restart_clip(args: tuple[int, int, tuple[int, int]]) -> Clip:
    seed, frames, size = args
    return make_clip(seed, frames, size=size, restart=True)


def build_pool(config: EngineConfig, clips: int, frames: int, seed: int, workers: int = 1) -> ClipPool:
    """``clips`` training clips (reference in A, garment B, video in B), clip i from seed + i.

    ``workers`` > 1 renders in that many processes; the clips are the same either way."""
    size = (config.pixel_height, config.pixel_width)
    jobs = [(seed + i, frames, size) for i in range(clips)]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as procs:
            made = procs.map(_restart_clip, jobs, chunksize=8)
    else:
        made = [_restart_clip(job) for job in jobs]
    video, cond, ref, gar, window, at = [], [], [], [], [], []
    for c in made:
        assert c.restart_window is not None
        video.append(torch.from_numpy(c.frames).permute(0, 3, 1, 2))
        cond.append(torch.from_numpy(c.conditioning))
        ref.append(torch.from_numpy(c.reference).permute(2, 0, 1))
        gar.append(torch.from_numpy(c.garment_image).permute(2, 0, 1))
        window.append(torch.from_numpy(c.restart_window).permute(0, 3, 1, 2))
        at.append(c.restart_latent)
    return ClipPool(
        torch.stack(video),
        torch.stack(cond),
        torch.stack(ref),
        torch.stack(gar),
        torch.stack(window),
        torch.tensor(at, dtype=torch.long),
    )


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, 3, H, W) images (reflect padding)."""
    radius = max(1, math.ceil(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).repeat(3, 1, 1, 1)
    out = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(3, 1, 1, -1), groups=3)
    return F.conv2d(out, k.view(3, 1, -1, 1), groups=3)


@torch.no_grad()
def restart_references(autoencoder: CausalVideoAutoencoder, window: Tensor, blur: float) -> Tensor:
    """What a full swap rebuilds its reference from: encode(decode(latent)[-1]) of a 4-frame
    latent worn in garment A, (B, 4, 3, H, W) in [-1, 1] -> (B, 1, C, h, w). ``blur`` > 0 softens
    the decoded frame first, closer to a generated frame than a clean round trip is."""
    latent = autoencoder.encode(torch.cat([window[:, :1], window], dim=1))[:, 1:]
    last = autoencoder.decode(latent, first_is_image=False)[:, -1]
    if blur > 0:
        last = gaussian_blur(last, blur)
    return autoencoder.encode_image(last)


def clip_conditioning_latent(cond: Tensor, config: EngineConfig) -> Tensor:
    """(B, 1 + 4k, H, W, Cc) uint8 maps of a whole clip -> (B, 1 + k, 4 * Cc, h, w).

    The clip-level version of the engine's per-chunk ``conditioning_to_latent``: area-downsample,
    repeat the lone first frame to fill its group, stack each group's frames on channels.
    """
    b, t = cond.shape[:2]
    x = cond.float().div(255.0).flatten(0, 1).permute(0, 3, 1, 2)
    x = F.adaptive_avg_pool2d(x, (config.latent_height, config.latent_width))
    x = x.view(b, t, *x.shape[1:])
    x = torch.cat([x[:, :1].expand(-1, config.vae_temporal, -1, -1, -1), x[:, 1:]], dim=1)
    return x.reshape(b, -1, config.latent_cond_channels, config.latent_height, config.latent_width)


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


def lr_scale(step: int, steps: int, elapsed_s: float, minutes: float | None) -> float:
    """Cosine from 1 to 0.1 over ``steps`` or the time budget, whichever runs out first: a run
    stopped by its budget still ends at the low learning rate."""
    frac = step / max(1, steps)
    if minutes:
        frac = max(frac, elapsed_s / (60 * minutes))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


@dataclass
class TrainState:
    phase: str = "autoencoder"
    step: int = 0
    ae_steps_done: int = 0
    elapsed_s: float = 0.0
    history: dict[str, list[list[float]]] = field(default_factory=lambda: {"autoencoder": [], "student": []})


class Logger:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        print(line, file=sys.stderr, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")


def train(
    config_name: str = "tiny",
    *,
    out: str | Path = "out/train",
    seed: int = 0,
    ae_steps: int = 1500,
    steps: int = 3000,
    ae_minutes: float | None = None,
    student_minutes: float | None = None,
    clips: int = 256,
    clip_frames: int = 49,
    ae_batch: int = 8,
    ae_window: int = 9,
    batch: int = 16,
    lr: float = 1e-3,
    ae_lr: float = 2e-3,
    threads: int = 2,
    log_every: int = 25,
    save_every: int = 200,
    device: str = "cpu",
    workers: int = 1,
    restart_p: float = RESTART_P,
    autoencoder_from: str | Path | None = None,
) -> dict[str, Any]:
    """Both phases; returns the summary written to ``<config>.json``. Resumes from ``out``.

    ``autoencoder_from`` (a checkpoint of the same config) skips phase 1 and trains only the
    student on that autoencoder: ablations of the student phase compare on equal footing."""
    torch.set_num_threads(threads)
    config = get_config(config_name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = Logger(out / f"{config.name}.log")
    transformer, autoencoder = build_modules(config, seed=seed, device=device)
    ae_opt = torch.optim.Adam(autoencoder.parameters(), lr=ae_lr)
    opt = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=0.01)
    state = TrainState()
    state_path = out / "train_state.pt"
    if state_path.exists():
        saved = torch.load(state_path, weights_only=False, map_location=device)
        transformer.load_state_dict(saved["transformer"])
        autoencoder.load_state_dict(saved["autoencoder"])
        ae_opt.load_state_dict(saved["ae_opt"])
        opt.load_state_dict(saved["opt"])
        state = TrainState(**saved["state"])
        log(f"resumed from {state_path}: phase={state.phase} step={state.step}")
    elif autoencoder_from is not None:
        donor, _ = build_modules(config, seed=seed, device=device)
        load_weights(autoencoder_from, config, donor, autoencoder)
        state.phase = "student"
        log(f"autoencoder from {autoencoder_from}; phase 1 skipped")

    def checkpoint() -> None:
        torch.save(
            {
                "transformer": transformer.state_dict(),
                "autoencoder": autoencoder.state_dict(),
                "ae_opt": ae_opt.state_dict(),
                "opt": opt.state_dict(),
                "state": state.__dict__,
            },
            state_path,
        )

    def finish_step(phase: str, start: float, loss: Tensor, detail: Callable[[], str]) -> None:
        """Step count, elapsed time, the logged loss history and periodic checkpoints: both phases."""
        state.step += 1
        state.elapsed_s = time.perf_counter() - start
        if state.step % log_every == 0 or state.step == 1:
            state.history[phase].append([state.step, loss.item(), state.elapsed_s])
            log(f"{phase} step {state.step} loss {loss.item():.4f} {detail()} t {state.elapsed_s:.0f}s")
        if state.step % save_every == 0:
            checkpoint()

    t0 = time.perf_counter()
    pool = build_pool(config, clips, clip_frames, seed, workers=workers)
    log(f"data: {clips} clips x {clip_frames} frames (seed {seed}) in {time.perf_counter() - t0:.1f}s")
    rng = torch.Generator().manual_seed(seed + 1)

    if state.phase == "autoencoder":
        autoencoder.train()
        start = time.perf_counter() - state.elapsed_s
        while state.step < ae_steps:
            if ae_minutes is not None and time.perf_counter() - start > 60 * ae_minutes:
                log(f"autoencoder: time budget reached at step {state.step}")
                break
            for group in ae_opt.param_groups:
                group["lr"] = ae_lr * lr_scale(state.step, ae_steps, state.elapsed_s, ae_minutes)
            idx = torch.randint(len(pool), (ae_batch,), generator=rng)
            first = int(torch.randint(clip_frames - ae_window + 1, (1,), generator=rng))
            video = to_unit(pool.video[idx, first : first + ae_window]).to(device)
            images = to_unit(torch.cat([pool.reference[idx[: ae_batch // 2]], pool.garment[idx]])).to(device)
            loss, parts = autoencoder_loss(autoencoder, video, images)
            ae_opt.zero_grad(set_to_none=True)
            loss.backward()
            ae_opt.step()
            finish_step(
                "autoencoder",
                start,
                loss,
                lambda parts=parts: f"rec {parts['rec']:.4f} latent_power {parts['latent_power']:.3f}",
            )
        state.ae_steps_done = state.step
        state.phase, state.step, state.elapsed_s = "student", 0, 0.0
        checkpoint()

    autoencoder.eval()
    for p in autoencoder.parameters():
        p.requires_grad_(False)
    with torch.no_grad():

        def encoded(fn: Any, x: Tensor) -> Tensor:
            return torch.cat([fn(to_unit(x[i : i + 16]).to(device)) for i in range(0, len(x), 16)])

        latents = encoded(autoencoder.encode, pool.video)
        ref_lat = encoded(autoencoder.encode_image, pool.reference)
        gar_lat = encoded(autoencoder.encode_image, pool.garment)
        restart_lat = [
            encoded(lambda w, blur=blur: restart_references(autoencoder, w, blur), pool.restart_window)
            for blur in (0.0, RESTART_BLUR)
        ]
        cond_lat = torch.cat(
            [
                clip_conditioning_latent(pool.cond[i : i + 64].to(device), config)
                for i in range(0, len(pool), 64)
            ]
        )
    # Latent frames per sample: up to three chunks, as many as also fit after the latest restart.
    chunk, total = config.chunk_frames, latents.shape[1]
    span = min(3 * chunk, (total - int(pool.restart_at.max())) // chunk * chunk)
    restart_p = restart_p if span > 0 else 0.0
    span = span if span > 0 else total // chunk * chunk  # clips too short for restarts (tests)
    log(
        f"student: {span} of {total} latent frames per sample, restart share {restart_p}, "
        f"latent std {float(latents.std()):.3f}"
    )

    def sample(idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Video latents, conditioning and reference per sample: a start or a restart."""
        restart = torch.rand(len(idx), generator=rng) < restart_p
        blurred = torch.rand(len(idx), generator=rng) < 0.5
        starts = torch.where(restart, pool.restart_at[idx], 0).tolist()
        video = torch.stack([latents[i, s : s + span] for i, s in zip(idx.tolist(), starts, strict=True)])
        cond = torch.stack([cond_lat[i, s : s + span] for i, s in zip(idx.tolist(), starts, strict=True)])
        pick = restart.to(device)[:, None, None, None, None]
        soft = blurred.to(device)[:, None, None, None, None]
        ref = torch.where(pick, torch.where(soft, restart_lat[1][idx], restart_lat[0][idx]), ref_lat[idx])
        return video, cond, ref

    transformer.train()
    warmup = 100
    start = time.perf_counter() - state.elapsed_s
    while state.step < steps:
        if student_minutes is not None and time.perf_counter() - start > 60 * student_minutes:
            log(f"student: time budget reached at step {state.step}")
            break
        cosine = lr_scale(state.step, steps, state.elapsed_s, student_minutes)
        scale = min(1.0, (state.step + 1) / warmup) * cosine
        for group in opt.param_groups:
            group["lr"] = lr * scale
        idx = torch.randint(len(pool), (batch,), generator=rng)
        video, cond, ref = sample(idx)
        loss = student_loss(transformer, config, video, cond, ref, gar_lat[idx], rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        finish_step("student", start, loss, lambda scale=scale: f"lr {lr * scale:.2e}")
    checkpoint()

    transformer.eval()
    transformer.cpu()
    autoencoder.cpu()
    weights = out / f"{config.name}.safetensors"
    save_weights(weights, config, transformer, autoencoder)
    summary = {
        "config": config.to_dict(),
        "data": {"seed": seed, "clips": clips, "clip_frames": clip_frames, "restart_p": restart_p},
        "autoencoder_from": str(autoencoder_from) if autoencoder_from else None,
        "device": str(device),
        "autoencoder_steps": state.ae_steps_done,
        "student_steps": state.step,
        "student_seconds": round(state.elapsed_s, 1),
        "loss": {k: v for k, v in state.history.items()},
        "weights": weights.name,
        "weights_bytes": weights.stat().st_size,
    }
    (out / f"{config.name}.json").write_text(json.dumps(summary, indent=1))
    log(f"saved {weights} ({weights.stat().st_size} bytes)")
    return summary


def save_loss_plot(summary: dict[str, Any], path: str | Path) -> None:
    """Both phases' loss curves (log scale) from a training summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, phase in zip(axes, ("autoencoder", "student"), strict=True):
        points = np.array(summary["loss"][phase] or [[0, float("nan"), 0]])
        ax.plot(points[:, 0], points[:, 1])
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{phase} loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.training.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--steps", type=int, default=3000, help="student steps")
    p.add_argument("--ae-steps", type=int, default=1500, help="autoencoder steps")
    p.add_argument("--ae-minutes", type=float, help="stop the autoencoder phase after this long")
    p.add_argument("--student-minutes", type=float, help="stop the student phase after this long")
    p.add_argument("--seed", type=int, default=0, help="data and init seed")
    p.add_argument("--clips", type=int, default=256)
    p.add_argument("--clip-frames", type=int, default=49, help="1 + 4k pixel frames per clip")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ae-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (same code; a GPU just goes further)")
    p.add_argument("--lr", type=float, default=1e-3, help="student learning rate")
    p.add_argument("--workers", type=int, default=1, help="processes rendering the clips")
    p.add_argument("--restart-p", type=float, default=RESTART_P, help="share of post-swap restart samples")
    p.add_argument("--autoencoder-from", help="checkpoint whose autoencoder to reuse (skips phase 1)")
    p.add_argument("--out", default="out/train")
    args = p.parse_args(argv)
    summary = train(
        args.config,
        out=args.out,
        seed=args.seed,
        ae_steps=args.ae_steps,
        steps=args.steps,
        ae_minutes=args.ae_minutes,
        student_minutes=args.student_minutes,
        clips=args.clips,
        clip_frames=args.clip_frames,
        batch=args.batch,
        ae_batch=args.ae_batch,
        threads=args.threads,
        device=args.device,
        lr=args.lr,
        workers=args.workers,
        restart_p=args.restart_p,
        autoencoder_from=args.autoencoder_from,
    )
    save_loss_plot(summary, Path(args.out) / f"{args.config}_loss.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
