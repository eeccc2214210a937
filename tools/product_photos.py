"""Product photos of the catalogue garments, the way a shop takes them, with exact ground truth.

Why: ``garments add`` must cope with what a shop actually uploads, and a test or an eval can only
say how well it copes when it knows the truth. Every photo here is made from a catalogue garment's
generated flat-lay (``services.garments.catalogue.render``: texture, exact mask, keypoints), and
the mask and keypoints go through the same transform as the pixels.

- ``flatlay_photo``: the garment on a table: folds from a random height field lit from one side,
  a soft drop shadow, rotation up to +-20 degrees, a mild perspective, a background (white paper,
  light grey, wood, fabric) chosen the way a photographer would (the garment's colours must stand
  out from it), sometimes a wire hanger's hook or a price tag on a string in view, camera noise,
  JPEG quality 70-90.
- ``ghost_photo``: a ghost-mannequin shot: the garment filled out as on an invisible body
  (cylinder shading, the inside of the back visible in the neckline), on a white, light grey or
  mid-grey backdrop.
- ``worn_photo``: the procedural figure (``tools.eval.figure``) wearing it in a pose, portrait
  framing like a shop's model shot, for ``garments add --from-person``.

Deterministic: same garment, seed and kind, same bytes. Pure numpy + OpenCV (no bus, no asyncio).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from services.garments.catalogue import GarmentSpec, RenderedGarment, render, spec_by_id, starter_catalogue

BACKGROUNDS = ("white", "grey", "wood", "fabric")
WORN_POSES = ("front", "hand_on_chest", "raised_arms", "crossed_arms")
MIN_CONTRAST_DE = 30.0  # a photographer's rule: every garment colour this far (CIE76) from the table
MIN_SHADOW_CONTRAST_DE = 18.0  # ... and this far from the table in the shadow's darkest part
SHADOW_MAX = 0.25  # darkest drop shadow: the table's brightness times (1 - this)


@dataclass
class ProductPhoto:
    """A photo as a shop uploads it (``data``: JPEG bytes) and the truth in its pixels."""

    garment_id: str
    kind: str  # "flatlay", "ghost" or "worn"
    data: bytes
    mask: np.ndarray  # bool, the garment's own pixels (a hanger or tag is not garment)
    keypoints: dict[str, tuple[float, float]]  # the generator's keypoints, photo pixels
    meta: dict = field(default_factory=dict)  # background, rotation, quality, hanger, ...

    @property
    def image(self) -> np.ndarray:
        return cv2.imdecode(np.frombuffer(self.data, np.uint8), cv2.IMREAD_COLOR)


# -- backgrounds ----------------------------------------------------------------------------------
def _lab(colour: tuple[float, float, float]) -> np.ndarray:
    px = np.uint8([[np.clip(colour, 0, 255)]])
    return cv2.cvtColor(px, cv2.COLOR_BGR2LAB)[0, 0].astype(np.float32) * (100 / 255, 1, 1) - (0, 128, 128)


def _delta_e(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    return float(np.linalg.norm(_lab(a) - _lab(b)))


def _background_colour(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "white":
        base = rng.uniform(240, 250)
        return np.array([base + rng.uniform(-3, 3), base, base + rng.uniform(-3, 3)])
    if kind == "grey":
        base = rng.uniform(196, 222)
        return np.array([base + rng.uniform(-4, 4), base, base - rng.uniform(0, 4)])
    if kind == "studio":  # a mid-grey paper backdrop, for white garments on a mannequin
        base = rng.uniform(120, 160)
        return np.array([base + rng.uniform(-4, 4), base, base - rng.uniform(0, 4)])
    if kind == "wood":
        woods = [(105, 155, 200), (70, 105, 150), (130, 180, 220), (60, 85, 120)]
        return np.array(woods[int(rng.integers(len(woods)))], float) + rng.uniform(-8, 8, 3)
    fabrics = [(165, 190, 210), (175, 175, 172), (140, 112, 82), (120, 140, 120)]
    return np.array(fabrics[int(rng.integers(len(fabrics)))], float) + rng.uniform(-6, 6, 3)


def choose_background(
    spec: GarmentSpec, rng: np.random.Generator, kinds=BACKGROUNDS
) -> tuple[str, np.ndarray]:
    """A background kind and colour every garment colour stands out from (in light and in the
    shadow's darkest part), in a seeded order; the farthest one when none passes."""
    order = [kinds[int(i)] for i in rng.permutation(len(kinds))]
    best, best_score = None, -1.0
    for kind in order:
        for _ in range(4):
            colour = _background_colour(kind, rng)
            shade = tuple(colour * (1 - SHADOW_MAX))
            score = min(
                min(_delta_e(c, tuple(colour)) / MIN_CONTRAST_DE, _delta_e(c, shade) / MIN_SHADOW_CONTRAST_DE)
                for c in spec.colours
            )
            if score >= 1.0:
                return kind, colour
            if score > best_score:
                best, best_score = (kind, colour), score
    assert best is not None
    return best


def background_image(kind: str, colour: np.ndarray, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A table or backdrop (float32 BGR): light falloff, then the material's own texture."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lx, ly = rng.uniform(-0.3, 1.3) * w, rng.uniform(-0.3, 1.3) * h
    falloff = 1.0 - rng.uniform(0.03, 0.08) * np.hypot(xx - lx, yy - ly) / math.hypot(w, h)
    img = np.empty((h, w, 3), np.float32)
    img[:] = colour
    if kind == "wood":
        along_x = rng.random() < 0.5
        u, v = (xx, yy) if along_x else (yy, xx)  # u runs along the planks, v across
        plank = max(40, int(rng.uniform(0.14, 0.24) * (h if along_x else w)))
        idx = (v // plank).astype(int)
        tone = 1.0 + rng.uniform(-0.08, 0.08, int(idx.max()) + 1)[idx]
        warp = 9 * np.sin(u / rng.uniform(90, 200) + idx * 1.7) + 4 * np.sin(u / 37.0 + idx)
        grain = 0.5 + 0.5 * np.sin(2 * math.pi * (v + warp) / rng.uniform(7, 13))
        grain = 1.0 - 0.07 * grain**3 - 0.03 * np.sin(2 * math.pi * (v + 2 * warp) / 3.1) ** 2
        seam = np.minimum(v % plank, plank - v % plank) < 1.2
        img *= (tone * grain)[..., None]
        img[seam] *= 0.55
    elif kind == "fabric":
        p = rng.uniform(3.0, 5.0)
        rows = rng.normal(0, 0.025, h)[:, None]
        cols = rng.normal(0, 0.025, w)[None, :]
        weave = 0.05 * np.sin(2 * math.pi * xx / p) * np.sin(2 * math.pi * yy / p) + rows + cols
        slub = cv2.GaussianBlur(rng.standard_normal((h, w), dtype=np.float32), (0, 0), 6) * 0.4
        img *= (1.0 + weave + slub)[..., None]
    img *= falloff[..., None]
    return img


# -- the garment on the table ---------------------------------------------------------------------
def _fold_shading(alpha: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Light on a creased cloth: a height field of random ridges and troughs, lit from one side
    (Lambert on the field's slope); float32 around 1.0, same size as ``alpha``."""
    h, w = alpha.shape
    ys, xs = np.nonzero(alpha > 127)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    size = float(max(xs.max() - xs.min(), ys.max() - ys.min()))
    height = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(4, 8))):
        i = int(rng.integers(len(xs)))
        px, py = float(xs[i]), float(ys[i])
        ang = rng.uniform(0, math.pi)
        d = (xx - px) * math.sin(ang) - (yy - py) * math.cos(ang)  # distance across the ridge
        along = (xx - px) * math.cos(ang) + (yy - py) * math.sin(ang)
        width = rng.uniform(0.02, 0.06) * size
        length = rng.uniform(0.15, 0.5) * size
        height += (
            rng.choice((-1.0, 1.0)) * np.exp(-(d**2) / (2 * width**2) - along**2 / (2 * length**2)) * width
        )
    gy, gx = np.gradient(height)
    light = rng.uniform(0, 2 * math.pi)
    slope = gx * math.cos(light) + gy * math.sin(light)
    return (1.0 + strength * np.tanh(slope * 2.0)).astype(np.float32)


def _garment_patch(g: RenderedGarment, pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The garment's texture and alpha cropped to its box plus ``pad``; (texture, alpha, offset)."""
    x, y, w, h = cv2.boundingRect((g.alpha > 0).astype(np.uint8))
    x0, y0 = max(0, x - pad), max(0, y - pad)
    x1, y1 = min(g.alpha.shape[1], x + w + pad), min(g.alpha.shape[0], y + h + pad)
    tex = g.extras["texture"][y0:y1, x0:x1].astype(np.float32)
    return tex, g.alpha[y0:y1, x0:x1].astype(np.float32) / 255.0, np.array([x0, y0], np.float32)


def _placement(
    patch_wh: tuple[int, int],
    frame_wh: tuple[int, int],
    rng: np.random.Generator,
    max_rot: float,
    fill: tuple,
) -> tuple[np.ndarray, float]:
    """A homography from patch to frame pixels: scale to fill ``fill`` of the frame, a rotation
    up to ``max_rot`` degrees, a small offset, and a mild perspective (corners moved <= 2.5%)."""
    pw, ph = patch_wh
    fw, fh = frame_wh
    rot = rng.uniform(-max_rot, max_rot)
    c, s = abs(math.cos(math.radians(rot))), abs(math.sin(math.radians(rot)))
    bw, bh = pw * c + ph * s, pw * s + ph * c  # the rotated box
    scale = rng.uniform(*fill) * min(fw / bw, fh / bh)
    centre = np.array([fw / 2 + rng.uniform(-0.04, 0.04) * fw, fh / 2 + rng.uniform(-0.04, 0.04) * fh])
    m = cv2.getRotationMatrix2D((pw / 2, ph / 2), rot, scale)
    m[:, 2] += centre - np.array([pw / 2, ph / 2])
    affine = np.vstack([m, [0, 0, 1]])
    corners = np.float32([[0, 0], [fw, 0], [fw, fh], [0, fh]])
    moved = corners + rng.uniform(-0.025, 0.025, (4, 2)).astype(np.float32) * np.float32([fw, fh])
    persp = cv2.getPerspectiveTransform(corners, moved)
    return persp @ affine, rot


def _from_render(hom: np.ndarray, offset: np.ndarray) -> list[list[float]]:
    """The 3x3 map from the catalogue render's pixels to the photo's (``meta["homography"]``)."""
    shift = np.array([[1, 0, -offset[0]], [0, 1, -offset[1]], [0, 0, 1]], np.float64)
    return (hom @ shift).tolist()


def _apply(h: np.ndarray, pts: dict[str, tuple[float, float]], offset: np.ndarray) -> dict:
    names = list(pts)
    arr = np.float32([pts[n] for n in names]) - offset
    out = cv2.perspectiveTransform(arr[None], h)[0]
    return {n: (float(x), float(y)) for n, (x, y) in zip(names, out, strict=True)}


def _shadow(alpha: np.ndarray, rng: np.random.Generator, light_from: np.ndarray) -> np.ndarray:
    h, w = alpha.shape
    size = math.sqrt(float(alpha.sum()) + 1.0)
    shift = -light_from * rng.uniform(0.012, 0.03) * size * 3
    m = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    moved = cv2.warpAffine(alpha, m, (w, h))
    soft = cv2.GaussianBlur(moved, (0, 0), rng.uniform(0.02, 0.045) * size * 2)
    return np.clip(soft, 0, 1) * rng.uniform(0.12, SHADOW_MAX)


def _draw_hanger(
    img: np.ndarray, collar: tuple[float, float], top_y: float, rng: np.random.Generator
) -> dict:
    """A wire hanger's hook rising out of the neckline: a stem and a hook arc, 2-4 px thick."""
    h, w = img.shape[:2]
    thick = max(2, round(rng.uniform(0.0025, 0.004) * w))
    colour = (175, 175, 180) if rng.random() < 0.5 else (40, 40, 45)
    x, y = collar
    stem_top = max(8.0, top_y - rng.uniform(0.05, 0.09) * h)
    cv2.line(img, (round(x), round(y)), (round(x), round(stem_top)), colour, thick, cv2.LINE_AA)
    r = rng.uniform(0.022, 0.035) * w
    centre = (round(x + r), round(max(r + 4, stem_top)))
    cv2.ellipse(img, centre, (round(r), round(r)), 0, 180, 360, colour, thick, cv2.LINE_AA)
    return {"hanger": True}


def _draw_tag(
    img: np.ndarray, mask: np.ndarray, anchor: tuple[float, float], rng: np.random.Generator
) -> dict:
    """A price tag on a string from ``anchor`` (on the garment) to a spot off the garment."""
    h, w = img.shape[:2]
    tw, th = round(rng.uniform(0.035, 0.05) * w), round(rng.uniform(0.055, 0.075) * w)
    for _ in range(20):
        ang = rng.uniform(0, 2 * math.pi)
        dist = rng.uniform(0.06, 0.12) * w
        cx, cy = anchor[0] + dist * math.cos(ang), anchor[1] + dist * math.sin(ang)
        x0, y0 = round(cx - tw / 2), round(cy - th / 2)
        if x0 < 6 or y0 < 6 or x0 + tw > w - 6 or y0 + th > h - 6:
            continue
        if mask[max(0, y0 - 6) : y0 + th + 6, max(0, x0 - 6) : x0 + tw + 6].any():
            continue
        cv2.line(
            img, (round(anchor[0]), round(anchor[1])), (round(cx), round(cy)), (60, 60, 60), 1, cv2.LINE_AA
        )
        card = (235, 240, 245) if rng.random() < 0.6 else (60, 170, 230)
        cv2.rectangle(img, (x0, y0), (x0 + tw, y0 + th), card, -1, cv2.LINE_AA)
        cv2.circle(img, (x0 + tw // 2, y0 + th // 6), max(2, tw // 10), (90, 90, 90), -1, cv2.LINE_AA)
        for k in range(3):
            yk = y0 + th // 3 + k * th // 5
            cv2.line(img, (x0 + tw // 6, yk), (x0 + tw - tw // 6, yk), (40, 40, 40), 1, cv2.LINE_AA)
        return {"tag": True}
    return {"tag": False}


def _finish(img: np.ndarray, rng: np.random.Generator, quality: int) -> bytes:
    noise = rng.standard_normal(img.shape, dtype=np.float32) * 1.8
    noisy = np.clip(img + noise + 0.5, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def flatlay_photo(spec: GarmentSpec, seed: int = 0, *, extras: bool = True) -> ProductPhoto:
    """``spec`` photographed flat on a table (see the module docstring). ``extras``: allow a
    hanger and a tag in view (each in about a third of the photos)."""
    rng = np.random.default_rng([spec.seed, seed, 1])
    g = render(spec)
    tex, alpha, offset = _garment_patch(g, pad=8)
    tex *= _fold_shading((alpha * 255).astype(np.uint8), rng, rng.uniform(0.08, 0.16))[..., None]
    fw = int(rng.choice([800, 880, 960]))
    fh = int(fw * rng.choice([1.0, 1.25, 1.333]))
    hom, rot = _placement((tex.shape[1], tex.shape[0]), (fw, fh), rng, 20.0, (0.6, 0.82))
    warped = cv2.warpPerspective(np.dstack([tex, alpha]), hom, (fw, fh), flags=cv2.INTER_LINEAR)
    a = np.clip(warped[..., 3], 0, 1)
    kind, colour = choose_background(spec, rng)
    bg = background_image(kind, colour, fw, fh, rng)
    light = np.array([math.cos(rng.uniform(0, 2 * math.pi)), math.sin(rng.uniform(0, 2 * math.pi))])
    bg *= (1.0 - _shadow(a, rng, light))[..., None]
    img = warped[..., :3] * a[..., None] + bg * (1 - a[..., None])
    keypoints = _apply(hom, g.keypoints, offset)
    mask = a > 0.5
    meta = {
        "background": kind,
        "rotation_deg": round(rot, 2),
        "hanger": False,
        "tag": False,
        "homography": _from_render(hom, offset),
    }
    if extras and rng.random() < 0.35:
        top = min(keypoints["neck_left"][1], keypoints["neck_right"][1])
        meta.update(_draw_hanger(img, keypoints["collar"], top, rng))
    if extras and rng.random() < 0.35:
        anchor = keypoints["hem_left" if rng.random() < 0.5 else "hem_right"]
        meta.update(_draw_tag(img, mask, anchor, rng))
    quality = int(rng.integers(70, 91))
    meta["jpeg_quality"] = quality
    return ProductPhoto(spec.garment_id, "flatlay", _finish(img, rng, quality), mask, keypoints, meta)


def ghost_photo(spec: GarmentSpec, seed: int = 0) -> ProductPhoto:
    """``spec`` on an invisible mannequin: shaded as a body under it, the inside of the back
    showing in the neckline (so the outline's neckline is the back's, higher than the front's:
    the ``collar`` truth is the lowest point of that back neckline), white or light grey behind."""
    rng = np.random.default_rng([spec.seed, seed, 2])
    g = render(spec)
    tex, alpha, offset = _garment_patch(g, pad=8)
    kp = {k: np.array(v) - offset for k, v in g.keypoints.items()}
    h, w = alpha.shape
    xx = np.mgrid[0:h, 0:w][1].astype(np.float32)
    # the body under it: a cylinder across the torso, lit a little from one side
    half = abs(kp["armpit_right"][0] - kp["armpit_left"][0]) / 2
    u = (xx - (kp["armpit_left"][0] + half)) / max(half, 1.0)
    side = rng.uniform(-0.05, 0.05)
    tex *= np.clip(1.03 - 0.12 * np.clip(np.abs(u), 0, 1.0) ** 2 + side * np.clip(u, -1.0, 1.0), 0.8, 1.1)[
        ..., None
    ]
    # the inside of the back, seen through the neckline: a shallow curve between the neck points
    nl, nr, collar = kp["neck_left"], kp["neck_right"], kp["collar"]
    depth = rng.uniform(0.18, 0.3) * (collar[1] - min(nl[1], nr[1]))
    xs = np.linspace(nl[0], nr[0], 24)
    t = (xs - nl[0]) / max(nr[0] - nl[0], 1.0)
    back = np.stack([xs, nl[1] + (nr[1] - nl[1]) * t + depth * np.sin(math.pi * t)], axis=1)
    inner = np.zeros((h, w), np.uint8)
    poly = np.vstack([back, [[nr[0], collar[1] + 2], [nl[0], collar[1] + 2]]]).astype(np.int32)
    cv2.fillPoly(inner, [poly], 255)
    inside = (inner > 0) & (alpha < 0.5)
    base = np.array(spec.colours[0], np.float32)
    tex[inside] = base * 0.5
    alpha = np.where(inside, 1.0, alpha).astype(np.float32)
    fw = int(rng.choice([800, 900]))
    fh = int(fw * 1.25)
    hom, rot = _placement((w, h), (fw, fh), rng, 4.0, (0.62, 0.8))
    warped = cv2.warpPerspective(np.dstack([tex, alpha]), hom, (fw, fh), flags=cv2.INTER_LINEAR)
    a = np.clip(warped[..., 3], 0, 1)
    kind, colour = choose_background(spec, rng, ("white", "grey", "studio"))
    bg = background_image(kind, colour, fw, fh, rng)
    img = warped[..., :3] * a[..., None] + bg * (1 - a[..., None])
    truth = {k: (float(v[0]), float(v[1])) for k, v in kp.items()}
    truth["collar"] = (float(collar[0]), float((nl[1] + nr[1]) / 2 + depth))
    keypoints = _apply(hom, truth, np.zeros(2, np.float32))
    quality = int(rng.integers(75, 91))
    meta = {
        "background": kind,
        "rotation_deg": round(rot, 2),
        "jpeg_quality": quality,
        "homography": _from_render(hom, offset),
    }
    return ProductPhoto(spec.garment_id, "ghost", _finish(img, rng, quality), a > 0.5, keypoints, meta)


# -- worn by the procedural figure ----------------------------------------------------------------
PORTRAIT_SCALE = 1.6  # the eval figure's sizes times this, in a 600x800 portrait frame


def worn_photo(spec: GarmentSpec, seed: int = 0, pose_family: str = "front") -> ProductPhoto:
    """The procedural figure wearing ``spec`` in ``pose_family``, framed like a shop's model shot.

    ``mask`` is what of the garment the camera sees (arms in front of it are not garment);
    ``meta["person"]`` the person mask and ``meta["joints"]`` the figure's joints (pixels).
    """
    from tools.eval.figure import FigureConfig, _contrasting, draw, pose
    from tools.training.data import _random_body

    rng = np.random.default_rng([spec.seed, seed, 3])
    base = FigureConfig()
    sizes = {f.name: getattr(base, f.name) * PORTRAIT_SCALE for f in dataclasses.fields(base)}
    sizes.update(width=600, height=800, neck_y=base.neck_y * PORTRAIT_SCALE + 40)
    cfg = dataclasses.replace(base, **sizes)
    body = _contrasting(_random_body(rng), rng, (spec,))
    p = pose(pose_family, cfg, body, float(rng.uniform(0, 2 * math.pi)))
    frame = draw(cfg, body, p, spec, int(rng.integers(1 << 30)), int(rng.integers(1 << 30)))
    quality = int(rng.integers(80, 93))
    ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    joints = {int(k): (float(v[0]), float(v[1])) for k, v in p.joints.items()}
    meta = {"pose": pose_family, "person": frame.person, "joints": joints, "skin_bgr": body.skin[::-1]}
    return ProductPhoto(spec.garment_id, "worn", buf.tobytes(), frame.garment, {}, meta)


# -- the photographed catalogue -------------------------------------------------------------------
def catalogue_product_photos(
    garment_ids: list[str] | None = None, seed: int = 0
) -> list[tuple[GarmentSpec, bytes]]:
    """The catalogue (or the named part of it) as photographed flat-lays, ready for
    ``garments add``: what ``chameleon up`` and the demo load."""
    specs = starter_catalogue() if garment_ids is None else [spec_by_id(g) for g in garment_ids]
    return [(spec, flatlay_photo(spec, seed).data) for spec in specs]


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.product_photos OUT_DIR [--kind flatlay|ghost|worn] [--seed N]``: write
    every catalogue garment's photo (JPEG) and its truth (mask PNG, keypoints JSON)."""
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(prog="python -m tools.product_photos", description=main.__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--kind", default="flatlay", choices=("flatlay", "ghost", "worn"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pose", default="front", choices=WORN_POSES)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in starter_catalogue():
        if args.kind == "flatlay":
            photo = flatlay_photo(spec, args.seed)
        elif args.kind == "ghost":
            photo = ghost_photo(spec, args.seed)
        else:
            photo = worn_photo(spec, args.seed, args.pose)
        stem = args.out / f"{spec.garment_id}-{args.kind}"
        stem.with_suffix(".jpg").write_bytes(photo.data)
        cv2.imwrite(str(stem) + "-mask.png", photo.mask.astype(np.uint8) * 255)
        meta = {k: v for k, v in photo.meta.items() if k not in ("person",)}
        stem.with_suffix(".json").write_text(json.dumps({"keypoints": photo.keypoints, "meta": meta}))
    print(json.dumps({"out": str(args.out), "kind": args.kind, "garments": len(starter_catalogue())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
