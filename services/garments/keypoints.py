"""Named garment keypoints from the mask geometry of an upright flat-lay. Pure: numpy + OpenCV.

Definitions (they are what the warp renderer relies on, and what the catalogue generator draws):

* ``collar``: the deepest point of the neckline — the convexity defect of the outline nearest the
  top centre; ``neck_left``/``neck_right``: where the outline leaves the line between the two hull
  vertices that defect spans (on a flat shoulder a hull vertex can sit anywhere along it).
* ``armpit_*``: the deepest convexity defect on each side, below the top few percent of the
  garment and above the hem (the concave corner where sleeve and body meet; with an open front
  it may lie above the collar).
* ``shoulder_*``: the top of the outline right above the armpit.
* sleeveless: when there is no cloth above that deepest point, it lies on an armhole, not in an
  underarm corner: the armpit is then the armhole's lower end (where the side seam starts), the
  shoulder its upper end (the strap's outer corner), and the sleeve falls back to the shoulder.
* ``sleeve_*``: the middle of the cuff: the sleeve is what lies beyond the armpit's vertical, and
  its cuff corners are the polygon vertex farthest from that line plus a neighbour: the one off
  that line when only one is (a short sleeve: the other is where its top meets the body), else
  the one whose edge to it runs most across the sleeve (the cuff, not the sleeve's top or
  underside).
* ``hem_*``: the ends of the body's run of columns whose lowest pixel is near the bottom (the run
  under the centre, so a long sleeve that reaches down never counts as hem), each at its own
  lowest pixel, so a hem a degree or two off level still ends at its corners.

Every point carries a confidence: 1.0 found by its definition, 0.5 from a fallback (e.g. a
sleeveless garment has no cuff, so the sleeve end falls back to the shoulder).
"""

from __future__ import annotations

import cv2
import numpy as np

from shared.garment_schemas import KEYPOINT_NAMES

Point = tuple[float, float, float]


def find_keypoints(mask: np.ndarray) -> dict[str, Point]:
    """Keypoints of the garment in ``mask`` (bool or uint8, garment non-zero), in its pixels."""
    m = (mask > 0).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        raise ValueError("empty mask")
    contour = max(contours, key=cv2.contourArea)
    pts = contour[:, 0, :].astype(np.float64)
    x0, y0, w, h = cv2.boundingRect(contour)
    y1 = y0 + h - 1
    xc = x0 + (w - 1) / 2.0

    defects = _defects(contour)
    kp: dict[str, Point] = {}

    # neckline: the deepest defect whose far point sits in the top part, near the centre
    neck = [
        d
        for d in defects
        if pts[d[2]][1] < y0 + 0.45 * h and abs(pts[d[2]][0] - xc) < 0.2 * w and d[3] >= 1.0
    ]
    if neck:
        s, e, f, depth = max(neck, key=lambda d: d[3])
        seg, below = _below_chord(pts, s, e)
        a, b = _neck_ends(seg, below, max(2.0, 0.08 * depth))
        left, right = (a, b) if a[0] <= b[0] else (b, a)
        kp["collar"] = (*_deepest(seg, below), 1.0)
        kp["neck_left"] = (*left, 1.0)
        kp["neck_right"] = (*right, 1.0)
    else:  # no neck opening: the top centre, the neck a fifth of the width either side
        top = _top(m, round(xc))
        kp["collar"] = (xc, top, 0.5)
        for side, sign in (("left", -1), ("right", 1)):
            x = xc + sign * 0.1 * w
            kp[f"neck_{side}"] = (x, _top(m, round(x)), 0.5)

    for side, sign in (("left", -1), ("right", 1)):
        cands = [
            d
            for d in defects
            if sign * (pts[d[2]][0] - xc) > 0.12 * w
            and y0 + 0.04 * h < pts[d[2]][1] < y1 - 0.1 * h
            and d[3] >= 1.0
        ]
        if cands:
            s, e, f, _ = max(cands, key=lambda d: d[3])
            armpit = (*pts[f], 1.0)
            ax = round(pts[f][0])
            if pts[f][1] - _top(m, ax) < 0.03 * h:  # nothing above it: an armhole (sleeveless)
                upper, lower = sorted((pts[s], pts[e]), key=lambda p: p[1])
                kp[f"armpit_{side}"] = (*lower, 1.0)
                kp[f"shoulder_{side}"] = (*upper, 1.0)
                kp[f"sleeve_{side}"] = (*upper, 0.5)
                continue
        else:  # no concave corner (a box): a third of the way down the outermost column
            x = x0 if sign < 0 else x0 + w - 1
            armpit = (float(x), y0 + h / 3.0, 0.5)
        kp[f"armpit_{side}"] = armpit
        ax = round(armpit[0])
        kp[f"shoulder_{side}"] = (float(ax), _top(m, ax), armpit[2])
        kp[f"sleeve_{side}"] = _sleeve_end(m, kp[f"shoulder_{side}"], armpit, sign)

    cols = m.any(axis=0)
    lowest = np.where(cols, m.shape[0] - 1 - np.argmax(m[::-1], axis=0), -1)
    band = lowest >= y1 - max(2, round(0.04 * h))
    left_x, right_x = _run_around(band, round(xc), bridge=int(0.12 * w))
    kp["hem_left"] = (float(left_x), float(lowest[left_x]), 1.0)
    kp["hem_right"] = (float(right_x), float(lowest[right_x]), 1.0)
    return {name: tuple(round(float(v), 2) for v in kp[name]) for name in KEYPOINT_NAMES}  # type: ignore[misc]


