"""Where the person's own upper-body clothing is, per frame: segmentation ∩ body zones, minus head,
hands and skin. Pure numpy + cv2; everything is drawn in ROI coordinates so it costs the ROI.

The clothing region, not a polygon from the shoulders, decides where the new garment goes: it
follows the real silhouette (a turned body, loose clothes, sleeves to where they end) and never
leaves the person mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from services.generator.warp.filters import gaussian
from shared.body import LM

LUMA_BGR = np.array([0.114, 0.587, 0.299], np.float32)  # Y of a BGR colour (as YCrCb's)
HAND_POINTS = ((15, 17, 19, 21), (16, 18, 20, 22))  # wrist, pinky, index, thumb per hand
# per IMAGE side of a person facing the camera: (shoulder, elbow, wrist)
ARMS = ((LM.RIGHT_SHOULDER, LM.RIGHT_ELBOW, LM.RIGHT_WRIST), (LM.LEFT_SHOULDER, LM.LEFT_ELBOW, LM.LEFT_WRIST))


@dataclass(frozen=True)
class RegionConfig:
    """Sizes in body-scale units (``Body.scale``, about a shoulder width facing the camera)."""

    arm_width: float = 0.5  # upper arm capsule thickness (where its clothing is looked for)
    forearm_width: float = 0.44
    hand_width: float = 0.16  # the capsules from the wrist to the finger landmarks
    hand_reach: float = 0.3  # body scales: the farthest a knuckle landmark is taken from the wrist
    hand_start: float = 0.15  # how far from the wrist towards the knuckles the hand begins
    hand_past: float = 0.7  # body scales past the wrist, along the forearm, that skin is hand (0.5
    # left a hand on crossed arms, where the tracker puts the wrist well short of it, under a sleeve)
    hand_past_width: float = 0.32  # body scales: that band's width
    hand_area: float = 0.2  # body scales squared: a piece of skin this small, apart from the head, is a hand
    sliver_area: float = 0.004  # body scales squared: the least skin at the outline kept as a hand's sliver
    hand_min_skin: float = 0.02  # a hand zone with less skin than this is on clothing: not a hand
    hand_skin_shape: float = 0.3  # ... with at least this much, the skin's own shape is the hand
    hand_skin_grow: float = 0.06  # body scales the skin is grown by to make that shape
    torso_margin: float = 0.16  # the torso zone reaches this far outside the shoulder/hip joints
    torso_min_half: float = 0.46  # ... and at least this far from its centre line (turned bodies)
    turned_half: float = 0.4  # torso lengths: ... and at least this far (a side view's depth)
    neck_above: float = 0.16  # how far above the shoulder line clothing may reach
    hem_band: tuple[float, float] = (0.72, 1.45)  # torso lengths: where the top may end (by colour)
    skin_tolerance: float = 2.6  # chroma distance to the skin colour, in the face's spreads
    skin_min_spread: float = 4.0  # CrCb units: the face's spread is never taken below this
    skin_min_blob: float = 0.1  # body scales: skin-coloured areas narrower than this are pattern
    head_min: float = 0.3  # torso lengths: the smallest a head is taken to be (turned heads)
    glove_contrast: float = 22.0  # Lab distance between a skinless hand zone and the clothing
    # around it above which it is a glove or something held, not clothing the hand points hit
    skin_guard: float = 0.5  # more of the torso than this looks like skin: skin-coloured clothes
    edge_band: float = 0.08  # body scales inside the person mask's edge checked against the background
    edge_sigma: float = 0.12  # body scales: the neighbourhood of the local colours


@dataclass(frozen=True)
class Body:
    """The body in ROI pixels: smoothed landmarks, the torso's frame and scale."""

    px: np.ndarray  # (33, 2) landmarks in ROI pixels
    centre: np.ndarray  # middle of the shoulder line
    ex: np.ndarray  # unit: image-left shoulder -> image-right shoulder
    ey: np.ndarray  # unit: shoulders -> hips
    scale: float  # max(shoulder width, 0.6 torso length): stable when the body turns
    torso_len: float
    shoulder_half: float  # half the shoulder width along ex (small when turned)


