"""Where a garment falls on this body, by the garment's own shape. Pure numpy.

A garment is laid on the body at one scale, the same along the torso and along the arms: its
shoulder seams sit on the wearer's shoulders, and from there its own length decides where the
hem falls, its own sleeve length where each sleeve ends, its own neckline how much of the neck
shows. Nothing is stretched to where the old clothing ended, so a cropped top ends high, a dress
reaches the calves, a tee's sleeve stops on the upper arm, and a pattern keeps its size between
torso and sleeves.

Only across the torso is the garment fitted to the body's outline, row by row (``mapping``): a
flat-lay's front panel wraps around the torso, and a person's width (or a turned person's depth)
is what the camera sees of it. Below the hips the garment hangs by its own outline, over the
gap between the legs as a skirt or a long tee does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.generator.warp.geometry import GarmentGeometry
from services.generator.warp.region import Body
from shared.body import LM


@dataclass(frozen=True)
class FitConfig:
    """Human and garment proportions the fit rests on. Lengths in body scales unless noted."""

    seam_width: float = 1.15  # a garment's shoulder seams / the wearer's shoulder joints, apart
    facing_ratio: float = 0.75  # shoulder-joint width / torso length: a turned body's facing width
    arm_ratio: float = 1.25  # shoulder-joint width / upper arm length
    seam_up: float = 0.06  # the shoulder seam sits this far above the shoulder joints
    cuff_past_wrist: float = 0.12  # the farthest a long sleeve reaches past the wrist landmark
    sleeve_flat: float = 1.35  # a sleeve's flat-lay width / its width on the arm (a flattened tube)
    sleeve_min: float = 0.3  # body scales: the thinnest a sleeve is drawn (at least the arm)
    sleeve_max: float = 0.62  # ... and the widest


@dataclass(frozen=True)
class Fit:
    """One garment on one body in ROI pixels."""

    k: float  # body pixels per canvas pixel, along the torso and along the arms
    top_px: float  # where the canvas shoulder line lands, along ``ey`` from the shoulder centre
    hem_v: float  # torso lengths below the shoulder centre where the garment's hem lands
    hem_half: float  # body scales: half the garment's own width at its hem
    reach: dict[str, float]  # per garment sleeve: how far along the arm chain it reaches, px
    sleeve_half: dict[str, float]  # per garment sleeve: its half width on the arm, px

    def canvas_v(self, g: GarmentGeometry, canvas_y: float) -> float:
        """Pixels below the shoulder centre where the garment's canvas row ``canvas_y`` lands."""
        return (canvas_y - g.shoulder_y) * self.k + self.top_px

    def canvas_y(self, g: GarmentGeometry, v_px: np.ndarray) -> np.ndarray:
        """Canvas row of the garment at ``v_px`` pixels below the shoulder centre."""
        return g.shoulder_y + (v_px - np.float32(self.top_px)) * np.float32(1.0 / self.k)


def facing_width(b: Body, cfg: FitConfig) -> float:
    """The shoulder-joint distance the wearer would show facing the camera: the measured one, or,
    turned (a side view's shoulders nearly overlap), what the body's other lengths say: the mean
    of the torso's and the longer upper arm's estimates (a side view's landmarks misplace one or
    the other, rarely both the same way)."""
    px = b.px
    across = float(np.hypot(*(px[LM.LEFT_SHOULDER] - px[LM.RIGHT_SHOULDER])))
    upper = max(
        float(np.hypot(*(px[LM.LEFT_SHOULDER] - px[LM.LEFT_ELBOW]))),
        float(np.hypot(*(px[LM.RIGHT_SHOULDER] - px[LM.RIGHT_ELBOW]))),
    )
    lengths = (cfg.facing_ratio * b.torso_len + cfg.arm_ratio * upper) / 2
    return max(across, lengths, 4.0)


def fit_garment(
    g: GarmentGeometry,
    b: Body,
    chains: list[list[np.ndarray]],
    cfg: FitConfig,
    facing: float | None = None,
) -> Fit:
    """``chains``: per image side (garment sleeve 'left' first), the arm's shoulder, elbow, wrist.
    ``facing``: the wearer's facing shoulder width, when known better than this frame shows it
    (held from when the person faced the camera); else ``facing_width``."""
    k = cfg.seam_width * (facing if facing is not None else facing_width(b, cfg)) / (g.seam_width or g.width)
    top_px = -cfg.seam_up * b.scale
    hem_v = (top_px + g.length * k) / b.torso_len
    half = (g.keypoints["hem_right"][0] - g.keypoints["hem_left"][0]) / 2
    reach, sleeve_half = {}, {}
    for side, chain in zip(("left", "right"), chains, strict=True):
        upper = float(np.hypot(*(chain[1] - chain[0])))
        fore = float(np.hypot(*(chain[2] - chain[1])))
        sl = g.sleeves[side]
        # the garment's sleeve starts at its armhole's middle, the arm chain at the joint
        length = sl.length * k
        if g.long_sleeves:
            length = min(length, upper + fore + cfg.cuff_past_wrist * b.scale)
        else:  # a short sleeve never ends past the elbow, however long the flat-lay says it is
            length = min(length, 0.9 * upper)
        reach[side] = 0.0 if g.sleeveless else max(length, 1.0)
        hw = sl.half_width * k / cfg.sleeve_flat
        sleeve_half[side] = float(np.clip(hw, cfg.sleeve_min * b.scale / 2, cfg.sleeve_max * b.scale / 2))
    return Fit(k, top_px, hem_v, half * k / b.scale, reach, sleeve_half)
