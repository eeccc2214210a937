"""What both training stages use, so that ``train.py`` (stage one and the CLI) and ``distill.py``
(``--stage dmd``, reached from ``train.train``) import it instead of each other.

- the run's options: ``TrainConfig`` (the CLI flags are built from it in ``train.py``);
- a run's bookkeeping: ``TrainState``, ``ProgressLog``, ``ResumableRun`` (``train_state.pt``),
  ``lr_scale``, ``over_budget``, ``record_step``;
- the clips in tensors: ``ClipPool`` (rendered), ``EncodedPool`` (latents, encoded once by the
  frozen autoencoder) and ``StudentSampler`` (start and restart layouts), with the helpers they need.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from runtime.logging import get_logger
from services.generator.engine.autoencoder import CausalVideoAutoencoder
from services.generator.engine.config import EngineConfig
from tools.training.data import Clip, make_clip

log = get_logger("training")

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
