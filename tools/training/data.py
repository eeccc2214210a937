"""Procedural training clips: an articulated figure wearing a catalogue garment, with ground truth.

Pure numpy + OpenCV, deterministic by seed, no downloads. A figure (torso, head, arms, legs as
filled capsules) moves smoothly (sums of slow sinusoids per joint angle plus a drift) in front of a
gradient background; a garment from the procedural catalogue is warped onto its torso and upper
arms (one perspective warp of the flat-lay texture). Every frame comes with MediaPipe-like
landmarks (33 x 4, the joints we draw are filled), the person mask and the garment mask.

Clip layouts (paper, "teacher with in-context learning"):

- training (``make_clip(swap_frame=None)``): the reference is frame 0 in garment A, the garment
  image is garment B, the target video wears B throughout (A == B now and then);
- evaluation (``make_clip(swap_frame=k)``): frames < k wear A, frames >= k wear B; the stream starts
  from the reference (frame 0 in A) with garment A and swaps to B at frame k.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from services.garments.catalogue import GarmentSpec, classic_catalogue, render
from services.generator.rendering import FrameInput
from services.generator.student_backend import conditioning_maps

SUPERSAMPLE = 2  # draw at 2x, area-downsample: antialiased edges at 64x64
SAME_GARMENT_P = 0.1  # training clips where A == B (the pre-swap part of a stream looks like that)
RESTART_LATENTS = (2, 3, 4)  # where a training clip's post-swap restart may begin (latent index)

# MediaPipe pose landmark indices of the joints the figure has.
NOSE, L_SH, R_SH, L_EL, R_EL, L_WR, R_WR = 0, 11, 12, 13, 14, 15, 16
L_HIP, R_HIP, L_KN, R_KN, L_AN, R_AN = 23, 24, 25, 26, 27, 28
FILLED_LANDMARKS = (NOSE, L_SH, R_SH, L_EL, R_EL, L_WR, R_WR, L_HIP, R_HIP, L_KN, R_KN, L_AN, R_AN)


@dataclass
class Clip:
    """One clip and its ground truth; images are RGB uint8 at the requested size."""

    frames: np.ndarray  # (T, H, W, 3) target video
    person_mask: np.ndarray  # (T, H, W) bool
    garment_mask: np.ndarray  # (T, H, W) bool: where the garment is drawn (torso + upper arms)
    landmarks: np.ndarray  # (T, 33, 4) float32: x, y normalised, z, visibility
    conditioning: np.ndarray  # (T, H, W, 4) uint8, exactly ``student_backend.conditioning_maps``
    reference: np.ndarray  # (H, W, 3): frame 0's pose wearing garment A
    garment_image: np.ndarray  # (H, W, 3): garment B flat-lay composited on white (training clips)
    garment_a: str
    garment_b: str
    garment_images: dict[str, np.ndarray]  # flat-lay of A and B
    swap_frame: int | None  # first frame wearing B in a swap clip; None for a training clip
    restart_latent: int = 0  # training clips: first video latent of the post-swap restart sample
    restart_window: np.ndarray | None = None  # (4, H, W, 3): the latent before it, worn in garment A


@dataclass(frozen=True)
class Body:
    """Random shape, colours and motion of one figure (normalised image units, y down)."""

    centre: np.ndarray  # (2,) pelvis centre at t = 0
    scale: float
    skin: tuple[int, int, int]
    trousers: tuple[int, int, int]
    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    gradient_angle: float
    freqs: np.ndarray  # (10,) angular speeds of the joint angles
    phases: np.ndarray  # (10,)
    amps: np.ndarray  # (10,)
    drift: np.ndarray  # (2,) pelvis velocity per frame
    shoulder_half: float
    hip_half: float


def _random_body(rng: np.random.Generator) -> Body:
    skins = [(241, 194, 167), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 57, 33), (255, 219, 172)]
    skin = np.clip(np.array(skins[rng.integers(len(skins))]) + rng.integers(-12, 13, 3), 0, 255)
    bg = [tuple(int(c) for c in rng.integers(20, 236, 3)) for _ in range(2)]
    return Body(
        centre=np.array([rng.uniform(0.42, 0.58), rng.uniform(0.56, 0.62)]),
        scale=float(rng.uniform(0.85, 1.1)),
        skin=tuple(int(c) for c in skin),
        trousers=tuple(int(c) for c in rng.integers(20, 120, 3)),
        background=(bg[0], bg[1]),
        gradient_angle=float(rng.uniform(0, 2 * math.pi)),
        freqs=rng.uniform(0.05, 0.22, 10),
        phases=rng.uniform(0, 2 * math.pi, 10),
        amps=rng.uniform(0.15, 0.6, 10),
        drift=rng.uniform(-0.003, 0.003, 2),
        shoulder_half=float(rng.uniform(0.11, 0.14)),
        hip_half=float(rng.uniform(0.07, 0.095)),
    )


def _pose(body: Body, t: int) -> dict[int, np.ndarray]:
    """Joint positions (normalised) at frame ``t``: a smooth function of t."""
    wave = body.amps * np.sin(body.freqs * t + body.phases)
    s = body.scale
    pelvis = body.centre + body.drift * t
    lean = 0.15 * wave[0]
    up = np.array([math.sin(lean), -math.cos(lean)])
    side = np.array([-up[1], up[0]])  # image-right of the figure's up vector
    torso = 0.26 * s
    neck = pelvis + up * torso
    joints = {
        L_SH: neck - side * body.shoulder_half * s,
        R_SH: neck + side * body.shoulder_half * s,
        L_HIP: pelvis - side * body.hip_half * s,
        R_HIP: pelvis + side * body.hip_half * s,
        NOSE: neck + up * 0.09 * s,
    }

    def limb(root: np.ndarray, base: float, swing: float, length: float) -> np.ndarray:
        angle = base + swing
        return root + length * s * np.array([math.sin(angle), math.cos(angle)])

    # Arms hang down (angle 0 = straight down), swinging outwards; forearms bend further.
    l_up = -0.35 - 0.8 * abs(wave[1])
    r_up = 0.35 + 0.8 * abs(wave[2])
    joints[L_EL] = limb(joints[L_SH], l_up, 0.0, 0.15)
    joints[R_EL] = limb(joints[R_SH], r_up, 0.0, 0.15)
    joints[L_WR] = limb(joints[L_EL], l_up - 0.9 * wave[3], 0.0, 0.14)
    joints[R_WR] = limb(joints[R_EL], r_up + 0.9 * wave[4], 0.0, 0.14)
    joints[L_KN] = limb(joints[L_HIP], -0.08 + 0.3 * wave[5], 0.0, 0.18)
    joints[R_KN] = limb(joints[R_HIP], 0.08 + 0.3 * wave[6], 0.0, 0.18)
    joints[L_AN] = limb(joints[L_KN], -0.08 + 0.3 * wave[5] - 0.3 * abs(wave[7]), 0.0, 0.18)
    joints[R_AN] = limb(joints[R_KN], 0.08 + 0.3 * wave[6] + 0.3 * abs(wave[8]), 0.0, 0.18)
    return joints


def _landmarks(joints: dict[int, np.ndarray]) -> np.ndarray:
    out = np.zeros((33, 4), np.float32)
    for idx, (x, y) in joints.items():
        out[idx] = (x, y, 0.0, 1.0)
    return out


@functools.lru_cache(maxsize=64)
def _flatlay(spec: GarmentSpec) -> tuple[np.ndarray, np.ndarray]:
    """(flat-lay RGB on white 128x144, torso texture crop RGB) of a catalogue garment."""
    g = render(spec, width=128, height=144)
    alpha = g.alpha.astype(np.float32)[..., None] / 255.0
    rgb = cv2.cvtColor(g.image, cv2.COLOR_BGR2RGB).astype(np.float32)
    on_white = np.clip(rgb * alpha + 255.0 * (1 - alpha), 0, 255).astype(np.uint8)
    kp = g.keypoints
    x0, x1 = kp["armpit_left"][0], kp["armpit_right"][0]
    y0 = kp["neck_left"][1] + 0.15 * (kp["hem_left"][1] - kp["neck_left"][1])
    y1 = kp["hem_left"][1] - 2
    x0, x1 = sorted((x0, x1))
    crop = cv2.cvtColor(g.image, cv2.COLOR_BGR2RGB)[int(y0) : int(y1), int(x0) + 2 : int(x1) - 2]
    return on_white, np.ascontiguousarray(crop)


def garment_flatlay(spec: GarmentSpec, size: tuple[int, int]) -> np.ndarray:
    """The garment image the student sees: flat-lay on white, RGB, resized to (H, W)."""
    on_white, _ = _flatlay(spec)
    return cv2.resize(on_white, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _background(body: Body, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ramp = (xx - 0.5) * math.cos(body.gradient_angle) + (yy - 0.5) * math.sin(body.gradient_angle) + 0.5
    ramp = np.clip(ramp, 0, 1)[..., None]
    a, b = (np.array(c, np.float32) for c in body.background)
    return a * (1 - ramp) + b * ramp


def _draw_frame(
    body: Body, joints: dict[int, np.ndarray], crop: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render at ``size`` (supersampled): RGB float, person mask, garment mask (float 0..1)."""
    px = {k: v * size for k, v in joints.items()}
    w = size / 64.0  # thickness unit

    def pt(p: np.ndarray) -> tuple[int, int]:
        return round(float(p[0])), round(float(p[1]))

    person = np.zeros((size, size), np.uint8)
    garment = np.zeros((size, size), np.uint8)
    skin = np.zeros((size, size), np.uint8)
    legs = np.zeros((size, size), np.uint8)
    for a, b in ((L_HIP, L_KN), (L_KN, L_AN), (R_HIP, R_KN), (R_KN, R_AN)):
        cv2.line(legs, pt(px[a]), pt(px[b]), 255, max(1, round(4.2 * w * body.scale)))
    for a, b in ((L_EL, L_WR), (R_EL, R_WR)):
        cv2.line(skin, pt(px[a]), pt(px[b]), 255, max(1, round(3.2 * w * body.scale)))
    neck = (px[L_SH] + px[R_SH]) / 2
    head = neck + (px[NOSE] - neck) * 1.25
    cv2.circle(skin, pt(head), round(4.8 * w * body.scale), 255, -1)
    cv2.line(skin, pt(neck), pt(head), 255, max(1, round(2.5 * w * body.scale)))
    torso = np.array([px[L_SH], px[R_SH], px[R_HIP], px[L_HIP]], np.float32)
    cv2.fillConvexPoly(garment, np.round(torso).astype(np.int32), 255)
    for a, b in ((L_SH, L_EL), (R_SH, R_EL)):
        cv2.line(garment, pt(px[a]), pt(px[b]), 255, max(1, round(3.8 * w * body.scale)))
    person = np.maximum.reduce([legs, skin, garment])

    # The garment texture: one perspective warp of the flat-lay torso crop onto the torso quad;
    # the upper arms reuse the same warp (reflected border) inside the garment mask.
    h, wc = crop.shape[:2]
    src = np.array([[0, 0], [wc - 1, 0], [wc - 1, h - 1], [0, h - 1]], np.float32)
    warp = cv2.getPerspectiveTransform(src, torso)
    texture = cv2.warpPerspective(
        crop, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    ).astype(np.float32)

    img = _background(body, size)
    layers = ((legs, np.array(body.trousers, np.float32)), (skin, np.array(body.skin, np.float32)))
    for mask, colour in layers:
        img[mask > 0] = colour
    g = garment > 0
    img[g] = texture[g]
    return img, person.astype(np.float32) / 255.0, garment.astype(np.float32) / 255.0


