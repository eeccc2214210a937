"""The warp's geometry and compositing on a synthetic pose (no MediaPipe): sides, sleeves, layers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.generator.rendering import FrameInput, Garment
from services.generator.warp import WarpRenderer
from services.generator.warp.geometry import GarmentGeometry, body_mesh
from services.generator.warp.raster import warp_layers

pytestmark = pytest.mark.unit

W, H = 320, 400
# a frontal pose in pixels: the wearer's right (MediaPipe 12, 14, 16, 24) on the image left
POSE = {
    0: (160, 60), 2: (150, 52), 5: (170, 52), 7: (140, 58), 8: (180, 58), 9: (153, 78), 10: (167, 78),
    11: (205, 110), 12: (115, 110), 13: (220, 180), 14: (100, 180), 15: (225, 245), 16: (95, 245),
    23: (188, 240), 24: (132, 240), 25: (186, 320), 26: (134, 320),
}  # fmt: skip


def _landmarks() -> np.ndarray:
    lm = np.zeros((33, 4), np.float32)
    lm[:, 3] = 1.0
    for i in range(33):
        x, y = POSE.get(i, POSE[0])
        lm[i, :2] = (x / W, y / H)
    for hand, wrist in ((range(17, 23, 2), 15), (range(18, 23, 2), 16)):
        for i in hand:
            lm[i, :2] = (POSE[wrist][0] / W, (POSE[wrist][1] + 12) / H)
    return lm


def _two_tone_garment(
    long_sleeves: bool, hem: int = 220, v_depth: int = 60, cuff: tuple[int, int] | None = None
) -> Garment:
    """A canvas garment whose image-left half is green and image-right half magenta; ``hem``
    its hem's row on the canvas, ``v_depth`` its neckline's lowest row (60: a crew neck);
    ``cuff``: the image-left sleeve's end, when not the long or short sleeve's (mirrored)."""
    tex = np.zeros((300, 256, 4), np.uint8)
    left = cuff or ((8, 262) if long_sleeves else (30, 100))  # long: as long as the arm
    kp = {
        "collar": (128, v_depth), "neck_left": (104, 44), "neck_right": (152, 44),
        "shoulder_left": (60, 54), "shoulder_right": (196, 54), "armpit_left": (60, 90),
        "armpit_right": (196, 90), "hem_left": (60, hem), "hem_right": (196, hem),
        "sleeve_left": left, "sleeve_right": (256 - left[0], left[1]),
    }  # fmt: skip

    outline = ("neck_left", "shoulder_left", "armpit_left", "hem_left", "hem_right", "armpit_right",
               "shoulder_right", "neck_right", "collar")  # fmt: skip
    body = np.array([kp[n] for n in outline], np.int32)
    cv2.fillPoly(tex, [body], (0, 200, 0, 255))
    for side in ("left", "right"):
        s, a, c = (np.array(kp[f"{p}_{side}"]) for p in ("shoulder", "armpit", "sleeve"))
        cv2.line(tex, tuple(((s + a) // 2).tolist()), tuple(c.tolist()), (0, 200, 0, 255), 30)
    tex[:, 128:, :3] = np.where(tex[:, 128:, 3:] > 0, np.array([200, 0, 200], np.uint8), 0)
    return Garment(
        "two-tone", "shirt" if long_sleeves else "tshirt", tex, {k: (*v, 1.0) for k, v in kp.items()}
    )


def _striped_garment(period: int, cuff: tuple[int, int] | None = None) -> Garment:
    """A long-sleeved garment striped across (rows) at ``period`` canvas px, sleeves included
    (``cuff``: see ``_two_tone_garment``)."""
    g = _two_tone_garment(True, cuff=cuff)
    tex = g.texture_bgra.copy()
    rows = (np.arange(tex.shape[0]) // (period // 2)) % 2 == 0
    colour = np.where(
        rows[:, None, None], np.array([20, 230, 20], np.uint8), np.array([20, 20, 20], np.uint8)
    )
    tex[..., :3] = np.where(tex[..., 3:] > 0, np.broadcast_to(colour, tex[..., :3].shape), 0)
    return Garment("striped", "shirt", tex, g.keypoints)


def test_garment_left_dresses_the_wearers_right_which_is_image_left() -> None:
    g = _two_tone_garment(False)
    frame = FrameInput(0, np.full((H, W, 3), 128, np.uint8), _landmarks())
    out = WarpRenderer("s", g).render(frame)[0]
    left, right = out.image_bgr[200, 130], out.image_bgr[200, 190]  # torso, either side of the middle
    assert left[1] > 150 and left[0] < 60  # green: the garment's image-left half
    assert right[0] > 150 and right[2] > 150 and right[1] < 60  # magenta


def test_long_sleeves_follow_the_whole_arm_short_ones_stop_above_the_elbow() -> None:
    lm = _landmarks()
    frame = FrameInput(0, np.full((H, W, 3), 128, np.uint8), lm)
    long_out = WarpRenderer("s", _two_tone_garment(True)).render_detail(frame).garment
    short_out = WarpRenderer("s", _two_tone_garment(False)).render_detail(frame).garment
    forearm = (97, 225)  # between the image-left elbow (100, 180) and wrist (95, 245)
    upper_arm = (110, 125)
    assert long_out[forearm[1], forearm[0]] > 0 and long_out[upper_arm[1], upper_arm[0]] > 0
    assert short_out[forearm[1], forearm[0]] == 0 and short_out[upper_arm[1], upper_arm[0]] > 0


def _lowest_row(mask: np.ndarray, x0: int, x1: int) -> int:
    rows = np.flatnonzero((mask[:, x0:x1] > 0).any(axis=1))
    return int(rows.max())


def test_a_garment_ends_where_its_own_length_puts_it() -> None:
    """Two garments alike but for their length: the longer one's hem lands lower on the same
    body, by as much as its extra length at the garment's scale (the shoulder seams on the
    shoulders), not stretched to where the old clothing ends."""
    frame = FrameInput(0, np.full((H, W, 3), 128, np.uint8), _landmarks())
    short, long_ = _two_tone_garment(False), _two_tone_garment(False, hem=250)
    a = WarpRenderer("s", short).render_detail(frame).garment
    b = WarpRenderer("s", long_).render_detail(frame).garment
    seam = 110 - 0.06 * 93  # the shoulder line, less the seam's lift (body scale about 93 px)
    drop_a, drop_b = _lowest_row(a, 140, 180) - seam, _lowest_row(b, 140, 180) - seam
    assert drop_b > drop_a + 15
    canvas = (220 - 54, 250 - 54)  # hem below the shoulder keypoints, on the canvas
    assert abs(drop_b / drop_a - canvas[1] / canvas[0]) < 0.1


def test_a_v_neck_leaves_the_v_open() -> None:
    """The garment's own neckline shows: where its canvas has no cloth (the V), nothing is drawn."""
    frame = FrameInput(0, np.full((H, W, 3), 128, np.uint8), _landmarks())
    crew = WarpRenderer("s", _two_tone_garment(False)).render_detail(frame).garment
    v_neck = WarpRenderer("s", _two_tone_garment(False, v_depth=110)).render_detail(frame).garment
    point = (160, 125)  # on the centre line, a little below the shoulder line
    assert crew[point[1], point[0]] > 0 and v_neck[point[1], point[0]] == 0


