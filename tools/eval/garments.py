"""``chameleon eval garments``: every catalogue garment through ``garments add`` as a shop would
send it, judged against the truth, garment by garment.

For each garment: its generated source image (the clean flat-lay: the reference), its
photographed flat-lay and its ghost-mannequin shot (``tools.product_photos``), each encoded by the
real encoder. Each is scored on the canonical canvas against the truth carried through the same
transforms: mask IoU, the worst keypoint's distance over the garment's height (``keypoint_error``:
from where the encoder put that keypoint on the clean source image, carried into the photo: what
photographing costs; ``keypoint_error_truth``: from the generator's own polygon corners, which a
narrow underarm gap hides in any image), category and sleeve length as inferred (the
catalogue's are the truth). ``--from-person`` adds the procedural
figure wearing each garment in a few poses, cut out by ``garments add --from-person``'s path.

The last line printed is one JSON object: per garment and kind, plus the worst of each measure.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone

import cv2
import numpy as np

from services.garments.catalogue import GarmentSpec, render, spec_by_id, starter_catalogue
from services.garments.encoder import EncodedGarment, encode_garment, to_canvas
from shared.garment_client import GarmentError
from tools.bench.garments import _machine as machine
from tools.product_photos import WORN_POSES, ProductPhoto, flatlay_photo, ghost_photo, worn_photo

GOAL_IOU = 0.95  # photographed flat-lay vs its source mask
GOAL_KEYPOINT = 0.04  # worst keypoint error over the garment's height


def source_keypoints_in_photo(source: EncodedGarment, homography: list) -> dict[str, tuple[float, float]]:
    """The encoder's keypoints on the clean source image, carried into the photo's pixels."""
    to_source = np.linalg.inv(np.vstack([source.fit.affine(), [0, 0, 1]]))
    h = np.array(homography, np.float64) @ to_source
    out = {}
    for name, (x, y, _) in source.keypoints.items():
        p = h @ np.array([x, y, 1.0])
        out[name] = (float(p[0] / p[2]), float(p[1] / p[2]))
    return out


def keypoint_errors(enc: EncodedGarment, points: dict, height: int) -> dict[str, float]:
    """Each keypoint's distance on the canvas from ``points`` (photo pixels), over ``height``."""
    errors = {}
    for name, (x, y) in points.items():
        tx, ty = enc.fit.to_canvas(x, y)
        ex, ey, _ = enc.keypoints[name]
        errors[name] = round(float(np.hypot(tx - ex, ty - ey)) / max(height, 1), 4)
    return errors


def _worst(errors: dict[str, float]) -> tuple[str, float]:
    worst = max(errors, key=errors.get)  # type: ignore[arg-type]
    return worst, errors[worst]


def score(
    enc: EncodedGarment,
    truth_mask: np.ndarray,
    truth_kp: dict,
    spec: GarmentSpec,
    reference_kp: dict | None = None,
) -> dict:
    """How well ``enc`` recovered the garment whose true mask and keypoints (photo pixels) are
    given; ``reference_kp`` (photo pixels) is what the keypoint error is measured from (default:
    the truth)."""
    canvas = enc.texture.shape[0]
    zeros = np.zeros((*truth_mask.shape, 3), np.uint8)
    truth = to_canvas(zeros, truth_mask.astype(np.uint8) * 255, enc.fit, canvas)[..., 3] > 127
    est = enc.mask > 127
    union = int((truth | est).sum())
    iou = float((truth & est).sum()) / union if union else 0.0
    height = cv2.boundingRect(truth.astype(np.uint8))[3]
    errors = keypoint_errors(enc, reference_kp or truth_kp, height)
    worst, error = _worst(errors)
    worst_truth, error_truth = _worst(keypoint_errors(enc, truth_kp, height))
    inferred = enc.inferred
    return {
        "iou": round(iou, 4),
        "keypoint_error": error,
        "worst_keypoint": worst,
        "keypoint_errors": errors,
        "keypoint_error_truth": error_truth,
        "worst_keypoint_truth": worst_truth,
        "category": inferred.category if inferred else "",
        "category_ok": bool(inferred and inferred.category == spec.category),
        "category_confidence": inferred.category_confidence if inferred else 0.0,
        "sleeve_length": inferred.sleeve_length if inferred else "",
        "sleeve_ok": bool(inferred and inferred.sleeve_length == spec.sleeve_length),
        "rotation_deg": enc.rotation_deg,
    }


def photographed(spec: GarmentSpec, kind: str, seed: int = 0) -> tuple[ProductPhoto, EncodedGarment]:
    """A photo of ``spec`` (``flatlay`` or ``ghost``) and its encoding by the real encoder."""
    photo = flatlay_photo(spec, seed) if kind == "flatlay" else ghost_photo(spec, seed)
    return photo, encode_garment(photo.data)


def source_encoding(spec: GarmentSpec) -> EncodedGarment:
    """The clean generated flat-lay (PNG) through the encoder: the reference."""
    return encode_garment(render(spec).png())


def photo_score(spec: GarmentSpec, kind: str, seed: int, source: EncodedGarment) -> dict:
    """A flat-lay's keypoints are measured from the source encoding's; a ghost shot's outline is
    not the flat-lay's (its neckline is the back's), so from its own truth."""
    photo, enc = photographed(spec, kind, seed)
    reference = source_keypoints_in_photo(source, photo.meta["homography"]) if kind == "flatlay" else None
    return score(enc, photo.mask, photo.keypoints, spec, reference) | {
        "background": photo.meta.get("background", "")
    }


def source_score(spec: GarmentSpec, source: EncodedGarment) -> dict:
    r = render(spec)
    return score(source, r.alpha > 127, r.keypoints, spec)


