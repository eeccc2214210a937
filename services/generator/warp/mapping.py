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

from services.generator.warp.fit import Fit
from services.generator.warp.geometry import GarmentGeometry, _sleeve_normal
from services.generator.warp.region import Body
from shared.body import LM

BINS = 48
V_TOP = -0.25  # torso lengths below the shoulder line where the profile bins start
HIPS_V = (0.75, 0.9)  # torso lengths: above, the torso's own outline; below, the garment's (blended)


@dataclass(frozen=True)
class TorsoProfile:
    """The torso's outline in body units, per bin of ``v`` from ``V_TOP`` to ``bottom`` (torso
    lengths below the shoulders): the left and right edge along ``ex`` (body scales from the
    shoulder centre). Below the hips it is the garment's own outline (it hangs there)."""

    left: np.ndarray
    right: np.ndarray
    bottom: float

    def centres(self) -> np.ndarray:
        return V_TOP + (np.arange(BINS) + 0.5) * (self.bottom - V_TOP) / BINS

    def blend(self, prev: TorsoProfile | None, rate: float) -> TorsoProfile:
        """Exponential average with the previous frame's profile: the texture holds still."""
        if prev is None or prev.bottom != self.bottom:
            return self
        k = rate
        return TorsoProfile(
            k * self.left + (1 - k) * prev.left, k * self.right + (1 - k) * prev.right, self.bottom
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


def garment_edges(g: GarmentGeometry, cy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The garment body's own left and right edge (canvas x) at canvas rows ``cy``: shoulder,
    armpit and hem keypoints joined by straight lines (the sleeves are not part of it)."""
    kp = g.keypoints
    rows = np.array(
        [g.shoulder_y, (kp["armpit_left"][1] + kp["armpit_right"][1]) / 2, g.shoulder_y + g.length]
    )
    cl = np.interp(cy, rows, [kp["shoulder_left"][0], kp["armpit_left"][0], kp["hem_left"][0]])
    cr = np.interp(cy, rows, [kp["shoulder_right"][0], kp["armpit_right"][0], kp["hem_right"][0]])
    return cl, cr


def measure_profile(b: Body, torso: np.ndarray, g: GarmentGeometry, fit: Fit) -> TorsoProfile | None:
    """The outline of ``torso`` (uint8 0/255: the torso's pixels without the arms) down to the
    hips, then the garment's own outline down to its hem; None when too little is seen."""
    bottom = max(1.2, fit.hem_v + 0.1)
    step = max(2, int(b.scale // 60))  # a few thousand pixels are plenty, however large the person
    ys, xs = np.nonzero(torso[::step, ::step])
    if len(xs) < 30:
        return None
    a, v = _body_coords(b, xs.astype(np.float32) * step, ys.astype(np.float32) * step)
    bins = np.clip(((v - V_TOP) / (bottom - V_TOP) * BINS).astype(np.int32), 0, BINS - 1)
    left = np.full(BINS, np.inf)
    right = np.full(BINS, -np.inf)
    order = np.lexsort((a, bins))  # by bin, then across: each bin's first and last are its edges
    sb = bins[order]
    starts = np.flatnonzero(np.r_[True, sb[1:] != sb[:-1]])
    ends = np.r_[starts[1:], len(sb)] - 1
    left[sb[starts]] = a[order][starts]
    right[sb[starts]] = a[order][ends]
    counts = np.bincount(bins, minlength=BINS)
    centres = V_TOP + (np.arange(BINS) + 0.5) * (bottom - V_TOP) / BINS
    ok = (counts >= 2) & (centres <= HIPS_V[1])
    if ok.sum() < 3:
        return None
    left, right = _fill_and_smooth(left, ok), _fill_and_smooth(right, ok)
    # below the hips the garment hangs by its own outline, centred under the hips; a turned body
    # shows it as narrow as it shows the hips
    hip_c = (b.px[LM.LEFT_HIP] + b.px[LM.RIGHT_HIP]) / 2
    a_hip = float(np.dot(hip_c - b.centre, b.ex)) / b.scale
    cl, cr = garment_edges(g, fit.canvas_y(g, (centres * b.torso_len).astype(np.float32)))
    own_l = a_hip + (cl - g.centre_x) * fit.k / b.scale
    own_r = a_hip + (cr - g.centre_x) * fit.k / b.scale
    at_hips = int(np.clip(np.searchsorted(centres, HIPS_V[0]), 0, BINS - 1))
    seen = float(right[at_hips] - left[at_hips])
    own = float(own_r[at_hips] - own_l[at_hips])
    squeeze = float(np.clip(seen / max(own, 1e-3), 0.45, 1.0))
    own_l = a_hip + (own_l - a_hip) * squeeze
    own_r = a_hip + (own_r - a_hip) * squeeze
    w = np.clip((centres - HIPS_V[0]) / (HIPS_V[1] - HIPS_V[0]), 0.0, 1.0)
    return TorsoProfile(left * (1 - w) + own_l * w, right * (1 - w) + own_r * w, bottom)


def torso_map(
    g: GarmentGeometry, fit: Fit, b: Body, profile: TorsoProfile, box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(map_x, map_y) float32 over ``box`` (x0, y0, x1, y1, ROI pixels) for ``cv2.remap``: down
    the torso at the garment's own scale, across fitted to the profile."""
    x0, y0, x1, y1 = box
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    a, v = _body_coords(b, xs, ys)
    # everything but ``a`` depends on ``v`` alone: worked out on a fine table of ``v`` (a few
    # hundredths of a pixel apart) and looked up, instead of interpolated pixel by pixel
    v0, v1 = float(v.min()), float(v.max())
    n = int(np.clip((v1 - v0) * b.torso_len * 4, 2, 4096))
    tv = np.linspace(v0, v1, n, dtype=np.float32)
    centres = profile.centres()
    left = np.interp(tv, centres, profile.left).astype(np.float32)
    right = np.interp(tv, centres, profile.right).astype(np.float32)
    cy = fit.canvas_y(g, tv * np.float32(b.torso_len)).astype(np.float32)
    cl, cr = (e.astype(np.float32) for e in garment_edges(g, cy))
    # across: fitted to the body where the garment is at least as wide as it (it wraps round);
    # where it is narrower (a dress's straps, a slim top on a wide coat) its own width shows,
    # centred on the body, and its own outline with it
    own = (cr - cl) * np.float32(0.5 * fit.k / b.scale)
    mid = (left + right) * np.float32(0.5)
    lo = np.maximum(left, mid - own)
    hi = np.minimum(right, mid + own)
    # at a fitted edge, the garment reaches the body's edge (a pixel or two past the smoothed
    # outline is still garment); at its own edge, its own outline decides
    floor = np.where(lo <= left, np.float32(-0.05), np.float32(-np.inf))
    ceil = np.where(hi >= right, np.float32(1.05), np.float32(np.inf))
    idx = np.clip(
        ((v - np.float32(v0)) * np.float32((n - 1) / max(v1 - v0, 1e-6)) + 0.5).astype(np.int32), 0, n - 1
    )
    width = np.maximum(hi - lo, np.float32(1e-3))
    u = np.clip((a - lo[idx]) / width[idx], floor[idx], ceil[idx])
    cx = cl[idx] + u * (cr - cl)[idx]
    return cx.astype(np.float32), cy[idx]


def sleeve_map(
    g: GarmentGeometry,
    side: str,
    outward: float,
    chain: list[np.ndarray],
    k: float,
    half_width: float,
    box: tuple[int, int, int, int],
    run: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(map_x, map_y) over ``box`` for the sleeve ``side`` ('left' = the garment's image-left
    sleeve) along ``chain`` (shoulder, elbow, wrist in ROI pixels) at the garment's scale ``k``
    (body px per canvas px, the torso's): a pattern keeps its size from torso to sleeve.
    ``half_width``: the sleeve's half width on the arm. Across, the sleeve is a tube seen from
    the front: a pixel ``x`` from its axis shows the cloth ``r asin(x / r)`` round from the middle
    (full scale in the middle, foreshortened at the sides). ``run``: canvas px before the root
    that the cloth runs on into the shoulder (half the sleeve's length when that is more)."""
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
        # before the shoulder (a loose old sleeve's cap) the distance runs on, negative: clamped,
        # the sleeve's first row would smear over the whole cap
        t = np.clip(rx * np.float32(u[0]) + ry * np.float32(u[1]), -np.inf if best_d is None else 0.0, n)
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
    inv_k = np.float32(1.0 / k)
    r = np.float32(max(half_width, 1.0))
    x = across / r
    inside = np.clip(x, -1.0, 1.0)
    # round the tube, then (old clothing wider than the sleeve, a loose coat) straight on past it
    arc = (np.arcsin(inside) + (x - inside)) * r * inv_k  # canvas px across from the sleeve's axis
    # before the root (a loose old sleeve's cap, a close-up's shoulder) the canvas runs on into
    # the garment's shoulder: the same cloth, continuous (mirrored back, a stripe makes a chevron)
    # past the cuff (a cap sleeve is shorter than the round drawn at the shoulder; a long sleeve's
    # cuff past the wrist) the cloth is mirrored back at the cuff: clamped, its last row smears
    along_c = along * inv_k
    length = max(float(sl.length), 1e-3)
    along_c = np.where(along_c > length, np.float32(2.0 * length) - along_c, along_c)
    along_c = np.clip(along_c, np.float32(-max(0.5 * length, run)), np.float32(length))
    # the fabric's profile from a table along the sleeve (256 stations), not interpolated per pixel
    t_centre, t_half = sl.fabric(np.linspace(0.0, length, 256, dtype=np.float32))
    idx = (np.clip(along_c, 0.0, length) * np.float32(255.0 / length) + 0.5).astype(np.int32)
    centre, half = t_centre[idx], t_half[idx]
    # past the fabric's own width (it tapers to the cuff; old clothing wider than the sleeve) the
    # cloth repeats across, like a panel sewn on: mirrored back, a diagonal stripe makes a chevron;
    # clamped, the edge texel smears into streaks
    off = centre + (np.mod(arc / half + 1.0, 2.0) - 1.0) * half
    n_src = _sleeve_normal(sl.axis, outward)
    mx = sl.root[0] + sl.axis[0] * along_c + n_src[0] * off
    my = sl.root[1] + sl.axis[1] * along_c + n_src[1] * off
    return mx.astype(np.float32), my.astype(np.float32)


def remap(texture: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The edge-bled BGRA texture sampled at ``maps`` (uint8, the texture's channels)."""
    return cv2.remap(texture, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def pattern_scale(maps: tuple[np.ndarray, np.ndarray], mask: np.ndarray) -> float:
    """Canvas pixels per body pixel where ``mask`` is set: per pixel, the smaller singular value
    of the map's Jacobian (the direction the cloth is least squeezed in: along a sleeve, down the
    torso), its median over the mask. NaN where too little is drawn."""
    mx, my = maps
    if mx.shape[0] < 3 or mx.shape[1] < 3:
        return float("nan")
    dxx, dxy = np.gradient(mx, axis=1), np.gradient(mx, axis=0)
    dyx, dyy = np.gradient(my, axis=1), np.gradient(my, axis=0)
    # singular values of [[dxx, dxy], [dyx, dyy]]: from the Gram matrix's eigenvalues
    a, d = dxx * dxx + dyx * dyx, dxy * dxy + dyy * dyy
    bb = dxx * dxy + dyx * dyy
    tr, det = a + d, a * d - bb * bb
    small = np.sqrt(np.maximum(tr / 2 - np.sqrt(np.maximum(tr * tr / 4 - det, 0.0)), 0.0))
    inner = cv2.erode((mask > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    if inner.sum() < 20:
        return float("nan")
    return float(np.median(small[inner]))
