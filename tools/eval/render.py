"""`chameleon eval render --json`: the warp renderer against procedural ground truth.

For each clip of each pose family (``tools.eval.figure``): the figure wearing garment A is the
camera input; it goes through the real preprocessing (MediaPipe pose and segmentation, One-Euro
smoothing), then a renderer session opened on garment B draws every frame; the output is compared
with the ground-truth render of the same figure, same pose, same light and camera noise, wearing
B. The new renderer (``current``) and the one before it (``baseline``, ``--renderer legacy``) see
the same frames in the same run. The last line printed is one JSON object:

``{"renderers": {"current"|"baseline": {"overall": {KEYS}, "by_pose": {FAMILY: {KEYS}},
"detected_only": {KEYS}}}, "clips": N, "frames": N, "ground_truth": {"temporal_flicker": ...},
"detected_frames": N, "detected_by_pose": {FAMILY: N}}``

``overall`` and ``by_pose`` count every frame, end to end: a frame where MediaPipe finds no one
passes through unchanged and scores as such. ``detected_only`` counts the frames where it found
the figure (the renderer's own share). Each clip is preceded by ``--lead-in`` frames walking
from the front pose into the family's, seen by the preprocessing and the renderers but not
measured: how a shopper gets into a pose, and what lets the tracker keep hold of the figure.

KEYS, means over frames (by pose: over that family's frames):

- ``garment_iou``: where the renderer put the new garment vs the ground truth garment mask;
- ``psnr_garment_db``, ``ssim_garment``: output vs ground truth inside the ground-truth garment
  (SSIM on luma, Gaussian window sigma 1.5, averaged over the region);
- ``shading_corr``: Pearson correlation of output and ground-truth luma inside the ground-truth
  garment (eroded 2 px), both blurred with sigma 2 px so that a pattern's phase matters less
  than its light and folds; where the outlines differ (a hem a little higher) it also counts the
  old clothing or skin the render shows there, so ``shading_corr_drawn`` is the same where both
  the render and the truth show the garment: the light transfer alone;
- ``psnr_outside_db``: output vs ground truth outside both garments (dilated 2 px): everything
  that is not clothing; capped at 100 dB;
- ``temporal_flicker``: mean absolute change (grey levels, BGR mean) of the output inside the
  ground-truth garment between consecutive frames of the clip's still half (same pose, only the
  camera noise changes). ``ground_truth.temporal_flicker`` is the same on the ground truth;
- ``face_changed``: the share of the face, hair, ears, neck and hands (the figure's own masks,
  eroded by one pixel for the antialiased rim) whose pixels the renderer changed; 0 is the goal.
  ``face_changed_max`` beside it is the worst frame.

The ground truth wears each garment by its own shape (``tools.eval.figure``): its neckline, hem
and sleeve ends fall where the garment's proportions put them on this body.

``by_garment`` (``--by-garment``, on by default): every catalogue garment as the target, taken
through its photographed version (``tools.product_photos``: a flat-lay photo with folds, shadow,
rotation and JPEG noise, through the real encoder) on one clip per pose family, the camera input
shared by all garments. ``{GARMENT: {KEYS}}`` for the current renderer, ``by_garment_baseline``
the legacy renderer's means over the same frames, ``worst_garment`` ``{"id", KEYS}`` (lowest
``garment_iou``), and ``photo_vs_source``: the same clips with every garment taken from its source
image (``{"garment_iou_photo", "garment_iou_source", "worst_drop": {"id", "drop"}}``).
Each garment's entry also has ``garment_iou_found``: the IoU over the frames where MediaPipe found
the figure (a frame without a body passes through undrawn and scores 0 for every garment alike,
which says nothing about the garment), with ``frames_found`` of ``frames``; and
``worst_garment_found`` is the lowest of those.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

PSNR_CAP_DB = 100.0
KEYS = (
    "garment_iou",
    "psnr_garment_db",
    "ssim_garment",
    "shading_corr",
    "shading_corr_drawn",
    "psnr_outside_db",
    "face_changed",
    "temporal_flicker",
)
FRAME_KEYS = KEYS[:-1]  # measured per frame; flicker is per pair of frames
LONG = ("shirt-blue-checks", "shirt-white-pinstripes", "shirt-green-solid", "shirt-red-checks")
SHEET_SCALE = 0.5  # contact-sheet tiles: small enough that the sheet stays a few hundred KB
SHORT = ("tee-red-solid", "tee-white-solid", "tee-navy-stripes", "tee-grey-print", "tee-yellow-dots")


def _psnr(a: np.ndarray, b: np.ndarray, sel: np.ndarray) -> float:
    if not sel.any():
        return PSNR_CAP_DB
    d = a[sel].astype(np.float64) - b[sel].astype(np.float64)
    mse = float(np.mean(d * d))
    return PSNR_CAP_DB if mse <= 1e-10 else min(PSNR_CAP_DB, 10 * np.log10(255.0**2 / mse))


def _luma(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)


def ssim_in(a: np.ndarray, b: np.ndarray, sel: np.ndarray) -> float:
    """Mean SSIM (luma, Gaussian window sigma 1.5) over ``sel``."""
    if not sel.any():
        return 1.0
    x, y = _luma(a), _luma(b)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(z: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(z, (11, 11), 1.5)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(ssim[sel].mean())


def shading_corr(a: np.ndarray, b: np.ndarray, sel: np.ndarray) -> float:
    inner = cv2.erode(sel.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    if inner.sum() < 20:
        return 0.0
    x = cv2.GaussianBlur(_luma(a), (0, 0), 2.0)[inner]
    y = cv2.GaussianBlur(_luma(b), (0, 0), 2.0)[inner]
    if x.std() < 1e-6 or y.std() < 1e-6:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def _iou(mask: np.ndarray | None, truth: np.ndarray) -> float:
    if mask is None:
        return 0.0
    m = mask > 0
    union = (m | truth).sum()
    return float((m & truth).sum() / union) if union else 1.0


def face_changed(out: np.ndarray, src: np.ndarray, keep_out: np.ndarray | None) -> float:
    """Share of ``keep_out`` (bool, eroded by a pixel) whose pixels differ between ``out`` and ``src``."""
    if keep_out is None:
        return 0.0
    inner = cv2.erode(keep_out.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    if not inner.any():
        return 0.0
    changed = np.any(out != src, axis=2)
    return float((changed & inner).sum() / inner.sum())


def frame_metrics(out: np.ndarray, drawn: np.ndarray | None, gt, src) -> dict[str, float]:
    """Every per-frame key for one output frame against its ground truth (``FigureFrame``s)."""
    clothes = cv2.dilate((gt.garment | src.garment).astype(np.uint8), np.ones((5, 5), np.uint8))
    return {
        "garment_iou": _iou(drawn, gt.garment),
        "psnr_garment_db": _psnr(out, gt.image, gt.garment),
        "ssim_garment": ssim_in(out, gt.image, gt.garment),
        "shading_corr": shading_corr(out, gt.image, gt.garment),
        "shading_corr_drawn": shading_corr(out, gt.image, gt.garment & (drawn > 0))
        if drawn is not None
        else 0.0,
        "psnr_outside_db": _psnr(out, gt.image, clothes == 0),
        "face_changed": face_changed(out, src.image, src.keep_out),
    }


def _pairs(family: str, clip: int, rng: np.random.Generator) -> tuple[str, str]:
    """Garment A (worn) and B (asked for). ``sleeve_change`` alternates long->short and
    short->long; the other families keep the sleeve length so they measure the pose."""
    if family == "sleeve_change":
        long_, short = str(rng.choice(LONG)), str(rng.choice(SHORT))
        return (long_, short) if clip % 2 == 0 else (short, long_)
    pool = SHORT if (clip + len(family)) % 2 == 0 else LONG
    a = str(rng.choice(pool))
    b = str(rng.choice([g for g in pool if g != a]))
    return a, b


def _tile(img: np.ndarray, label: str, box: tuple[int, int, int, int], scale: float) -> np.ndarray:
    x0, y0, x1, y1 = box
    t = cv2.resize(img[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    bar = np.full((18, t.shape[1], 3), 32, np.uint8)
    cv2.putText(bar, label, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([bar, t])


def _render_clip(maker, garment, lead, inputs) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """A fresh session of ``maker`` on ``garment``: the lead-in frames seen, then the clip drawn;
    (output images, garment masks drawn)."""
    session = maker("eval-render", garment)
    for frame in lead:  # the walk into the pose: seen, not measured
        session.render(frame)
    images, masks = [], []
    for frame in inputs:
        if hasattr(session, "render_detail"):
            detail = session.render_detail(frame)
            images.append(detail.frame.image_bgr)
            masks.append(detail.garment)
        else:
            r = session.render(frame)[0]
            images.append(r.image_bgr)
            masks.append(r.drawn_mask)
    return images, masks


def _flicker(images: list[np.ndarray], clip, found: list[bool] | None = None) -> list[float]:
    out = []
    for i in range(clip.still_from + 1, len(images)):
        sel = clip.truth[i].garment & clip.truth[i - 1].garment
        if sel.any() and (found is None or (found[i] and found[i - 1])):
            out.append(float(np.abs(images[i].astype(np.float32) - images[i - 1])[sel].mean()))
    return out


def _mean(values: list[float]) -> float:
    return round(float(np.mean(values)), 4) if values else float("nan")


def _summary(values: dict[str, list[float]]) -> dict[str, float]:
    out = {k: _mean(values[k]) for k in KEYS}
    out["face_changed_max"] = round(max(values["face_changed"], default=0.0), 4)
    return out


# the camera input of the per-garment clips: one worn garment per pose family, long and short
# sleeves both (what the person wears decides where the old clothing is)
BY_GARMENT_WORN = {
    "front": "shirt-green-solid",
    "side": "tee-red-solid",
    "crossed_arms": "tee-white-solid",
    "raised_arms": "shirt-blue-checks",
    "hand_on_chest": "tee-navy-stripes",
    "sleeve_change": "shirt-red-checks",
}


def by_garment(args, makers: dict) -> dict:
    """Every catalogue garment as the target over one clip per pose family (the inputs shared)."""
    from services.garments.catalogue import spec_by_id, starter_catalogue
    from tools.eval.figure import POSES, make_eval_clip
    from tools.samples import catalogue_garment, photographed_garment, preprocessed_frames

    frames = args.garment_frames
    inputs = []
    for fi, family in enumerate(POSES):
        seed = args.seed * 100 + 70 + fi
        worn = spec_by_id(BY_GARMENT_WORN[family])
        clip = make_eval_clip(family, seed, frames, worn, worn, lead_in=args.lead_in, contrast_with=(worn,))
        fed = preprocessed_frames(clip.lead_in + [f.image for f in clip.inputs])
        inputs.append((family, seed, worn, fed[: len(clip.lead_in)], fed[len(clip.lead_in) :], clip))
    report: dict = {"by_garment": {}, "by_garment_baseline": {}}
    sources = {"photo": photographed_garment, "source": catalogue_garment}
    per_source: dict[str, dict[str, float]] = {"photo": {}, "source": {}}
    from harness import progress

    only = {g for g in args.garment_ids.split(",") if g}
    specs = [spec for spec in starter_catalogue() if not only or spec.garment_id in only]
    bar = progress.steps(len(specs), "eval render by garment", json=args.json, unit="garment")
    for spec in specs:
        gid = spec.garment_id
        bar.update(1)
        truths = [  # the same truth for every source and renderer
            make_eval_clip(family, seed, frames, worn, spec, contrast_with=(worn,), truth_only=True).truth
            for family, seed, worn, _, _, _ in inputs
        ]
        for source, get in sources.items():
            garment = get(gid)
            for name in ("current", "baseline") if source == "photo" else ("current",):
                values: dict[str, list[float]] = {k: [] for k in KEYS}
                found_iou: list[float] = []
                for (_, _, _, lead, fed, clip), truth in zip(inputs, truths, strict=True):
                    images, masks = _render_clip(makers[name], garment, lead, fed)
                    for out, drawn, gt, src, inp in zip(images, masks, truth, clip.inputs, fed, strict=True):
                        for k, v in frame_metrics(out, drawn, gt, src).items():
                            values[k].append(v)
                        if inp.landmarks is not None:
                            found_iou.append(values["garment_iou"][-1])
                    values["temporal_flicker"] += _flicker(
                        images, type(clip)(**{**clip.__dict__, "truth": truth})
                    )
                summary = _summary(values)
                summary["garment_iou_found"] = _mean(found_iou)
                summary["frames_found"] = len(found_iou)
                summary["frames"] = len(values["garment_iou"])
                if source == "photo" and name == "current":
                    report["by_garment"][gid] = summary
                elif source == "photo":
                    report["by_garment_baseline"][gid] = summary
                if name == "current":
                    per_source[source][gid] = summary["garment_iou"]
    bar.close()
    worst = min(report["by_garment"], key=lambda g: report["by_garment"][g]["garment_iou"])
    report["worst_garment"] = {"id": worst, **report["by_garment"][worst]}
    found = min(report["by_garment"], key=lambda g: report["by_garment"][g]["garment_iou_found"])
    report["worst_garment_found"] = {"id": found, **report["by_garment"][found]}
    drops = {g: per_source["source"][g] - per_source["photo"][g] for g in per_source["photo"]}
    worst_drop = max(drops, key=lambda g: drops[g])
    report["photo_vs_source"] = {
        "garment_iou_photo": _mean(list(per_source["photo"].values())),
        "garment_iou_source": _mean(list(per_source["source"].values())),
        "worst_drop": {"id": worst_drop, "drop": round(drops[worst_drop], 4)},
    }
    base = report["by_garment_baseline"]
    report["by_garment_means"] = {
        "current": {k: _mean([v[k] for v in report["by_garment"].values()]) for k in KEYS},
        "baseline": {k: _mean([v[k] for v in base.values()]) for k in KEYS},
    }
    for name, entries in (("current", report["by_garment"]), ("baseline", base)):
        report["by_garment_means"][name]["garment_iou_found"] = _mean(
            [v["garment_iou_found"] for v in entries.values()]
        )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chameleon eval render", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--renderer", choices=("both", "current", "legacy"), default="both")
    parser.add_argument("--clips-per-pose", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (the second half still)")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--lead-in", type=int, default=4, help="unmeasured frames walking into the pose")
    parser.add_argument("--sheet", type=Path, help="write a contact sheet PNG here")
    parser.add_argument(
        "--by-garment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="every catalogue garment as the target (photographed and source): by_garment, worst_garment",
    )
    parser.add_argument("--garment-frames", type=int, default=4, help="frames per clip in by_garment")
    parser.add_argument("--garment-ids", default="", help="comma-separated: by_garment over these only")
    args = parser.parse_args(argv)

    from harness.quality import write_rows
    from services.garments.catalogue import spec_by_id
    from services.generator.warp import WarpRenderer
    from tools.eval.figure import POSES, make_eval_clip
    from tools.eval.legacy_warp import LegacyWarpRenderer
    from tools.samples import catalogue_garment, preprocessed_frames

    cv2.setNumThreads(1)
    t_start = time.perf_counter()

    names = {"both": ("current", "baseline"), "current": ("current",), "legacy": ("baseline",)}[args.renderer]
    makers = {"current": WarpRenderer, "baseline": LegacyWarpRenderer}
    per: dict[str, dict[str, dict[str, list[float]]]] = {
        n: {f: {k: [] for k in KEYS} for f in POSES} for n in names
    }
    truth_flicker: dict[str, list[float]] = {f: [] for f in POSES}
    hits: dict[str, dict[str, list[float]]] = {n: {k: [] for k in KEYS} for n in names}
    detected_by = dict.fromkeys(POSES, 0)
    garments: dict = {}
    rng = np.random.default_rng(args.seed)
    clips = frames = detected = 0
    sheet_rows = []
    from harness import progress

    clips_bar = progress.steps(len(POSES) * args.clips_per_pose, "eval render", json=args.json, unit="clip")
    for fi, family in enumerate(POSES):
        for ci in range(args.clips_per_pose):
            clips_bar.update(1)
            a_id, b_id = _pairs(family, ci, rng)
            seed = args.seed * 100 + fi * 10 + ci
            clip = make_eval_clip(
                family, seed, args.frames, spec_by_id(a_id), spec_by_id(b_id), lead_in=args.lead_in
            )
            fed = preprocessed_frames(clip.lead_in + [f.image for f in clip.inputs])
            lead, inputs = fed[: len(clip.lead_in)], fed[len(clip.lead_in) :]
            clips += 1
            frames += len(inputs)
            found = [f.landmarks is not None for f in inputs]
            detected += sum(found)
            detected_by[family] += sum(found)
            if b_id not in garments:
                garments[b_id] = catalogue_garment(b_id)
            for i in range(clip.still_from + 1, args.frames):
                m = clip.truth[i].garment & clip.truth[i - 1].garment
                if m.any():
                    d = np.abs(clip.truth[i].image.astype(np.float32) - clip.truth[i - 1].image)
                    truth_flicker[family].append(float(d[m].mean()))
            outs = {}
            for name in names:
                images, masks = _render_clip(makers[name], garments[b_id], lead, inputs)
                m = per[name][family]
                for out, drawn, gt, src, hit in zip(
                    images, masks, clip.truth, clip.inputs, found, strict=True
                ):
                    for k, v in frame_metrics(out, drawn, gt, src).items():
                        m[k].append(v)
                        if hit:
                            hits[name][k].append(v)
                m["temporal_flicker"] += _flicker(images, clip)
                hits[name]["temporal_flicker"] += _flicker(images, clip, found)
                outs[name] = images
            if ci == 0 and args.sheet:
                k = args.frames - 1
                ys, xs = np.nonzero(clip.truth[k].person | clip.inputs[k].person)
                box = (
                    max(0, int(xs.min()) - 20), max(0, int(ys.min()) - 10),
                    min(640, int(xs.max()) + 20), min(480, int(ys.max()) + 10),
                )  # fmt: skip
                tiles = [_tile(clip.inputs[k].image, f"{family}: input ({a_id})", box, SHEET_SCALE)]
                if "baseline" in outs:
                    tiles.append(_tile(outs["baseline"][k], "legacy", box, SHEET_SCALE))
                if "current" in outs:
                    tiles.append(_tile(outs["current"][k], "new", box, SHEET_SCALE))
                tiles.append(_tile(clip.truth[k].image, f"ground truth ({b_id})", box, SHEET_SCALE))
                hgt = max(t.shape[0] for t in tiles)
                tiles = [
                    np.pad(t, ((0, hgt - t.shape[0]), (0, 4), (0, 0)), constant_values=255) for t in tiles
                ]
                sheet_rows.append(np.hstack(tiles))
    clips_bar.close()

    report: dict = {"renderers": {}}
    for name in names:
        by_pose = {f: _summary(per[name][f]) for f in POSES}
        overall = _summary({k: [v for f in POSES for v in per[name][f][k]] for k in KEYS})
        detected_only = _summary(hits[name])
        report["renderers"][name] = {"overall": overall, "by_pose": by_pose, "detected_only": detected_only}
    report["clips"] = clips
    report["frames"] = frames
    report["detected_frames"] = detected
    report["detected_by_pose"] = detected_by
    report["ground_truth"] = {
        "temporal_flicker": _mean([v for f in POSES for v in truth_flicker[f]]),
        "by_pose": {f: {"temporal_flicker": _mean(truth_flicker[f])} for f in POSES},
    }
    if args.by_garment and "current" in names:
        report.update(by_garment(args, makers))
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    if args.sheet and sheet_rows:
        write_rows(args.sheet, sheet_rows)
        report["sheet"] = str(args.sheet)
    if not args.json:
        for name in names:
            for f in ("overall", *POSES):
                row = report["renderers"][name]["overall" if f == "overall" else "by_pose"]
                vals = row if f == "overall" else row[f]
                print(f"{name:9s} {f:14s} " + "  ".join(f"{k}={vals[k]}" for k in KEYS))
        for gid, vals in report.get("by_garment", {}).items():
            print(f"garment   {gid:24s} " + "  ".join(f"{k}={vals[k]}" for k in KEYS))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
