"""Swap quality of the four rescheduling policies on held-out procedural clips with a mid-clip swap.

``python -m tools.training.evaluate --json [--weights W] [--baseline W0] [--clips N]``

Each clip starts from the reference (frame 0 in garment A) with garment A, streams chunk by chunk
with the clip's conditioning maps and swaps to garment B at ``swap_frame`` (a chunk boundary).
Policies, same clips and seeds: ``none`` (keep everything), ``refresh_only``
(``refresh_garment_kv``), ``refresh_withdraw`` (+ ``withdraw_history_kv``), ``full``
(``session.swap``: refresh + withdraw + disentangle). Metrics per policy, averaged over clips:

- ``ghost_ratio``: garment-mask pixels of generated frames after the swap whose colour is nearer
  garment A's mean colour than B's (means from the ground-truth frames); lower is better;
- ``continuity``: mean abs error (0..255) between the last generated frame before the swap and the
  first after, outside the garment masks; lower is better (the ground truth's own value is given);
- ``psnr`` (all frames) and ``psnr_after`` (frames after the swap) against the ground truth;
- ``autoencoder_psnr``: PSNR of decode(encode(clip)), the ceiling of every policy's PSNR;
- attention mass per layer of the next chunk on each cache segment (``inspect_attention``), once
  before the swap and per policy after it.

The last printed line is one JSON object; a plot and a contact sheet go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from services.generator.engine.conditioning import frames_to_uint8
from services.generator.engine.config import get_config
from services.generator.engine.session import Engine, StudentStream
from services.generator.student_backend import PACKAGED_CHECKPOINTS
from tools.inspect_attention import probe_attention
from tools.training.data import Clip, make_clip

POLICIES = ("none", "refresh_only", "refresh_withdraw", "full")
DEFAULT_WEIGHTS = PACKAGED_CHECKPOINTS / "tiny.safetensors"


def weights_to_evaluate(arg: str | None) -> str | None:
    """``--weights``: a path; none given, the shipped checkpoint (when installed); ``random``: none
    (an untrained engine, for smoke runs)."""
    if arg is None and DEFAULT_WEIGHTS.is_file():
        return str(DEFAULT_WEIGHTS)
    return None if arg == "random" else arg


EVAL_SEED = 100_000  # held out: training clips use seeds from 0 up to a few thousand
MIN_COLOUR_GAP = 60.0


def apply_policy(session: StudentStream, policy: str, garment: np.ndarray) -> None:
    if policy == "none":
        return
    if policy == "refresh_only":
        session.refresh_garment_kv(garment)
    elif policy == "refresh_withdraw":
        session.refresh_garment_kv(garment)
        session.withdraw_history_kv()
    elif policy == "full":
        session.swap(garment)
    else:
        raise ValueError(f"unknown policy {policy!r}; known: {POLICIES}")


def _mean_mass(layers: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in layers[0] if k != "layer"]
    return {k: round(float(np.mean([row[k] for row in layers])), 4) for k in keys}


def run_policy(
    engine: Engine, clip: Clip, policy: str, *, seed: int
) -> tuple[np.ndarray, list[dict[str, float]], list[dict[str, float]]]:
    """Generated frames (T, H, W, 3) and attention per layer before / after the swap."""
    assert clip.swap_frame is not None
    total = clip.frames.shape[0]
    frames: list[np.ndarray] = []
    before: list[dict[str, float]] = []
    after: list[dict[str, float]] = []
    with engine.open_session(seed=seed) as session:
        session.start(clip.reference, clip.garment_images[clip.garment_a])
        while len(frames) < total:
            done = len(frames)
            if done == clip.swap_frame:
                before = probe_attention(engine, session)
                apply_policy(session, policy, clip.garment_images[clip.garment_b])
                after = probe_attention(engine, session)
            n = session.pixel_frames_next_chunk
            if done + n > total:
                break
            frames.extend(session.step(clip.conditioning[done : done + n]))
    if len(frames) <= clip.swap_frame:
        raise ValueError(f"swap_frame {clip.swap_frame} is not a chunk boundary before frame {total}")
    return np.stack(frames), before, after


def autoencoder_round_trip(engine: Engine, frames: np.ndarray) -> np.ndarray:
    """decode(encode(video)): the best PSNR the student can reach through this autoencoder."""
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].to(engine.dtype) / 127.5 - 1.0
    with torch.no_grad():
        latents = engine.autoencoder.encode(video)
        decoded = engine.autoencoder.decode(latents, first_is_image=True)[0]
    return frames_to_uint8(decoded)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def clip_metrics(clip: Clip, generated: np.ndarray) -> dict[str, float]:
    k = clip.swap_frame
    assert k is not None
    n = generated.shape[0]
    gt, mask = clip.frames[:n].astype(np.float64), clip.garment_mask[:n]
    gen = generated.astype(np.float64)
    mean_a = gt[:k][mask[:k]].mean(axis=0)
    mean_b = gt[k:][mask[k:]].mean(axis=0)

    def ghost(region: np.ndarray) -> float:
        pixels = gen[k:][region]
        nearer_a = np.linalg.norm(pixels - mean_a, axis=1) < np.linalg.norm(pixels - mean_b, axis=1)
        return float(nearer_a.mean()) if len(pixels) else 0.0

    kernel = np.ones((3, 3), np.uint8)
    core = np.stack([cv2.erode(m.astype(np.uint8), kernel) > 0 for m in mask[k:]])
    outside = ~(mask[k - 1] | mask[k])
    return {
        "ghost_ratio": ghost(mask[k:]),
        "ghost_ratio_core": ghost(core),
        "continuity": float(np.abs(gen[k] - gen[k - 1])[outside].mean()),
        "gt_continuity": float(np.abs(gt[k] - gt[k - 1])[outside].mean()),
        "psnr": _psnr(generated, clip.frames[:n]),
        "psnr_after": _psnr(generated[k:], clip.frames[k:n]),
    }


def evaluate(
    weights: str | None = None,
    *,
    config_name: str = "tiny",
    clips: int = 4,
    frames: int = 33,
    swap_frame: int = 21,
    seed: int = EVAL_SEED,
    policies: tuple[str, ...] = POLICIES,
    out_dir: str | Path | None = None,
    threads: int | None = 2,
) -> dict[str, Any]:
    """Run every policy on the same ``clips`` clips and session seeds; returns the report."""
    if threads:
        torch.set_num_threads(threads)
    config = get_config(config_name)
    engine = Engine.build(config, max_sessions=1, weights=weights)
    size = (config.pixel_height, config.pixel_width)
    per_policy: dict[str, list[dict[str, float]]] = {p: [] for p in policies}
    attention_after: dict[str, list[list[dict[str, float]]]] = {p: [] for p in policies}
    attention_before: list[list[dict[str, float]]] = []
    sheet_rows: dict[str, np.ndarray] = {}
    first_clip: Clip | None = None
    ae_psnr: list[float] = []
    for i in range(clips):
        clip = make_clip(seed + i, frames, size=size, swap_frame=swap_frame, min_colour_gap=MIN_COLOUR_GAP)
        first_clip = first_clip or clip
        ae_psnr.append(_psnr(autoencoder_round_trip(engine, clip.frames), clip.frames))
        for policy in policies:
            generated, before, after = run_policy(engine, clip, policy, seed=seed + i)
            per_policy[policy].append(clip_metrics(clip, generated))
            attention_after[policy].append(after)
            if policy == policies[0]:
                attention_before.append(before)
            if i == 0:
                sheet_rows[policy] = generated
        print(f"clip {i + 1}/{clips}: {clip.garment_a} -> {clip.garment_b}", file=sys.stderr, flush=True)

    def mean_layers(runs: list[list[dict[str, float]]]) -> list[dict[str, float]]:
        return [
            {
                "layer": layer,
                **{
                    k: round(float(np.mean([run[layer][k] for run in runs])), 4)
                    for k in runs[0][layer]
                    if k != "layer"
                },
            }
            for layer in range(len(runs[0]))
        ]

    table = {
        p: {k: round(float(np.mean([m[k] for m in rows])), 4) for k in rows[0]}
        for p, rows in per_policy.items()
    }
    for p in policies:
        table[p]["attention_after_swap"] = _mean_mass(mean_layers(attention_after[p]))
    report: dict[str, Any] = {
        "weights": str(weights) if weights else "random",
        "config": config.name,
        "clips": clips,
        "frames": frames,
        "swap_frame": swap_frame,
        "seed": seed,
        "autoencoder_psnr": round(float(np.mean(ae_psnr)), 4),
        "policies": table,
        "attention_before_swap": mean_layers(attention_before),
        "per_clip": {
            p: [{k: round(m[k], 4) for k in ("ghost_ratio", "continuity", "psnr")} for m in rows]
            for p, rows in per_policy.items()
        },
    }
    if "full" in table and "refresh_only" in table and "refresh_withdraw" in table:
        ghost_ref = table["refresh_only"]["ghost_ratio"]
        report["goals"] = {
            "full_ghost_over_refresh_only": round(table["full"]["ghost_ratio"] / max(ghost_ref, 1e-9), 4),
            "full_ghost_le_0.2x_refresh_only": table["full"]["ghost_ratio"] <= 0.2 * ghost_ref,
            "full_continuity_better_than_refresh_withdraw": table["full"]["continuity"]
            < table["refresh_withdraw"]["continuity"],
        }
    if out_dir is not None and first_clip is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_contact_sheet(out / "contact_sheet.png", first_clip, sheet_rows)
        save_plot(out / "policies.png", report)
        report["artifacts"] = [str(out / "contact_sheet.png"), str(out / "policies.png")]
    return report


COMPARED = ("ghost_ratio", "continuity", "psnr", "psnr_after")


def compare(report: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Per policy, the new checkpoint's metrics minus the baseline's (same clips, same seeds), and
    the DMD stage's goals: ``full`` psnr_after +1 dB or more while the swap goals still hold."""
    delta = {
        p: {k: round(report["policies"][p][k] - baseline["policies"][p][k], 4) for k in COMPARED}
        for p in report["policies"]
        if p in baseline["policies"]
    }
    out: dict[str, Any] = {"baseline_weights": baseline["weights"], "delta": delta}
    if "full" in delta and "goals" in report:
        out["goals"] = {
            "full_psnr_after_gain_db": delta["full"]["psnr_after"],
            "full_psnr_after_gain_ge_1db": delta["full"]["psnr_after"] >= 1.0,
            **report["goals"],
        }
    return out


