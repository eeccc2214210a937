"""Garment keypoints ↔ body points: the control meshes of the piecewise-affine warp. Pure numpy.

The garment side is computed once per garment (``GarmentGeometry.from_keypoints``); the body side
once per frame (``body_mesh``). A mesh is a list of shapes in draw order (torso first, then the
two sleeves, so a sleeve crossing the chest lies on top); each shape is a convex polygon given
twice, on the canvas and in the frame, with corresponding vertices.

Sides: garment keypoints say image sides of the flat-lay, and the wearer faces the camera, so the
garment's image-left half (``shoulder_left``, small x) dresses the wearer's RIGHT side, which
MediaPipe calls ``RIGHT_*`` (index 12, 14, 16, 24) and which also appears on the image left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# MediaPipe Pose indices, per IMAGE side of a person facing the camera
IMAGE_LEFT = {"shoulder": 12, "elbow": 14, "wrist": 16, "hip": 24, "knee": 26}
IMAGE_RIGHT = {"shoulder": 11, "elbow": 13, "wrist": 15, "hip": 23, "knee": 25}
SIDES = (("left", IMAGE_LEFT, 1.0), ("right", IMAGE_RIGHT, -1.0))  # name, landmarks, outward sign
SLEEVE_LONG_RATIO = 0.55  # sleeve length / shoulder width above which a sleeve ends at the wrist
SEAM_OUT = 0.10  # the shoulder seam sits this far (times the shoulder width) outside the joint ...
SEAM_UP = 0.06  # ... and this far above it
HEM_BELOW_HIP = {"top": 0.08, "tshirt": 0.08, "shirt": 0.12, "jacket": 0.2, "dress": 0.2}
MARGIN = 3.0  # canvas px: shapes reach a little past the garment so its antialiased edge survives


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.hypot(v[0], v[1]))
    return v / n if n > 1e-6 else np.array([0.0, 1.0])


def _sleeve_normal(u: np.ndarray, outward: float) -> np.ndarray:
    """The perpendicular of sleeve axis ``u`` on the shoulder-seam side (the sleeve's top).

    The rule is a fixed rotation per side, so it turns with the arm: a hanging arm's seam side
    faces away from the body, a raised arm's faces the head, as on a real sleeve.
    """
    return np.array([-u[1], u[0]]) * outward


@dataclass(frozen=True)
class Sleeve:
    root: np.ndarray  # middle of the shoulder-armpit line
    axis: np.ndarray  # unit vector root -> cuff
    length: float
    half_width: float  # half the shoulder-armpit distance, with a margin
    # the fabric across the sleeve, sampled along it (canvas px from the root), as its centre
    # and half width measured along the sleeve's normal: a sleeve tapers to its cuff, and a
    # texture sampled past the fabric would show the canvas' edge fill
    along: np.ndarray | None = None
    centre: np.ndarray | None = None
    half: np.ndarray | None = None

    def fabric(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(centre, half width) of the fabric across the sleeve at ``t`` canvas px from the root."""
        if self.along is None or self.centre is None or self.half is None:
            return np.zeros_like(t), np.full_like(t, self.half_width)
        return (
            np.interp(t, self.along, self.centre).astype(np.float32),
            np.interp(t, self.along, self.half).astype(np.float32),
        )


def _sleeve_fabric(
    alpha: np.ndarray, root: np.ndarray, axis: np.ndarray, length: float, half: float, outward: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The fabric's extent across the sleeve at 12 stations from root to cuff, from the garment's
    alpha: per station, the run of opaque pixels along the normal nearest the axis."""
    n = _sleeve_normal(axis, outward)
    reach = np.linspace(-1.6 * half, 1.6 * half, 65)
    stations = np.linspace(0.1 * length, length, 12)
    centres, halves = [], []
    h, w = alpha.shape
    for t in stations:
        pts = root + axis * t + reach[:, None] * n
        xs = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
        ys = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
        on = alpha[ys, xs] > 127
        if not on.any():
            return None
        idx = np.flatnonzero(on)
        mid = int(idx[np.argmin(np.abs(reach[idx]))])
        lo = hi = mid
        while lo > 0 and on[lo - 1]:
            lo -= 1
        while hi < len(on) - 1 and on[hi + 1]:
            hi += 1
        centres.append((reach[lo] + reach[hi]) / 2)
        halves.append(max((reach[hi] - reach[lo]) / 2, 1.0))
    return stations, np.array(centres), np.array(halves)


@dataclass(frozen=True)
class GarmentGeometry:
    """The warp data that depends on the garment only: recomputed on every swap."""

    category: str
    keypoints: dict[str, np.ndarray]
    centre_x: float  # middle of the shoulders
    shoulder_y: float
    width: float  # shoulder to shoulder
    length: float  # shoulder line to hem line
    torso: np.ndarray  # (n, 2) convex torso polygon on the canvas, margin included
    sleeves: dict[str, Sleeve]
    long_sleeves: bool
    # the width the garment is laid on the shoulders by: its shoulder seams, or, where its
    # shoulders are narrow straps (sleeveless), the chest at its armpits
    seam_width: float = 0.0
    sleeveless: bool = False  # no cuff found on either side: the arms come out of armholes

    @classmethod
    def from_keypoints(
        cls, keypoints: dict[str, tuple[float, float, float]], category: str, alpha: np.ndarray | None = None
    ) -> GarmentGeometry:
        """``alpha`` (the canvas' garment coverage, uint8), when given, measures each sleeve's
        fabric across its length."""
        kp = {name: np.array(v[:2], dtype=np.float64) for name, v in keypoints.items()}
        missing = {"collar", "shoulder_left", "shoulder_right", "armpit_left", "armpit_right",
                   "sleeve_left", "sleeve_right", "hem_left", "hem_right"} - set(kp)  # fmt: skip
        if missing:
            raise ValueError(f"garment keypoints missing: {sorted(missing)}")
        for side in ("left", "right"):  # a garment without neck points: the collar's own height
            kp.setdefault(f"neck_{side}", kp[f"shoulder_{side}"] * 0.6 + kp["collar"] * 0.4)
        sl, sr = kp["shoulder_left"], kp["shoulder_right"]
        width = float(np.hypot(*(sr - sl)))
        if width < 4:
            raise ValueError(f"garment shoulders only {width:.1f} px apart")
        centre_x = float(sl[0] + sr[0]) / 2
        shoulder_y = float(sl[1] + sr[1]) / 2
        length = max(float(kp["hem_left"][1] + kp["hem_right"][1]) / 2 - shoulder_y, 4.0)
        m = MARGIN
        nl, nr, al, ar, hl, hr = (kp[n] for n in ("neck_left", "neck_right", "armpit_left", "armpit_right",
                                                  "hem_left", "hem_right"))  # fmt: skip
        up = np.array([0.0, -m])
        torso = np.array([
            nl + up, sl + up, al, (hl[0] - m, hl[1] + m), (hr[0] + m, hr[1] + m), ar, sr + up, nr + up,
        ])  # fmt: skip
        sleeves = {}
        for side, _, outward in SIDES:
            s, a, cuff = kp[f"shoulder_{side}"], kp[f"armpit_{side}"], kp[f"sleeve_{side}"]
            root = (s + a) / 2
            axis, sleeve_len = _unit(cuff - root), float(np.hypot(*(cuff - root)))
            half = 0.58 * float(np.hypot(*(s - a))) + m
            fabric = (
                _sleeve_fabric(alpha, root, axis, sleeve_len, half, outward) if alpha is not None else None
            )
            sleeves[side] = Sleeve(root, axis, sleeve_len, half, *(fabric or (None, None, None)))
        ratio = (sleeves["left"].length + sleeves["right"].length) / 2 / width
        chest = float(abs(kp["armpit_right"][0] - kp["armpit_left"][0]))
        sleeveless = all(len(keypoints[f"sleeve_{side}"]) > 2 and keypoints[f"sleeve_{side}"][2] < 1.0
                         for side in ("left", "right"))  # fmt: skip
        return cls(
            category,
            kp,
            centre_x,
            shoulder_y,
            width,
            length,
            torso,
            sleeves,
            ratio > SLEEVE_LONG_RATIO and not sleeveless,
            max(width, chest),
            sleeveless,
        )

    @property
    def region_category(self) -> str:
        """The ``garment_region`` category whose body area this garment needs."""
        if self.category == "dress":
            return "dress"
        return "jacket" if self.long_sleeves or self.category == "jacket" else "top"


@dataclass(frozen=True)
class Shape:
    """One convex piece of the mesh: ``source`` on the canvas, ``target`` in the frame."""

    source: np.ndarray  # (n, 2)
    target: np.ndarray  # (n, 2)


@dataclass(frozen=True)
class BodyFrame:
    """The torso's affine frame in image pixels, from the smoothed landmarks."""

    origin: np.ndarray  # shoulder seam line centre
    ex: np.ndarray  # unit, image-left shoulder -> image-right shoulder
    ey: np.ndarray  # unit, shoulders -> hips
    scale_x: float  # frame px per canvas px across
    scale_y: float  # and down


def body_frame(px: np.ndarray, g: GarmentGeometry) -> BodyFrame:
    """``px``: (33, 2) landmarks in pixels. Width from the shoulders, length from the hips."""
    ls, rs = px[IMAGE_LEFT["shoulder"]], px[IMAGE_RIGHT["shoulder"]]
    lh, rh = px[IMAGE_LEFT["hip"]], px[IMAGE_RIGHT["hip"]]
    mid_s, mid_h = (ls + rs) / 2, (lh + rh) / 2
    s = max(float(np.hypot(*(rs - ls))), 4.0)
    ex = _unit(rs - ls)
    ey = _unit(mid_h - mid_s)
    if float(ex[0] * ey[1] - ex[1] * ey[0]) <= 0.2:  # hips beside the shoulders: lying, or a bad pose
        ey = np.array([-ex[1], ex[0]])
    torso_len = float(np.dot(mid_h - mid_s, ey))
    origin = mid_s - ey * SEAM_UP * s
    if g.category == "dress":
        lk, rk = px[IMAGE_LEFT["knee"]], px[IMAGE_RIGHT["knee"]]
        leg = float(np.dot((lk + rk) / 2 - mid_h, ey))
        hem = torso_len + max(leg, 0.5 * torso_len) * 1.2
    else:
        hem = torso_len * (1 + HEM_BELOW_HIP.get(g.category, 0.1))
    hem += SEAM_UP * s
    scale_x = s * (1 + 2 * SEAM_OUT) / g.width
    scale_y = max(hem, 0.5 * s) / g.length
    return BodyFrame(origin, ex, ey, scale_x, scale_y)


def _place(b: BodyFrame, g: GarmentGeometry, p: np.ndarray) -> np.ndarray:
    """Canvas point -> frame point under the torso's affine frame."""
    p = np.atleast_2d(p)
    dx = (p[:, 0] - g.centre_x) * b.scale_x
    dy = (p[:, 1] - g.shoulder_y) * b.scale_y
    return b.origin + dx[:, None] * b.ex + dy[:, None] * b.ey


def _sleeve_shapes(
    g: GarmentGeometry, b: BodyFrame, px: np.ndarray, side: str, marks: dict[str, int], outward: float
) -> list[Shape]:
    """A sleeve as a tube of quads along the arm, the same width on the canvas and on the body.

    The tube starts a little before the sleeve's root (inside the torso, so a hanging arm keeps a
    rounded shoulder) and ends a little past the cuff (so a slanted cuff edge stays whole).
    """
    sl = g.sleeves[side]
    shoulder, elbow, wrist = px[marks["shoulder"]], px[marks["elbow"]], px[marks["wrist"]]
    seam_dst = _place(b, g, np.array([g.keypoints[f"shoulder_{side}"], g.keypoints[f"armpit_{side}"]]))
    root_dst = (shoulder + seam_dst.mean(axis=0)) / 2  # between the joint and the seam's middle
    upper = max(float(np.hypot(*(elbow - root_dst))), 1.0)
    if g.long_sleeves:  # two segments that bend at the elbow, cuff at the wrist
        fore = float(np.hypot(*(wrist - elbow)))
        stations_dst = [elbow, wrist]
        stations_t = [upper / max(upper + fore, 1e-6), 1.0]
    else:  # the cuff along the upper arm, as long as the garment says (never past the elbow)
        length = min(sl.length * b.scale_x, 0.9 * upper)
        stations_dst = [root_dst + _unit(elbow - root_dst) * length]
        stations_t = [1.0]
    hw_src = sl.half_width
    hw_dst = hw_src * b.scale_x
    axial = max(float(np.hypot(*(stations_dst[-1] - root_dst))), 1.0) / max(sl.length, 1.0)
    pts = [root_dst, *stations_dst]
    dirs = [_unit(pts[1] - pts[0])]
    for j in range(1, len(pts)):
        before = _unit(pts[j] - pts[j - 1])
        after = _unit(pts[j + 1] - pts[j]) if j + 1 < len(pts) else before
        dirs.append(_unit(before + after))
    lead, tail = 0.6 * hw_src, 0.8 * hw_src  # canvas px before the root and past the cuff
    src_centres = [
        sl.root - sl.axis * lead,
        sl.root,
        *(sl.root + sl.axis * sl.length * t for t in stations_t),
    ]
    src_centres.append(sl.root + sl.axis * (sl.length + tail))
    dst_centres = [
        root_dst - dirs[0] * lead * axial,
        root_dst,
        *stations_dst,
        stations_dst[-1] + dirs[-1] * tail * axial,
    ]
    dirs = [dirs[0], *dirs, dirs[-1]]  # the lead and the tail keep their neighbour's direction
    n_src = _sleeve_normal(sl.axis, outward)
    shapes = []
    prev = None
    for c_src, c_dst, d_dst in zip(src_centres, dst_centres, dirs, strict=True):
        n_dst = _sleeve_normal(d_dst, outward)
        cur = (
            np.array([c_src + n_src * hw_src, c_src - n_src * hw_src]),
            np.array([c_dst + n_dst * hw_dst, c_dst - n_dst * hw_dst]),
        )
        if prev is not None:  # quad: previous (top, bottom) then current (bottom, top), two triangles
            quad_src = [prev[0][0], prev[0][1], cur[0][1], cur[0][0]]
            quad_dst = [prev[1][0], prev[1][1], cur[1][1], cur[1][0]]
            for tri in ((0, 1, 2), (0, 2, 3)):
                shapes.append(
                    Shape(np.array([quad_src[i] for i in tri]), np.array([quad_dst[i] for i in tri]))
                )
        prev = cur
    return shapes


def body_mesh(g: GarmentGeometry, px: np.ndarray, depth: np.ndarray | None = None) -> list[list[Shape]]:
    """The mesh for one frame as layers in draw order: torso, then the farther sleeve, then the
    nearer one (by the wrists' MediaPipe ``z`` in ``depth``, smaller is nearer; crossed arms).

    The torso moves as one affine piece (shoulder line for width and tilt, hips for length), the
    sleeves as chains of quads along the arms, bent at the elbow for long sleeves.
    """
    b = body_frame(px, g)
    sleeves = [(_sleeve_shapes(g, b, px, side, marks, out), marks["wrist"]) for side, marks, out in SIDES]
    if depth is not None:
        sleeves.sort(key=lambda item: -float(depth[item[1]]))
    return [[Shape(g.torso, _place(b, g, g.torso))], *(shapes for shapes, _ in sleeves)]