def _defects(contour: np.ndarray) -> list[tuple[int, int, int, float]]:
    hull = cv2.convexHull(contour, returnPoints=False)
    if hull is None or len(hull) < 3:
        return []
    hull = np.sort(hull, axis=0)  # convexityDefects needs monotonic hull indices
    try:
        d = cv2.convexityDefects(contour, hull)
    except cv2.error:
        return []
    if d is None:
        return []
    return [(int(s), int(e), int(f), depth / 256.0) for s, e, f, depth in d[:, 0]]


def _top(m: np.ndarray, x: int) -> float:
    x = min(max(x, 0), m.shape[1] - 1)
    rows = np.flatnonzero(m[:, x])
    return float(rows[0]) if len(rows) else 0.0


def _run_around(row: np.ndarray, x: int, bridge: int = 0) -> tuple[int, int]:
    """Ends of the run of non-zero pixels containing (or nearest to) column ``x``; gaps of up to
    ``bridge`` pixels (a notch a pattern left in the mask) do not end a run."""
    on = np.flatnonzero(row)
    if len(on) == 0:
        return x, x
    i = int(np.argmin(np.abs(on - x)))
    gaps = np.diff(on) > bridge + 1
    lo = i
    while lo > 0 and not gaps[lo - 1]:
        lo -= 1
    hi = i
    while hi < len(on) - 1 and not gaps[hi]:
        hi += 1
    return int(on[lo]), int(on[hi])


def _below_chord(pts: np.ndarray, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """The contour points start..end (wrapping) and each one's distance below their chord."""
    idx = np.arange(start, end + 1) if end >= start else np.r_[start : len(pts), 0 : end + 1]
    a, b = pts[start], pts[end]
    chord = b - a
    norm = float(np.hypot(*chord)) or 1.0
    seg = pts[idx]
    depth = np.abs(chord[0] * (seg[:, 1] - a[1]) - chord[1] * (seg[:, 0] - a[0])) / norm
    return seg, depth


def _deepest(seg: np.ndarray, depth: np.ndarray) -> tuple[float, float]:
    """Centre of the points (``_below_chord``'s) within a pixel of the deepest below the chord,
    so a flat-bottomed neckline gives its middle rather than an arbitrary pixel of it."""
    near = seg[depth >= depth.max() - 1.0]
    return float(near[:, 0].mean()), float(near[:, 1].mean())


def _neck_ends(seg: np.ndarray, depth: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Where the neckline leaves the shoulder line on either side: from each hull vertex the
    defect spans (``seg``'s ends), the last contour point before it dips more than ``tol`` below
    their chord. A near-flat shoulder line puts the hull vertex anywhere along it (a fold or a
    tilted photo moves it by a tenth of the neck's width); where the dip starts does not move."""
    deep = np.flatnonzero(depth > tol)
    if len(deep) == 0:
        return seg[0], seg[-1]
    return seg[max(deep[0] - 1, 0)], seg[min(deep[-1] + 1, len(seg) - 1)]


def _sleeve_end(m: np.ndarray, shoulder: Point, armpit: Point, sign: int) -> Point:
    w = m.shape[1]
    cut = round(armpit[0]) + sign * 3
    side = np.zeros_like(m)
    if sign < 0:
        side[:, : max(cut, 0)] = m[:, : max(cut, 0)]
    else:
        side[:, min(cut + 1, w) :] = m[:, min(cut + 1, w) :]
    n, labels, stats, _ = cv2.connectedComponentsWithStats(side, connectivity=4)
    fallback = (shoulder[0], shoulder[1], 0.5)
    if n <= 1:
        return fallback
    # the sleeve is the blob that touches the cut between shoulder and armpit
    band_x = min(max(cut + sign, 0), w - 1)
    y_top, y_bot = int(shoulder[1]), int(armpit[1]) + 1
    touching = labels[y_top:y_bot, band_x]
    counts = np.bincount(touching[touching > 0], minlength=n) if np.any(touching > 0) else None
    if counts is None or counts.max() == 0:
        return fallback
    label = int(np.argmax(counts))
    if stats[label, cv2.CC_STAT_AREA] < 0.002 * m.sum():
        return fallback
    blob = (labels == label).astype(np.uint8)
    contours, _ = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    poly = cv2.approxPolyDP(contour, 0.02 * cv2.arcLength(contour, True), True)[:, 0, :].astype(np.float64)
    dist = sign * (poly[:, 0] - cut)
    i = int(np.argmax(dist))
    root = np.array([cut, (shoulder[1] + armpit[1]) / 2.0])
    axis = poly[i] - root
    axis /= float(np.hypot(*axis)) or 1.0

    def across(k: int) -> float:  # |cos| between the edge i-k and the sleeve's axis
        edge = poly[k] - poly[i]
        return abs(float(edge @ axis)) / (float(np.hypot(*edge)) or 1.0)

    # a short sleeve's cuff runs from its outer corner to the corner not on the cut (the other
    # neighbour is where the sleeve's top meets the body); else the edge most across the sleeve
    eps = max(2.0, 0.02 * cv2.arcLength(contour, True))
    near = [(i - 1) % len(poly), (i + 1) % len(poly)]
    off_cut = [k for k in near if sign * (poly[k, 0] - cut) > eps]
    j = off_cut[0] if len(off_cut) == 1 else min(near, key=across)
    mid = (poly[i] + poly[j]) / 2.0
    return (float(mid[0]), float(mid[1]), 1.0)