def test_a_pattern_keeps_its_scale_from_torso_to_sleeve() -> None:
    """Stripes across the garment at one period: the period along the torso and along the long
    sleeve agree within 20 % (a sleeve mapped by its length alone came out at 2-3 times it)."""
    g = _striped_garment(period=12)
    frame = FrameInput(0, np.full((H, W, 3), 128, np.uint8), _landmarks())
    out = WarpRenderer("s", g).render_detail(frame).frame.image_bgr
    torso = out[130:230, 160, 1].astype(np.float32)  # down the middle of the torso
    elbow, shoulder = np.array(POSE[14], float), np.array(POSE[12], float)
    pts = [shoulder + (elbow - shoulder) * t for t in np.linspace(0.15, 0.95, 80)]
    sleeve = np.array([out[round(p[1]), round(p[0]), 1] for p in pts], np.float32)
    step = float(np.hypot(*(elbow - shoulder))) * 0.8 / 79
    p_torso, p_sleeve = _period(torso, 1.0), _period(sleeve, step)
    assert 0.8 <= p_sleeve / p_torso <= 1.25, (p_torso, p_sleeve)


def test_a_cap_sleeve_keeps_the_patterns_scale_past_its_ends() -> None:
    """A cap sleeve is shorter than the round drawn at the shoulder for an old sleeve's cap: past
    its cuff the cloth is mirrored back and before its root it runs on into the shoulder, so the
    pattern keeps its scale there (clamped, the cuff's and the root's rows smeared over the round:
    the sleeve's scale read under a quarter of the torso's)."""
    g = _striped_garment(period=12, cuff=(54, 78))
    frame = FrameInput(0, np.full((H, W, 3), 128, np.uint8), _landmarks())
    scales = WarpRenderer("s", g).render_detail(frame, measure=True).scales
    for side in ("left", "right"):
        assert 0.8 <= scales[f"sleeve_{side}"] / scales["torso"] <= 1.25, scales


