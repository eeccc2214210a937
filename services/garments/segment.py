"""Garment versus background in a product photo, and the photo's tilt. Pure: numpy + OpenCV.

A shop's flat-lay is not a cut-out: the table is off-white, grey, wood or cloth, lit unevenly,
the garment throws a soft shadow, the JPEG adds noise, and a hanger's hook or a price tag may be
in view. ``flatlay_mask`` models the background from the image border (whatever is there, the
garment is not: a photo with the garment cut off at the edge is refused) and scores every pixel
by how far it is from that model in three ways a shadow cannot be:

- its chromaticity (colour with brightness divided out: a shadow keeps the table's),
- its brightness above the table's, or below it by more than the darkest shadow
  (``SHADOW_DEPTH``), after the table's own light falloff (a quadratic fitted on the border),
- its fine texture (local contrast) above the table's: a stripe or a check whose one colour is
  close to the table's still holds the garment together. The window straddles every edge (and
  fills a narrow underarm gap), so this cue is eroded by its own size and used only when the
  colour cues alone break the garment apart (their largest blob is much smaller than with it).

Each is measured in units of the border's own spread, so a wood grain or a weave raises its own
threshold. Then thin things (a hanger wire, a tag's string, a plank seam) are opened away, the
largest blob is the garment (a second one nearly as big: several garments), its holes are filled
(a print the table's colour is still garment), and the boundary is settled by the image's own two
colour models (garment inside, background outside) in a band around it.

``deskew_angle`` finds the tilt as the rotation that makes the mask most mirror-symmetric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from shared.garment_client import GarmentError

SHADOW_DEPTH = 0.36  # -log(brightness ratio) a shadow may reach: 30% darker than the table
SCORE_THRESHOLD = 6.0  # border spreads a garment pixel stands out by
SEVERAL_RATIO = 0.2  # a second blob this big (of the largest) is a second garment
MIN_GARMENT_FRACTION = 0.002  # below this nothing was found at all
SMALL_FRACTION = 0.015  # a garment covering less of the photo is too small to use
MIN_GARMENT_SIDE = 96  # px at work resolution: the canvas would upscale a smaller one
EDGE_TOUCH = 0.012  # touching the border over this fraction of the image side: cut off


@dataclass(frozen=True)
class BackgroundModel:
    """What the border says the background is (log brightness is fitted as a quadratic)."""

    chroma: np.ndarray  # (2,) median b/sum, g/sum
    chroma_spread: float
    light_coeffs: np.ndarray  # (6,) quadratic in normalised x, y
    light_spread: float
    texture: float
    texture_spread: float


def _odd(v: float) -> int:
    return max(3, round(v) | 1)


def _features(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(log brightness, chromaticity (h, w, 2), local contrast, its window), after a 3x3 median:
    it takes the edge off JPEG noise but keeps an edge (and a narrow gap, an underarm's) sharp."""
    h, w = bgr.shape[:2]
    f = cv2.medianBlur(np.ascontiguousarray(bgr[..., :3]), 3).astype(np.float32)
    s = f.sum(axis=2) + 6.0
    grey = s / 3.0
    k = _odd(min(h, w) / 160)
    mean = cv2.blur(grey, (k, k))
    sq = cv2.blur(grey * grey, (k, k))
    contrast = np.sqrt(np.maximum(sq - mean * mean, 0.0)) / (mean + 12.0)
    return np.log(s), f[..., :2] / s[..., None], contrast, k


