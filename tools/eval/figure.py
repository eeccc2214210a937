# ruff: noqa: RUF005  (numpy point + offset tuple is vector addition, not concatenation)
"""A procedural person for the render evaluation: hard poses, light and folds, exact ground truth.

Extends the training figure (``tools.training.data``: capsule limbs, gradient background, catalogue
garments) to camera resolution with what the warp renderer must cope with:

- a **shading field** (a side light, cylinder shading across torso and arms, fold creases fixed
  to the body) that the garment's albedo is multiplied by, so the same pose in garment A and in
  garment B has the same light and folds: a renderer that carries A's shading over to B is right;
- **pose families**: ``front``, ``side`` (turned 65°: narrow shoulders, the far arm behind the
  torso), ``crossed_arms``, ``raised_arms``, ``hand_on_chest``, ``sleeve_change`` (long sleeves
  over short and the reverse);
- **sleeves** as the garment has them: a tee's sleeve ends on the upper arm and shows the skin
  below; a shirt's covers the arm to the wrist.

Every frame comes with its person mask and garment mask (what the garment covers, after
occlusion by the arms). Deterministic: same arguments, same pixels. Pure numpy + OpenCV.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from services.garments.catalogue import SILHOUETTES, GarmentSpec, render
from services.generator.warp.geometry import SLEEVE_LONG_RATIO
from tools.training.data import Body, _background, _random_body

POSES = ("front", "side", "crossed_arms", "raised_arms", "hand_on_chest", "sleeve_change")
SUPERSAMPLE = 2
SIDE_TURN_DEG = 65.0
NOISE_SIGMA = 2.0  # camera noise, grey levels (the same noise in the input and the ground truth)

# MediaPipe indices the figure moves (the preprocess finds its own; these only steer the drawing)
NOSE, L_SH, R_SH, L_EL, R_EL, L_WR, R_WR, L_HIP, R_HIP, L_KN, R_KN, L_AN, R_AN = (
    0, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28,
)  # fmt: skip


@dataclass(frozen=True)
class FigureConfig:
    """Sizes of the figure in output pixels (640x480 frame)."""

    width: int = 640
    height: int = 480
    neck_y: float = 120.0  # the shoulder line's height in the frame
    shoulder_half: float = 48.0  # joint to body centre, facing the camera
    chest_half: float = 44.0  # torso silhouette half-width at the armpits
    hip_half: float = 39.0
    depth_half: float = 27.0  # torso half-depth: what a turned body shows instead of its width
    torso_len: float = 128.0  # neck (shoulder line) to hip line
    upper_arm: float = 78.0
    forearm: float = 72.0
    arm_thick: float = 23.0
    forearm_thick: float = 20.0
    sleeve_extra: float = 6.0  # a sleeve is this much thicker than the arm inside it
    head_r: float = 30.0
    neck_len: float = 26.0
    thigh: float = 94.0
    leg_thick: float = 31.0


@dataclass
class FigureFrame:
    """One rendered frame: BGR image and ground truth masks (bool). ``keep_out``: what no garment
    may ever cover, as seen in this frame: face, hair, ears, the neck above the collar, hands."""

    image: np.ndarray
    person: np.ndarray
    garment: np.ndarray
    keep_out: np.ndarray | None = None


@dataclass(frozen=True)
class Pose:
    """Image-space joints (pixels), the turn angle, and which arms lie in front of the torso."""

    joints: dict[int, np.ndarray]
    turn: float  # radians, 0 = facing the camera
    arms_in_front: tuple[bool, bool]  # (image-left arm, image-right arm)


SEAM_WIDTH = 1.15  # a garment's shoulder seams / the figure's shoulder joints, apart
SEAM_UP = 0.06  # shoulder widths: the seam sits this far above the shoulder joints
WAIST = 0.75  # torso lengths below the shoulders: where a skirt starts to stand out from the body


@dataclass(frozen=True)
class Worn:
    """A catalogue garment as the figure wears it: its flat-lay (BGR, alpha) and the keypoints
    that say where its body, sleeves and hem are. Worn at one scale (``scale``: body px per
    flat-lay px, its shoulder seams on the figure's shoulders): its own length, sleeve length
    and neckline decide where it ends on the body."""

    image: np.ndarray
    alpha: np.ndarray
    kp: dict[str, np.ndarray]
    shoulder_y: float
    width: float  # shoulder seam to seam (or armpit to armpit, where wider), flat-lay px
    length: float  # shoulder line to hem line
    sleeve: float  # the sleeve's length from its armhole's middle to its cuff
    cloth: np.ndarray  # a patch of the body's fabric (for the sleeves)

    def edges(self, cy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The garment body's left and right edge at flat-lay rows ``cy`` (keypoint lines)."""
        kp = self.kp
        rows = [
            self.shoulder_y,
            (kp["armpit_left"][1] + kp["armpit_right"][1]) / 2,
            self.shoulder_y + self.length,
        ]
        cl = np.interp(cy, rows, [kp["shoulder_left"][0], kp["armpit_left"][0], kp["hem_left"][0]])
        cr = np.interp(cy, rows, [kp["shoulder_right"][0], kp["armpit_right"][0], kp["hem_right"][0]])
        return cl, cr

    def scale(self, cfg: FigureConfig) -> float:
        return SEAM_WIDTH * 2 * cfg.shoulder_half / self.width


@functools.lru_cache(maxsize=64)
def worn(spec: GarmentSpec) -> Worn:
    g = render(spec, width=400, height=450)
    kp = {k: np.array(v, np.float64) for k, v in g.keypoints.items()}
    shoulder_y = float(kp["shoulder_left"][1] + kp["shoulder_right"][1]) / 2
    # laid on the shoulders by its seams, or by its chest where its shoulders are straps
    width = max(
        float(np.hypot(*(kp["shoulder_right"] - kp["shoulder_left"]))),
        float(abs(kp["armpit_right"][0] - kp["armpit_left"][0])),
    )
    length = float(kp["hem_left"][1] + kp["hem_right"][1]) / 2 - shoulder_y
    root = (kp["shoulder_left"] + kp["armpit_left"]) / 2
    sleeve = float(np.hypot(*(kp["sleeve_left"] - root)))
    # the sleeves' fabric: the body's, from its lower part (a chest print is not on the sleeves)
    x0, x1 = sorted((kp["armpit_left"][0], kp["armpit_right"][0]))
    y1 = kp["hem_left"][1] - 3
    y0 = max(kp["armpit_left"][1], y1 - 0.35 * length)
    cloth = np.ascontiguousarray(g.image[int(y0) : int(y1), int(x0) + 3 : int(x1) - 3])
    return Worn(g.image, g.alpha, kp, shoulder_y, width, length, sleeve, cloth)


def is_long_sleeved(spec: GarmentSpec) -> bool:
    w = worn(spec)
    return w.sleeve / w.width > SLEEVE_LONG_RATIO


def _rot(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _limb(root: np.ndarray, angle: float, length: float) -> np.ndarray:
    """A point ``length`` from ``root`` at ``angle`` (0 = straight down, positive = image right)."""
    return root + length * np.array([math.sin(angle), math.cos(angle)])


def pose(family: str, cfg: FigureConfig, body: Body, t: float) -> Pose:
    """The joints of ``family`` at phase ``t`` (a slow sway around the family's posture)."""
    sway = 0.06 * math.sin(t)
    cx = cfg.width * (0.5 + 0.04 * (body.centre[0] - 0.5))
    neck = np.array([cx + 6 * math.sin(0.7 * t), cfg.neck_y + 3 * math.sin(0.5 * t)])
    turn = (
        math.radians(SIDE_TURN_DEG) * (1 if body.gradient_angle < math.pi else -1)
        if family == "side"
        else 0.0
    )
    sh = cfg.shoulder_half * math.cos(turn)
    hip = cfg.hip_half * math.cos(turn)
    j: dict[int, np.ndarray] = {}
    j[L_SH], j[R_SH] = neck + (-sh, 0), neck + (sh, 0)
    pelvis = neck + (0, cfg.torso_len)
    j[L_HIP], j[R_HIP] = pelvis + (-hip, 0), pelvis + (hip, 0)
    j[NOSE] = neck + (cfg.shoulder_half * math.sin(turn) * 0.35, -cfg.neck_len - 0.6 * cfg.head_r)
    j[L_KN], j[R_KN] = _limb(j[L_HIP], 0.04, cfg.thigh), _limb(j[R_HIP], -0.04, cfg.thigh)
    j[L_AN], j[R_AN] = _limb(j[L_KN], 0.0, cfg.thigh), _limb(j[R_KN], 0.0, cfg.thigh)
    front = (False, False)
    ua, fa = cfg.upper_arm, cfg.forearm
    if family in ("front", "sleeve_change"):
        j[L_EL] = _limb(j[L_SH], -0.28 - sway, ua)
        j[R_EL] = _limb(j[R_SH], 0.28 + sway, ua)
        j[L_WR] = _limb(j[L_EL], -0.15 - 2 * sway, fa)
        j[R_WR] = _limb(j[R_EL], 0.15 + 2 * sway, fa)
    elif family == "side":
        j[L_EL] = _limb(j[L_SH], -0.1 - sway, ua)
        j[R_EL] = _limb(j[R_SH], 0.1 + sway, ua)
        j[L_WR] = _limb(j[L_EL], 0.35 - sway, fa)
        j[R_WR] = _limb(j[R_EL], -0.35 + sway, fa)
        front = (turn > 0, turn < 0)  # the near arm hangs in front of the turned torso
    elif family == "crossed_arms":
        j[L_EL] = _limb(j[L_SH], -0.12 - sway, ua * 0.95)
        j[R_EL] = _limb(j[R_SH], 0.12 + sway, ua * 0.95)
        j[L_WR] = j[R_EL] + (-4, -26)  # each hand on the other elbow
        j[R_WR] = j[L_EL] + (4, -36)
        front = (True, True)
    elif family == "raised_arms":
        j[L_EL] = _limb(j[L_SH], -math.pi + 0.9 + sway, ua)
        j[R_EL] = _limb(j[R_SH], math.pi - 0.9 - sway, ua)
        j[L_WR] = _limb(j[L_EL], -math.pi + 0.25 + sway, fa)
        j[R_WR] = _limb(j[R_EL], math.pi - 0.25 - sway, fa)
    elif family == "hand_on_chest":
        j[L_EL] = _limb(j[L_SH], -0.25 - sway, ua)
        j[R_EL] = _limb(j[R_SH], 0.45 + sway, ua * 0.92)
        j[L_WR] = _limb(j[L_EL], -0.2, fa)
        j[R_WR] = neck + (-0.05 * cfg.shoulder_half, 0.36 * cfg.torso_len + 4 * math.sin(t))
        front = (False, True)
    else:
        raise ValueError(f"unknown pose family {family!r}; one of {POSES}")
    return Pose(j, turn, front)


def _pt(p: np.ndarray) -> tuple[int, int]:
    return round(float(p[0]) * SUPERSAMPLE), round(float(p[1]) * SUPERSAMPLE)


def _capsule(mask: np.ndarray, a: np.ndarray, b: np.ndarray, thick: float) -> None:
    t = max(1, round(thick * SUPERSAMPLE))
    cv2.line(mask, _pt(a), _pt(b), 255, t)
    cv2.circle(mask, _pt(a), t // 2, 255, -1)
    cv2.circle(mask, _pt(b), t // 2, 255, -1)


def _cloth_map(tex: np.ndarray, a: np.ndarray, b: np.ndarray, k: float, size: tuple[int, int]) -> np.ndarray:
    """``tex`` laid along the segment a -> b at ``k`` body px per texture px (its width across,
    its height along, centred on the segment; repeated by reflection), big-canvas px."""
    a2, b2 = a * SUPERSAMPLE, b * SUPERSAMPLE
    d = b2 - a2
    n = float(np.hypot(*d)) or 1.0
    u = d / n
    side = np.array([-u[1], u[0]])
    th, tw = tex.shape[:2]
    ks = k * SUPERSAMPLE
    origin = a2 - side * (tw / 2) * ks
    src = np.float32([[0, 0], [tw - 1, 0], [0, th - 1]])
    dst = np.float32([origin, origin + side * (tw - 1) * ks, origin + u * (th - 1) * ks])
    m = cv2.getAffineTransform(src, dst)
    return cv2.warpAffine(tex, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def shading_field(cfg: FigureConfig, p: Pose, shape: tuple[int, int], seed: int) -> np.ndarray:
    """The light and folds on the clothes (float32, about 0.45..1.05), fixed to the body: a side
    light across the frame, the torso's cylinder falloff, and fold creases in torso coordinates."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / SUPERSAMPLE
    rng = np.random.default_rng(seed)
    light_dir = -1.0 if rng.random() < 0.5 else 1.0
    neck = (p.joints[L_SH] + p.joints[R_SH]) / 2
    half = math.hypot(cfg.chest_half * math.cos(p.turn), cfg.depth_half * math.sin(p.turn))
    u = (xx - neck[0]) / half  # -1..1 across the torso
    v = (yy - neck[1]) / cfg.torso_len  # 0..1 down
    light = 0.86 + 0.12 * light_dir * np.clip(u, -1.5, 1.5) / 1.5
    cylinder = 1.0 - 0.22 * np.clip(np.abs(u), 0, 1.3) ** 2
    freq, angle = rng.uniform(2.2, 3.2), rng.uniform(-0.6, 0.6)
    phase = rng.uniform(0, 2 * math.pi)
    wave = np.cos(2 * math.pi * freq * (np.cos(angle) * v + np.sin(angle) * 0.5 * u) + phase)
    folds = 1.0 - 0.28 * np.clip(wave, 0, 1) ** 3 * np.clip(v * 1.6, 0.2, 1.0)
    return (light * cylinder * folds).astype(np.float32)


def _torso_garment(
    cfg: FigureConfig,
    wg: Worn,
    k: float,
    torso_m: np.ndarray,
    neck: np.ndarray,
    hips: np.ndarray,
    squeeze: float,
    size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 mask, float32 BGR) of the garment's body on the figure, big-canvas px. Down the body
    at the garment's own scale from its shoulder seam (so its neckline and hem fall where its
    shape puts them); across, where the torso is narrower than the garment it wraps the torso's
    outline, where wider the garment's own width shows; below the torso it hangs by its own
    outline (as wide as a turned body shows it)."""
    W, H = size
    ys = (np.arange(H, dtype=np.float32) + 0.5) / SUPERSAMPLE
    xs = (np.arange(W, dtype=np.float32) + 0.5) / SUPERSAMPLE
    seam = float(neck[1]) - SEAM_UP * 2 * cfg.shoulder_half
    cy = wg.shoulder_y + (ys - seam) / k  # flat-lay row of each canvas row
    cl, cr = wg.edges(cy)
    own = (cr - cl) / 2 * k * squeeze
    rows = torso_m.any(axis=1)
    first = np.where(rows, np.argmax(torso_m > 0, axis=1), 0)
    last = np.where(rows, W - 1 - np.argmax(torso_m[:, ::-1] > 0, axis=1), 0)
    left_b, right_b = (first + 0.5) / SUPERSAMPLE, (last + 0.5) / SUPERSAMPLE
    mid = np.where(rows, (left_b + right_b) / 2, float(hips[0]))
    # above the waist the garment wraps the torso (or shows its own narrower outline); from the
    # waist down it stands out from the body where its own outline is wider (a skirt's flare)
    waist = ys > float(neck[1]) + WAIST * (float(hips[1]) - float(neck[1]))
    # a flat-lay's width wraps round the body: from the waist down its own outline is narrowed by
    # how much the torso narrows it at the waist (so it joins the torso there, and a flare widens
    # from there)
    if (waist & rows).any():
        at = int(np.argmax(waist & rows))
        ratio = float(np.clip((right_b[at] - left_b[at]) / 2 / max(float(own[at]), 1e-3), 0.45, 1.0))
        own = np.where(waist, own * ratio, own)
    lo = np.where(
        rows, np.where(waist, np.minimum(left_b, mid - own), np.maximum(left_b, mid - own)), mid - own
    )
    hi = np.where(
        rows, np.where(waist, np.maximum(right_b, mid + own), np.minimum(right_b, mid + own)), mid + own
    )
    u = (xs[None, :] - lo[:, None]) / np.maximum(hi - lo, 1e-3)[:, None]
    map_x = (cl[:, None] + u * (cr - cl)[:, None]).astype(np.float32)
    map_y = np.repeat(cy[:, None], W, axis=1).astype(np.float32)
    alpha = cv2.remap(wg.alpha, map_x, map_y, cv2.INTER_LINEAR, borderValue=0)
    inside = (u >= 0) & (u <= 1) & (cy[:, None] >= 0)
    below = ~rows[:, None] & (ys[:, None] > float(neck[1]))
    mask = ((alpha > 127) & inside & (rows[:, None] | below)).astype(np.uint8) * 255
    above_waist = rows & ~waist
    mask[above_waist] &= torso_m[above_waist]
    tex = cv2.remap(wg.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return mask, tex.astype(np.float32)


def draw(
    cfg: FigureConfig, body: Body, p: Pose, spec: GarmentSpec, noise_seed: int, shade_seed: int
) -> FigureFrame:
    """The figure in ``p`` wearing ``spec``: image (noisy BGR), person and garment masks."""
    W, H = cfg.width * SUPERSAMPLE, cfg.height * SUPERSAMPLE
    j = p.joints
    wg = worn(spec)
    k = wg.scale(cfg)
    long_sleeves = is_long_sleeved(spec)
    shade = shading_field(cfg, p, (H, W), shade_seed)
    skin = np.array(body.skin[::-1], np.float32)  # RGB in the training body -> BGR
    img = cv2.resize(_background(body, 256), (W, H), interpolation=cv2.INTER_LINEAR)[..., ::-1].copy()
    person = np.zeros((H, W), np.uint8)
    garment = np.zeros((H, W), np.uint8)
    keep_out = np.zeros((H, W), np.uint8)

    def paint(
        mask: np.ndarray,
        colour: np.ndarray,
        shaded: np.ndarray | None = None,
        is_garment: bool = False,
        is_kept: bool = False,
    ):
        sel = mask > 0
        src = colour if shaded is None else shaded[sel]
        img[sel] = src if shaded is not None else colour
        person[sel] = 255
        garment[sel] = 255 if is_garment else 0
        keep_out[sel] = 255 if is_kept else 0

    # legs (trousers)
    legs = np.zeros((H, W), np.uint8)
    for a, b in ((L_HIP, L_KN), (L_KN, L_AN), (R_HIP, R_KN), (R_KN, R_AN)):
        _capsule(legs, j[a], j[b], cfg.leg_thick * (0.8 + 0.2 * math.cos(p.turn)))
    trousers = np.array(body.trousers[::-1], np.float32)
    paint(legs, trousers, trousers[None, :] * (0.6 + 0.4 * shade[..., None]))

    def arm(side: int) -> None:
        sh, el, wr = (j[L_SH], j[L_EL], j[L_WR]) if side == 0 else (j[R_SH], j[R_EL], j[R_WR])
        skin_m = np.zeros((H, W), np.uint8)
        _capsule(skin_m, sh, el, cfg.arm_thick)
        _capsule(skin_m, el, wr, cfg.forearm_thick)
        hand_dir = (wr - el) / max(float(np.hypot(*(wr - el))), 1.0)
        hand = np.zeros((H, W), np.uint8)
        cv2.circle(hand, _pt(wr + hand_dir * 9), round(11 * SUPERSAMPLE), 255, -1)
        arm_shade = 0.55 + 0.45 * shade
        paint(skin_m, skin, skin[None, :] * arm_shade[..., None])
        paint(hand, skin, skin[None, :] * arm_shade[..., None], is_kept=True)
        # the sleeve: from the shoulder as far along the arm as the garment's own sleeve is long
        # (at the garment's scale), a short one never past the elbow, a long one to the wrist
        upper = float(np.hypot(*(el - sh)))
        fore = float(np.hypot(*(wr - el)))
        reach = 0.0 if SILHOUETTES[spec.silhouette].sleeveless else wg.sleeve * k
        reach = min(reach, upper + fore) if long_sleeves else min(reach, 0.9 * upper)
        sleeve = np.zeros((H, W), np.uint8)
        texture = np.zeros((H, W, 3), np.float32)
        if reach <= 0:  # sleeveless: the bare arm out of the armhole
            return
        end_upper = sh + (el - sh) * min(1.0, reach / max(upper, 1.0))
        _capsule(sleeve, sh, end_upper, cfg.arm_thick + cfg.sleeve_extra)
        texture[:] = _cloth_map(wg.cloth, sh, el, k, (W, H))
        if reach > upper:
            end_fore = el + (wr - el) * min(1.0, (reach - upper) / max(fore, 1.0))
            fore_m = np.zeros((H, W), np.uint8)
            _capsule(fore_m, el, end_fore, cfg.forearm_thick + cfg.sleeve_extra)
            fore_tex = _cloth_map(wg.cloth, el, wr, k, (W, H))
            sel = (fore_m > 0) & ~(sleeve > 0)
            texture[sel] = fore_tex[sel]
            sleeve |= fore_m
        paint(sleeve, np.zeros(3), texture * shade[..., None], is_garment=True)

    far = [s for s in (0, 1) if not p.arms_in_front[s]]
    near = [s for s in (0, 1) if p.arms_in_front[s]]
    behind_first = sorted(far, key=lambda s: -abs(p.turn) * (1 if (s == 0) == (p.turn > 0) else -1))
    if abs(p.turn) > 0.1:  # turned: the far arm is behind the torso
        for s in behind_first:
            arm(s)
    # torso
    neck = (j[L_SH] + j[R_SH]) / 2
    pelvis = (j[L_HIP] + j[R_HIP]) / 2
    half_top = math.hypot(cfg.chest_half * math.cos(p.turn), cfg.depth_half * math.sin(p.turn))
    half_bot = math.hypot(cfg.hip_half * math.cos(p.turn), cfg.depth_half * 0.95 * math.sin(p.turn))
    shift = np.array([cfg.depth_half * 0.35 * math.sin(p.turn), 0.0])  # the chest leads a turned body
    quad = np.array(
        [neck - (half_top, 0) + shift - (0, 4), neck + (half_top, 0) + shift - (0, 4),
         pelvis + (half_bot, 0) + shift * 0.5 + (0, 8), pelvis - (half_bot, 0) + shift * 0.5 + (0, 8)],
        np.float32,
    )  # fmt: skip
    torso_m = np.zeros((H, W), np.uint8)
    cv2.fillConvexPoly(torso_m, np.round(quad * SUPERSAMPLE).astype(np.int32), 255)
    for sh in (j[L_SH], j[R_SH]):  # rounded shoulders
        cv2.circle(torso_m, _pt(sh + (0, 6)), round(cfg.arm_thick * 0.62 * SUPERSAMPLE), 255, -1)
    # the body under the garment is skin; the garment lies on it by its own shape
    paint(torso_m, skin, skin[None, :] * (0.55 + 0.45 * shade[..., None]))
    cover, tex = _torso_garment(
        cfg, wg, k, torso_m, neck, pelvis + shift * 0.5, half_top / cfg.chest_half, (W, H)
    )
    paint(cover, np.zeros(3), tex * shade[..., None], is_garment=True)
    # neck and head (skin, lit by the side light only)
    head_c = neck + (j[NOSE] - neck) * 1.05
    hn = np.zeros((H, W), np.uint8)
    _capsule(hn, neck - (0, 6), head_c, cfg.head_r * 0.7)
    cv2.circle(hn, _pt(head_c), round(cfg.head_r * SUPERSAMPLE), 255, -1)
    paint(hn, skin, skin[None, :] * (0.75 + 0.25 * shade[..., None]), is_kept=True)
    r = cfg.head_r
    hair = np.zeros((H, W), np.uint8)
    axes = (round(r * 1.04 * SUPERSAMPLE), round(r * 0.8 * SUPERSAMPLE))
    cv2.ellipse(hair, _pt(head_c - (0, r * 0.3)), axes, 0, 180, 360, 255, -1)
    paint(hair, np.array(body.trousers[::-1], np.float32) * 0.5, is_kept=True)
    # a face: eyes, brows, nose shadow and mouth (the pose detector looks for one)
    look = np.array([math.sin(p.turn) * r * 0.45, 0.0])
    face = head_c + look
    dark = np.array([40, 30, 30], np.float32)
    for dx in (-0.36, 0.36):
        if abs(p.turn) > 0.8 and dx * p.turn < 0:
            continue  # the far eye is hidden on a turned head
        eye = face + (dx * r * math.cos(p.turn) * 1.0, -0.05 * r)
        white = np.zeros((H, W), np.uint8)
        cv2.ellipse(
            white, _pt(eye), (round(r * 0.2 * SUPERSAMPLE), round(r * 0.12 * SUPERSAMPLE)), 0, 0, 360, 255, -1
        )
        paint(white, np.array([235, 240, 245], np.float32), is_kept=True)
        iris = np.zeros((H, W), np.uint8)
        cv2.circle(iris, _pt(eye), round(r * 0.09 * SUPERSAMPLE), 255, -1)
        paint(iris, dark, is_kept=True)
        brow = np.zeros((H, W), np.uint8)
        cv2.line(
            brow,
            _pt(eye + (-0.2 * r, -0.25 * r)),
            _pt(eye + (0.2 * r, -0.28 * r)),
            255,
            round(r * 0.07 * SUPERSAMPLE),
        )
        paint(brow, dark, is_kept=True)
    nose = np.zeros((H, W), np.uint8)
    cv2.line(
        nose, _pt(face + (0, 0.05 * r)), _pt(face + (0.06 * r, 0.3 * r)), 255, round(r * 0.06 * SUPERSAMPLE)
    )
    paint(nose, skin * 0.7, is_kept=True)
    mouth = np.zeros((H, W), np.uint8)
    cv2.ellipse(mouth, _pt(face + (0, 0.52 * r)), (round(r * 0.26 * math.cos(p.turn * 0.7) * SUPERSAMPLE),
                round(r * 0.08 * SUPERSAMPLE)), 0, 0, 360, 255, -1)  # fmt: skip
    paint(mouth, np.array([70, 60, 150], np.float32), is_kept=True)
    if abs(p.turn) <= 0.1:
        for s in far:
            arm(s)
    for s in near:
        arm(s)

    size = (cfg.width, cfg.height)
    out = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    noise = np.random.default_rng(noise_seed).normal(0, NOISE_SIGMA, out.shape).astype(np.float32)
    image = np.clip(out + noise + 0.5, 0, 255).astype(np.uint8)
    person_s = cv2.resize(person, size, interpolation=cv2.INTER_AREA) > 127
    garment_s = cv2.resize(garment, size, interpolation=cv2.INTER_AREA) > 127
    kept_s = cv2.resize(keep_out, size, interpolation=cv2.INTER_AREA) > 127
    return FigureFrame(image, person_s, garment_s & person_s, kept_s)


@dataclass
class EvalClip:
    """One pose family clip: the camera input (wearing A) and the ground truth (wearing B)."""

    family: str
    garment_a: str
    garment_b: str
    inputs: list[FigureFrame]
    truth: list[FigureFrame]
    still_from: int  # frames from here on hold the same pose (only camera noise changes)
    lead_in: list[np.ndarray] = field(default_factory=list)  # camera frames before the clip (in A)


def _contrasting(body: Body, rng: np.random.Generator, specs: tuple[GarmentSpec, ...]) -> Body:
    """``body`` with a background far (in RGB) from its skin, trousers and both garments: a
    person a camera (and the pose tracker) can tell from the wall behind."""
    near = [np.array(body.skin, float), np.array(body.trousers, float)]
    near += [worn(s).cloth.reshape(-1, 3).mean(axis=0)[::-1] for s in specs]  # BGR -> RGB
    background = body.background
    for _ in range(200):
        if all(min(float(np.linalg.norm(np.array(c, float) - n)) for n in near) >= 90 for c in background):
            break
        background = tuple(tuple(int(v) for v in rng.integers(20, 236, 3)) for _ in range(2))
    return dataclasses.replace(body, background=background)


def _between(a: Pose, b: Pose, w: float) -> Pose:
    """``a`` moved a fraction ``w`` of the way to ``b`` (joints and turn; ``b``'s layering)."""
    joints = {k: a.joints[k] * (1 - w) + b.joints[k] * w for k in a.joints}
    return Pose(joints, a.turn * (1 - w) + b.turn * w, b.arms_in_front)


def make_eval_clip(
    family: str,
    seed: int,
    frames: int,
    spec_a: GarmentSpec,
    spec_b: GarmentSpec,
    cfg: FigureConfig | None = None,
    lead_in: int = 0,
    contrast_with: tuple[GarmentSpec, ...] | None = None,
    truth_only: bool = False,
) -> EvalClip:
    """``frames`` frames: the first half sways slowly, the second half holds still. ``lead_in``
    camera frames before them walk from the front pose into the family's (in garment A, no
    ground truth): the way a shopper gets into a pose, so the tracker has found the person.

    The background is chosen to stand apart from ``contrast_with`` (default: both garments); a
    clip whose camera input is shared by several targets chooses it by garment A alone, so that
    each target's ground truth has the same background as that input (``truth_only``: only the
    ground truth is drawn, ``inputs`` and ``lead_in`` are left empty)."""
    cfg = cfg or FigureConfig()
    rng = np.random.default_rng(seed)
    body = _contrasting(_random_body(rng), rng, contrast_with or (spec_a, spec_b))
    still_from = max(1, frames // 2)
    start = pose(family, cfg, body, 0.0)
    front = pose("front", cfg, body, 0.0)
    walk = [
        draw(
            cfg, body, _between(front, start, (k + 1) / (lead_in + 1)), spec_a, seed * 1000 - 1 - k, seed
        ).image
        for k in range(0 if truth_only else lead_in)
    ]
    inputs, truth = [], []
    for i in range(frames):
        t = 0.35 * min(i, still_from)
        p = pose(family, cfg, body, t)
        if not truth_only:
            inputs.append(draw(cfg, body, p, spec_a, seed * 1000 + i, seed))
        truth.append(draw(cfg, body, p, spec_b, seed * 1000 + i, seed))
    return EvalClip(family, spec_a.garment_id, spec_b.garment_id, inputs, truth, still_from, walk)