def _render(body: Body, t: int, spec: GarmentSpec, size: tuple[int, int]):
    big = size[0] * SUPERSAMPLE
    joints = _pose(body, t)
    _, crop = _flatlay(spec)
    img, person, garment = _draw_frame(body, joints, crop, big)
    dsize = (size[1], size[0])
    rgb = np.clip(cv2.resize(img, dsize, interpolation=cv2.INTER_AREA) + 0.5, 0, 255).astype(np.uint8)
    person = cv2.resize(person, dsize, interpolation=cv2.INTER_AREA) > 0.5
    garment = cv2.resize(garment, dsize, interpolation=cv2.INTER_AREA) > 0.5
    return rgb, person, garment & person, _landmarks(joints)


def make_clip(
    seed: int,
    frames: int,
    *,
    size: tuple[int, int] = (64, 64),
    swap_frame: int | None = None,
    catalogue: list[GarmentSpec] | None = None,
    min_colour_gap: float = 0.0,
    restart: bool = False,
) -> Clip:
    """A deterministic clip (same arguments, same pixels). See the module docstring for layouts.

    ``min_colour_gap`` (RGB units) re-draws garment B until its mean flat-lay colour is that far
    from A's: evaluation clips need garments a colour test can tell apart. ``restart`` (training
    clips) also renders the 4 frames of latent ``restart_latent - 1`` in garment A: the frames a
    full swap rebuilds its reference from, right before the stream restarts in garment B.
    """
    rng = np.random.default_rng(seed)
    specs = catalogue or classic_catalogue()
    body = _random_body(rng)
    a = specs[rng.integers(len(specs))]
    if swap_frame is None and rng.random() < SAME_GARMENT_P:
        b = a
    else:
        b = specs[rng.integers(len(specs))]
        for _ in range(100):
            if b is not a and _mean_gap(a, b) >= min_colour_gap:
                break
            b = specs[rng.integers(len(specs))]
    worn = [a if swap_frame is not None and t < swap_frame else b for t in range(frames)]
    rendered = [_render(body, t, worn[t], size) for t in range(frames)]
    rgb = np.stack([r[0] for r in rendered])
    person = np.stack([r[1] for r in rendered])
    garment = np.stack([r[2] for r in rendered])
    landmarks = np.stack([r[3] for r in rendered])
    cond = np.stack(
        [
            conditioning_maps(
                FrameInput(
                    t,
                    cv2.cvtColor(rgb[t], cv2.COLOR_RGB2BGR),
                    landmarks[t],
                    person[t].astype(np.uint8) * 255,
                    garment[t].astype(np.uint8) * 255,
                ),
                size[0],
                size[1],
                4,
            )
            for t in range(frames)
        ]
    )
    reference = rgb[0] if worn[0] is a else _render(body, 0, a, size)[0]
    restart_latent, window = 0, None
    if restart:
        restart_latent = int(rng.choice(RESTART_LATENTS))
        last = 4 * (restart_latent - 1)  # last pixel frame of the latent before the restart
        window = np.stack([_render(body, t, a, size)[0] for t in range(last - 3, last + 1)])
    images = {a.garment_id: garment_flatlay(a, size), b.garment_id: garment_flatlay(b, size)}
    return Clip(
        frames=rgb,
        person_mask=person,
        garment_mask=garment,
        landmarks=landmarks,
        conditioning=cond,
        reference=reference,
        garment_image=images[b.garment_id],
        garment_a=a.garment_id,
        garment_b=b.garment_id,
        garment_images=images,
        swap_frame=swap_frame,
        restart_latent=restart_latent,
        restart_window=window,
    )


def _mean_gap(a: GarmentSpec, b: GarmentSpec) -> float:
    ca, cb = (_flatlay(s)[1].reshape(-1, 3).mean(axis=0) for s in (a, b))
    return float(np.linalg.norm(ca - cb))