def _period(signal: np.ndarray, step: float) -> float:
    """The period of ``signal`` (samples ``step`` px apart): the first peak of its
    autocorrelation, refined to a fraction of a sample."""
    x = signal - signal.mean()
    ac = np.correlate(x, x, mode="full")[len(x) - 1 :]
    peaks = [i for i in range(2, len(ac) // 2) if ac[i - 1] < ac[i] >= ac[i + 1] and ac[i] > 0.3 * ac[0]]
    i = peaks[0]
    shift = 0.5 * (ac[i - 1] - ac[i + 1]) / (ac[i - 1] - 2 * ac[i] + ac[i + 1])
    return (i + shift) * step


def test_geometry_reads_sleeve_length_from_the_keypoints() -> None:
    short = _two_tone_garment(False)
    long = _two_tone_garment(True)
    assert not GarmentGeometry.from_keypoints(short.keypoints, "tshirt").long_sleeves
    assert GarmentGeometry.from_keypoints(long.keypoints, "shirt").long_sleeves
    with pytest.raises(ValueError):
        GarmentGeometry.from_keypoints({"collar": (1, 1, 1)}, "top")


def test_the_nearer_sleeve_is_drawn_last() -> None:
    g = GarmentGeometry.from_keypoints(_two_tone_garment(True).keypoints, "shirt")
    px = _landmarks()[:, :2].astype(np.float64) * (W, H)
    depth = np.zeros(33)
    depth[15], depth[16] = -0.5, 0.2  # the image-right wrist (15) is nearer the camera
    layers = body_mesh(g, px, depth)
    assert len(layers) == 3 and len(layers[0]) == 1
    last_sleeve = np.concatenate([s.target for s in layers[2]])
    assert last_sleeve[:, 0].mean() > W / 2  # the image-right arm's sleeve is on top


def test_a_transparent_margin_never_hides_the_layer_beneath() -> None:
    g = _two_tone_garment(True)
    geo = GarmentGeometry.from_keypoints(g.keypoints, "shirt")
    px = _landmarks()[:, :2].astype(np.float64) * (W, H)
    layers = body_mesh(geo, px)
    colour, alpha = warp_layers(g.texture_bgra, layers, (0, 0, W, H))
    _, torso_alpha = warp_layers(g.texture_bgra, layers[:1], (0, 0, W, H))
    assert colour.shape == (H, W, 3) and alpha.shape == (H, W)
    assert np.all(alpha >= torso_alpha - 1e-5)  # stacking sleeves can only add coverage


def test_past_its_width_a_sleeve_mirrors_its_texture_instead_of_smearing_an_edge() -> None:
    """Old clothing wider than the new sleeve (a loose coat) is covered by the sleeve's texture
    mirrored back at the fabric's own edge: however far across, every point samples the sleeve's
    cloth (never the canvas' fill beyond it), and every column across a wide band samples a
    different texel (a clamp would repeat one)."""
    from services.generator.warp import mapping
    from tools.samples import catalogue_garment

    garment = catalogue_garment("shirt-blue-checks")
    alpha = garment.texture_bgra[..., 3]
    g = GarmentGeometry.from_keypoints(garment.keypoints, "shirt", alpha)
    chain = [np.array([50.0, 10.0]), np.array([50.0, 60.0]), np.array([50.0, 110.0])]
    mx, my = mapping.sleeve_map(g, "left", 1.0, chain, 0.8, 10.0, (0, 0, 100, 120))
    inside = cv2.remap(alpha, mx, my, cv2.INTER_NEAREST) > 127
    assert inside[10:110].mean() > 0.97  # along the arm, out to five sleeve widths either side
    row = 40
    band = np.stack([mx[row, 30:71], my[row, 30:71]], axis=1)  # two half-widths either side
    steps = np.hypot(*np.diff(band, axis=0).T)
    assert (steps > 1e-3).all()  # no run of columns on one clamped texel


def test_past_its_cuff_a_sleeve_mirrors_its_texture_back() -> None:
    """Along the arm past the cuff the canvas position turns back at the cuff, continuously: no
    run of pixels on one row (a smear) and no jump (a seam)."""
    from services.generator.warp import mapping
    from tools.samples import catalogue_garment

    garment = catalogue_garment("dress-floral-print")
    g = GarmentGeometry.from_keypoints(garment.keypoints, "dress", garment.texture_bgra[..., 3])
    sl, k = g.sleeves["left"], 0.8
    chain = [np.array([50.0, 10.0]), np.array([50.0, 60.0]), np.array([50.0, 110.0])]
    mx, my = mapping.sleeve_map(g, "left", 1.0, chain, k, 10.0, (0, 0, 100, 120))
    rows = np.arange(10, 10 + round(1.8 * sl.length * k))
    along = (mx[rows, 50] - sl.root[0]) * sl.axis[0] + (my[rows, 50] - sl.root[1]) * sl.axis[1]
    steps = np.diff(along)
    assert np.all(np.abs(steps) < 1.5 / k), steps  # no seam
    assert np.count_nonzero(np.abs(steps) < 0.5 / k) <= 1, steps  # no smear (one step folds)
    turn = int(np.argmax(along))
    assert abs(along[turn] - sl.length) < 1.5 / k and steps[turn:].max() < 0  # back at the cuff
