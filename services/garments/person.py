"""A garment cut out of a photo of someone wearing it, laid flat. Pure: no bus, no asyncio.

``garments add --from-person``: a shop often has only the model shot. The person is found with
the pipeline's own MediaPipe models (the pose landmarker with its segmentation, as the preprocess
service runs them, here in single-image mode), then:

1. refuse what cannot be used: nobody (``no_person``), a second person (``several_garments``),
   shoulders or hips outside the photo (``garment_cut_off``), a person too small to give a garment
   (``garment_too_small``), nothing but skin on the torso (``no_garment``);
2. colour models: skin from the face (between the eyes and the mouth), the garment from the chest
   (skin-coloured pixels left out, so a hand on the chest does not count; k-means clusters, so a
   pattern counts as its colours);
3. the garment mask: person pixels (MediaPipe's mask, grown a little) that match the garment's
   colours better than the skin's, connected to the chest, below the neck; a garment whose
   colour is the skin's (a beige top on a light-skinned model) keeps the torso by geometry and
   its sleeves by the garment's colours along the arm;
4. laid flat, in the photo's frame turned so the shoulders are level: the torso as it is, with
   what the arms hid filled (mirrored from the other side where that side shows, else inpainted);
   each sleeve (the garment beyond the torso's edge that starts at the shoulder) swung about the
   shoulder to a flat-lay's angle for its length, as a shop's flat-lay would show it.

The result is a BGRA cut-out that the encoder takes like any other: keypoints, category and
sleeve length come from its outline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from shared.garment_client import GarmentError

# MediaPipe pose landmark indices
NOSE, L_EYE, R_EYE, MOUTH_L, MOUTH_R = 0, 2, 5, 9, 10
L_SH, R_SH, L_HIP, R_HIP = 11, 12, 23, 24

POSE_MAX_SIDE = 640  # as the preprocess service: MediaPipe's models see 256 px anyway
MIN_VISIBILITY = 0.5
MIN_SHOULDER_PX = 48  # shoulder joints closer than this (work image): too small
SECOND_PERSON = 0.3  # another person mask at least this share of the model's: several people
SHORT_ANGLE, LONG_ANGLE = 38.0, 69.0  # a flat-lay's sleeve angle below horizontal (the catalogue's)
# a worn sleeve, measured from the shoulder's pivot along the arm over the shoulder joints'
# distance: a short one ends on the upper arm (0.4-0.7), a long one at the wrist (1.5-2)
WORN_LONG_RATIO = 1.0
WORN_NONE_RATIO = 0.15
ARM_RADIUS = 0.14  # half an arm's width over the shoulder width


@dataclass
class PersonCut:
    """The flat garment and how it relates to the photo."""

    bgra: np.ndarray  # the garment laid flat (alpha = garment)
    photo_mask: np.ndarray  # bool, photo pixels taken as garment (what shows, before filling)
    photo_bbox: tuple[int, int, int, int]  # the garment's box in the photo (for a thumbnail)
    photo_to_flat: np.ndarray  # 2x3: photo pixels to the flat image's (exact for the torso)
    report: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Pose:
    points: dict[int, np.ndarray]  # landmark -> (x, y) work-image pixels
    visibility: dict[int, float]
    person: np.ndarray  # float32 person probability, work-image size


def _run_mediapipe(bgr: np.ndarray) -> tuple[_Pose | None, np.ndarray | None]:
    """Pose (single image) and the full-frame selfie segmentation; landmarks and masks come back
    in ``bgr``'s pixels. The pose detector finds a person at some framings and not others (its
    anchors favour a size), so a miss is retried on the photo with a border around it and on a
    half-size copy before the photo counts as having nobody in it."""
    from mediapipe.python.solutions import pose as mp_pose  # heavy: import when first needed
    from mediapipe.python.solutions import selfie_segmentation

    h, w = bgr.shape[:2]
    f = min(1.0, POSE_MAX_SIDE / max(h, w))
    small = cv2.resize(bgr, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA) if f < 1 else bgr
    sh, sw_ = small.shape[:2]
    with selfie_segmentation.SelfieSegmentation(model_selection=1) as seg:
        scene = np.asarray(seg.process(cv2.cvtColor(small, cv2.COLOR_BGR2RGB)).segmentation_mask, np.float32)
    scene = cv2.resize(scene, (w, h), interpolation=cv2.INTER_LINEAR)
    py, px = sh // 4, sw_ // 4
    framings = [  # (image, its pixels -> small's pixels: scale, offset)
        (small, 1.0, (0, 0)),
        (cv2.copyMakeBorder(small, py, py, px, px, cv2.BORDER_REPLICATE), 1.0, (px, py)),
        (cv2.resize(small, (sw_ // 2, sh // 2), interpolation=cv2.INTER_AREA), 0.5, (0, 0)),
    ]
    with mp_pose.Pose(
        static_image_mode=True, model_complexity=1, enable_segmentation=True, min_detection_confidence=0.3
    ) as pose:
        for framing in framings:
            result = pose.process(cv2.cvtColor(framing[0], cv2.COLOR_BGR2RGB))
            if result.pose_landmarks is not None:
                break
        else:
            return None, scene
    image, scale, (ox, oy) = framing
    ih, iw = image.shape[:2]
    to_full = 1.0 / (scale * f)
    lm = result.pose_landmarks.landmark
    points = {i: np.array([(lm[i].x * iw - ox) * to_full, (lm[i].y * ih - oy) * to_full]) for i in range(33)}
    visibility = {i: float(lm[i].visibility) for i in range(33)}
    if result.segmentation_mask is not None:
        mask = np.asarray(result.segmentation_mask, np.float32)[oy : ih - oy, ox : iw - ox]
        person = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        person = scene.copy()
    return _Pose(points, visibility, person), scene


def _check_person(pose: _Pose | None, scene: np.ndarray | None, shape: tuple[int, int]) -> None:
    h, w = shape
    if pose is None:
        raise GarmentError(
            "no_person", "no person found in the photo (is it a flat-lay? then leave out --from-person)"
        )
    for idx, part in ((L_SH, "shoulder"), (R_SH, "shoulder"), (L_HIP, "hip"), (R_HIP, "hip")):
        x, y = pose.points[idx]
        if not (0 <= x < w and 0 <= y < h) or pose.visibility[idx] < MIN_VISIBILITY:
            raise GarmentError(
                "garment_cut_off", f"the person's {part}s are not both in the photo: the garment is cut off"
            )
    sw = float(np.hypot(*(pose.points[L_SH] - pose.points[R_SH])))
    if sw < MIN_SHOULDER_PX:
        raise GarmentError("garment_too_small", f"the person is too small: shoulders {sw:.0f} px apart")
    if scene is not None:
        n, labels, stats, _ = cv2.connectedComponentsWithStats((scene > 0.5).astype(np.uint8), connectivity=8)
        if n > 2:
            centre = (
                (pose.points[L_SH] + pose.points[R_SH] + pose.points[L_HIP] + pose.points[R_HIP]) / 4
            ).round()
            cx, cy = int(np.clip(centre[0], 0, w - 1)), int(np.clip(centre[1], 0, h - 1))
            model = labels[cy, cx]
            areas = stats[1:, cv2.CC_STAT_AREA]
            own = float(stats[model, cv2.CC_STAT_AREA]) if model > 0 else float(areas.max())
            others = [a for i, a in enumerate(areas, start=1) if i != model]
            if others and max(others) >= SECOND_PERSON * own:
                raise GarmentError("several_garments", "several people in the photo: one person, one garment")


# -- colour models --------------------------------------------------------------------------------
def _lab(bgr: np.ndarray) -> np.ndarray:
    """Colour features a shadow hardly moves: log brightness (weighted low: a fold or the side
    away from the light halves it) and chromaticity (colour with brightness divided out), scaled
    so a just-noticeable change is a few units."""
    f = cv2.GaussianBlur(bgr, (3, 3), 0).astype(np.float32)
    s = f.sum(axis=-1, keepdims=True) + 6.0
    return np.concatenate([14.0 * np.log(s), 300.0 * f[..., :2] / s], axis=-1)


def _colour_distance(lab: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Distance (in ``_lab`` units) to the nearest centre."""
    d = [np.sqrt(((lab - c) ** 2).sum(axis=-1)) for c in centres]
    return np.min(d, axis=0)


