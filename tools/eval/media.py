"""`chameleon eval media --json [--sheets DIR]`: the warp renderer on every real photo and clip.

Every item of ``harness.real_media`` in the cache (``chameleon media`` fetches them; missing ones
are named with why): a photo is filmed by a moving virtual camera (640x480, ``--frames`` frames:
pan, zoom, a little rotation and brightness drift), a clip is taken as it is (resized to
640x480). Each goes through the real preprocessing (MediaPipe pose and segmentation), then a
renderer session per garment draws every frame. Besides, the eval finds the face (MediaPipe's
face mesh: its oval, grown a little, and the ears from the pose landmarks) and the hands
(MediaPipe's hand landmarker: each hand's palm and fingers, where a pose wrist leads to it)
on every frame: what no garment may touch. None of that feeds the renderer.

Per item and garment, over the frames where MediaPipe found a body:

- ``face_changed``: the share of face, ear and hand pixels the render changed (0 is the goal;
  ``face_changed_max`` the worst frame);
- ``spill_px``: garment pixels outside the person mask above the hip line, per frame (0 is the
  goal); ``hanging_px``: those below it (a garment hangs there by its own outline, over the gap
  between the legs: by design);
- ``coverage``: the share of the clothing region (preprocess's region for a top: the torso and
  the upper arms, within the person, less face and hands) drawn over as garment or bare arm;
- ``pattern_ratio``: per sleeve, the garment's scale on the sleeve over its scale on the torso
  (``RenderDetail.scales``: a pattern's period on the body follows it; within 0.8-1.25 is the
  goal);
- ``swim_px``: how far the garment slides over the body between frames, in pixels. The camera
  moves, so raw frame differences say little (and a striped garment changes more than the plain
  coat it replaces for the same motion): the input's optical flow (Farneback) carries the last
  output onto this frame, and the residual inside the garment, over the output's gradient there
  (pixels with a clear edge only), is the garment's own slide; ``input_swim_px``, the same
  measured on the input's clothing, is what the flow itself leaves (the floor).

The last line printed is one JSON object: ``{"items": {NAME: {"kind", "source", "frames",
"found", "by_garment": {GARMENT: {KEYS}}}}, "missing": {NAME: why}, "summary": {...}}``. With
``--sheets DIR``: a contact sheet per item, ``DIR/NAME.jpg`` (JPEG, small enough to keep in
git): three frames of the input and of each garment's render, cropped to the person.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

GARMENTS = ("tee-navy-stripes", "shirt-blue-checks", "dress-floral-print")
SIZE = (640, 480)
TILE_H = 220


def _frames(item, path: Path, n: int) -> list[np.ndarray]:
    from services.camera.source import Motion, MotionCamera

    if path.suffix.lower() in (".avi", ".mp4"):
        cap = cv2.VideoCapture(str(path))
        out = []
        while len(out) < n:
            ok, frame = cap.read()
            if not ok:
                break
            out.append(cv2.resize(frame, SIZE, interpolation=cv2.INTER_AREA))
        cap.release()
        return out
    photo = cv2.imread(str(path), cv2.IMREAD_COLOR)
    camera = MotionCamera(photo, SIZE[0], SIZE[1], Motion(period=max(8.0, 2.0 * n)))
    return [camera.frame(i) for i in range(n)]


class KeepOut:
    """Face (mesh oval, grown 8 % of its width), ears and hands (hulls, grown) per frame: what
    the eval holds the renderer to, found by MediaPipe models the renderer does not use."""

    def __init__(self) -> None:
        import mediapipe as mp

        from runtime.media import _native_stderr

        with _native_stderr():
            self.mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=4)
            self.hands = mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=4, model_complexity=1)
        self.oval = sorted({i for pair in mp.solutions.face_mesh.FACEMESH_FACE_OVAL for i in pair})

    def mask(self, bgr: np.ndarray, pose: np.ndarray | None) -> np.ndarray:
        from runtime.media import _native_stderr

        h, w = bgr.shape[:2]
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        out = np.zeros((h, w), np.uint8)
        with _native_stderr():
            faces = self.mesh.process(rgb).multi_face_landmarks or []
            hands = self.hands.process(rgb).multi_hand_landmarks or []
        for face in faces:
            pts = np.array([(face.landmark[i].x * w, face.landmark[i].y * h) for i in self.oval], np.float32)
            hull = cv2.convexHull(pts)
            width = float(np.ptp(pts[:, 0]))
            cv2.fillConvexPoly(out, np.round(hull).astype(np.int32), 255)
            out = cv2.dilate(
                out, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, int(0.08 * width) | 1),) * 2)
            )
            if pose is not None:  # the ears, which the face oval leaves out
                for ear in (7, 8):
                    x, y = pose[ear, 0] * w, pose[ear, 1] * h
                    if (
                        0 <= x < w
                        and 0 <= y < h
                        and np.hypot(x - pts[:, 0].mean(), y - pts[:, 1].mean()) < width
                    ):
                        cv2.circle(out, (round(x), round(y)), max(2, round(0.12 * width)), 255, -1)
        for hand in hands:
            pts = np.array([(p.x * w, p.y * h) for p in hand.landmark], np.float32)
            span = float(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1])))
            if pose is not None and not _at_a_wrist(pts[0], span, pose, w, h):
                continue  # a "hand" no arm leads to: a bow tie, a badge (the landmarker's false find)
            out |= _hand_shape(pts, (h, w))
        return out

    def close(self) -> None:
        self.mesh.close()
        self.hands.close()


FINGERS = ((0, 1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16), (17, 18, 19, 20))
PALM = (0, 1, 5, 9, 13, 17)


def _hand_shape(pts: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The hand's own shape from its 21 landmarks: the palm's polygon and a capsule along each
    finger as wide as a finger (a third of the knuckles' spacing, times 2.2 for the flesh round
    the bones), not the landmarks' hull: a pointing hand's hull holds a triangle of the jacket
    under the finger, which a garment may repaint."""
    out = np.zeros(shape, np.uint8)
    knuckles = float(np.hypot(*(pts[5] - pts[17]))) / 3.0
    width = max(3, round(2.2 * 0.5 * knuckles))
    cv2.fillConvexPoly(out, np.round(cv2.convexHull(pts[list(PALM)])).astype(np.int32), 255)
    for finger in FINGERS:
        line = np.round(pts[list(finger)]).astype(np.int32)
        cv2.polylines(out, [line], False, 255, width, cv2.LINE_8)
        for x, y in line:
            cv2.circle(out, (int(x), int(y)), width // 2, 255, -1)
    return out


def _at_a_wrist(wrist: np.ndarray, span: float, pose: np.ndarray, w: int, h: int) -> bool:
    """Whether a found hand's wrist lies within two hand spans of a pose wrist (BlazePose's
    wrists, 15 and 16, however unsure: a hand at the frame's edge still has its arm's guess)."""
    for i in (15, 16):
        if np.hypot(pose[i, 0] * w - wrist[0], pose[i, 1] * h - wrist[1]) < 2.0 * max(span, 8.0):
            return True
    return False


def _hip_rows(frame, h: int, w: int) -> np.ndarray:
    """Bool HxW: above the hip line (as the frame's landmarks have it, less a tenth of a torso)."""
    lm = frame.landmarks
    hip = float(lm[[23, 24], 1].mean()) * h
    shoulder = float(lm[[11, 12], 1].mean()) * h
    return np.repeat((np.arange(h) < hip - 0.1 * (hip - shoulder))[:, None], w, axis=1)


def _carry(before: np.ndarray, after: np.ndarray):
    """A function moving an image of the frame ``before`` onto ``after`` by the input's optical
    flow (Farneback, grey, from ``after`` back to ``before``: a backward warp)."""
    flow = cv2.calcOpticalFlowFarneback(after, before, None, 0.5, 4, 21, 3, 5, 1.1, 0)
    h, w = after.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx, my = gx + flow[..., 0], gy + flow[..., 1]
    return lambda img: cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _swim(carried: np.ndarray, now: np.ndarray, where: np.ndarray) -> float | None:
    """The median slide in pixels inside ``where``: |now - carried| over |grad now| at pixels
    with a clear edge (a gradient of at least 24 grey levels a pixel), where brightness change
    per pixel moved is well defined; None with under 50 such pixels."""
    gx = cv2.Sobel(now, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(now, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    grad = np.hypot(gx, gy)
    sel = where & (grad >= 24.0)
    if sel.sum() < 50:
        return None
    diff = np.abs(now.astype(np.float32) - carried.astype(np.float32))
    return float(np.median(diff[sel] / grad[sel]))


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if np.isfinite(v)]
    return round(float(np.mean(values)), 4) if values else None


def _crop_box(frames) -> tuple[int, int, int, int] | None:
    ys, xs = [], []
    for f in frames:
        if f.person_mask is not None and f.landmarks is not None:
            y, x = np.nonzero(f.person_mask)
            ys += [y.min(), y.max()]
            xs += [x.min(), x.max()]
    if not ys:
        return None
    pad = 16
    return (
        max(0, min(xs) - pad),
        max(0, min(ys) - pad),
        min(SIZE[0], max(xs) + pad),
        min(SIZE[1], max(ys) + pad),
    )


def _tile(img: np.ndarray, box: tuple[int, int, int, int], label: str) -> np.ndarray:
    x0, y0, x1, y1 = box
    crop = img[y0:y1, x0:x1]
    t = cv2.resize(
        crop, (max(1, round(crop.shape[1] * TILE_H / crop.shape[0])), TILE_H), interpolation=cv2.INTER_AREA
    )
    bar = np.full((16, t.shape[1], 3), 32, np.uint8)
    cv2.putText(
        bar,
        label[: max(4, t.shape[1] // 7)],
        (3, 12),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.38,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    return np.vstack([bar, t])


def evaluate_item(item, path: Path, n: int, garments: dict, keep: KeepOut, sheet: Path | None) -> dict:
    from services.generator.warp import WarpRenderer
    from tools.samples import preprocessed_frames

    frames = _frames(item, path, n)
    fed = preprocessed_frames(frames)
    found = [f.landmarks is not None and f.person_mask is not None for f in fed]
    entry: dict = {"kind": item.kind, "source": item.source, "frames": len(fed), "found": int(sum(found))}
    if not any(found):
        entry["by_garment"] = {}
        return entry
    kept = [keep.mask(f.frame_bgr, f.landmarks) if ok else None for f, ok in zip(fed, found, strict=True)]
    h, w = fed[0].frame_bgr.shape[:2]
    by: dict = {}
    rows: dict[str, list[np.ndarray]] = {"input": [f.frame_bgr for f in fed]}
    for gid, garment in garments.items():
        session = WarpRenderer(f"media-{item.name}", garment)
        m: dict[str, list[float]] = {
            k: [] for k in ("face_changed", "spill_px", "hanging_px", "coverage", "ratio_left", "ratio_right")
        }
        swim, floor_px = [], []
        outs, prev = [], None
        for f, ok, ko in zip(fed, found, kept, strict=True):
            detail = session.render_detail(f, measure=True)
            out = detail.frame.image_bgr
            outs.append(out)
            if not ok:
                prev = None
                continue
            drawn = detail.garment > 0
            changed = np.any(out != f.frame_bgr, axis=2)
            inner = cv2.erode(ko, np.ones((3, 3), np.uint8)) > 0
            m["face_changed"].append(float((changed & inner).sum() / inner.sum()) if inner.any() else 0.0)
            outside = drawn & (f.person_mask == 0)
            above = _hip_rows(f, h, w)
            m["spill_px"].append(float((outside & above).sum()))
            m["hanging_px"].append(float((outside & ~above).sum()))
            if f.garment_mask is not None:
                region = (f.garment_mask > 0) & (f.person_mask > 0) & ~(ko > 0)
                if region.any():
                    repainted = drawn | (detail.skin > 0) if detail.skin is not None else drawn
                    m["coverage"].append(float((repainted & region).sum() / region.sum()))
            torso = detail.scales.get("torso")
            for side in ("left", "right"):
                sleeve = detail.scales.get(f"sleeve_{side}")
                if torso and sleeve and np.isfinite(torso) and np.isfinite(sleeve):
                    m[f"ratio_{side}"].append(sleeve / torso)
            grey_in = cv2.cvtColor(f.frame_bgr, cv2.COLOR_BGR2GRAY)
            grey_out = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)
            if prev is not None:
                old_in, old_out, old_drawn = prev
                carried = _carry(old_in, grey_in)
                sel = drawn & (carried(old_drawn.astype(np.uint8) * 255) > 127)
                slide = _swim(carried(old_out), grey_out, sel)
                if slide is not None:
                    swim.append(slide)
                    cloth = (f.garment_mask > 0) & (f.person_mask > 0) if f.garment_mask is not None else sel
                    floor = _swim(carried(old_in), grey_in, cloth)
                    if floor is not None:
                        floor_px.append(floor)
            prev = (grey_in, grey_out, drawn)
        rows[gid] = outs
        by[gid] = {
            "face_changed": _mean(m["face_changed"]),
            "face_changed_max": round(max(m["face_changed"], default=0.0), 4),
            "spill_px": _mean(m["spill_px"]),
            "hanging_px": _mean(m["hanging_px"]),
            "coverage": _mean(m["coverage"]),
            "pattern_ratio": {"left": _mean(m["ratio_left"]), "right": _mean(m["ratio_right"])},
            "swim_px": _mean(swim),
            "input_swim_px": _mean(floor_px),
        }
    entry["by_garment"] = by
    if sheet is not None:
        box = _crop_box([f for f, ok in zip(fed, found, strict=True) if ok])
        if box is not None:
            picks = [i for i, ok in enumerate(found) if ok]
            picks = [picks[0], picks[len(picks) // 2], picks[-1]]
            tiles = []
            for name, imgs in rows.items():
                row = [_tile(imgs[i], box, f"{item.name} #{i}" if name == "input" else name) for i in picks]
                tiles.append(
                    np.hstack([np.pad(t, ((0, 0), (0, 3), (0, 0)), constant_values=255) for t in row])
                )
            width = max(t.shape[1] for t in tiles)
            tiles = [np.pad(t, ((0, 3), (0, width - t.shape[1]), (0, 0)), constant_values=255) for t in tiles]
            # side by side: input | garment 1 | garment 2 ... (each three frames tall)
            sheet.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(sheet), np.vstack(tiles), [cv2.IMWRITE_JPEG_QUALITY, 82])
            entry["sheet"] = str(sheet)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chameleon eval media", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--frames", type=int, default=12, help="frames per photo (camera motion) or clip")
    parser.add_argument("--sheets", type=Path, help="write a contact sheet per item into this folder")
    parser.add_argument("--garments", default=",".join(GARMENTS), help="comma-separated catalogue ids")
    parser.add_argument("--only", default="", help="comma-separated item names (default: all)")
    args = parser.parse_args(argv)

    from harness import progress
    from harness.real_media import ITEMS, MediaUnavailable, path_of
    from tools.samples import catalogue_garment

    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    garments = {g: catalogue_garment(g) for g in args.garments.split(",") if g}
    only = {n for n in args.only.split(",") if n}
    report: dict = {"items": {}, "missing": {}, "garments": list(garments)}
    keep = KeepOut()
    items = [item for item in ITEMS if not only or item.name in only]
    bar = progress.steps(len(items), "eval media", json=args.json, unit="item")
    try:
        for item in items:
            bar.update(1)
            try:
                path = path_of(item.name)
            except MediaUnavailable as exc:
                report["missing"][item.name] = str(exc)
                continue
            sheet = args.sheets / f"{Path(item.name).stem}.jpg" if args.sheets else None
            report["items"][item.name] = evaluate_item(item, path, args.frames, garments, keep, sheet)
    finally:
        bar.close()
        keep.close()
    dressed = [g for e in report["items"].values() for g in e["by_garment"].values()]
    ratios = [r for g in dressed for r in g["pattern_ratio"].values() if r is not None]
    report["summary"] = {
        "items": len(report["items"]),
        "items_with_a_body": sum(1 for e in report["items"].values() if e["found"]),
        "face_changed_max": max((g["face_changed_max"] for g in dressed), default=None),
        "spill_px_max": max((g["spill_px"] for g in dressed if g["spill_px"] is not None), default=None),
        "coverage_min": min((g["coverage"] for g in dressed if g["coverage"] is not None), default=None),
        "pattern_ratio_range": [round(min(ratios), 3), round(max(ratios), 3)] if ratios else None,
        "swim_px_max": max((g["swim_px"] for g in dressed if g["swim_px"] is not None), default=None),
    }
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
