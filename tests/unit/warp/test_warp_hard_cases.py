"""Issue 15, the cases the first worn renderer got wrong in `chameleon eval render`: trousers
reaching up beside a top's hem, a hand lying on the chest under a long sleeve, bare forearms
crossed in front of the torso, hand landmarks that wander onto the clothing, a first detection
whose ears sit a few pixels apart, and a first fit held on a still person.

The figure cases run the real preprocessing (MediaPipe) on the procedural figure, whose ground
truth says what is clothing; the others are small synthetic frames that pin one rule each."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from warp_testkit import synthetic_body

from services.garments.catalogue import spec_by_id
from services.generator.rendering import FrameInput
from services.generator.warp import WarpRenderer, region
from shared.body import LM
from tools.eval.figure import make_eval_clip
from tools.eval.render import _psnr, face_changed
from tools.samples import catalogue_garment, preprocessed_frames

pytestmark = pytest.mark.unit

# (family, seed, garment worn, garment asked for): clips of `eval render`'s families where
# MediaPipe finds the figure
CASES = {
    "trousers": ("front", 1501, "tee-grey-print", "tee-yellow-dots"),
    "hand": ("hand_on_chest", 1540, "shirt-green-solid", "shirt-white-pinstripes"),
    "crossed": ("crossed_arms", 1520, "tee-navy-stripes", "tee-grey-print"),
}


@pytest.fixture(scope="module")
def rendered() -> dict:
    """Each case's last frame: (ground truth, camera input, render detail)."""
    out = {}
    for name, (family, seed, a, b) in CASES.items():
        clip = make_eval_clip(family, seed, 3, spec_by_id(a), spec_by_id(b), lead_in=4)
        fed = preprocessed_frames(clip.lead_in + [f.image for f in clip.inputs])
        if fed[-1].landmarks is None:
            pytest.fail(f"MediaPipe found no body in the {name} figure")
        session = WarpRenderer("s", catalogue_garment(b))
        for frame in fed:
            detail = session.render_detail(frame)
        out[name] = (clip.truth[-1], clip.inputs[-1], detail)
    return out


def _not_clothing(truth, worn) -> np.ndarray:
    """Everything that is neither garment (dilated 2 px): `eval render`'s psnr_outside region."""
    clothes = cv2.dilate((truth.garment | worn.garment).astype(np.uint8), np.ones((5, 5), np.uint8))
    return clothes == 0


def test_trousers_beside_the_hem_stay_trousers(rendered) -> None:
    """Hips wider than the tee's hem: the trousers there are not the top's, nor is the gap
    between the legs that the segmentation blurs over."""
    truth, worn, detail = rendered["trousers"]
    outside = _not_clothing(truth, worn)
    # about 110 px and 45.7 dB; 1,760 px and 36.4 dB with the hem below the hips, 230 px and
    # 42.7 dB without removing the trouser pixels joined to those below the hem
    assert ((detail.garment > 0) & outside).sum() < 160
    assert _psnr(detail.frame.image_bgr, truth.image, outside) >= 44.5