def _kmeans(samples: np.ndarray, k: int) -> np.ndarray:
    """Cluster centres (Lab) covering at least 6% of the samples each; deterministic."""
    if len(samples) < k * 4:
        return np.median(samples, axis=0)[None]
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    cv2.setRNGSeed(7)
    _, labels, centres = cv2.kmeans(samples.astype(np.float32), k, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    counts = np.bincount(labels.ravel(), minlength=k) / len(samples)
    return centres[counts >= 0.06]


def _polygon_mask(shape: tuple[int, int], pts: list[np.ndarray]) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(np.array(pts)).astype(np.int32)], 1)
    return m > 0


# -- the cut ----------------------------------------------------------------------------------------
def garment_from_person(bgr: np.ndarray) -> PersonCut:
    """The garment worn by the one person in ``bgr`` (BGR uint8), laid flat (see the module)."""
    h, w = bgr.shape[:2]
    pose, scene = _run_mediapipe(bgr)
    _check_person(pose, scene, (h, w))
    assert pose is not None
    p = pose.points
    sw = float(np.hypot(*(p[L_SH] - p[R_SH])))
    lab = _lab(bgr)

    # skin from the face, the garment from the chest
    face = _polygon_mask((h, w), [p[L_EYE], p[R_EYE], p[MOUTH_R], p[MOUTH_L]])
    face &= pose.person > 0.5
    skin_samples = lab[face]
    if len(skin_samples) < 20:  # a face too small to sample: a disc around the nose
        disc = np.zeros((h, w), np.uint8)
        cv2.circle(disc, tuple(int(v) for v in p[NOSE].round()), max(2, round(0.08 * sw)), 1, -1)
        skin_samples = lab[disc > 0]
    skin = np.median(skin_samples, axis=0)[None]
    sh_mid = (p[L_SH] + p[R_SH]) / 2
    # image sides (smaller x is left), whichever way the person faces
    if p[L_SH][0] <= p[R_SH][0]:
        ls, rs, lh, rh = p[L_SH], p[R_SH], p[L_HIP], p[R_HIP]
    else:
        ls, rs, lh, rh = p[R_SH], p[L_SH], p[R_HIP], p[L_HIP]

    def chest_point(u: float, v: float) -> np.ndarray:
        top, bottom = ls + (rs - ls) * u, lh + (rh - lh) * u
        return top + (bottom - top) * v

    chest = _polygon_mask((h, w), [chest_point(0.25, 0.15), chest_point(0.75, 0.15),
                                   chest_point(0.75, 0.75), chest_point(0.25, 0.75)])  # fmt: skip
    chest_lab = lab[chest]
    to_skin = _colour_distance(chest_lab, skin)
    skin_like = to_skin < 12
    if skin_like.mean() > 0.85 and _skin_everywhere(lab, pose, skin):
        raise GarmentError("no_garment", "no garment found on the person's torso")
    # the garment is the skin's colour (a beige top on a light-skinned model) only when most of
    # the chest is as close to the face as the face is to itself: then colour cannot tell the
    # arms from the sleeves, and the torso is kept by its shape
    garment_is_skin = float(np.median(to_skin)) < 7.0
    samples = chest_lab if garment_is_skin else chest_lab[~skin_like]
    centres = _kmeans(samples[:: max(1, len(samples) // 4000)], 4)

    # the garment mask
    # MediaPipe's mask is coarse at the edges (a puffed sleeve): grown by a tenth of the shoulders;
    # the colour test and the link to the chest keep the background out
    grow = max(3, round(0.1 * sw)) | 1
    near_person = cv2.dilate((pose.person > 0.35).astype(np.uint8), np.ones((grow, grow), np.uint8)) > 0
    dg = _colour_distance(lab, centres)
    ds = _colour_distance(lab, skin)
    garment = near_person & (dg < 20)
    if not garment_is_skin:
        garment &= dg < ds
    neck_y = sh_mid[1] - 0.12 * sw
    garment[: max(0, int(neck_y))] = False
    head = np.zeros((h, w), np.uint8)
    cv2.circle(head, tuple(int(v) for v in p[NOSE].round()), round(0.42 * sw), 1, -1)
    garment &= head == 0
    garment = cv2.morphologyEx(garment.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    _, labels = cv2.connectedComponents(garment.astype(np.uint8), connectivity=8)
    seeds = np.unique(labels[chest & garment])
    seeds = seeds[seeds > 0]
    if len(seeds) == 0:
        raise GarmentError("no_garment", "no garment found on the person's torso")
    garment = np.isin(labels, seeds)
    if garment.sum() < 0.05 * sw * sw:
        raise GarmentError("garment_too_small", "too little of the garment shows")

    # level the shoulders: everything below happens in that frame
    angle = math.degrees(math.atan2(rs[1] - ls[1], rs[0] - ls[0]))
    rot = cv2.getRotationMatrix2D((float(sh_mid[0]), float(sh_mid[1])), angle, 1.0)
    img_r = cv2.warpAffine(bgr, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    g_r = cv2.warpAffine(garment.astype(np.uint8), rot, (w, h), flags=cv2.INTER_NEAREST) > 0

    def levelled(pt: np.ndarray) -> np.ndarray:
        return rot @ np.array([pt[0], pt[1], 1.0])

    q = {k: levelled(v) for k, v in p.items() if k in (L_SH, R_SH, L_HIP, R_HIP)}
    sl, sr = sorted((q[L_SH], q[R_SH]), key=lambda v: v[0])
    hips = sorted((q[L_HIP], q[R_HIP]), key=lambda v: v[0])
    top_y = float(sl[1])
    arm_r = ARM_RADIUS * sw  # the arm's half width: the sleeve's root sits this far below the shoulder

    # torso: between the shoulders down to the armpits; below them, the run of garment across
    # each row that holds the body's middle (a sleeve hanging beside it is another run), widened to
    # the hips' width (a hand on the hip cuts the run short)
    cx = float((sl[0] + sr[0]) / 2)
    armpit_y = int(top_y + 0.35 * sw)
    x0 = min(sl[0], hips[0][0] - 0.08 * sw)
    x1 = max(sr[0], hips[1][0] + 0.08 * sw)
    zone = np.zeros((h, w), bool)
    zone[max(0, int(top_y - 0.3 * sw)) : armpit_y, max(0, int(sl[0])) : int(sr[0]) + 1] = True
    hip_y = float((hips[0][1] + hips[1][1]) / 2)
    hip_w = float(hips[1][0] - hips[0][0])  # the garment's own width at the hips, once there
    for y in range(armpit_y, h):
        xs = np.flatnonzero(g_r[y, max(0, int(x0 - arm_r)) : int(x1 + arm_r) + 1]) + max(0, int(x0 - arm_r))
        if len(xs) == 0:
            continue
        lo, hi = _run_around(xs, cx, bridge=2)
        if abs(y - hip_y) < 1:
            hip_w = max(hip_w, float(hi - lo))
        if y > hip_y + 0.1 * sw and hi - lo < 0.75 * hip_w:
            break  # below the hips only a skirt spans the legs; a strip between them is not garment
        zone[y, max(lo, int(x0 - arm_r)) : hi + 1] = True
    torso = g_r & zone
    rows = np.flatnonzero(torso.any(axis=1))
    if len(rows) == 0:
        raise GarmentError("no_garment", "no garment found on the person's torso")
    hem_y = int(rows.max())
    filled = torso.copy()
    for y in range(armpit_y, hem_y + 1):  # below the armpits the body is row-convex: an arm or a
        xs = np.flatnonzero(torso[y])  # hand across it hides garment, it does not cut it
        if len(xs):
            filled[y, xs[0] : xs[-1] + 1] = True
    filled = _fill_holes(filled)
    x0, x1 = float(sl[0]), float(sr[0])
    hidden = filled & ~torso
    img_r = _fill_hidden(img_r, filled, hidden, float((x0 + x1) / 2))

    # sleeves: the garment beyond the torso on each side, swung about its shoulder to a flat-lay's
    # angle (the angle of a long or a short sleeve, by its length)
    sleeves = [
        _sleeve(img_r, g_r & ~zone, side_x, top_y, hem_y, arm_r, outward)
        for side_x, outward in ((x0, -1.0), (x1, 1.0))
    ]
    ratio = max((sl_.length for sl_ in sleeves), default=0.0) / sw
    long = ratio > WORN_LONG_RATIO
    if ratio < WORN_NONE_RATIO:
        sleeve, sleeve_conf = "none", 0.5 + 0.49 * math.tanh((WORN_NONE_RATIO - ratio) / 0.05)
    else:
        sleeve = "long" if long else "short"
        sleeve_conf = 0.5 + 0.49 * math.tanh(abs(math.log(ratio / WORN_LONG_RATIO)) / 0.3)
    flat, alpha, (dx, dy) = _lay_out(img_r, filled, sleeves, long)
    to_flat = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]]) @ np.vstack([rot, [0, 0, 1]])
    # what the cut took, back in the photo's pixels: the torso as it showed, and the sleeves
    shown = torso.copy()
    for sl_ in sleeves:
        shown |= sl_.pixels
    back = cv2.invertAffineTransform(rot)
    taken = cv2.warpAffine(shown.astype(np.uint8), back, (w, h), flags=cv2.INTER_NEAREST) > 0
    ys, xs = np.nonzero(taken)
    bbox = cv2.boundingRect(np.column_stack([xs, ys]).astype(np.int32))
    report = {
        "hidden_filled": round(float(hidden.sum()) / max(float(filled.sum()), 1.0), 4),
        "sleeve_px": [round(sl_.length, 1) for sl_ in sleeves],
        "sleeve_length": sleeve,
        "sleeve_confidence": round(sleeve_conf, 3),
        "shoulder_px": round(sw, 1),
        "garment_is_skin_coloured": bool(garment_is_skin),
        "rotation_deg": round(angle, 2),
    }
    return PersonCut(np.dstack([flat, alpha]), taken, bbox, to_flat[:2], report)


def _skin_everywhere(lab: np.ndarray, pose: _Pose, skin: np.ndarray) -> bool:
    """Whether the whole torso between shoulders and hips (not only the chest) is skin-coloured:
    a bare torso has no garment to take."""
    p = pose.points
    quad = _polygon_mask(lab.shape[:2], [p[L_SH], p[R_SH], p[R_HIP], p[L_HIP]])
    return bool((_colour_distance(lab[quad], skin) < 10).mean() > 0.9)


def _run_around(xs: np.ndarray, x: float, bridge: int) -> tuple[int, int]:
    """Ends of the run (gaps up to ``bridge`` px joined) of sorted columns ``xs`` nearest ``x``."""
    i = int(np.argmin(np.abs(xs - x)))
    gaps = np.diff(xs) > bridge + 1
    lo, hi = i, i
    while lo > 0 and not gaps[lo - 1]:
        lo -= 1
    while hi < len(xs) - 1 and not gaps[hi]:
        hi += 1
    return int(xs[lo]), int(xs[hi])


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask.astype(np.uint8), 1)
    outside = padded.copy()
    cv2.floodFill(outside, None, (0, 0), 2)
    return outside[1:-1, 1:-1] != 2


def _fill_hidden(img: np.ndarray, garment: np.ndarray, hidden: np.ndarray, axis_x: float) -> np.ndarray:
    """Garment pixels an arm hid: the mirror image across the body's axis where that shows
    garment (a pattern stays a pattern), else inpainted from around."""
    if not hidden.any():
        return img
    out = img.copy()
    ys, xs = np.nonzero(hidden)
    mx = np.round(2 * axis_x - xs).astype(int)
    ok = (mx >= 0) & (mx < img.shape[1])
    ok[ok] &= garment[ys[ok], mx[ok]] & ~hidden[ys[ok], mx[ok]]
    out[ys[ok], xs[ok]] = img[ys[ok], mx[ok]]
    rest = np.zeros(hidden.shape, np.uint8)
    rest[ys[~ok], xs[~ok]] = 1
    if rest.any():
        out = cv2.inpaint(out, rest, 5, cv2.INPAINT_TELEA)
    return out


@dataclass(frozen=True)
class _Sleeve:
    pixels: np.ndarray  # bool mask of the sleeve in the levelled photo
    pivot: np.ndarray  # where it joins the torso (x, y)
    angle: float  # of its axis, degrees below the horizontal, measured outwards
    length: float  # px along the axis from the pivot


def _sleeve(
    img: np.ndarray, off_torso: np.ndarray, side_x: float, top_y: float, hem_y: int, r: float, outward: float
) -> _Sleeve:
    """The blob of garment beyond the torso's edge on one side that starts at the shoulder: its
    axis runs from the shoulder's pivot to its farthest pixel."""
    h, w = off_torso.shape
    pivot = np.array([side_x, top_y + r])
    side = np.zeros((h, w), bool)
    if outward < 0:
        side[: hem_y + 1, : max(0, int(side_x))] = True
    else:
        side[: hem_y + 1, min(w, int(side_x) + 1) :] = True
    blob = off_torso & side
    n, labels, stats, _ = cv2.connectedComponentsWithStats(blob.astype(np.uint8), connectivity=8)
    empty = _Sleeve(np.zeros((h, w), bool), pivot, 0.0, 0.0)
    if n <= 1:
        return empty
    ys, xs = np.nonzero(labels)
    d = np.hypot(xs - pivot[0], ys - pivot[1])
    near = d < 2.5 * r  # the sleeve starts at the shoulder
    if not near.any():
        return empty
    label = int(np.bincount(labels[ys[near], xs[near]]).argmax())
    if stats[label, cv2.CC_STAT_AREA] < 0.5 * r * r:
        return empty
    pixels = labels == label
    ys, xs = np.nonzero(pixels)
    d = np.hypot(xs - pivot[0], ys - pivot[1])
    far = int(np.argmax(d))
    vx, vy = (xs[far] - pivot[0]) * outward, ys[far] - pivot[1]
    return _Sleeve(pixels, pivot, math.degrees(math.atan2(vy, vx)), float(d[far]))


def _lay_out(
    img: np.ndarray, torso: np.ndarray, sleeves: list[_Sleeve], long: bool
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """The torso where it is, each sleeve swung about its pivot to a flat-lay's angle; (BGR,
    alpha, offset of the levelled frame in it) on a canvas with room, cropped to the garment."""
    h, w = img.shape[:2]
    pad = int(max((s.length for s in sleeves), default=0)) + 16
    size = (w + 2 * pad, h + 2 * pad)
    canvas = np.zeros((size[1], size[0], 3), np.uint8)
    alpha = np.zeros((size[1], size[0]), np.uint8)
    target = LONG_ANGLE if long else SHORT_ANGLE
    shift = np.array([[1, 0, pad], [0, 1, pad], [0, 0, 1]], np.float64)
    for sleeve, outward in zip(sleeves, (-1.0, 1.0), strict=True):
        if sleeve.length < 2:
            continue
        # image angles grow clockwise (y down); outwards on the left is towards -x
        turn = (target - sleeve.angle) * outward
        m = np.vstack([cv2.getRotationMatrix2D(tuple(sleeve.pivot), -turn, 1.0), [0, 0, 1]])
        m = (shift @ m)[:2]
        warped = cv2.warpAffine(img, m, size, flags=cv2.INTER_LINEAR)
        cover = cv2.warpAffine(sleeve.pixels.astype(np.uint8) * 255, m, size, flags=cv2.INTER_LINEAR) > 127
        canvas[cover] = warped[cover]
        alpha[cover] = 255
    canvas[pad : pad + h, pad : pad + w][torso] = img[torso]
    alpha[pad : pad + h, pad : pad + w][torso] = 255
    alpha = cv2.morphologyEx(alpha, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    ys, xs = np.nonzero(alpha)
    y0, y1, x0, x1 = max(0, ys.min() - 8), ys.max() + 9, max(0, xs.min() - 8), xs.max() + 9
    return canvas[y0:y1, x0:x1].copy(), alpha[y0:y1, x0:x1].copy(), (float(pad - x0), float(pad - y0))
