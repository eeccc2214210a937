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


def _two_tone_garment(long_sleeves: bool) -> Garment:
    """A canvas garment whose image-left half is green and image-right half magenta."""
    tex = np.zeros((256, 256, 4), np.uint8)
    kp = {
        "collar": (128, 60), "neck_left": (104, 44), "neck_right": (152, 44),
        "shoulder_left": (60, 54), "shoulder_right": (196, 54), "armpit_left": (60, 90),
        "armpit_right": (196, 90), "hem_left": (60, 220), "hem_right": (196, 220),
        "sleeve_left": (20, 200) if long_sleeves else (30, 100),
        "sleeve_right": (236, 200) if long_sleeves else (226, 100),
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
    long_out = WarpRenderer("s", _two_tone_garment(True)).render(frame)[0].drawn_mask
    short_out = WarpRenderer("s", _two_tone_garment(False)).render(frame)[0].drawn_mask
    forearm = (97, 225)  # between the image-left elbow (100, 180) and wrist (95, 245)
    upper_arm = (108, 135)
    assert long_out[forearm[1], forearm[0]] > 0 and long_out[upper_arm[1], upper_arm[0]] > 0
    assert short_out[forearm[1], forearm[0]] == 0 and short_out[upper_arm[1], upper_arm[0]] > 0


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
    mirrored back at its edge: points at 1.5 and 0.5 half-widths across sample the same texel,
    and every column across a wide band samples a different one (a clamp would repeat one)."""
    from services.generator.warp import mapping
    from tools.samples import catalogue_garment

    g = GarmentGeometry.from_keypoints(catalogue_garment("shirt-blue-checks").keypoints, "shirt")
    chain = [np.array([50.0, 10.0]), np.array([50.0, 60.0]), np.array([50.0, 110.0])]
    mx, my = mapping.sleeve_map(g, "left", 1.0, chain, 100.0, 10.0, (0, 0, 100, 120))
    row = 40
    for inner, outer in ((45, 35), (55, 65)):  # 0.5 and 1.5 half-widths, on either side
        assert abs(mx[row, inner] - mx[row, outer]) < 1e-3 and abs(my[row, inner] - my[row, outer]) < 1e-3
    band = np.stack([mx[row, 30:71], my[row, 30:71]], axis=1)  # two half-widths either side
    steps = np.hypot(*np.diff(band, axis=0).T)
    assert (steps > 1e-3).all()  # no run of columns on one clamped texel
