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

Every option is a field of ``TrainConfig``; the CLI flags are generated from it. Progress goes to
stderr as structlog events and to ``DIR/<config>.log`` as plain lines; ``DIR/train_state.pt`` makes
a run resumable (same command again); the result is ``DIR/<config>.safetensors`` (engine
``save_weights``) and ``DIR/<config>.json`` (config, data seed, steps, loss summary).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
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

from runtime.logging import configure_logging, get_logger
from runtime.settings import BaseSettings
from services.generator.engine.autoencoder import CausalVideoAutoencoder
from services.generator.engine.config import EngineConfig, get_config
from services.generator.engine.sampler import FlowMatchSchedule
from services.generator.engine.transformer import CausalVideoDiT, teacher_forcing_mask
from services.generator.engine.weights import build_modules, load_weights, save_weights
from tools.training.data import Clip, make_clip

log = get_logger("training")

LATENT_POWER_WEIGHT = 0.05
RESTART_BLUR = 1.0  # pixels (64x64 frames): half the restart references are blurred this much
STUDENT_WARMUP = 100  # student steps of linear learning-rate warm-up
# How each per-step detail is written in the log file's lines (the format of the shipped tiny.log).
DETAIL_FORMATS = {
    "rec": ".4f",
    "latent_power": ".3f",
    "lr": ".2e",
    "dmd": ".4f",
    "regression": ".4f",
    "critic": ".4f",
    "weight_max": ".2f",
}


def _doc(text: str, flag: str | None = None) -> dict[str, str | None]:
    """A ``TrainConfig`` field's metadata: ``text`` is its comment and its ``--help`` line, ``flag``
    overrides the flag derived from the field's name."""
    return {"doc": text, "flag": flag}


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run with its default. The flags of ``chameleon train`` are built
    from these fields (``ae_steps`` -> ``--ae-steps``), so an option is declared in one place."""

    config_name: str = field(default="tiny", metadata=_doc("engine config to train", flag="--config"))
    out: str = field(default="out/train", metadata=_doc("folder for log, train_state.pt, weights, summary"))
    seed: int = field(default=0, metadata=_doc("data and init seed"))
    device: str = field(default="cpu", metadata=_doc("cpu or cuda (same code; a GPU just goes further)"))
    threads: int = field(default=2, metadata=_doc("torch CPU threads"))
    clips: int = field(default=256, metadata=_doc("training clips, clip i rendered from seed + i"))
    clip_frames: int = field(default=49, metadata=_doc("1 + 4k pixel frames per clip"))
    workers: int = field(default=1, metadata=_doc("processes rendering the clips"))
    ae_steps: int = field(default=1500, metadata=_doc("autoencoder steps"))
    ae_minutes: float | None = field(default=None, metadata=_doc("autoencoder time budget, minutes"))
    ae_batch: int = field(default=8, metadata=_doc("autoencoder videos per step"))
    ae_window: int = field(default=9, metadata=_doc("1 + 4k pixel frames per autoencoder video"))
    ae_lr: float = field(default=2e-3, metadata=_doc("autoencoder learning rate"))
    autoencoder_from: str | None = field(
        default=None, metadata=_doc("checkpoint's autoencoder; skips phase 1")
    )
    steps: int = field(default=3000, metadata=_doc("student steps"))
    student_minutes: float | None = field(default=None, metadata=_doc("student time budget, minutes"))
    batch: int = field(default=16, metadata=_doc("student samples per step"))
    lr: float = field(default=1e-3, metadata=_doc("student learning rate"))
    restart_p: float = field(default=0.5, metadata=_doc("share of post-swap restart samples"))
    log_every: int = field(default=25, metadata=_doc("log and record the loss every this many steps"))
    save_every: int = field(default=200, metadata=_doc("write train_state.pt every this many steps"))
    # --stage dmd (tools/training/distill.py): teacher, then self-forcing DMD from a checkpoint.
    stage: str = field(default="student", metadata=_doc("student (autoencoder + teacher forcing) or dmd"))
    from_checkpoint: str | None = field(
        default=None, metadata=_doc("dmd: the teacher-forced checkpoint to start from", flag="--from")
    )
    teacher_from: str | None = field(default=None, metadata=_doc("dmd: a trained teacher; skips its phase"))
    teacher_steps: int = field(
        default=3000, metadata=_doc("dmd: bidirectional teacher steps (batch --batch)")
    )
    teacher_minutes: float | None = field(default=None, metadata=_doc("dmd: teacher time budget, minutes"))
    teacher_lr: float = field(default=5e-4, metadata=_doc("dmd: teacher learning rate"))
    teacher_sample_steps: int = field(default=32, metadata=_doc("dmd: Euler steps of a teacher sample"))
    dmd_steps: int = field(default=1500, metadata=_doc("dmd: iterations (one critic update each)"))
    dmd_minutes: float | None = field(default=None, metadata=_doc("dmd: time budget, minutes"))
    dmd_batch: int = field(default=8, metadata=_doc("dmd: streams rolled out per iteration"))
    dmd_clips: int = field(default=256, metadata=_doc("dmd: swap clips rolled out (seeds from 20000)"))
    dmd_lr: float = field(default=1e-4, metadata=_doc("dmd: student learning rate"))
    critic_lr: float = field(default=2e-4, metadata=_doc("dmd: fake-score critic learning rate"))
    critic_steps: int = field(default=5, metadata=_doc("dmd: critic updates per student update"))
    grad_steps: int = field(default=1, metadata=_doc("dmd: last denoising steps per chunk with gradients"))
    reward_tau: float | None = field(
        default=None, metadata=_doc("dmd: reward-weighted DMD temperature (paper: 0.2); off if unset")
    )
    regression: float = field(
        default=0.0, metadata=_doc("dmd: weight of rollout-vs-ground-truth latent MSE (0 = pure DMD)")
    )


def cli_flag(option: dataclasses.Field[Any]) -> str:
    """The flag of a ``TrainConfig`` field."""
    return option.metadata["flag"] or "--" + option.name.replace("_", "-")


def _flag_type(hint: Any) -> Callable[[str], Any]:
    """What argparse converts a flag's text with: the field's type without its ``| None``."""
    return next((t for t in typing.get_args(hint) if t is not type(None)), hint)


def build_parser() -> argparse.ArgumentParser:
    """One flag per ``TrainConfig`` field, parsed into that field (``dest`` = field name)."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.training.train", description=__doc__.splitlines()[0]
    )
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


