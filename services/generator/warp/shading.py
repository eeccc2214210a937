"""The light and folds on the person, as a gain the new garment's albedo is multiplied by. Pure
numpy + cv2.

The picture is split into its materials (the old jacket, the shirt under it, a name tag, the
trousers, skin: clusters of chromaticity and log-luminance over the person, learned a few times a
second and held between), and each pixel's shading is its luminance over its own material's
typical luminance: a piecewise-constant albedo, and a shading that is continuous across the
materials' borders. So a white shirt front, a badge or a check pattern is albedo, not light,
while the folds and the light falloff of each material carry over. The ratios are taken with
a small offset added (Weber's law with a floor): the few levels of highlight on a black suit's
folds still count, a level of camera noise does not. Where the person shows nothing to measure
(the new garment reaches past the old clothing), the shading nearby stands in.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from services.generator.warp.filters import gaussian


@dataclass(frozen=True)
class ShadingConfig:
    fold_sigma: float = 0.03  # body scales: blur of the shading (folds narrower than this go)
    pattern_size: float = 0.1  # body scales: a median this wide takes out what is left of a pattern
    fill_sigma: float = 0.22  # body scales: how far the shading is carried past what was measured
    gain_clip: tuple[float, float] = (0.45, 1.3)
    exposure: float = 0.95  # the albedo's gain where a material is at its reference luminance
    reference_percentile: float = 70.0  # a material's reference luminance: most of it is at or under
    clear: float = 0.6  # a pixel counts when its own material is nearer than this share of the next
    # grey levels added to the luminance before any ratio (Weber's law with a floor)
    weber_offset: float = 14.0
    materials: int = 4  # the most materials told apart
    chroma_weight: float = 150.0  # feature units per unit of chromaticity (a channel's share)
    log_weight: float = 12.0  # feature units per unit of log-luminance (a fold halving it: 8)
    merge: float = 14.0  # materials nearer than this (feature units) are one


def _work_scale(shape: tuple[int, int], scale: float) -> int:
    """Working at a half or a quarter of the size: the shading is smooth at ``fold_sigma``."""
    return 4 if min(shape) >= 64 and scale >= 120 else 2 if min(shape) >= 32 else 1


def _features(bgr: np.ndarray, grey: np.ndarray, cfg: ShadingConfig) -> tuple[np.ndarray, np.ndarray]:
    """(features n x 3, luminance n) of BGR pixels (uint8, n x 3) and their grey levels: the
    chromaticity (each channel's share of the sum, which light and shadow leave alone: a fold
    darkens a red patch without making it another material), and, weakly, the log of the
    luminance (black and white cloth are told apart by it; a fold moves it by a constant)."""
    lum = grey.astype(np.float32)
    o = np.float32(cfg.weber_offset)
    c = bgr.astype(np.float32) + o
    total = c.sum(axis=1)
    f = np.empty((len(bgr), 3), np.float32)
    f[:, 0] = (c[:, 0] / total - np.float32(1 / 3)) * np.float32(cfg.chroma_weight)
    f[:, 1] = (c[:, 2] / total - np.float32(1 / 3)) * np.float32(cfg.chroma_weight)
    f[:, 2] = np.log((lum + o) / (128 + o)) * np.float32(cfg.log_weight)
    return f, lum


class Materials:
    """The person's materials as cluster centres in (a, b, weighted log-luminance)."""

    def __init__(self, centres: np.ndarray) -> None:
        self.centres = centres.astype(np.float32)

    @classmethod
    def learn(cls, feats: np.ndarray, cfg: ShadingConfig, max_pixels: int = 4096) -> Materials | None:
        """Deterministic k-means (farthest-point start, a few rounds), near centres merged."""
        if len(feats) < 16:
            return None
        pts = feats[:: max(1, len(feats) // max_pixels)]
        centres = [np.median(pts, axis=0)]
        for _ in range(1, cfg.materials):
            d = np.min([np.linalg.norm(pts - c, axis=1) for c in centres], axis=0)
            if float(d.max()) < cfg.merge:
                break
            centres.append(pts[int(np.argmax(d))])
        c = np.array(centres, np.float32)
        for _ in range(6):
            labels = np.argmin(((pts[:, None, :] - c[None]) ** 2).sum(axis=2), axis=1)
            c = np.array(
                [pts[labels == j].mean(axis=0) if np.any(labels == j) else c[j] for j in range(len(c))]
            )
        kept: list[np.ndarray] = []
        for centre in c:
            if all(float(np.linalg.norm(centre - k)) >= cfg.merge for k in kept):
                kept.append(centre)
        return cls(np.array(kept, np.float32))

    def assign(self, feats: np.ndarray, clear: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(nearest material per pixel, whether it is clearly that one: nearer than ``clear``
        times the next nearest; a pattern's blurred edges and mixed pixels are not)."""
        d = ((feats[:, None, :] - self.centres[None]) ** 2).sum(axis=2)
        labels = np.argmin(d, axis=1)
        if d.shape[1] < 2:
            return labels, np.ones(len(labels), bool)
        two = np.partition(d, 1, axis=1)[:, :2]
        return labels, two[:, 0] <= (clear * clear) * two[:, 1]


def _masked_blur(values: np.ndarray, weight: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(Gaussian mean of ``values`` over ``weight``, the blurred weight)."""
    s = max(0.6, sigma)
    num = gaussian(values * weight, s)
    den = gaussian(weight, s)
    return num / np.maximum(den, 1e-4), den


def shading_gain(
    patch_bgr: np.ndarray,
    surface: np.ndarray,
    scale: float,
    cfg: ShadingConfig,
    materials: Materials | None = None,
    relearn: bool = False,
) -> tuple[np.ndarray, Materials | None]:
    """(float32 HxW gain for the new albedo, the materials used).

    ``surface``: uint8 0/255, the person's pixels the shading is measured on (clothing, and skin
    or trousers the new garment may cover). ``materials``: those learned before (held between
    re-estimates, so the split does not flicker); learned afresh when None or ``relearn``.
    """
    h, w = surface.shape
    f = _work_scale((h, w), scale)
    size = (max(1, w // f), max(1, h // f))
    small = cv2.resize(patch_bgr, size, interpolation=cv2.INTER_AREA)
    mask = cv2.resize(surface, size, interpolation=cv2.INTER_NEAREST) > 0
    if int(mask.sum()) < 16:
        return np.full((h, w), cfg.exposure, np.float32), materials
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    feats, lum = _features(small[mask], grey[mask], cfg)
    if materials is None or relearn:
        materials = Materials.learn(feats, cfg) or materials
    if materials is None:
        return np.full((h, w), cfg.exposure, np.float32), None
    labels, clear = materials.assign(feats, cfg.clear)
    o = np.float32(cfg.weber_offset)
    albedo = np.empty(len(materials.centres), np.float32)
    for j in range(len(albedo)):
        sel = lum[(labels == j) & clear]
        # the material's reference luminance this frame; from its centre when it is barely seen
        albedo[j] = (
            float(np.percentile(sel, cfg.reference_percentile))
            if len(sel) >= 12
            else float(np.exp(materials.centres[j, 2] / cfg.log_weight) * (128 + o) - o)
        )
    ratio = np.zeros(size[::-1], np.float32)
    ratio[mask] = (lum + o) / (albedo[labels] + o)
    # only pixels clearly of one material measure the light: a stripe's blurred edge is half of
    # each, and its ratio to either is no shading
    measured = mask.copy()
    measured[mask] = clear
    weight = measured.astype(np.float32)
    wide, wide_seen = _masked_blur(ratio, weight, cfg.fill_sigma * scale / f)
    # what is left of a pattern (a stripe's residue, a logo's rim) is narrower than a fold: a
    # median as wide as ``pattern_size`` takes it out and keeps the folds' and the light's edges
    k = max(3, int(cfg.pattern_size * scale / f) | 1)
    if k > 3 and min(size) > k:
        filled = np.where(measured, ratio, wide)
        med = cv2.medianBlur(np.clip(filled * 180.0 + 0.5, 0, 255).astype(np.uint8), min(k, 31))
        ratio = med.astype(np.float32) * np.float32(1 / 180)
    fine, seen = _masked_blur(ratio, weight, cfg.fold_sigma * scale / f)
    # where little was measured, the wider neighbourhood's shading stands in, then none (1.0)
    t = np.clip(seen * 4.0, 0.0, 1.0)
    fill = wide * np.clip(wide_seen * 8.0, 0.0, 1.0) + (1.0 - np.clip(wide_seen * 8.0, 0.0, 1.0))
    gain = np.clip(fine * t + fill * (1.0 - t), *cfg.gain_clip) * np.float32(cfg.exposure)
    if f > 1:
        gain = cv2.resize(gain, (w, h), interpolation=cv2.INTER_LINEAR)
    return gain.astype(np.float32), materials
