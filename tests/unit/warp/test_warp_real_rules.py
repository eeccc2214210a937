"""Issue 21, what real photos showed: a black-and-white picture (no skin test can run), a gloved
hand (no skin in its zone, yet a hand), a dark suit (its folds a few grey levels of highlight),
a badge or a white shirt front on dark cloth (albedo, not light), a side view (the head's size
from the torso, the garment's scale held from when the person faced the camera).

Small synthetic frames that pin one rule each, and the real bus photo where the rule is about a
whole render."""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
from warp_testkit import synthetic_body

from services.generator.warp import WarpRenderer, region
from services.generator.warp.shading import ShadingConfig, shading_gain
from shared.body import LM

pytestmark = pytest.mark.unit


def test_a_black_and_white_picture_is_told_from_a_colour_one() -> None:
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 255, (60, 80, 1), dtype=np.uint8), 3, axis=2)
    assert region.is_greyscale(grey)
    colour = grey.copy()
    colour[20:40, 20:60] = (60, 90, 200)  # a patch of skin-like colour
    assert not region.is_greyscale(colour)


def test_a_black_suits_shadows_are_not_skin_a_hand_in_shadow_is() -> None:
    """zidane.jpg: the skin test's chroma box, scaled up in the dark, reached grey, and a black
    suit's shadows came out as skin: dark holes in the new garment. Skin must be coloured the
    skin's way; a hand in shadow (the face's chroma at a third of its light) still is."""
    # the skin zidane.jpg's face gave (YCrCb), and the suit's shadows beside the lapel
    model = region.SkinModel(cr=144.0, cb=112.0, spread=7.5, bgr=(49, 71, 107), y=58.0)
    ycc = np.zeros((4, 4, 3), np.uint8)
    ycc[...] = (31, 126, 128)
    assert not model.mask(cv2.cvtColor(ycc, cv2.COLOR_YCrCb2BGR), 2.6).any()
    ycc[...] = (25, 134, 121)  # the face's chroma at under half its light
    assert model.mask(cv2.cvtColor(ycc, cv2.COLOR_YCrCb2BGR), 2.6).all()


