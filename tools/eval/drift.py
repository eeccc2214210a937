"""Long-rollout drift: does the student hold its quality over hundreds of frames and many swaps?

``python -m tools.eval.drift --json [--weights W] [--clips 10] [--frames 600] [--swap-every 100]``
(= ``chameleon eval drift``). Held-out procedural clips (the seeds ``chameleon eval swap`` uses)
are streamed through the real engine, one ``StudentStream`` per clip, swapping the garment every
``swap_every`` frames with the full rescheduling policy (``session.swap``; ``--policy`` picks
another of eval swap's policies, for diagnosis). Reported:

- ``psnr_by_window``: PSNR of generated against ground-truth frames per ``window``-frame window
  (``windows`` lists the ``[start, end)`` pairs), mean over clips;
- ``psnr_late_over_early``: PSNR over frames ``late`` (default the last 100) over PSNR over
  frames ``early`` (default 20-70), from the clip means; 1.0 = no drift;
- ``ghost_ratio_by_swap``: per swap, the garment-mask pixels of the generated frames until the
  next swap that are nearer the previous garment's mean ground-truth colour than the new one's
  (``evaluate.py``'s ``ghost_ratio``, one swap at a time), mean over clips.

Why the clips loop their motion: the procedural figure drifts up to 0.003 image widths per frame,
so a straight 600-frame clip walks it out of the picture in most seeds (the late windows would be
background only and every late swap's ghost ratio trivially 0). The drift clips play the first
``motion_frames`` frames (49, the training clip length) forward and backward, so the figure stays
in the training distribution for any length and early and late windows show comparable content.

A swap requested at frame ``k * swap_every`` lands on the next chunk boundary, like the
generator service's queued swap; the ground truth switches garment at that same frame
(``swap_frames`` in the report). The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from services.garments.catalogue import GarmentSpec, classic_catalogue
from services.generator.engine.conditioning import pixel_frames_in_chunk
from services.generator.engine.config import EngineConfig, get_config
from services.generator.engine.session import Engine
from tools.bench.common import provenance
from tools.training.data import make_clip
from tools.training.evaluate import (
    EVAL_SEED,
    MIN_COLOUR_GAP,
    POLICIES,
    apply_policy,
    autoencoder_round_trip,
    weights_to_evaluate,
)

Range = tuple[int, int]  # [start, end) in pixel frames
GARMENT_ORDERS = ("varied", "alternate")


@dataclass(frozen=True)
class DriftSettings:
    """Sizes of one drift evaluation; the defaults are issue #16's."""

    clips: int = 10
    frames: int = 600
    swap_every: int = 100
    window: int = 50
    early: Range = (20, 70)
    late: Range | None = None  # None: the last ``late_frames`` (500-600 at the default length)
    late_frames: int = 100
    motion_frames: int = 49  # the figure's motion loops over the training clip length
    seed: int = EVAL_SEED
    policy: str = "full"
    min_colour_gap: float = MIN_COLOUR_GAP
    garments: str = "varied"  # or "alternate": A, B, A, B, .. (eval swap's pair at every swap)

    @property
    def late_range(self) -> Range:
        if self.late is not None:
            return self.late
        return (max(self.frames - self.late_frames, 0), self.frames)

    def __post_init__(self) -> None:
        problems = []
        for name, (start, end) in (("early", self.early), ("late", self.late_range)):
            if not 0 <= start < end <= self.frames:
                problems.append(f"{name} range [{start}, {end}) must lie inside [0, {self.frames})")
        if self.window < 1 or self.swap_every < 1 or self.clips < 1 or self.motion_frames < 2:
            problems.append("window, swap_every, clips must be >= 1 and motion_frames >= 2")
        if self.garments not in GARMENT_ORDERS:
            problems.append(f"garments {self.garments!r} not in {GARMENT_ORDERS}")
        if self.policy not in POLICIES:
            problems.append(f"policy {self.policy!r} not in {POLICIES}")
        if problems:
            raise ValueError("invalid DriftSettings: " + "; ".join(problems))