def worn_score(spec: GarmentSpec, pose: str, seed: int = 0) -> dict:
    """The figure wearing ``spec`` in ``pose``, cut out from the photo. Measured: whether it was
    accepted, the garment pixels it took that are the figure's garment (precision) and how much
    of the figure's visible garment it took (recall), in the photo; the sleeve length and the
    category it inferred; and the share of the flat garment's texture that is skin-coloured."""
    from services.garments.person import garment_from_person  # MediaPipe: only when asked

    photo = worn_photo(spec, seed, pose)
    img = photo.image
    try:
        cut = garment_from_person(img)
        enc = encode_garment(photo.data, source="person")
    except GarmentError as exc:
        return {"ok": False, "error_code": exc.code, "error": exc.message}
    taken = cut.photo_mask
    truth = photo.mask
    precision = float((taken & truth).sum()) / max(int(taken.sum()), 1)
    recall = float((taken & truth).sum()) / max(int(truth.sum()), 1)
    tex = enc.texture
    inside = tex[..., 3] > 127
    skin = np.array(photo.meta["skin_bgr"], np.float32)
    near_skin = np.linalg.norm(tex[..., :3].astype(np.float32) - skin, axis=2) < 30
    garment_colour = np.array(spec.colours[0], np.float32)
    skin_like_garment = float(np.linalg.norm(garment_colour - skin)) < 60
    inferred = enc.inferred
    return {
        "ok": True,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "sleeve_length": inferred.sleeve_length if inferred else "",
        "sleeve_ok": bool(inferred and inferred.sleeve_length == _worn_sleeve(spec)),
        "category": inferred.category if inferred else "",
        "skin_share": round(float((near_skin & inside).sum()) / max(int(inside.sum()), 1), 4),
        "skin_like_garment": skin_like_garment,
    }


def _worn_sleeve(spec: GarmentSpec) -> str:
    """What the figure shows: it has no sleeveless garments (a tank's "sleeve" is drawn short)."""
    return "short" if spec.sleeve_length == "none" else spec.sleeve_length


def evaluate(specs: list[GarmentSpec], seed: int, kinds: tuple[str, ...], poses: tuple[str, ...]) -> dict:
    per: dict[str, dict] = {}
    for spec in specs:
        row: dict = {"category": spec.category, "sleeve_length": spec.sleeve_length}
        source = source_encoding(spec)
        row["source"] = source_score(spec, source)
        for kind in kinds:
            try:
                row[kind] = photo_score(spec, kind, seed, source)
            except GarmentError as exc:
                row[kind] = {"refused": exc.code, "error": exc.message}
        for pose in poses:
            row[f"worn_{pose}"] = worn_score(spec, pose, seed)
        per[spec.garment_id] = row
    summary: dict = {}
    for kind in ("source", *kinds):
        scored = {g: r[kind] for g, r in per.items() if "iou" in r[kind]}
        refused = sorted(g for g, r in per.items() if "refused" in r[kind])
        if not scored:
            continue
        worst_iou = min(scored, key=lambda g: scored[g]["iou"])
        worst_kp = max(scored, key=lambda g: scored[g]["keypoint_error"])
        summary[kind] = {
            "garments": len(scored),
            "refused": refused,
            "iou_min": scored[worst_iou]["iou"],
            "iou_min_garment": worst_iou,
            "iou_mean": round(float(np.mean([s["iou"] for s in scored.values()])), 4),
            "keypoint_error_max": scored[worst_kp]["keypoint_error"],
            "keypoint_error_max_garment": worst_kp,
            "keypoint_error_truth_max": max(s["keypoint_error_truth"] for s in scored.values()),
            "category_right": sum(s["category_ok"] for s in scored.values()),
            "sleeve_right": sum(s["sleeve_ok"] for s in scored.values()),
        }
    if poses:
        summary["worn"] = _worn_summary([r[f"worn_{p}"] for r in per.values() for p in poses])
        summary["worn_by_pose"] = {p: _worn_summary([r[f"worn_{p}"] for r in per.values()]) for p in poses}
    return {"summary": summary, "garments": per}


def _worn_summary(worn: list[dict]) -> dict:
    ok = [w for w in worn if w["ok"]]
    return {
        "photos": len(worn),
        "accepted": len(ok),
        "refused": sorted({w["error_code"] for w in worn if not w["ok"]}),
        "precision_mean": round(float(np.mean([w["precision"] for w in ok])), 4) if ok else None,
        "precision_min": round(min(w["precision"] for w in ok), 4) if ok else None,
        "recall_mean": round(float(np.mean([w["recall"] for w in ok])), 4) if ok else None,
        "sleeve_right": sum(w["sleeve_ok"] for w in ok),
        "skin_share_max": max((w["skin_share"] for w in ok if not w["skin_like_garment"]), default=None),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chameleon eval garments", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.add_argument("--seed", type=int, default=0, help="which photo of each garment")
    p.add_argument("--garment", action="append", default=[], help="only these ids (repeatable)")
    p.add_argument("--no-ghost", action="store_true")
    p.add_argument(
        "--from-person", action="store_true", help=f"also the worn photos ({', '.join(WORN_POSES)})"
    )
    args = p.parse_args(argv)
    specs = [spec_by_id(g) for g in args.garment] if args.garment else starter_catalogue()
    kinds = ("flatlay",) if args.no_ghost else ("flatlay", "ghost")
    poses = WORN_POSES if args.from_person else ()
    t0 = time.perf_counter()
    result = evaluate(specs, args.seed, kinds, poses)
    result["meta"] = {
        "seed": args.seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "goals": {"flatlay_iou_min": GOAL_IOU, "keypoint_error_max": GOAL_KEYPOINT},
    }
    if not args.json:
        for kind, s in result["summary"].items():
            print(kind, json.dumps(s))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