def save_contact_sheet(path: Path, clip: Clip, rows: dict[str, np.ndarray], scale: int = 3) -> None:
    """Rows: ground truth then each policy; columns around the swap (plus reference and garments)."""
    k = clip.swap_frame or 0
    n = min(r.shape[0] for r in rows.values())
    cols = sorted({0, k // 2, k - 2, k - 1, k, k + 1, k + 4, n - 1})
    blank = np.full_like(clip.reference, 255)
    heads = [clip.reference, clip.garment_images[clip.garment_a], clip.garment_images[clip.garment_b]]
    lines = [np.concatenate([*heads, *(clip.frames[c] for c in cols)], axis=1)]
    for video in rows.values():
        lines.append(np.concatenate([blank, blank, blank, *(video[c] for c in cols)], axis=1))
    sheet = np.concatenate(lines, axis=0)
    sheet = cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for r, name in enumerate(["ground truth", *rows]):
        y = r * clip.reference.shape[0] * scale + 14
        cv2.putText(sheet, name, (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def save_plot(path: Path, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = report["policies"]
    names = list(table)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, key in zip(axes[:3], ("ghost_ratio", "continuity", "psnr_after"), strict=True):
        ax.bar(names, [table[p][key] for p in names], color="tab:blue")
        ax.set_title(key)
        ax.tick_params(axis="x", rotation=30)
    layers = report["attention_before_swap"]
    segments = [s for s in layers[0] if s != "layer"]
    bottom = np.zeros(len(layers))
    for s in segments:
        vals = np.array([row[s] for row in layers])
        axes[3].bar([f"layer {row['layer']}" for row in layers], vals, bottom=bottom, label=s)
        bottom += vals
    axes[3].set_title("attention mass before swap")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chameleon eval swap", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print the report as one JSON line (always last)")
    p.add_argument("--weights", help="checkpoint (default: the packaged one; 'random' for random init)")
    p.add_argument("--config", default="tiny")
    p.add_argument("--clips", type=int, default=32, help="held-out clips (32: about a minute on 2 cores)")
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--swap-frame", type=int, default=21)
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="out/eval")
    p.add_argument(
        "--baseline",
        help="also evaluate these weights on the same clips; adds 'baseline' and 'comparison' (deltas)",
    )
    args = p.parse_args(argv)
    weights = weights_to_evaluate(args.weights)
    report = evaluate(
        weights,
        config_name=args.config,
        clips=args.clips,
        frames=args.frames,
        swap_frame=args.swap_frame,
        seed=args.seed,
        out_dir=args.out,
        threads=args.threads,
    )
    if args.baseline:
        base = evaluate(
            None if args.baseline == "random" else args.baseline,
            config_name=args.config,
            clips=args.clips,
            frames=args.frames,
            swap_frame=args.swap_frame,
            seed=args.seed,
            out_dir=Path(args.out) / "baseline",
            threads=args.threads,
        )
        report["baseline"] = {
            k: base[k] for k in ("weights", "autoencoder_psnr", "policies", "goals") if k in base
        }
        report["comparison"] = compare(report, base)
    if not args.json:
        for name, row in report["policies"].items():
            print(name, {k: v for k, v in row.items() if k != "attention_after_swap"}, file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