@dataclass
class DriftClip:
    """A long swap clip: ground truth per frame and the garment worn in each segment."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    garment_mask: np.ndarray  # (T, H, W) bool
    conditioning: np.ndarray  # (T, H, W, 4) uint8
    reference: np.ndarray  # frame 0 in the first garment
    garments: list[str]  # one per segment: before the first swap, then after each swap
    garment_images: list[np.ndarray]  # flat-lays, same order
    swap_frames: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------------- arithmetic
def chunk_ends(config: EngineConfig, frames: int) -> list[int]:
    """Pixel-frame counts at the end of each chunk until at least ``frames`` are generated.

    The stream's first chunk is shorter (its first latent is one image); every later chunk,
    after a swap too, has the steady length (the video timeline continues).
    """
    ends = [pixel_frames_in_chunk(config, first_is_image=True)]
    steady = pixel_frames_in_chunk(config, first_is_image=False)
    while ends[-1] < frames:
        ends.append(ends[-1] + steady)
    return ends


def effective_swap_frames(config: EngineConfig, frames: int, swap_every: int) -> list[int]:
    """The chunk boundary at or after each multiple of ``swap_every`` that lies before ``frames``."""
    ends = chunk_ends(config, frames)
    swaps: list[int] = []
    for requested in range(swap_every, frames, swap_every):
        boundary = next(e for e in ends if e >= requested)
        if boundary < frames and (not swaps or boundary > swaps[-1]):
            swaps.append(boundary)
    return swaps


def motion_index(frame: int, motion_frames: int) -> int:
    """Ping-pong over ``0 .. motion_frames - 1`` (0, 1, .., 48, 47, .., 1, 0, 1, ..)."""
    period = 2 * (motion_frames - 1)
    phase = frame % period
    return phase if phase < motion_frames else period - phase


def windows(frames: int, window: int) -> list[Range]:
    """Consecutive ``[start, end)`` windows covering ``frames`` (the last one may be shorter)."""
    return [(s, min(s + window, frames)) for s in range(0, frames, window)]


def range_psnr(generated: np.ndarray, truth: np.ndarray, span: Range) -> float:
    """PSNR (dB) over frames ``[start, end)``, one MSE pooled over all their pixels."""
    start, end = span
    diff = generated[start:end].astype(np.float64) - truth[start:end].astype(np.float64)
    mse = float(np.mean(diff**2))
    return 99.0 if mse == 0 else 10.0 * float(np.log10(255.0**2 / mse))


def ghost_ratio(
    generated: np.ndarray, truth: np.ndarray, mask: np.ndarray, before: Range, after: Range
) -> float:
    """``evaluate.py``'s ghost ratio of one swap: garment pixels of the generated frames in
    ``after`` nearer the old garment's mean ground-truth colour (over ``before``) than the new one's.
    """
    gt = truth.astype(np.float64)
    mean_old = gt[before[0] : before[1]][mask[before[0] : before[1]]].mean(axis=0)
    mean_new = gt[after[0] : after[1]][mask[after[0] : after[1]]].mean(axis=0)
    pixels = generated[after[0] : after[1]].astype(np.float64)[mask[after[0] : after[1]]]
    if not len(pixels):
        return 0.0
    nearer_old = np.linalg.norm(pixels - mean_old, axis=1) < np.linalg.norm(pixels - mean_new, axis=1)
    return float(nearer_old.mean())


def segments(swaps: list[int], frames: int) -> list[Range]:
    """``[start, end)`` of each garment's segment: before the first swap, then after each swap."""
    bounds = [0, *swaps, frames]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