def lr_scale(step: int, steps: int, elapsed_s: float, minutes: float | None, warmup: int = 0) -> float:
    """Cosine from 1 to 0.1 over ``steps`` or the time budget, whichever runs out first: a run
    stopped by its budget still ends at the low learning rate. With ``warmup``, a linear ramp
    over the first that many steps on top."""
    frac = step / max(1, steps)
    if minutes:
        frac = max(frac, elapsed_s / (60 * minutes))
    ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return ramp * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


@dataclass
class TrainState:
    """What ``train_state.pt`` keeps besides modules and optimisers (saved as ``__dict__``)."""

    phase: str = "autoencoder"
    step: int = 0
    ae_steps_done: int = 0
    elapsed_s: float = 0.0
    history: dict[str, list[list[float]]] = field(default_factory=lambda: {"autoencoder": [], "student": []})


class ProgressLog:
    """Each progress event goes to structlog (stderr) and, as the plain ``HH:MM:SS text`` line the
    log file has always held, to ``DIR/<config>.log``: the file ships next to a checkpoint
    (``tiny.log``) and is read by people and tests, who should not need a JSON parser."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, event: str, text: str, **fields: Any) -> None:
        log.info(event, **fields)
        with self.path.open("a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {text}\n")


class ResumableRun:
    """``save_state``/``resume`` for a training run (a dataclass with ``config``, ``state`` and
    ``progress``): every module and optimiser named in ``SAVED``, the run's ``TrainState``, and
    what ``_extra_state`` adds, in ``<out>/train_state.pt``. The same command again picks up
    where it stopped."""

    SAVED: ClassVar[tuple[str, ...]] = ()
    config: TrainConfig
    state: TrainState
    progress: ProgressLog

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def state_path(self) -> Path:
        return self.out / "train_state.pt"

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _restore_extra(self, saved: dict[str, Any]) -> None:
        pass

    def save_state(self) -> None:
        modules = {name: getattr(self, name).state_dict() for name in self.SAVED}
        torch.save({**modules, **self._extra_state(), "state": self.state.__dict__}, self.state_path)

    def resume(self) -> None:
        saved = torch.load(self.state_path, weights_only=False, map_location=self.config.device)
        for name in self.SAVED:
            getattr(self, name).load_state_dict(saved[name])
        self._restore_extra(saved)
        self.state = TrainState(**saved["state"])
        self.progress(
            "train_resumed",
            f"resumed from {self.state_path}: phase={self.state.phase} step={self.state.step}",
            path=str(self.state_path),
            phase=self.state.phase,
            step=self.state.step,
        )


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


def over_budget(
    state: TrainState, progress: ProgressLog, phase: str, start: float, minutes: float | None
) -> bool:
    """True (and logged) once a phase has used its time budget (every stage's runs)."""
    if minutes is None or time.perf_counter() - start <= 60 * minutes:
        return False
    progress(
        "train_budget_reached",
        f"{phase}: time budget reached at step {state.step}",
        phase=phase,
        step=state.step,
    )
    return True


def record_step(
    state: TrainState,
    config: TrainConfig,
    progress: ProgressLog,
    save_state: Callable[[], None],
    phase: str,
    start: float,
    loss: Tensor,
    detail: dict[str, float],
) -> None:
    """One finished step of any phase (both stages): count, log, history, periodic checkpoint.

    ``loss.item()`` (a device sync) only runs on logged steps."""
    state.step += 1
    state.elapsed_s = time.perf_counter() - start
    if state.step % config.log_every == 0 or state.step == 1:
        value = loss.item()
        state.history.setdefault(phase, []).append([state.step, value, state.elapsed_s])
        text = " ".join(f"{name} {v:{DETAIL_FORMATS[name]}}" for name, v in detail.items())
        progress(
            "train_step",
            f"{phase} step {state.step} loss {value:.4f} {text} t {state.elapsed_s:.0f}s",
            phase=phase,
            step=state.step,
            loss=value,
            **detail,
            elapsed_s=round(state.elapsed_s, 1),
        )
    if state.step % config.save_every == 0:
        save_state()


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


@dataclass
class EncodedPool:
    """The clip pool in latent space: encoded once by the frozen autoencoder, sampled every step."""

    video: Tensor  # (N, F, C, h, w): the whole clip
    reference: Tensor  # (N, 1, C, h, w): frame 0 in garment A
    garment: Tensor  # (N, 1, C, h, w)
    restart_reference: tuple[Tensor, Tensor]  # (N, 1, C, h, w) each: sharp, blurred by RESTART_BLUR
    cond: Tensor  # (N, F, 4 * Cc, h, w)
    restart_at: Tensor  # (N,) long, on the CPU: first video latent of the restart layout

    def __len__(self) -> int:
        return self.video.shape[0]


@torch.no_grad()
def encode_pool(
    autoencoder: CausalVideoAutoencoder, pool: ClipPool, config: EngineConfig, device: str
) -> EncodedPool:
    """Encode in slices of 16 clips (64 for the conditioning maps) to bound peak memory."""

    def encoded(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        return torch.cat([fn(to_unit(x[i : i + 16]).to(device)) for i in range(0, len(x), 16)])

    def restart(blur: float) -> Tensor:
        return encoded(lambda w: restart_references(autoencoder, w, blur), pool.restart_window)

    return EncodedPool(
        video=encoded(autoencoder.encode, pool.video),
        reference=encoded(autoencoder.encode_image, pool.reference),
        garment=encoded(autoencoder.encode_image, pool.garment),
        restart_reference=(restart(0.0), restart(RESTART_BLUR)),
        cond=torch.cat(
            [
                clip_conditioning_latent(pool.cond[i : i + 64].to(device), config)
                for i in range(0, len(pool), 64)
            ]
        ),
        restart_at=pool.restart_at,
    )


@dataclass
class StudentSampler:
    """Student batches: each sample a *start* or, with probability ``restart_p``, a *restart*."""

    encoded: EncodedPool
    span: int  # latent frames per sample, a multiple of the chunk
    restart_p: float
    device: str

    @classmethod
    def fit(cls, encoded: EncodedPool, config: EngineConfig, restart_p: float, device: str) -> StudentSampler:
        """Up to three chunks per sample, as many as also fit after the latest restart; clips too
        short for any restart (tests) train on start samples only."""
        chunk, total = config.chunk_frames, encoded.video.shape[1]
        span = min(3 * chunk, (total - int(encoded.restart_at.max())) // chunk * chunk)
        if span > 0:
            return cls(encoded, span, restart_p, device)
        return cls(encoded, total // chunk * chunk, 0.0, device)

    def __call__(self, idx: Tensor, rng: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Video latents, conditioning and reference latent of the clips ``idx``."""
        e = self.encoded
        restart = torch.rand(len(idx), generator=rng) < self.restart_p
        blurred = torch.rand(len(idx), generator=rng) < 0.5
        starts = torch.where(restart, e.restart_at[idx], 0).tolist()
        rows = list(zip(idx.tolist(), starts, strict=True))
        video = torch.stack([e.video[i, s : s + self.span] for i, s in rows])
        cond = torch.stack([e.cond[i, s : s + self.span] for i, s in rows])
        pick = restart.to(self.device)[:, None, None, None, None]
        soft = blurred.to(self.device)[:, None, None, None, None]
        sharp, blurry = e.restart_reference
        ref = torch.where(pick, torch.where(soft, blurry[idx], sharp[idx]), e.reference[idx])
        return video, cond, ref


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
        from tools.training.distill import train_dmd  # the second stage (imports this module)

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
