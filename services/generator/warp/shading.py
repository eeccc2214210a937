"""The light and folds of the clothing being replaced, as a gain the new garment's albedo is
multiplied by. Pure numpy + cv2.

Luminance of the old clothing, lightly blurred (fine patterns such as checks or pinstripes are
not folds), over its own local mean (masked, so background and skin never darken the edge):
that ratio carries folds and creases. The local mean over the clothing's typical level carries
the larger light falloff (a side light, a shadowed flank). Both are clamped, and for dark
clothing, where the ratio is mostly noise, faded towards flat.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class ShadingConfig:
    pattern_size: float = 0.14  # body scales: dark pattern features narrower than this are no folds
    fold_sigma: float = 0.03  # body scales: blur of the pattern-free luminance
    local_sigma: float = 0.22  # body scales: the neighbourhood a fold is measured against
    fold_clip: tuple[float, float] = (0.5, 1.35)
    light_clip: tuple[float, float] = (0.6, 1.15)
    exposure: float = 0.92  # the albedo's gain where the old clothing is at its typical level
    reference_percentile: float = 70.0
    dark_luma: tuple[float, float] = (18.0, 55.0)  # fold strength fades from full to none below


def _masked_blur(values: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian mean of ``values`` over ``weight`` only, at quarter resolution (sigma is large)."""
    h, w = values.shape
    f = 4 if min(h, w) >= 32 else 1
    small = (max(1, w // f), max(1, h // f))
    v = cv2.resize(values * weight, small, interpolation=cv2.INTER_AREA)
    m = cv2.resize(weight, small, interpolation=cv2.INTER_AREA)
    s = max(0.8, sigma / f)
    v = cv2.GaussianBlur(v, (0, 0), s)
    m = cv2.GaussianBlur(m, (0, 0), s)
    mean = v / np.maximum(m, 1e-3)
    return cv2.resize(mean, (w, h), interpolation=cv2.INTER_LINEAR)


def _envelope(luma: np.ndarray, weight: np.ndarray, scale: float, cfg: ShadingConfig) -> np.ndarray:
    """The clothing's luminance with its pattern taken out: a closing (the upper envelope) fills
    dark stripes, checks and dots narrower than ``pattern_size`` with the light colour around
    them, so the light and the wider fold creases remain. Outside the clothing the local mean
    stands in, so background never brightens (or the closing darkens) the edge. At half
    resolution, or a quarter when the person is large (a close-up): the closing's disc then stays
    small, and the folds it keeps are wider than a pixel there anyway."""
    h, w = luma.shape
    f = 2 if cfg.pattern_size * scale / 2 <= 12 else 4
    small = (max(1, w // f), max(1, h // f))
    lum = cv2.resize(luma, small, interpolation=cv2.INTER_AREA)
    wt = cv2.resize(weight, small, interpolation=cv2.INTER_AREA)
    inside = wt > 0.5
    mean = _masked_blur(lum, inside.astype(np.float32), cfg.local_sigma * scale / f)
    filled = np.where(inside, lum, mean)
    k = max(3, int(cfg.pattern_size * scale / f) | 1)
    env = cv2.morphologyEx(filled, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    env = cv2.GaussianBlur(env, (0, 0), max(0.6, cfg.fold_sigma * scale / f))
    return cv2.resize(env, (w, h), interpolation=cv2.INTER_LINEAR)


def shading_gain(
    patch_bgr: np.ndarray, clothing: np.ndarray, scale: float, cfg: ShadingConfig
) -> tuple[np.ndarray, float]:
    """(float32 HxW gain for the new albedo, the clothing's reference luminance).

    ``clothing``: uint8 0/255, the old clothing's pixels (the statistics come from there only).
    """
    luma = cv2.cvtColor(patch_bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    weight = (clothing > 0).astype(np.float32)
    if weight.sum() < 16:
        return np.full(luma.shape, cfg.exposure, np.float32), 128.0
    fine = _envelope(luma, weight, scale, cfg)
    local = _masked_blur(fine, weight, cfg.local_sigma * scale)
    ref = float(np.percentile(fine[weight > 0], cfg.reference_percentile))
    ref = max(ref, 1.0)
    lo, hi = cfg.dark_luma
    strength = float(np.clip((ref - lo) / (hi - lo), 0.0, 1.0))
    folds = np.clip(fine / np.maximum(local, 1.0), *cfg.fold_clip)
    light = np.clip(local / ref, *cfg.light_clip)
    gain = (1.0 + strength * (folds * light - 1.0)) * cfg.exposure
    return gain.astype(np.float32), ref