# ----------------------------------------------------------------------------------- clips
def _garment_colour(seed: int, spec: GarmentSpec, size: tuple[int, int]) -> np.ndarray:
    """Mean ground-truth colour of ``spec`` worn by clip ``seed``'s figure at frame 0."""
    clip = make_clip(seed, 1, size=size, catalogue=[spec])
    return clip.frames[0][clip.garment_mask[0]].astype(np.float64).mean(axis=0)


def _next_garment(
    seed: int, swap: int, previous: GarmentSpec, size: tuple[int, int], min_gap: float
) -> GarmentSpec:
    """A catalogue garment whose worn colour is at least ``min_gap`` from the previous one's
    (deterministic per clip and swap), else the farthest: the ghost ratio needs distinct colours."""
    specs = classic_catalogue()
    order = np.random.default_rng([seed, swap]).permutation(len(specs))
    old = _garment_colour(seed, previous, size)
    best, best_gap = previous, -1.0
    for i in order:
        spec = specs[int(i)]
        if spec.garment_id == previous.garment_id:
            continue
        gap = float(np.linalg.norm(_garment_colour(seed, spec, size) - old))
        if gap >= min_gap:
            return spec
        if gap > best_gap:
            best, best_gap = spec, gap
    return best


def make_drift_clip(
    seed: int, frames: int, swaps: list[int], settings: DriftSettings, size: tuple[int, int]
) -> DriftClip:
    """A ``frames``-long clip of held-out seed ``seed`` with a garment change at each swap frame.

    The first two garments are exactly ``chameleon eval swap``'s pair for this seed
    (``make_clip(seed, ..., swap_frame=..., min_colour_gap=...)``); the figure is the same in
    every segment because ``make_clip`` draws the body before the garments, so rendering the
    seed with a one-garment catalogue dresses the same figure in that garment.
    """
    motion = settings.motion_frames
    first = make_clip(seed, motion, size=size, swap_frame=motion, min_colour_gap=settings.min_colour_gap)
    specs = {s.garment_id: s for s in classic_catalogue()}
    worn = [specs[first.garment_a], specs[first.garment_b]]
    while len(worn) < len(swaps) + 1:
        if settings.garments == "alternate":
            worn.append(worn[-2])
        else:
            worn.append(_next_garment(seed, len(worn), worn[-1], size, settings.min_colour_gap))
    worn = worn[: len(swaps) + 1]
    dressed = {worn[0].garment_id: first}
    for g in worn[1:]:
        if g.garment_id not in dressed:
            dressed[g.garment_id] = make_clip(seed, motion, size=size, catalogue=[g])
    rendered = [dressed[g.garment_id] for g in worn]
    index = np.array([motion_index(f, motion) for f in range(frames)])
    segment_of = np.searchsorted(np.array(swaps, dtype=np.int64), np.arange(frames), side="right")

    def stitch(attr: str) -> np.ndarray:
        return np.stack([getattr(rendered[s], attr)[i] for s, i in zip(segment_of, index, strict=True)])

    return DriftClip(
        frames=stitch("frames"),
        garment_mask=stitch("garment_mask"),
        conditioning=stitch("conditioning"),
        reference=first.reference,
        garments=[g.garment_id for g in worn],
        garment_images=[r.garment_images[g.garment_id] for r, g in zip(rendered, worn, strict=True)],
        swap_frames=list(swaps),
    )


# --------------------------------------------------------------------------------- streaming
def stream_clip(engine: Engine, clip: DriftClip, *, seed: int, policy: str = "full") -> np.ndarray:
    """Generated frames, chunk by chunk through one session, swapping at ``clip.swap_frames``."""
    total = clip.frames.shape[0]
    frames: list[np.ndarray] = []
    pending = list(zip(clip.swap_frames, clip.garment_images[1:], strict=True))
    with engine.open_session(seed=seed) as session:
        session.start(clip.reference, clip.garment_images[0])
        while len(frames) < total:
            done = len(frames)
            if pending and pending[0][0] == done:
                apply_policy(session, policy, pending.pop(0)[1])
            n = session.pixel_frames_next_chunk
            if done + n > total:
                raise ValueError(f"clip of {total} frames ends inside a chunk; render to a chunk end")
            frames.extend(session.step(clip.conditioning[done : done + n]))
    if pending:
        raise ValueError(f"swap frames {[p[0] for p in pending]} are not chunk boundaries")
    return np.stack(frames)