def test_a_black_and_white_photo_is_dressed_without_a_skin_test(bus_frame, red_tee) -> None:
    """In a grey picture every pixel has the face's (grey) chroma: a skin test there takes the
    clothing for skin and leaves holes. Without one, the torso is dressed as in colour."""
    grey = cv2.cvtColor(cv2.cvtColor(bus_frame.frame_bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    mono = replace(bus_frame, frame_bgr=grey)
    session = WarpRenderer("s", red_tee)
    detail = session.render_detail(mono)
    assert session._skin is None
    colour = WarpRenderer("s", red_tee).render_detail(bus_frame)
    drawn, drawn_colour = detail.garment > 0, colour.garment > 0
    assert drawn.sum() >= 0.9 * drawn_colour.sum()


def test_a_gloved_hand_is_a_hand_the_tracker_on_clothing_is_not() -> None:
    """A hand zone without skin is either clothing the tracker's hand points wandered onto
    (crossed arms) or a glove or something held: it stays a hand when its colour stands out from
    what is around it."""
    b, shape, cfg = synthetic_body(), (240, 200), region.RegionConfig()
    no_skin = np.zeros(shape, np.uint8)
    coat = np.full((*shape, 3), (60, 70, 80), np.uint8)  # the hand points on the coat: not a hand
    assert not region.hands_mask(b, shape, cfg, no_skin, coat).any()
    gloved = coat.copy()
    cv2.circle(gloved, (150, 165), 13, (20, 20, 160), -1)  # a red glove on the image-right hand
    kept = region.hands_mask(b, shape, cfg, no_skin, gloved)
    assert kept[165, 150] and not kept[:, :100].any()


def _cloth(shape: tuple[int, int], base: float, folds: float) -> np.ndarray:
    """A grey cloth at ``base`` grey levels with diagonal fold highlights of ``folds`` levels."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wave = np.clip(np.cos(2 * math.pi * (xx + yy) / 60.0), 0, 1) ** 2
    rng = np.random.default_rng(1)
    img = base + folds * wave + rng.normal(0, 1.5, (h, w))
    return np.repeat(np.clip(img, 0, 255)[..., None], 3, axis=2).astype(np.uint8)


def test_a_dark_suits_folds_carry_over() -> None:
    """A black suit's folds are a few grey levels of highlight on a base of twenty: they become
    the new garment's light (the renderer once faded them out, and the garment came out flat)."""
    shape, cfg = (200, 200), ShadingConfig()
    surface = np.full(shape, 255, np.uint8)
    gain, _ = shading_gain(_cloth(shape, 18.0, 14.0), surface, 100.0, cfg)
    flat, _ = shading_gain(_cloth(shape, 18.0, 0.0), surface, 100.0, cfg)
    inner = (slice(20, 180), slice(20, 180))
    assert gain[inner].std() > 0.08  # the folds
    assert flat[inner].std() < 0.03  # noise alone is no fold


def test_a_badge_on_dark_cloth_is_not_light() -> None:
    """A white badge and a white shirt front on a dark uniform are materials of their own, not a
    bright light on the uniform: the gain over them is what it is around them."""
    shape, cfg = (200, 200), ShadingConfig()
    img = _cloth(shape, 22.0, 0.0)
    img[40:70, 30:90] = 235  # the badge
    img[:, 130:160] = 240  # a shirt front, top to bottom
    surface = np.full(shape, 255, np.uint8)
    gain, _ = shading_gain(img, surface, 100.0, cfg)
    around = gain[100:180, 30:90].mean()
    assert abs(gain[45:65, 40:80].mean() - around) < 0.08
    assert abs(gain[20:180, 135:155].mean() - around) < 0.08


def test_a_turned_head_is_covered_by_its_size_from_the_torso() -> None:
    """Seen from the side, the ears nearly overlap and the shoulders too: a head sized from them
    shrank to a dot and the garment was drawn over the cheek. It is never under a third of a
    torso."""
    px = np.zeros((33, 2))
    px[LM.LEFT_SHOULDER], px[LM.RIGHT_SHOULDER] = (104, 120), (96, 120)  # nearly overlapping
    px[LM.LEFT_HIP], px[LM.RIGHT_HIP] = (104, 240), (96, 240)
    px[: LM.MOUTH_RIGHT + 1] = (115, 70)
    px[LM.LEFT_EAR], px[LM.RIGHT_EAR] = (101, 66), (99, 66)
    px[LM.MOUTH_LEFT], px[LM.MOUTH_RIGHT] = (122, 84), (118, 84)
    b = region.body_in_roi(px)
    head = region.head_zone(b, (260, 200), region.RegionConfig())
    assert head[70, 115] and head[70, 95] and head[92, 118]  # face, back of the head, chin
    assert head.sum() / 255 > math.pi * (0.3 * 120 * 0.75) * (0.3 * 120) * 0.9


def test_a_hand_far_from_the_trackers_wrist_is_still_a_hand() -> None:
    """On crossed arms a tracker's wrists can sit a hand's length short of the hands: a piece of
    skin no bigger than a hand, apart from the head, is a hand wherever it is; the face and a
    bare arm are not."""
    b, cfg = synthetic_body(), region.RegionConfig()
    skin = np.zeros((240, 200), np.uint8)
    cv2.circle(skin, (100, 40), 25, 255, -1)  # the face
    cv2.circle(skin, (60, 110), 9, 255, -1)  # a hand resting on the other elbow
    cv2.line(skin, (150, 70), (160, 200), 255, 20)  # a bare arm
    head = np.zeros_like(skin)
    cv2.circle(head, (100, 40), 30, 255, -1)
    hands = region.lone_hands(b, region.SkinPieces.of(skin), head, cfg)
    assert hands[110, 60] and not hands[40, 100] and not hands[150, 155]


def test_skin_lying_mostly_off_an_arm_is_not_that_arms() -> None:
    """A sleeve covers its own arm's bare skin, not the other forearm and hand lying across it."""
    skin = np.zeros((200, 200), np.uint8)
    arm = np.zeros_like(skin)
    cv2.line(arm, (40, 20), (40, 180), 255, 30)  # this arm's capsule
    cv2.line(skin, (40, 120), (40, 180), 255, 20)  # its own bare forearm
    cv2.line(skin, (45, 70), (190, 90), 255, 18)  # the other forearm, its hand on this arm
    off = region.skin_off_arm(region.SkinPieces.of(skin), arm)
    assert off[80, 120] and off[72, 45] and not off[150, 40]


def test_a_bare_arm_on_a_black_and_white_picture_is_grey(cameraman_photo) -> None:
    """camera.png is grey: no skin test runs there, but a tee's bare forearms are painted in the
    face's tone, grey, not in a default skin colour (brown arms on a black-and-white photo)."""
    from services.camera.source import MotionCamera
    from tools.samples import catalogue_garment, preprocessed_frames

    camera = MotionCamera(cameraman_photo, 640, 480)
    frames = preprocessed_frames([camera.frame(i) for i in range(3)])
    assert frames[-1].landmarks is not None  # found zoomed out (docs/preprocess.md)
    session = WarpRenderer("s", catalogue_garment("tee-navy-stripes"))
    for frame in frames:
        detail = session.render_detail(frame)
    bare = detail.skin > 0
    assert bare.sum() > 500  # his forearms, bare under the tee
    out = detail.frame.image_bgr[bare].astype(np.float32)
    tint = np.abs(out - out.mean(axis=1, keepdims=True)).max(axis=1)  # 0 on a grey pixel
    assert np.percentile(tint, 90) <= 4  # 0 (the garment's edge tints the rim); 39 in brown


def test_skin_at_the_outline_is_a_hand_sliver_not_a_pattern_square_nor_skin_coloured_cloth() -> None:
    """A thin piece of skin colour the blob test drops is a hand peeking out when it touches the
    person's outline, is the face's own colour and light, and the clothing round it is not
    skin-coloured; not a dark check square (at the test's edge), nor a piece of a coat that is
    skin-coloured all round."""
    model = region.SkinModel(cr=150.0, cb=110.0, spread=4.0, bgr=(120, 140, 180), y=150.0)

    def bgr(y: float, cr: float, cb: float) -> tuple[int, int, int]:
        px = cv2.cvtColor(np.array([[[y, cr, cb]]], np.uint8), cv2.COLOR_YCrCb2BGR)[0, 0]
        return int(px[0]), int(px[1]), int(px[2])

    person = np.zeros((80, 80), np.uint8)
    person[10:70, 10:70] = 255
    none = np.zeros_like(person)

    def picked(colour: tuple[int, int, int], rows: slice, cols: slice, cloth_is_skin: bool = False) -> bool:
        patch = np.full((80, 80, 3), (120, 40, 30), np.uint8)  # dark blue cloth
        patch[rows, cols] = colour
        raw = np.zeros_like(person)
        if cloth_is_skin:
            raw[person > 0] = 255
            raw[rows.start - 1 : rows.stop + 1, cols.start - 1 : cols.stop + 1] = 0  # the piece apart
        raw[rows, cols] = 255
        out = region.skin_at_the_outline(patch, model, raw, none, person, (20.0, 1000.0))
        return bool(out[rows, cols].all())

    skin = bgr(150, 150, 110)
    assert picked(skin, slice(30, 50), slice(10, 14))  # at the outline: a sliver of a hand
    assert not picked(skin, slice(30, 50), slice(30, 34))  # inside the clothing
    assert not picked(bgr(40, 144, 115), slice(30, 50), slice(10, 14))  # its chroma, in the dark
    assert not picked(bgr(150, 158, 110), slice(30, 50), slice(10, 14))  # 2 spreads off the face's
    assert not picked(skin, slice(30, 50), slice(10, 14), cloth_is_skin=True)  # fleece all round
