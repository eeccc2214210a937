"""Frame pixel -> garment canvas point, per body part. Pure numpy + cv2.

- **Torso**: fitted to the silhouette row by row. Along the torso axis the clothing region is cut
  into bins; each bin's left and right edge (measured, smoothed over bins and frames) is where
  the garment's own left and right side go at that height. A turned body's visible side gets the
  whole front, stretched to what is seen, not a collapsed shoulder-width strip.
- **Sleeves**: each pixel projects onto the arm's shoulder -> elbow -> wrist chain: the distance
  along the chain picks the point along the garment's sleeve, the signed distance across picks
  the point across it. Sleeves bend with the elbow, whatever the pose.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from services.generator.warp.geometry import GarmentGeometry, _sleeve_normal
from services.generator.warp.region import Body

BINS = 40
V_RANGE = (-0.25, 1.45)  # torso lengths below the shoulder line covered by the profile bins
SEAM_UP = 0.06  # body scales: the garment's shoulder seam sits this far above the shoulder line


@dataclass(frozen=True)
class TorsoProfile:
    """The clothing's outline in body units: per bin, the left and right edge along ``ex``
    (body scales from the shoulder centre), and the hem (torso lengths below the shoulders)."""

    left: np.ndarray
    right: np.ndarray
    hem: float

    def blend(self, prev: TorsoProfile | None, rate: float) -> TorsoProfile:
        """Exponential average with the previous frame's profile: the texture holds still."""
        if prev is None:
            return self
        k = rate
        return TorsoProfile(
            k * self.left + (1 - k) * prev.left,
            k * self.right + (1 - k) * prev.right,
            k * self.hem + (1 - k) * prev.hem,
        )


def _body_coords(b: Body, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dx, dy = xs - np.float32(b.centre[0]), ys - np.float32(b.centre[1])
    a = (dx * np.float32(b.ex[0]) + dy * np.float32(b.ex[1])) * np.float32(1.0 / b.scale)
    v = (dx * np.float32(b.ey[0]) + dy * np.float32(b.ey[1])) * np.float32(1.0 / b.torso_len)
    return a, v


def _fill_and_smooth(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    idx = np.arange(len(values))
    out = np.interp(idx, idx[ok], values[ok])
    padded = np.pad(out, 2, mode="edge")
    med = np.median(np.stack([padded[i : i + len(out)] for i in range(5)]), axis=0)
    return np.convolve(np.pad(med, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")


def measure_profile(b: Body, torso: np.ndarray) -> TorsoProfile | None:
    """The outline of ``torso`` (uint8 0/255, the torso's clothing), or None when too small."""
    ys, xs = np.nonzero(torso[::2, ::2])
    if len(xs) < 30:
        return None
    a, v = _body_coords(b, xs.astype(np.float32) * 2, ys.astype(np.float32) * 2)
    lo, hi = V_RANGE
    bins = np.clip(((v - lo) / (hi - lo) * BINS).astype(np.int32), 0, BINS - 1)
    left = np.full(BINS, np.inf)
    right = np.full(BINS, -np.inf)
    np.minimum.at(left, bins, a)
    np.maximum.at(right, bins, a)
    counts = np.bincount(bins, minlength=BINS)
    ok = counts >= 2
    if ok.sum() < 3:
        return None
    central = np.abs(a - np.median(a)) < 0.3
    hem = float(np.percentile(v[central], 98)) if central.sum() > 10 else float(v.max())
    return TorsoProfile(_fill_and_smooth(left, ok), _fill_and_smooth(right, ok), hem)


def torso_map(
    g: GarmentGeometry, b: Body, profile: TorsoProfile, box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(map_x, map_y) float32 over ``box`` (x0, y0, x1, y1, ROI pixels) for ``cv2.remap``."""
    x0, y0, x1, y1 = box
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    a, v = _body_coords(b, xs, ys)
    lo, hi = V_RANGE
    centres = lo + (np.arange(BINS) + 0.5) * (hi - lo) / BINS
    left = np.interp(v, centres, profile.left).astype(np.float32)
    right = np.interp(v, centres, profile.right).astype(np.float32)
    u = (a - left) / np.maximum(right - left, 1e-3)
    top = -SEAM_UP * b.scale / b.torso_len
    t = (v - top) / max(profile.hem - top, 0.1)
    kp = g.keypoints
    cy = g.shoulder_y + t * g.length
    rows = np.array(
        [g.shoulder_y, (kp["armpit_left"][1] + kp["armpit_right"][1]) / 2, g.shoulder_y + g.length]
    )
    cl = np.interp(cy, rows, [kp["shoulder_left"][0], kp["armpit_left"][0], kp["hem_left"][0]])
    cr = np.interp(cy, rows, [kp["shoulder_right"][0], kp["armpit_right"][0], kp["hem_right"][0]])
    cx = cl + np.clip(u, -0.05, 1.05) * (cr - cl)
    return cx.astype(np.float32), cy.astype(np.float32)


def sleeve_map(
    g: GarmentGeometry,
    side: str,
    outward: float,
    chain: list[np.ndarray],
    reach: float,
    half_width: float,
    box: tuple[int, int, int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """(map_x, map_y) over ``box`` for the sleeve ``side`` ('left' = the garment's image-left
    sleeve) along ``chain`` (shoulder, elbow, wrist in ROI pixels); ``reach``: how far along the
    chain the garment's cuff lands; ``half_width``: the sleeve's half width on the body."""
    x0, y0, x1, y1 = box
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    sl = g.sleeves[side]
    best_d = None
    along = across = None
    start = 0.0
    for a, c in itertools.pairwise(chain):
        d = c - a
        n = float(np.hypot(*d))
        if n < 1e-3:
            continue
        u = d / n
        nrm = _sleeve_normal(u, outward)
        rx, ry = xs - np.float32(a[0]), ys - np.float32(a[1])
        t = np.clip(rx * np.float32(u[0]) + ry * np.float32(u[1]), 0.0, n)
        ox, oy = rx - t * np.float32(u[0]), ry - t * np.float32(u[1])
        dist = ox * ox + oy * oy
        side_d = rx * np.float32(nrm[0]) + ry * np.float32(nrm[1])
        if best_d is None:
            best_d, along, across = dist, t + start, side_d
        else:
            nearer = dist < best_d
            best_d = np.where(nearer, dist, best_d)
            along = np.where(nearer, t + start, along)
            across = np.where(nearer, side_d, across)
        start += n
    if best_d is None:
        h, w = y1 - y0, x1 - x0
        return np.full((h, w), -16, np.float32), np.full((h, w), -16, np.float32)
    frac = along / max(reach, 1.0)
    # past the sleeve's own width (old clothing wider than the sleeve, a loose coat) the texture
    # is mirrored back, not clamped: a clamped edge texel smears into streaks
    t = np.mod(across / max(half_width, 1.0) + 1.0, 4.0)
    off = np.where(t <= 2.0, t - 1.0, 3.0 - t)
    n_src = _sleeve_normal(sl.axis, outward)
    mx = sl.root[0] + sl.axis[0] * frac * sl.length + n_src[0] * off * sl.half_width
    my = sl.root[1] + sl.axis[1] * frac * sl.length + n_src[1] * off * sl.half_width
    return mx.astype(np.float32), my.astype(np.float32)


def remap(texture: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The edge-bled BGR texture sampled at ``maps`` (float32 BGR)."""
    out = cv2.remap(texture, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.astype(np.float32)