def clip_drift(
    clip: DriftClip, generated: np.ndarray, settings: DriftSettings, *, chunk: int
) -> dict[str, Any]:
    """Per-clip metrics over the first ``settings.frames`` frames; ``chunk``: pixel frames of a
    steady chunk (the ``_first_chunk`` ghost covers the first chunk after each swap, the span
    ``chameleon eval swap`` measures)."""
    n = settings.frames
    gen, gt, mask = generated[:n], clip.frames[:n], clip.garment_mask[:n]
    spans = segments(clip.swap_frames, n)
    early, late = range_psnr(gen, gt, settings.early), range_psnr(gen, gt, settings.late_range)
    ghost, ghost_first, gaps = [], [], []
    for before, after in itertools.pairwise(spans):
        ghost.append(ghost_ratio(gen, gt, mask, before, after))
        first_chunk = (after[0], min(after[0] + chunk, after[1]))
        ghost_first.append(ghost_ratio(gen, gt, mask, before, first_chunk))
        old = gt[before[0] : before[1]][mask[before[0] : before[1]]].astype(np.float64).mean(axis=0)
        new = gt[after[0] : after[1]][mask[after[0] : after[1]]].astype(np.float64).mean(axis=0)
        gaps.append(float(np.linalg.norm(old - new)))
    return {
        "psnr_by_window": [range_psnr(gen, gt, w) for w in windows(n, settings.window)],
        "psnr_early": early,
        "psnr_late": late,
        "ghost_ratio_by_swap": ghost,
        "ghost_ratio_by_swap_first_chunk": ghost_first,
        "colour_gap_by_swap": gaps,
    }


def _mean(rows: list[dict[str, Any]], key: str) -> Any:
    values = np.array([r[key] for r in rows], dtype=np.float64)
    mean = values.mean(axis=0)
    return round(float(mean), 4) if mean.ndim == 0 else [round(float(v), 4) for v in mean]


