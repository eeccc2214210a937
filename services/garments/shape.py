"""Category and sleeve length of a garment from its flat outline. Pure: numpy + OpenCV.

Why from the outline: it is what every input gives (a flat-lay, a ghost-mannequin shot, a cut-out,
a garment taken off a photo of a person), and the classes differ in shape more than in anything
else. Measured on the canonical canvas, in units of the body's width at the armpits:

- sleeve ratio (sleeve length from the middle of shoulder and armpit to the cuff, over the
  shoulder width; ``SLEEVE_LONG_RATIO`` is the warp renderer's): ``none`` when both sleeves fell
  back (no cuff: sleeveless), ``short`` below the long ratio, ``long`` above it;
- length (shoulder line to hem) and flare (hem width): a dress is long and flares, or is very
  long; a cropped top is short;
- the neckline: deep and V-shaped (the opening fills about half of its bounding box, a scoop
  about three quarters) is an open front: a jacket or coat.

Rules, in order: jacket, dress, top (sleeveless or cropped), then tshirt (short sleeves) or shirt
(long). Each answer carries a confidence from how far its deciding measure is from the threshold
(0.5 on the threshold, towards 1 far from it), so a caller can say "inferred, and how sure".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SLEEVE_LONG_RATIO = 0.55  # sleeve length / shoulder width above which a sleeve is long (as the renderer)
SLEEVE_NONE_RATIO = 0.12  # below this a "sleeve" is only a cap
V_NECK_DEPTH = 0.28  # neckline depth / armpit width of an open front (scoops measure 0.06-0.22)
V_NECK_FILL = 0.55  # a V opening fills about 0.4-0.46 of its box, a scoop 0.6-0.75
DRESS_LENGTH = 1.45  # shoulder-to-hem length / armpit width
DRESS_FLARE = 1.25  # hem width / armpit width of a skirt
LONG_LENGTH = 1.9  # this long is a dress even without flare
CROPPED_LENGTH = 0.85


@dataclass(frozen=True)
class ShapeFeatures:
    sleeve_ratio: float
    sleeves_found: int  # 0, 1 or 2 sleeves ending in a cuff (not fallen back)
    length: float
    flare: float
    neck_depth: float
    neck_fill: float


@dataclass(frozen=True)
class Inferred:
    category: str
    category_confidence: float
    sleeve_length: str  # "none", "short", "long"
    sleeve_confidence: float
    features: ShapeFeatures


def _p(kp: dict, name: str) -> np.ndarray:
    return np.array(kp[name][:2], np.float64)


def features(keypoints: dict[str, tuple[float, ...]], mask: np.ndarray) -> ShapeFeatures:
    kp = keypoints
    armpit_w = max(abs(_p(kp, "armpit_right")[0] - _p(kp, "armpit_left")[0]), 1.0)
    shoulder_w = max(float(np.hypot(*(_p(kp, "shoulder_right") - _p(kp, "shoulder_left")))), 1.0)
    ratios, found = [], 0
    for side in ("left", "right"):
        if len(kp[f"sleeve_{side}"]) > 2 and kp[f"sleeve_{side}"][2] < 1.0:
            ratios.append(0.0)
            continue
        found += 1
        root = (_p(kp, f"shoulder_{side}") + _p(kp, f"armpit_{side}")) / 2
        ratios.append(float(np.hypot(*(_p(kp, f"sleeve_{side}") - root))) / shoulder_w)
    shoulder_y = (_p(kp, "shoulder_left")[1] + _p(kp, "shoulder_right")[1]) / 2
    hem_y = (_p(kp, "hem_left")[1] + _p(kp, "hem_right")[1]) / 2
    hem_w = abs(_p(kp, "hem_right")[0] - _p(kp, "hem_left")[0])
    nl, nr, collar = _p(kp, "neck_left"), _p(kp, "neck_right"), _p(kp, "collar")
    top = min(nl[1], nr[1])
    depth = max(collar[1] - top, 0.0)
    fill = 0.0
    x0, x1 = round(min(nl[0], nr[0])), round(max(nl[0], nr[0]))
    y0, y1 = round(top), round(collar[1])
    if x1 - x0 >= 3 and y1 - y0 >= 3:
        box = mask[y0:y1, x0 : x1 + 1] == 0
        fill = float(box.mean())
    return ShapeFeatures(
        sleeve_ratio=float(np.mean(ratios)) if found else 0.0,
        sleeves_found=found,
        length=(hem_y - shoulder_y) / armpit_w,
        flare=hem_w / armpit_w,
        neck_depth=depth / armpit_w,
        neck_fill=fill,
    )


def _sure(value: float, threshold: float, scale: float) -> float:
    """0.5 at the threshold, rising towards 1 as ``value`` moves away from it (log-ratio units)."""
    if value <= 0 or threshold <= 0:
        return 0.99
    return 0.5 + 0.49 * math.tanh(abs(math.log(value / threshold)) / scale)


def infer(
    keypoints: dict[str, tuple[float, ...]], mask: np.ndarray, sleeve: tuple[str, float] | None = None
) -> Inferred:
    """Category and sleeve length of the garment in ``mask`` (its canvas) with ``keypoints``;
    ``sleeve`` (class, confidence) when it was measured better elsewhere (on the person wearing
    it, along the arm)."""
    f = features(keypoints, mask)
    if sleeve is not None:
        sleeve_class, s_conf = sleeve
    elif f.sleeves_found == 0 or f.sleeve_ratio < SLEEVE_NONE_RATIO:
        sleeve_class = "none"
        s_conf = 0.9 if f.sleeves_found == 0 else _sure(f.sleeve_ratio, SLEEVE_NONE_RATIO, 0.3)
    elif f.sleeve_ratio > SLEEVE_LONG_RATIO:
        sleeve_class, s_conf = "long", _sure(f.sleeve_ratio, SLEEVE_LONG_RATIO, 0.25)
    else:
        sleeve_class, s_conf = "short", _sure(f.sleeve_ratio, SLEEVE_LONG_RATIO, 0.25)
    if sleeve is None and f.sleeves_found == 1:  # one cuff found, one not: say so
        s_conf = min(s_conf, 0.6)

    v_neck = f.neck_depth > V_NECK_DEPTH and f.neck_fill < V_NECK_FILL
    is_long = f.length > DRESS_LENGTH and (f.flare > DRESS_FLARE or f.length > LONG_LENGTH)
    if v_neck and sleeve_class != "none":
        category = "jacket"
        conf = min(_sure(f.neck_depth, V_NECK_DEPTH, 0.3), _sure(f.neck_fill, V_NECK_FILL, 0.15))
    elif is_long:
        category = "dress"
        conf = _sure(f.length, DRESS_LENGTH, 0.2)
        conf = min(conf, max(_sure(f.flare, DRESS_FLARE, 0.15), _sure(f.length, LONG_LENGTH, 0.2)))
    elif sleeve_class == "none" or f.length < CROPPED_LENGTH:
        category = "top"
        conf = s_conf if sleeve_class == "none" else _sure(f.length, CROPPED_LENGTH, 0.2)
    else:
        category = "tshirt" if sleeve_class == "short" else "shirt"
        conf = min(s_conf, _sure(f.length, CROPPED_LENGTH, 0.2), _sure(f.length, DRESS_LENGTH, 0.2))
    return Inferred(category, round(conf, 3), sleeve_class, round(s_conf, 3), f)