def body_in_roi(px: np.ndarray, facing: float = 1.0) -> Body:
    """``facing``: +1 when MediaPipe's right shoulder is on the image left (facing the camera),
    -1 when facing away; decided by the caller with hysteresis (side views)."""
    ls, rs = px[LM.RIGHT_SHOULDER], px[LM.LEFT_SHOULDER]  # image left, image right
    lh, rh = px[LM.RIGHT_HIP], px[LM.LEFT_HIP]
    mid_s, mid_h = (ls + rs) / 2, (lh + rh) / 2
    down = mid_h - mid_s
    torso_len = max(float(np.hypot(*down)), 4.0)
    ey = down / torso_len
    across = rs - ls
    ex = np.array([ey[1], -ey[0]])  # perpendicular to the torso axis, pointing image right
    if facing < 0:  # facing away: MediaPipe's right shoulder is on the image right
        ex = -ex
    shoulder_w = float(np.hypot(*across))
    scale = max(shoulder_w, 0.6 * torso_len, 4.0)
    return Body(px, mid_s, ex, ey, scale, torso_len, abs(float(np.dot(across, ex))) / 2)


@dataclass
class SkinModel:
    """The wearer's skin colour (YCrCb chroma at the face's luma), learned from the face once per
    session."""

    cr: float
    cb: float
    spread: float
    bgr: tuple[int, int, int]
    y: float = 128.0  # the face's luma: chroma elsewhere is compared as if lit like the face

    @classmethod
    def from_face(
        cls, frame: np.ndarray, px: np.ndarray, min_spread: float, scale: float = 0.0
    ) -> SkinModel | None:
        """Cheeks and nose: a patch between the nose and the mouth, its size from the face's
        width. The width is the ear distance, but never under ``0.35 scale`` (the body scale): a
        first detection or a turned head can put the ears a few pixels apart, and a patch that
        small lands on the lips."""
        h, w = frame.shape[:2]
        face_w = max(float(np.hypot(*(px[LM.LEFT_EAR] - px[LM.RIGHT_EAR]))), 0.35 * scale)
        centre = (px[LM.NOSE] + (px[LM.MOUTH_LEFT] + px[LM.MOUTH_RIGHT]) / 2) / 2
        r = max(2, int(0.22 * face_w))
        cx, cy = round(float(centre[0])), round(float(centre[1]))
        patch = frame[max(0, cy - r) : min(h, cy + r + 1), max(0, cx - r) : min(w, cx + r + 1)]
        if patch.size < 12:
            return None
        ycc = cv2.cvtColor(patch, cv2.COLOR_BGR2YCrCb).reshape(-1, 3).astype(np.float32)
        cr, cb = float(np.median(ycc[:, 1])), float(np.median(ycc[:, 2]))
        off = np.abs(ycc[:, 1:] - (cr, cb))
        spread = max(float(np.median(off)) * 1.5, min_spread)
        # the colour a bare arm is repainted in: the brighter half (by Y) of the skin-chroma
        # pixels, so a moustache, nostrils and the shadow under the nose do not darken it
        skin = np.all(off <= 2.0 * spread, axis=1)
        if not skin.any():
            skin[:] = True
        pixels, luma = patch.reshape(-1, 3)[skin], ycc[skin, 0]
        lit = pixels[np.argsort(luma, kind="stable")[len(luma) // 2 :]]
        med = np.median(lit, axis=0)
        y = float(np.median(ycc[:, 0]))
        return cls(cr, cb, spread, (int(med[0]), int(med[1]), int(med[2])), y)

    def lit_chroma(self, y, cr, cb):  # type: ignore[no-untyped-def]
        """Cr and Cb, centred on grey, as if lit like the face (arrays or numbers): a shadow
        scales a colour's chroma with its luma, and a hand in shadow is still skin."""
        gain = np.sqrt(np.clip((np.float32(self.y) + 16.0) / (y + 16.0), 0.6, 1.8))
        return (cr - 128.0) * gain, (cb - 128.0) * gain

    def mask(self, patch_bgr: np.ndarray, tolerance: float) -> np.ndarray:
        """uint8 0/255: pixels whose chroma is within ``tolerance`` spreads of the skin's, once
        brought to the face's light: a shadow scales a colour's chroma with its luma, and a hand
        in shadow is still skin."""
        ycc = cv2.cvtColor(patch_bgr, cv2.COLOR_BGR2YCrCb)
        y = ycc[..., 0].astype(np.float32)
        cr, cb = self.lit_chroma(y, ycc[..., 1].astype(np.float32), ycc[..., 2].astype(np.float32))
        t = np.float32(tolerance * self.spread)
        scr, scb = np.float32(self.cr - 128.0), np.float32(self.cb - 128.0)
        inside = (np.abs(cr - scr) <= t) & (np.abs(cb - scb) <= t) & (y >= 25)
        # and coloured the skin's way: the tolerance box can reach grey, and a black suit's
        # shadows (chroma ~0) read as skin in dark blots
        norm = float(scr * scr + scb * scb)
        if norm > 1.0:
            inside &= (cr * scr + cb * scb) >= np.float32(0.1 * norm)
        return inside.astype(np.uint8) * 255


def _pt(p: np.ndarray) -> tuple[int, int]:
    # clamped so a far-off extrapolated landmark never overflows cv2's int conversion
    return max(-100_000, min(100_000, round(float(p[0])))), max(-100_000, min(100_000, round(float(p[1]))))


def capsule(mask: np.ndarray, a: np.ndarray, b: np.ndarray, thickness: float, value: int = 255) -> None:
    t = max(1, round(thickness))
    cv2.line(mask, _pt(a), _pt(b), value, t)
    cv2.circle(mask, _pt(a), t // 2, value, -1)
    cv2.circle(mask, _pt(b), t // 2, value, -1)


def torso_zone(
    b: Body, shape: tuple[int, int], cfg: RegionConfig, hem: float, flare: float = 0.0
) -> np.ndarray:
    """The band the torso's clothing may occupy: shoulders (a little above) to ``hem`` torso
    lengths below them, wide enough for a turned body, and at the bottom at least ``flare`` body
    scales either side of the centre line (a skirt)."""
    half = max(
        b.shoulder_half + cfg.torso_margin * b.scale,
        cfg.torso_min_half * b.scale,
        cfg.turned_half * b.torso_len,  # a turned torso is about as deep as this
    )
    top = b.centre - b.ey * cfg.neck_above * b.scale
    bottom = b.centre + b.ey * hem * b.torso_len
    hip_c = (b.px[LM.LEFT_HIP] + b.px[LM.RIGHT_HIP]) / 2
    hip_half = max(abs(float(np.dot(b.px[LM.LEFT_HIP] - hip_c, b.ex))) + cfg.torso_margin * b.scale, half)
    bottom = bottom + b.ex * float(np.dot(hip_c - b.centre, b.ex))  # follow a leaning torso
    zone = np.zeros(shape, np.uint8)
    pts = [top - b.ex * half, top + b.ex * half]
    low = max(hip_half, flare * b.scale + cfg.torso_margin * b.scale)
    if hem > 1.0 and low > hip_half:  # the hips, then the flare down to the hem
        hips = b.centre + b.ey * b.torso_len + b.ex * float(np.dot(hip_c - b.centre, b.ex))
        pts += [hips + b.ex * hip_half, bottom + b.ex * low, bottom - b.ex * low, hips - b.ex * hip_half]
    else:
        pts += [bottom + b.ex * hip_half, bottom - b.ex * hip_half]
    cv2.fillPoly(zone, [np.round(np.clip(np.array(pts), -1e5, 1e5)).astype(np.int32)], 255)
    return zone


def strip(b: Body, shape: tuple[int, int], half: float) -> np.ndarray:
    """uint8 0/255: the band ``half`` pixels either side of the torso's centre line, all along it."""
    far = 4.0 * (shape[0] + shape[1])
    hip_c = (b.px[LM.LEFT_HIP] + b.px[LM.RIGHT_HIP]) / 2
    axis = hip_c - b.centre
    n = max(float(np.hypot(*axis)), 1e-6)
    d = axis / n
    side = np.array([d[1], -d[0]]) * half
    a, e = b.centre - d * far, b.centre + d * far
    out = np.zeros(shape, np.uint8)
    pts = np.array([a - side, a + side, e + side, e - side])
    cv2.fillConvexPoly(out, np.round(np.clip(pts, -1e6, 1e6)).astype(np.int32), 255)
    return out


def below(b: Body, shape: tuple[int, int], v: float) -> np.ndarray:
    """uint8 0/255: the pixels more than ``v`` torso lengths below the shoulder line (along the
    torso's axis)."""
    far = 4.0 * (shape[0] + shape[1])
    line = b.centre + b.ey * v * b.torso_len
    pts = np.array(
        [line - b.ex * far, line + b.ex * far, line + b.ex * far + b.ey * far, line - b.ex * far + b.ey * far]
    )
    out = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(out, np.round(np.clip(pts, -1e6, 1e6)).astype(np.int32), 255)
    return out


def is_greyscale(patch_bgr: np.ndarray, tolerance: float = 3.0) -> bool:
    """Whether the picture carries no colour (a black-and-white photo or camera): then skin cannot
    be told from clothing by its chroma, and the skin test must not run (it would find skin
    everywhere)."""
    small = patch_bgr[::4, ::4]
    if small.size == 0:
        return False
    ycc = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_BGR2YCrCb).reshape(-1, 3).astype(np.int16)
    dev = np.maximum(np.abs(ycc[:, 1] - 128), np.abs(ycc[:, 2] - 128))
    return float(np.percentile(dev, 98)) <= tolerance


def head_zone(b: Body, shape: tuple[int, int], cfg: RegionConfig) -> np.ndarray:
    """The head (face, hair, ears) and chin, from the face landmarks, sized so that a turned head
    is covered too: the ear distance collapses in a side view, and so does the shoulder width,
    so the size is never under ``head_min`` torso lengths (a head is about a third of one)."""
    px = b.px
    mask = np.zeros(shape, np.uint8)
    face = px[: LM.MOUTH_RIGHT + 1]
    ears = float(np.hypot(*(px[LM.LEFT_EAR] - px[LM.RIGHT_EAR])))
    shoulders = float(np.hypot(*(px[LM.LEFT_SHOULDER] - px[LM.RIGHT_SHOULDER])))
    size = max(ears, 0.45 * shoulders, cfg.head_min * b.torso_len, 4.0)
    centre = face.mean(axis=0)
    mouth = (px[LM.MOUTH_LEFT] + px[LM.MOUTH_RIGHT]) / 2
    down = mouth - px[LM.NOSE]
    angle = float(np.degrees(np.arctan2(down[0], down[1]))) * -1 if np.hypot(*down) > 1e-6 else 0.0
    cv2.ellipse(mask, _pt(centre), (int(size * 0.75), int(size * 1.0)), angle, 0, 360, 255, -1)
    # the chin sits about one nose-to-mouth distance below the mouth; cover it
    nm = float(np.hypot(*down))
    chin = mouth + (down / nm * max(nm, 0.06 * b.torso_len) * 1.2 if nm > 1e-6 else 0.0)
    cv2.circle(mask, _pt(chin), int(size * 0.35), 255, -1)
    return mask


def hands_mask(
    b: Body,
    shape: tuple[int, int],
    cfg: RegionConfig,
    skin: np.ndarray | None = None,
    patch: np.ndarray | None = None,
) -> np.ndarray:
    """Both hands: the hull from just past the wrist (a cuff at the wrist is sleeve, not hand)
    to a little past the knuckle landmarks, and capsules along the fingers. With ``skin`` (the
    skin-colour mask), a hand whose zone holds almost no skin is left out: the tracker's hand
    points have wandered onto clothing (crossed arms, hands up at the shoulders), and the
    clothing there must not be cut out with it; unless (with ``patch``) its colour stands out
    from what is around it: a gloved hand, or something held, is not clothing either."""
    keep = np.zeros(shape, np.uint8)
    t = cfg.hand_width * b.scale
    for hand in HAND_POINTS:
        one = np.zeros(shape, np.uint8)
        pts = b.px[list(hand)].copy()
        # a hand is at most ``hand_reach`` long: far-flung finger landmarks (a tracker unsure of
        # the hand) would otherwise cut a forearm's sleeve out with it
        off = pts[1:] - pts[0]
        n = np.maximum(np.hypot(off[:, 0], off[:, 1]), 1e-6)
        pts[1:] = pts[0] + off * np.minimum(1.0, cfg.hand_reach * b.scale / n)[:, None]
        knuckles = pts[1:].mean(axis=0)
        heel = pts[0] + (knuckles - pts[0]) * cfg.hand_start
        fingers = pts[1:] + (pts[1:] - pts[0]) * 0.6  # landmarks sit on the knuckles: reach past them
        hull = np.concatenate([[heel], pts[1:], fingers])
        cv2.fillConvexPoly(one, cv2.convexHull(np.round(hull).astype(np.int32)), 255)
        for p in fingers:
            capsule(one, heel, p, t)
        if skin is not None:
            area = cv2.countNonZero(one)
            found = cv2.countNonZero(cv2.bitwise_and(one, skin))
            if (
                area
                and found < cfg.hand_min_skin * area
                and not (
                    patch is not None
                    and _stands_out(patch, one, cfg.hand_width * b.scale, cfg.glove_contrast)
                )
            ):
                continue
            if area and found >= cfg.hand_skin_shape * area:
                # the skin test sees this hand well: its shape, a little grown, is the hand, and
                # the clothing around it inside the zone (under crossed forearms) stays
                k = max(3, int(cfg.hand_skin_grow * b.scale) | 1)
                x, y, w, h = cv2.boundingRect(one)
                zone = (slice(y, y + h), slice(x, x + w))
                one[zone] = cv2.bitwise_and(one[zone], _dilate_in(skin, zone, k))
        keep |= one
    return keep


def _dilate_in(mask: np.ndarray, zone: tuple[slice, slice], k: int) -> np.ndarray:
    """``mask`` dilated by a ``k``-pixel disc, read only over ``zone`` (worked on the zone and
    the ``k // 2`` around it that can reach into it, not the whole ROI)."""
    r = k // 2
    ys, xs = zone
    y0, x0 = max(0, ys.start - r), max(0, xs.start - r)
    y1, x1 = min(mask.shape[0], ys.stop + r), min(mask.shape[1], xs.stop + r)
    grown = cv2.dilate(mask[y0:y1, x0:x1], cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return grown[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]


def _stands_out(patch: np.ndarray, zone: np.ndarray, ring: float, contrast: float) -> bool:
    """Whether the mean colour (Lab) of ``zone`` differs by more than ``contrast`` from the mean
    colour of a ring ``ring`` pixels wide around it."""
    box = cv2.boundingRect(zone)
    r = max(2, int(ring))
    x, y, w, h = box
    x0, y0 = max(0, x - r), max(0, y - r)
    x1, y1 = min(zone.shape[1], x + w + r), min(zone.shape[0], y + h + r)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return False
    z = zone[y0:y1, x0:x1]
    # the ring by distance (a disc of a hand's width as a dilation costs tens of ms on a close-up)
    around = (cv2.distanceTransform(cv2.bitwise_not(z), cv2.DIST_L2, 3) <= r).view(np.uint8)
    around[z > 0] = 0
    if cv2.countNonZero(around) < 8 or cv2.countNonZero(z) < 8:
        return False
    lab = cv2.cvtColor(np.ascontiguousarray(patch[y0:y1, x0:x1]), cv2.COLOR_BGR2LAB).astype(np.float32)
    inner = lab[z > 0].mean(axis=0)
    outer = lab[around > 0].mean(axis=0)
    return float(np.linalg.norm(inner - outer)) > contrast


def past_wrists(b: Body, shape: tuple[int, int], cfg: RegionConfig) -> np.ndarray:
    """uint8 0/255: beyond each wrist, along its forearm, as far as a hand reaches."""
    out = np.zeros(shape, np.uint8)
    for _, el, wr in ARMS:
        d = b.px[wr] - b.px[el]
        n = float(np.hypot(*d))
        if n < 1e-6:
            continue
        end = b.px[wr] + d / n * cfg.hand_past * b.scale
        capsule(out, b.px[wr], end, cfg.hand_past_width * b.scale)
    return out


def forearm_skin(b: Body, skin: np.ndarray, cfg: RegionConfig) -> list[np.ndarray]:
    """Per arm (image-left first), uint8 0/255: the pieces of skin that its forearm, and the hand
    past it, lie on: a bare forearm and its hand, wherever the hand rests (on the chest, on the
    other elbow). A band along the shoulders is cut out first, so that skin reaching from a bare
    arm over the shoulders to the neck (a tank top) is not one piece with the arm."""
    shape = skin.shape
    cut = skin.copy()
    upper = np.zeros(shape, np.uint8)
    top = b.centre - b.ey * 0.5 * b.torso_len
    low = b.centre + b.ey * 0.12 * b.torso_len
    half = b.ex * (b.shoulder_half + 0.35 * b.scale)
    cv2.fillConvexPoly(
        upper, np.round(np.array([top - half, top + half, low + half, low - half])).astype(np.int32), 255
    )
    cut[upper > 0] = 0
    n, labels = cv2.connectedComponents(cut, connectivity=8)
    out = []
    for _, el, wr in ARMS:
        fore = np.zeros(shape, np.uint8)
        d = b.px[wr] - b.px[el]
        n_d = max(float(np.hypot(*d)), 1e-6)
        capsule(fore, b.px[el], b.px[wr] + d / n_d * cfg.hand_past * b.scale, cfg.forearm_width * b.scale)
        ids = np.unique(labels[(fore > 0) & (cut > 0)])
        ids = ids[ids > 0]
        out.append(
            np.where(np.isin(labels, ids), 255, 0).astype(np.uint8) if n > 1 and ids.size else fore * 0
        )
    return out


@dataclass(frozen=True)
class SkinPieces:
    """The connected pieces of a skin mask, found once and read by several rules."""

    labels: np.ndarray  # int32, 0: not skin
    areas: np.ndarray  # pixels per label

    @classmethod
    def of(cls, skin: np.ndarray) -> SkinPieces:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(skin, connectivity=8)
        return cls(labels, stats[:, cv2.CC_STAT_AREA])

    def select(self, keep: np.ndarray) -> np.ndarray:
        """uint8 0/255: the pieces whose label ``keep`` (bool per label) marks."""
        lut = np.where(keep, 255, 0).astype(np.uint8)
        lut[0] = 0
        if not lut.any():
            return np.zeros(self.labels.shape, np.uint8)
        return lut[self.labels]

    def count_in(self, mask: np.ndarray) -> np.ndarray:
        """Pixels of each piece inside ``mask``."""
        return np.bincount(self.labels[mask > 0], minlength=len(self.areas))


def lone_hands(b: Body, pieces: SkinPieces, head: np.ndarray, cfg: RegionConfig) -> np.ndarray:
    """uint8 0/255: pieces of skin no bigger than a hand and apart from the head and neck: hands
    at the end of sleeves, wherever they are (a tracker's wrists on crossed arms can sit a hand's
    length from them)."""
    small = pieces.areas <= cfg.hand_area * b.scale * b.scale
    small &= pieces.count_in(head) == 0
    return pieces.select(small)


def skin_off_arm(pieces: SkinPieces, arm: np.ndarray, share: float = 0.5) -> np.ndarray:
    """uint8 0/255: the pieces of skin less than ``share`` of which lie in the arm's capsule: not
    this arm's skin, though some of it crosses the arm (the other forearm and hand on its elbow)."""
    on_arm = pieces.count_in(arm)
    return pieces.select((on_arm > 0) & (on_arm < share * pieces.areas))


def skin_at_the_outline(
    patch_bgr: np.ndarray,
    model: SkinModel,
    raw: np.ndarray,
    skin: np.ndarray,
    person: np.ndarray,
    areas: tuple[float, float],
) -> np.ndarray:
    """uint8 0/255: pieces of skin colour the blob test dropped (``raw`` less ``skin``: thinner
    than skin comes) that touch the person's outline, ``areas`` (least, most) pixels, and are
    the skin's own colour, not merely within the test's tolerance (mean chroma within 1.75 of
    the face's spreads, at least 0.4 of its luma), among clothing that is not: a sliver of a
    hand showing past the other arm's elbow (crossed arms, the tracker's wrist far from it). A
    pattern's squares, which the blob test is there for, pass the test only at its edge (a red
    check's dark squares: about 2 spreads away, a sixth of the face's luma)."""
    specks = cv2.bitwise_and(raw, cv2.bitwise_not(skin))
    out = np.zeros_like(specks)
    if not specks.any():
        return out
    rim = cv2.bitwise_and(person, cv2.bitwise_not(cv2.erode(person, np.ones((5, 5), np.uint8))))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(specks, connectivity=8)
    touch = np.bincount(labels[rim > 0], minlength=n)
    size = stats[:, cv2.CC_STAT_AREA]
    keep = (touch > 0) & (size >= areas[0]) & (size <= areas[1])
    keep[0] = False
    h, w = specks.shape
    ring_k = np.ones((7, 7), np.uint8)
    for i in np.flatnonzero(keep):  # a few pieces, each in its own box
        x, y0, bw, bh = (int(v) for v in stats[i, :4])
        rows, cols = slice(max(0, y0 - 4), min(h, y0 + bh + 4)), slice(max(0, x - 4), min(w, x + bw + 4))
        piece = (labels[rows, cols] == i).astype(np.uint8)
        colour = patch_bgr[rows, cols][piece > 0].reshape(-1, 1, 3)
        y, cr, cb = cv2.cvtColor(colour, cv2.COLOR_BGR2YCrCb).reshape(-1, 3).astype(np.float64).mean(axis=0)
        lit_cr, lit_cb = model.lit_chroma(y, cr, cb)
        apart = max(abs(lit_cr - (model.cr - 128)), abs(lit_cb - (model.cb - 128)))
        # and standing out from the person round it (skin-coloured clothing, bus.jpg's fleece,
        # reads as skin round its own specks): under a third of a 3-pixel ring inside the person
        ring = (cv2.dilate(piece, ring_k) > 0) & (piece == 0) & (person[rows, cols] > 0)
        keep[i] = (
            apart <= 1.75 * model.spread
            and y >= 0.4 * model.y
            and ring.any()
            and 3 * np.count_nonzero(raw[rows, cols][ring]) < np.count_nonzero(ring)
        )
    if not keep.any():
        return out
    lut = np.where(keep, 255, 0).astype(np.uint8)
    return lut[labels]


def arm_masks(b: Body, shape: tuple[int, int], cfg: RegionConfig) -> list[np.ndarray]:
    """One capsule chain per arm (image-left arm first): shoulder -> elbow -> wrist."""
    out = []
    for sh, el, wr in ARMS:
        m = np.zeros(shape, np.uint8)
        capsule(m, b.px[sh], b.px[el], cfg.arm_width * b.scale)
        capsule(m, b.px[el], b.px[wr], cfg.forearm_width * b.scale)
        out.append(m)
    return out


def hem_by_colour(
    patch: np.ndarray,
    b: Body,
    clothing: np.ndarray,
    cfg: RegionConfig,
    core_zone: np.ndarray,
    previous: float | None = None,
    rate: float = 0.35,
    arms: np.ndarray | None = None,
    person: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Where the old top ends: in the band where a top may end, just below the lowest row (along
    the torso axis) where most pixels are nearer one of the top's two colours (a pattern's darker
    and lighter half) than the colour below the band (trousers, skirt, under the hips) and the
    background beside the hips. Rows, counted from the bottom, so a pattern's dark squares higher
    up never end the top. The new garment does not follow it (it has a hem of its own); it
    tells the old top's sleeves from the trousers beside a hanging hand, and the old clothing
    (for shading statistics and measures) from what is below. ``clothing`` is modified and
    returned with the cut (torso lengths), averaged with ``previous`` so the hem of a still
    person holds still. Sleeves hanging below the hem (in ``arms``) stay clothing where their
    colour is nearer the top's than the trousers'."""
    h, w = clothing.shape
    lo, hi = cfg.hem_band
    xs = np.arange(w, dtype=np.float32)[None, :] - np.float32(b.centre[0])
    ys = np.arange(h, dtype=np.float32)[:, None] - np.float32(b.centre[1])
    v = (xs * np.float32(b.ey[0] / b.torso_len)) + (ys * np.float32(b.ey[1] / b.torso_len))
    a = (xs * np.float32(b.ex[0] / b.scale)) + (ys * np.float32(b.ex[1] / b.scale))
    # the colour statistics on every other pixel (a quarter of the work, the same medians)
    v2, a2, cl2 = v[::2, ::2], a[::2, ::2], clothing[::2, ::2] > 0
    central = (np.abs(a2) < 0.45) & (core_zone[::2, ::2] > 0)
    top_sel = (v2 > 0.3) & (v2 < lo - 0.05) & cl2 & central
    # below the band the zone has ended: the person's pixels there (trousers, a skirt), under
    # each hip, not between them (the gap between the legs is background the mask half covers)
    hips = [float(np.dot(b.px[i] - b.centre, b.ex)) / b.scale for i in (LM.LEFT_HIP, LM.RIGHT_HIP)]
    under_hips = (np.abs(a2 - hips[0]) < 0.15) | (np.abs(a2 - hips[1]) < 0.15)
    below_sel = (v2 > hi) & (v2 < hi + 0.3) & under_hips
    if person is not None:
        below_sel &= person[::2, ::2] > 0
    cut_at = 1.0 + (hi - 1.0) * 0.3  # without evidence: just below the hips
    colours = None
    if top_sel.sum() >= 10 and below_sel.sum() >= 10:
        smooth = cv2.blur(patch, (5, 5)).astype(np.float32)
        sm2 = smooth[::2, ::2]
        top_px = sm2[top_sel]
        top_c = np.median(top_px, axis=0)
        # a pattern has two colours (stripes, checks): the medians of its darker and lighter half
        luma = top_px @ LUMA_BGR
        dark = luma <= np.median(luma)
        tops = (
            np.array([np.median(top_px[dark], axis=0), np.median(top_px[~dark], axis=0)])
            if (dark.any() and (~dark).any())
            else top_c[None]
        )
        below_c = np.median(sm2[below_sel], axis=0)
        if float(np.linalg.norm(top_c - below_c)) >= 18.0:
            colours = (smooth, tops, below_c)
            rows = np.linspace(lo, hi, 24)
            step = rows[1] - rows[0]
            idx = np.clip(((v2 - lo) / step).astype(np.int32), 0, len(rows) - 1)
            band = central & (v2 >= lo) & (v2 <= hi) & cl2  # hands and skin excluded
            # each pixel votes: nearer the top's colour than the trousers' and than the background
            # beside the hips (the mask's blur fills the gap between the legs with background)
            px2 = sm2[band]
            d_top = _d2(px2, tops)
            votes = d_top <= _d2(px2, below_c)
            if person is not None:
                bg_sel = (person[::2, ::2] == 0) & (v2 >= lo) & (v2 < hi + 0.3) & (np.abs(a2) < 1.5)
                if bg_sel.sum() >= 10:
                    bg_c = np.median(sm2[bg_sel], axis=0)
                    votes &= d_top <= _d2(px2, bg_c)
            counts = np.bincount(idx[band], minlength=len(rows)).astype(np.float64)
            top_votes = np.bincount(idx[band], weights=votes.astype(np.float64), minlength=len(rows))
            seen = counts > 1
            # from the bottom up: the hem is below the lowest row that is mostly top-coloured, so a
            # dark stripe or check higher up never ends the top early
            top_like = seen & (top_votes >= 0.5 * counts)
            cut_at = float(rows[np.nonzero(top_like)[0].max()] + step) if top_like.any() else lo
    if previous is not None:
        cut_at = rate * cut_at + (1 - rate) * previous
    below = v > cut_at
    if arms is not None and colours is not None:
        smooth, tops, below_c = colours
        sleeve = below & (arms > 0) & (clothing > 0)
        if sleeve.any():
            px = smooth[sleeve]
            below[sleeve] = _d2(px, below_c) < _d2(px, tops)
    elif arms is not None:  # no colour tells the sleeves from what is below: they stay sleeves
        below &= arms == 0
    clothing[below] = 0
    return clothing, cut_at


def _d2(px: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Squared distance of each colour in ``px`` (..., 3) to the nearest of ``colours`` (k, 3),
    as |p|^2 - 2 p.c + |c|^2: one small matrix product, no (..., k, 3) temporaries."""
    flat = px.reshape(-1, 3).astype(np.float32, copy=False)
    cs = np.asarray(colours, np.float32).reshape(-1, 3)
    d = np.einsum("ij,ij->i", flat, flat)[:, None] - 2.0 * (flat @ cs.T) + np.einsum("ij,ij->i", cs, cs)
    return d.min(axis=1).reshape(px.shape[:-1])


def _masked_mean_colour(small: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Local mean colour over ``weight`` (Gaussian), from the reduced ``small`` colour image and
    a full-size weight; at ``small``'s size, float32 hxwx3."""
    wt = cv2.resize(weight, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
    s = max(0.8, sigma)
    den = gaussian(wt, s)
    num = gaussian(small * wt[..., None], s)
    return num / np.maximum(den, 1e-3)[..., None]


def _sample(small: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``small`` (a map at reduced size) at full-size pixels (``ys``, ``xs``) of a ``size`` (w, h)
    image, interpolated as ``cv2.resize`` would (bilinear, pixel centres): only the pixels asked
    for, not the whole upsampled map."""
    w, h = size
    sh, sw = small.shape[:2]
    mx = ((xs.astype(np.float32) + 0.5) * np.float32(sw / w) - 0.5).reshape(-1, 1)
    my = ((ys.astype(np.float32) + 0.5) * np.float32(sh / h) - 0.5).reshape(-1, 1)
    out = cv2.remap(small, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(len(xs), -1)


def trim_to_silhouette(
    patch: np.ndarray, person: np.ndarray, clothing: np.ndarray, scale: float, band: float, sigma: float
) -> np.ndarray:
    """The segmentation mask runs a few pixels past the real silhouette; in a band of ``band``
    body scales inside the person mask's edge, clothing pixels whose colour is nearer the local
    background's than the local clothing's are background. ``clothing`` is modified and returned.
    The local colours are computed at a quarter of the size and read only at the band's pixels;
    the band is the distance to the mask's edge (an erosion with a disc as wide as the band costs
    the disc's size on a close-up)."""
    k = max(3, int(band * scale) | 1)
    inside = cv2.distanceTransform(
        cv2.copyMakeBorder(person, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=255), cv2.DIST_L2, 3
    )
    inner = (inside[1:-1, 1:-1] > k / 2).astype(np.uint8) * 255
    edge = (clothing > 0) & (inner == 0)
    if not edge.any():
        return clothing
    background = (person == 0).astype(np.float32)
    if background.sum() < 16:
        return clothing
    core = cv2.bitwise_and(clothing, inner)
    h, w = clothing.shape
    f = 4 if min(h, w) >= 32 else 1
    small = cv2.resize(patch, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA).astype(
        np.float32
    )
    ys, xs = np.nonzero(edge)
    bg = _sample(_masked_mean_colour(small, background, sigma * scale / f), ys, xs, (w, h))
    cl = _sample(_masked_mean_colour(small, (core > 0).astype(np.float32), sigma * scale / f), ys, xs, (w, h))
    px = patch[ys, xs].astype(np.float32)
    d_bg = np.sum((px - bg) ** 2, axis=1)
    d_cl = np.sum((px - cl) ** 2, axis=1)
    clothing[ys[d_bg < d_cl], xs[d_bg < d_cl]] = 0
    return clothing