def evaluate_drift(
    weights: str | None,
    settings: DriftSettings,
    *,
    config_name: str = "tiny",
    threads: int | None = 2,
) -> dict[str, Any]:
    """Stream every clip, swapping every ``settings.swap_every`` frames; returns the report."""
    started = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    config = get_config(config_name)
    engine = Engine.build(config, max_sessions=1, weights=weights)
    size = (config.pixel_height, config.pixel_width)
    swaps = effective_swap_frames(config, settings.frames, settings.swap_every)
    rendered_frames = chunk_ends(config, settings.frames)[-1]  # the stream ends on a chunk boundary
    steady = pixel_frames_in_chunk(config, first_is_image=False)
    rows: list[dict[str, Any]] = []
    ceiling: list[list[float]] = []
    for i in range(settings.clips):
        seed = settings.seed + i
        clip = make_drift_clip(seed, rendered_frames, swaps, settings, size)
        generated = stream_clip(engine, clip, seed=seed, policy=settings.policy)
        row = clip_drift(clip, generated, settings, chunk=steady)
        row["seed"], row["garments"] = seed, clip.garments
        rows.append(row)
        round_trip = autoencoder_round_trip(engine, clip.frames)  # 1 + 4k frames: a whole stream
        ceiling.append(
            [range_psnr(round_trip, clip.frames, w) for w in windows(settings.frames, settings.window)]
        )
        print(
            f"clip {i + 1}/{settings.clips} seed {seed}: early {row['psnr_early']:.2f} dB, "
            f"late {row['psnr_late']:.2f} dB, ghost {np.round(row['ghost_ratio_by_swap'], 3).tolist()}",
            file=sys.stderr,
            flush=True,
        )
    early, late = _mean(rows, "psnr_early"), _mean(rows, "psnr_late")
    ghost = _mean(rows, "ghost_ratio_by_swap") if swaps else []
    ratio = round(late / early, 4)
    report: dict[str, Any] = {
        "eval": "drift",
        "weights": str(weights) if weights else "random",
        "config": config.name,
        "policy": settings.policy,
        "clips": settings.clips,
        "frames": settings.frames,
        "seed": settings.seed,
        "swap_every": settings.swap_every,
        "swap_frames": swaps,
        "motion_frames": settings.motion_frames,
        "garment_order": settings.garments,
        "window": settings.window,
        "windows": [list(w) for w in windows(settings.frames, settings.window)],
        "psnr_by_window": _mean(rows, "psnr_by_window"),
        "autoencoder_psnr_by_window": [round(float(v), 4) for v in np.mean(ceiling, axis=0)],
        "early": list(settings.early),
        "late": list(settings.late_range),
        "psnr_early": early,
        "psnr_late": late,
        "psnr_late_over_early": ratio,
        "ghost_ratio_by_swap": ghost,
        "ghost_ratio_by_swap_first_chunk": _mean(rows, "ghost_ratio_by_swap_first_chunk") if swaps else [],
        "colour_gap_by_swap": _mean(rows, "colour_gap_by_swap") if swaps else [],
        "goals": {
            "late_over_early_ge_0.95": ratio >= 0.95,
            "no_swap_ghost_worse_than_first": all(g <= ghost[0] for g in ghost[1:]) if ghost else True,
        },
        "per_clip": [
            {
                "seed": r["seed"],
                "garments": r["garments"],
                "psnr_late_over_early": round(r["psnr_late"] / r["psnr_early"], 4),
                "ghost_ratio_by_swap": [round(g, 4) for g in r["ghost_ratio_by_swap"]],
            }
            for r in rows
        ],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **provenance(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return report


def main(argv: list[str] | None = None) -> int:
    defaults = DriftSettings()
    p = argparse.ArgumentParser(prog="chameleon eval drift", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="only the JSON report (always the last line)")
    p.add_argument("--weights", help="checkpoint (default: the packaged one; 'random' for random init)")
    p.add_argument("--config", default="tiny")
    p.add_argument("--clips", type=int, default=defaults.clips)
    p.add_argument("--frames", type=int, default=defaults.frames)
    p.add_argument("--swap-every", type=int, default=defaults.swap_every)
    p.add_argument("--window", type=int, default=defaults.window)
    p.add_argument("--early", type=int, nargs=2, metavar=("START", "END"), default=list(defaults.early))
    p.add_argument("--late", type=int, nargs=2, metavar=("START", "END"), help="default: the last 100 frames")
    p.add_argument("--motion-frames", type=int, default=defaults.motion_frames)
    p.add_argument("--policy", default=defaults.policy, choices=POLICIES)
    p.add_argument(
        "--garments",
        default=defaults.garments,
        choices=GARMENT_ORDERS,
        help="varied: a new catalogue garment at each swap; alternate: the eval-swap pair A, B, A, ..",
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    weights = weights_to_evaluate(args.weights)
    try:
        settings = replace(
            defaults,
            clips=args.clips,
            frames=args.frames,
            swap_every=args.swap_every,
            window=args.window,
            early=tuple(args.early),
            late=tuple(args.late) if args.late else None,
            motion_frames=args.motion_frames,
            policy=args.policy,
            garments=args.garments,
            seed=args.seed,
        )
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    report = evaluate_drift(weights, settings, config_name=args.config, threads=args.threads)
    if not args.json:
        keys = ("psnr_by_window", "psnr_late_over_early", "ghost_ratio_by_swap", "goals", "seconds")
        for key in keys:
            print(f"{key:>28}: {report[key]}", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