def test_a_hand_on_the_chest_stays_in_front_of_a_long_sleeve(rendered) -> None:
    """The hand lying on the chest is the figure's own (its keep-out mask): not one of its
    pixels changes, though the new shirt is drawn all round it."""
    _, worn, detail = rendered["hand"]
    h = worn.image.shape[0]
    chest = worn.keep_out.copy()
    chest[: h // 4] = False  # the head and neck are above a quarter of the frame
    chest[int(0.5 * h) :] = False  # the hanging hand is below half of it
    assert chest.sum() > 150  # the hand on the chest
    assert face_changed(detail.frame.image_bgr, worn.image, chest) == 0.0  # 0.9 when covered
    around = cv2.dilate(chest.astype(np.uint8), np.ones((21, 21), np.uint8)) > 0
    assert (detail.garment[around & ~chest] > 0).mean() > 0.5


def test_bare_forearms_across_the_torso_are_not_repainted_around(rendered) -> None:
    """A tee over a tee with the arms crossed: the forearms are bare already, and the garment
    reaches right up to them (no ring of repainted skin around each forearm)."""
    truth, _, detail = rendered["crossed"]
    # on the chest, between the elbows (where a sleeve ending early at an elbow the tracker
    # misplaced is a different matter)
    cols = np.flatnonzero(truth.garment.any(axis=0))
    middle = np.zeros_like(truth.garment)
    third = (cols[-1] - cols[0]) // 4
    middle[:, cols[0] + third : cols[-1] - third] = True
    assert ((detail.skin > 0) & truth.garment & middle).sum() < 100  # about 1,000 with the ring
    drawn = detail.garment > 0
    assert (drawn & truth.garment).sum() / (drawn | truth.garment).sum() >= 0.78


def _hands_changed(family: str, seed: int, worn_id: str, asked_id: str) -> tuple[int, float]:
    """An `eval render` clip (8 frames after a 4-frame walk-in) drawn in ``asked_id``: the
    figure's hand pixels on its last frame (its keep-out mask below the head and neck) and the
    share of them the render changed."""
    clip = make_eval_clip(family, seed, 8, spec_by_id(worn_id), spec_by_id(asked_id), lead_in=4)
    fed = preprocessed_frames(clip.lead_in + [f.image for f in clip.inputs])
    session = WarpRenderer("s", catalogue_garment(asked_id))
    for frame in fed:
        detail = session.render_detail(frame)
    worn = clip.inputs[-1]
    hands = worn.keep_out.copy()
    hands[: worn.image.shape[0] // 4] = False  # the head and neck
    return int(hands.sum()), face_changed(detail.frame.image_bgr, worn.image, hands)


def test_a_hand_past_the_trackers_wrist_on_crossed_arms_stays_in_front() -> None:
    """On crossed arms MediaPipe puts each wrist well short of its hand, which lies on the other
    elbow, under that arm's sleeve: the skin past the wrist along the forearm, as far as a hand
    reaches (``RegionConfig.hand_past``), is the hand, and no sleeve is drawn over it. `eval
    render`'s first crossed-arms clip, whose still frames show it."""
    hands, changed = _hands_changed(*CASES["crossed"])
    assert hands > 150
    assert changed == 0.0  # 0.18 at hand_past 0.5


def test_a_sliver_of_hand_past_the_other_elbow_stays_in_front() -> None:
    """`eval render`'s second crossed-arms clip: a hand all but hidden behind the other arm shows
    a sliver at the figure's outline, too thin for the skin test's blobs, far from where the
    tracker puts its wrist. Skin-coloured, at the outline, among clothing that is not: it is kept
    in front of the new sleeve (``region.skin_at_the_outline``)."""
    hands, changed = _hands_changed("crossed_arms", 1521, "shirt-red-checks", "shirt-blue-checks")
    assert hands > 100
    assert changed == 0.0  # 0.08 without the rule


def test_a_hand_zone_is_kept_dropped_or_shaped_by_its_skin() -> None:
    """Hand landmarks that wander onto clothing (crossed arms, hands up at the shoulders) must
    not cut the clothing out: a hand zone with (almost) no skin is dropped. One with a little
    skin (a hand in shadow, poorly seen by the skin test) is kept whole; one the skin test sees
    well (a hand on a bare forearm) is the skin's own shape, so the clothing beside it stays."""
    b, shape, cfg = synthetic_body(), (240, 200), region.RegionConfig()
    both = region.hands_mask(b, shape, cfg)
    zone = both[:, 100:] > 0  # the image-right hand's zone (about 750 px)
    assert both[162, 150] and both[162, 50]
    little = np.zeros(shape, np.uint8)
    cv2.circle(little, (150, 162), 4, 255, -1)  # under a tenth of the right zone, none on the left
    kept = region.hands_mask(b, shape, cfg, little)
    assert not kept[162, 50] and not kept[:, :100].any()
    assert np.array_equal(kept[:, 100:], both[:, 100:])  # kept whole
    well = np.zeros(shape, np.uint8)
    cv2.circle(well, (150, 170), 11, 255, -1)  # most of the right zone
    shaped = region.hands_mask(b, shape, cfg, well)[:, 100:] > 0
    assert shaped[170, 50] and shaped.sum() < zone.sum()  # the skin, grown a little
    assert not (shaped & ~zone).any()
    grown = cv2.dilate(well, np.ones((9, 9), np.uint8))[:, 100:] > 0
    assert not (shaped & ~grown).any()


def _assert_skin_is(
    face: tuple[int, int, int] | np.ndarray, frame: np.ndarray, mouth_y: int, mouth_half: int, ear_half: int
) -> None:
    """The skin model learned from a face drawn in ``frame`` (nose at (100, 88), a body scale of
    100 px) has the colour ``face``."""
    px = np.zeros((33, 2))
    px[LM.NOSE] = (100, 88)
    px[LM.MOUTH_LEFT], px[LM.MOUTH_RIGHT] = (100 + mouth_half, mouth_y), (100 - mouth_half, mouth_y)
    px[LM.LEFT_EAR], px[LM.RIGHT_EAR] = (100 + ear_half, 84), (100 - ear_half, 84)
    model = region.SkinModel.from_face(frame, px, 4.0, scale=100.0)
    assert model is not None
    assert np.abs(np.array(model.bgr) - np.asarray(face)).max() <= 3, model


def test_skin_comes_from_the_face_even_when_the_ears_are_close() -> None:
    """A first detection can put the ears 4 px apart; a patch sized from that lands on the lips
    and learns red as skin. The patch is never smaller than a face is wide for the body."""
    face, lips = (150, 190, 225), (60, 60, 170)
    frame = np.full((200, 200, 3), 90, np.uint8)
    cv2.circle(frame, (100, 85), 22, face, -1)
    cv2.rectangle(frame, (94, 93), (106, 97), lips, -1)
    _assert_skin_is(face, frame, mouth_y=100, mouth_half=4, ear_half=2)


def _still_frame(lm_shift: float) -> FrameInput:
    """A still figure-like frame: the same pixels, landmarks shifted by ``lm_shift`` px."""
    h, w = 240, 200
    img = np.full((h, w, 3), 200, np.uint8)
    person = np.zeros((h, w), np.uint8)
    cv2.ellipse(person, (100, 40), (18, 22), 0, 0, 360, 255, -1)
    cv2.rectangle(person, (55, 60), (145, 200), 255, -1)
    img[person > 0] = (40, 40, 160)
    cv2.ellipse(img, (100, 40), (18, 22), 0, 0, 360, (150, 190, 225), -1)
    lm = np.zeros((33, 4), np.float32)
    lm[:, 3] = 1.0
    pts = {
        LM.NOSE: (100, 42), LM.MOUTH_LEFT: (104, 50), LM.MOUTH_RIGHT: (96, 50),
        LM.LEFT_EAR: (115, 38), LM.RIGHT_EAR: (85, 38),
        LM.LEFT_SHOULDER: (138, 66), LM.RIGHT_SHOULDER: (62, 66),
        LM.LEFT_ELBOW: (146, 120), LM.RIGHT_ELBOW: (54, 120),
        LM.LEFT_WRIST: (148, 170), LM.RIGHT_WRIST: (52, 170),
        LM.LEFT_HIP: (128, 190), LM.RIGHT_HIP: (72, 190),
    }  # fmt: skip
    for i, (x, y) in pts.items():
        lm[i, :2] = ((x + lm_shift) / w, y / h)
    for i in (17, 19, 21):
        lm[i] = lm[LM.LEFT_WRIST]
    for i in (18, 20, 22):
        lm[i] = lm[LM.RIGHT_WRIST]
    return FrameInput(seq=0, frame_bgr=img, landmarks=lm, person_mask=person)


def test_a_first_fit_is_replaced_by_the_second_then_held() -> None:
    """The points of a first detection (off by 12 px here) give way to the tracker's next frame
    even though the person is still; after that a still person's points hold."""
    session = WarpRenderer("s", catalogue_garment("tee-red-solid"))
    session.render_detail(_still_frame(12.0))
    first = session._points.copy()
    session.render_detail(_still_frame(0.0))
    second = session._points.copy()
    assert abs(float(second[LM.LEFT_SHOULDER, 0] - first[LM.LEFT_SHOULDER, 0])) >= 6.0
    session.render_detail(_still_frame(12.0))  # the tracker wanders again: the points hold
    assert np.array_equal(session._points, second)


def test_the_skin_colour_is_the_lit_skin_not_a_beard() -> None:
    """A bare arm is repainted in the face's colour: the brighter half of the skin-chroma pixels
    of the patch, so a beard over most of it (skin-like chroma, darker) does not darken it."""
    face = np.array((120, 150, 200), np.uint8)
    frame = np.full((200, 200, 3), 90, np.uint8)
    cv2.circle(frame, (100, 85), 30, face.tolist(), -1)
    ycc = cv2.cvtColor(face[None, None], cv2.COLOR_BGR2YCrCb)
    ycc[..., 0] = ycc[..., 0] * 0.55  # the same chroma, darker: a beard, 60 % of the patch
    beard = cv2.cvtColor(ycc, cv2.COLOR_YCrCb2BGR)[0, 0]
    cv2.rectangle(frame, (70, 93), (130, 115), beard.tolist(), -1)
    _assert_skin_is(face, frame, mouth_y=102, mouth_half=6, ear_half=28)


def test_eval_render_judges_each_garment_over_all_frames_and_over_the_frames_with_asynthetic_body(
    capsys, monkeypatch
) -> None:
    """`chameleon eval render`'s by_garment (docs/warp.md): a frame where MediaPipe finds no body
    passes through undrawn and scores 0 for every garment alike, so each garment also gets its
    IoU over the frames with a body (``garment_iou_found``, ``frames_found`` of ``frames``)."""
    import json

    from services.preprocess.pose import PoseTracker
    from tools.eval import render

    # without the zoomed-out retry, MediaPipe misses the figure on some frames: frames undrawn
    monkeypatch.setattr(PoseTracker, "_zoomed_out", lambda self, rgb: (None, None))

    argv = ["--json", "--clips-per-pose", "1", "--frames", "2", "--lead-in", "2", "--garment-frames", "2"]
    assert render.main([*argv, "--garment-ids", "tee-red-solid"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    entry = report["by_garment"]["tee-red-solid"]
    assert entry["frames"] == 12  # 6 families x 2 frames
    # the figure's sleeve-change clip at seed 0 is one MediaPipe's plain graph never finds
    assert 0 < entry["frames_found"] < entry["frames"]
    # an undrawn frame scores 0: the IoU summed over all frames is the sum over those found
    total = entry["garment_iou"] * entry["frames"]
    assert entry["garment_iou_found"] * entry["frames_found"] == pytest.approx(total, abs=0.01)
    assert entry["garment_iou_found"] > entry["garment_iou"]
    assert report["worst_garment_found"]["id"] == "tee-red-solid"
    means = report["by_garment_means"]
    assert means["current"]["garment_iou_found"] == entry["garment_iou_found"]