def _design(h: int, w: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    x = xs / max(w - 1, 1) * 2 - 1
    y = ys / max(h - 1, 1) * 2 - 1
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def _spread(v: np.ndarray, floor: float) -> float:
    """Robust spread of the background's values (from the 90th percentile of |v - median|, so a
    wood grain's or a weave's own variation counts), at least ``floor``. The values far from the
    median first (beyond 4 median deviations: a garment cut off at the edge, a hanger's hook) are
    left out, so they cannot widen it."""
    med = np.median(v, axis=0)
    dev = np.abs(v - med)
    if dev.ndim > 1:
        dev = np.linalg.norm(dev, axis=1)
    mad = float(np.median(dev)) + 1e-6
    dev = dev[dev <= 4.0 * 1.4826 * mad + floor]
    return max(floor, float(np.percentile(dev, 90)) / 1.645)


def border_model(log_i: np.ndarray, chroma: np.ndarray, contrast: np.ndarray) -> BackgroundModel:
    h, w = log_i.shape
    b = max(3, round(0.03 * min(h, w)))
    ring = np.zeros((h, w), bool)
    ring[:b], ring[-b:], ring[:, :b], ring[:, -b:] = True, True, True, True
    ys, xs = np.nonzero(ring)
    step = max(1, len(ys) // 20000)
    ys, xs = ys[::step], xs[::step]
    li = log_i[ys, xs]
    a = _design(h, w, ys.astype(np.float64), xs.astype(np.float64))
    keep = np.ones(len(li), bool)
    coeffs = np.zeros(6)
    for _ in range(3):  # robust: drop what sticks out (a hanger crossing the border, a seam)
        coeffs, *_ = np.linalg.lstsq(a[keep], li[keep], rcond=None)
        res = li - a @ coeffs
        cut = 3.0 * 1.4826 * float(np.median(np.abs(res[keep] - np.median(res[keep])))) + 1e-3
        keep = np.abs(res - np.median(res[keep])) <= cut
    res = li - a @ coeffs
    ch = chroma[ys, xs]
    tx = contrast[ys, xs]
    return BackgroundModel(
        chroma=np.median(ch[keep], axis=0),
        chroma_spread=_spread(ch[keep], 0.0025),
        light_coeffs=coeffs,
        light_spread=_spread(res[keep], 0.008),
        texture=float(np.median(tx[keep])),
        texture_spread=_spread(tx[keep], 0.006),
    )


def foreground_scores(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """How many background spreads each pixel stands out by, by its own colour (shadows score
    low) and by its neighbourhood's texture (float32, HxW each), and the texture window."""
    log_i, chroma, contrast, k = _features(bgr)
    m = border_model(log_i, chroma, contrast)
    h, w = log_i.shape
    x = (np.arange(w, dtype=np.float32) / max(w - 1, 1) * 2 - 1)[None, :]
    y = (np.arange(h, dtype=np.float32) / max(h - 1, 1) * 2 - 1)[:, None]
    c = m.light_coeffs.astype(np.float32)
    light = c[0] + c[1] * x + c[2] * y + c[3] * x * x + c[4] * x * y + c[5] * y * y  # as ``_design``
    d = log_i - light
    bright = np.where(d > 0, d, np.maximum(-d - SHADOW_DEPTH, 0.0)) / m.light_spread
    # chromaticity of a dark pixel is noise: its spread grows as brightness falls
    noise = 2.0 / np.exp(log_i)
    colour = np.linalg.norm(chroma - m.chroma, axis=2) / np.sqrt(m.chroma_spread**2 + noise**2)
    texture = np.maximum(contrast - m.texture, 0.0) / m.texture_spread
    return np.maximum(bright, colour).astype(np.float32), texture.astype(np.float32), k


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask.astype(np.uint8), 1)
    outside = padded.copy()
    cv2.floodFill(outside, None, (0, 0), 2)
    return outside[1:-1, 1:-1] != 2


@dataclass(frozen=True)
class FlatlayMask:
    mask: np.ndarray  # bool, the garment
    second_blob: float  # area of the second largest blob over the largest's
    edge_touch: float  # longest run of garment pixels on the image border, over the image side


def flatlay_mask(bgr: np.ndarray) -> FlatlayMask:
    """The garment in a flat-lay or ghost-mannequin photo (see the module docstring)."""
    h, w = bgr.shape[:2]
    pixel, texture, window = foreground_scores(bgr)
    textured = cv2.erode(
        (texture > SCORE_THRESHOLD).astype(np.uint8),
        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (window + 2, window + 2)),
    )
    k = _odd(0.011 * min(h, w))
    plain = _blobs((pixel > SCORE_THRESHOLD).astype(np.uint8), k)
    with_texture = _blobs(((pixel > SCORE_THRESHOLD) | (textured > 0)).astype(np.uint8), k)
    n, labels, stats, _ = with_texture if with_texture[3] > 1.15 * plain[3] else plain
    if n <= 1:
        return FlatlayMask(np.zeros((h, w), bool), 0.0, 0.0)
    order = 1 + np.argsort(-stats[1:, cv2.CC_STAT_AREA])
    largest = int(order[0])
    second = float(stats[order[1], cv2.CC_STAT_AREA]) / stats[largest, cv2.CC_STAT_AREA] if n > 2 else 0.0
    mask = _fill_holes(labels == largest)
    return FlatlayMask(mask, second, _edge_touch(mask))


def _blobs(fg: np.ndarray, k: int) -> tuple[int, np.ndarray, np.ndarray, int]:
    """Thin things opened away, then the blobs: (count, labels, stats, largest area)."""
    # the opening takes a wire, a string or a plank seam away (anything thinner than ``k``); what
    # it shaved off the garment's own edge (a corner, a sliver between two pattern notches) comes
    # back within 2 px of what is left, which is not far enough to bridge an underarm gap with
    # a seam (the gap's far end would then fill as a hole)
    body = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    fg = fg & cv2.dilate(body, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    largest = int(stats[1:, cv2.CC_STAT_AREA].max()) if n > 1 else 0
    return n, labels, stats, largest


def _edge_touch(mask: np.ndarray) -> float:
    h, w = mask.shape
    runs = []
    for line, side in ((mask[0], w), (mask[-1], w), (mask[:, 0], h), (mask[:, -1], h)):
        on = np.flatnonzero(np.diff(np.r_[0, line.astype(np.int8), 0]))
        longest = int((on[1::2] - on[::2]).max()) if len(on) else 0
        runs.append(longest / side)
    return max(runs)


def check_usable(mask: np.ndarray, second_blob: float, edge_touch: float) -> None:
    """Refuse what cannot be used, with the reason (``GarmentError``); returns when it can."""
    coverage = float(mask.mean())
    if coverage < MIN_GARMENT_FRACTION:
        raise GarmentError("no_garment", "no garment found: nothing stands out from the background")
    if coverage > 0.97:
        raise GarmentError(
            "no_garment", "no garment found: no background around it (use a flat-lay or a PNG cut-out)"
        )
    if second_blob >= SEVERAL_RATIO:
        raise GarmentError(
            "several_garments",
            f"several garments: a second one {second_blob:.0%} the size of the largest; "
            "photograph one at a time",
        )
    if edge_touch > EDGE_TOUCH:
        raise GarmentError(
            "garment_cut_off", f"the garment runs off the edge of the photo ({edge_touch:.0%} of a side)"
        )
    _, _, bw, bh = cv2.boundingRect(mask.astype(np.uint8))
    if coverage < SMALL_FRACTION or max(bw, bh) < MIN_GARMENT_SIDE:
        raise GarmentError(
            "garment_too_small",
            f"the garment is too small: {bw}x{bh} px, {coverage:.1%} of the photo "
            "(let it fill at least a third of the photo)",
        )


# -- tilt -----------------------------------------------------------------------------------------
def _mirror_iou(mask: np.ndarray, angle: float, centre: tuple[float, float]) -> float:
    h, w = mask.shape
    m = cv2.getRotationMatrix2D(centre, angle, 1.0)
    rot = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_LINEAR)
    cx = round(centre[0])
    half = min(cx, w - cx - 1)
    left = rot[:, cx - half : cx].astype(np.float32)
    right = rot[:, cx + 1 : cx + 1 + half][:, ::-1].astype(np.float32)
    inter = np.minimum(left, right).sum()
    union = np.maximum(left, right).sum()
    return float(inter / union) if union > 0 else 0.0


def deskew_angle(mask: np.ndarray, max_deg: float = 25.0) -> tuple[float, float]:
    """(angle in degrees to rotate the photo by (OpenCV's sense: counter-clockwise) so the garment
    stands upright, mirror IoU there). A garment is left-right symmetric; its tilt is where its
    mask is most so. Coarse on a small mask, then refined."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 50:
        return 0.0, 0.0
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    side = max(x1 - x0, y1 - y0) + 1
    pad = int(side * 0.3)
    crop = np.zeros((side + 2 * pad, side + 2 * pad), np.uint8)
    crop[pad + (side - (y1 - y0 + 1)) // 2 :][: y1 - y0 + 1, pad + (side - (x1 - x0 + 1)) // 2 :][
        :, : x1 - x0 + 1
    ] = mask[y0 : y1 + 1, x0 : x1 + 1].astype(np.uint8) * 255

    def best_of(size: int, angles: np.ndarray) -> tuple[float, float]:
        small = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
        mo = cv2.moments(small)
        centre = (mo["m10"] / mo["m00"], mo["m01"] / mo["m00"])
        scores = [_mirror_iou(small, float(a), centre) for a in angles]
        i = int(np.argmax(scores))
        return float(angles[i]), scores[i]

    coarse, _ = best_of(96, np.arange(-max_deg, max_deg + 0.01, 1.5))
    return best_of(192, np.arange(coarse - 1.5, coarse + 1.51, 0.25))


def rotation_about(
    centre: tuple[float, float], angle: float, size: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int]]:
    """The 2x3 matrix rotating by ``angle`` about ``centre`` onto a canvas large enough to hold the
    whole rotated image, and that canvas's (w, h)."""
    w, h = size
    m = cv2.getRotationMatrix2D(centre, angle, 1.0)
    c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    nw, nh = math.ceil(w * c + h * s), math.ceil(w * s + h * c)
    m[:, 2] += (nw / 2 - w / 2, nh / 2 - h / 2)
    return m, (nw, nh)
