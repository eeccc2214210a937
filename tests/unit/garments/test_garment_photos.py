"""``garments add`` on photographed garments: every catalogue garment as a shop photographs it
(``tools.product_photos``: folds, shadow, tilt, perspective, a white, grey, wood or fabric table, a
hanger or a tag in view, JPEG 70-90), encoded by the real encoder and judged against the truth
carried through the same transforms; ghost-mannequin shots; and what cannot be used, refused."""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest

from services.garments.catalogue import render, spec_by_id, starter_catalogue
from services.garments.encoder import EncodedGarment, encode_garment
from shared.garment_client import GarmentError
from tools.eval.garments import photo_score, score, source_encoding, source_keypoints_in_photo
from tools.product_photos import BACKGROUNDS, ProductPhoto, flatlay_photo, ghost_photo

pytestmark = pytest.mark.unit

CATALOGUE = starter_catalogue()
IDS = [s.garment_id for s in CATALOGUE]
MIN_IOU = 0.95
MAX_KEYPOINT = 0.04  # of the garment's height, from where the encoder puts it on the clean source


@functools.cache
def _flatlay(garment_id: str) -> tuple[ProductPhoto, EncodedGarment]:
    """The garment's seed-0 flat-lay photo and its encoding (shared by the tests below)."""
    photo = flatlay_photo(spec_by_id(garment_id), 0)
    return photo, encode_garment(photo.data)


@pytest.mark.parametrize("garment_id", IDS)
def test_a_photographed_flat_lay_is_recovered(garment_id: str) -> None:
    spec = spec_by_id(garment_id)
    photo, enc = _flatlay(garment_id)
    reference = source_keypoints_in_photo(source_encoding(spec), photo.meta["homography"])
    s = score(enc, photo.mask, photo.keypoints, spec, reference) | {"background": photo.meta["background"]}
    assert s["iou"] >= MIN_IOU, s
    assert s["category_ok"] and s["sleeve_ok"], s
    assert s["keypoint_error"] <= MAX_KEYPOINT, (s["background"], s["keypoint_errors"])


@pytest.mark.parametrize(
    ("garment_id", "seed", "keypoint"),
    [
        # a cap sleeve's cuff runs on the slant: its middle, not the middle of the sleeve's top
        ("dress-floral-print", 1, "sleeve_left"),
        # a near-flat shoulder line: where the neckline dips, not wherever the hull touches it
        ("tee-white-solid", 2, "neck_right"),
        # ... and not where a pixel's wobble of the photo's outline first dips (a shallow collar)
        ("shirt-bw-minicheck", 2, "neck_left"),
    ],
)
def test_photos_that_once_moved_a_keypoint(garment_id: str, seed: int, keypoint: str) -> None:
    """Photos (other seeds) where a keypoint definition that held on the clean source slid off on
    the photo: by 0.06 of the garment's height (the cuff) and 0.048 (the neck)."""
    spec = spec_by_id(garment_id)
    s = photo_score(spec, "flatlay", seed, source_encoding(spec))
    assert s["keypoint_errors"][keypoint] <= MAX_KEYPOINT, s["keypoint_errors"]


def test_the_photos_are_deterministic_and_vary_as_a_shop_s_do() -> None:
    a, b = flatlay_photo(CATALOGUE[0], 0), flatlay_photo(CATALOGUE[0], 0)
    assert a.data == b.data and a.keypoints == b.keypoints
    assert flatlay_photo(CATALOGUE[0], 1).data != a.data
    metas = [_flatlay(s.garment_id)[0].meta for s in CATALOGUE]
    assert {m["background"] for m in metas} == set(BACKGROUNDS)
    rotations = [m["rotation_deg"] for m in metas]
    assert min(rotations) < -15 and max(rotations) > 15 and max(map(abs, rotations)) <= 20
    assert sum(m["hanger"] for m in metas) >= 5 and sum(m["tag"] for m in metas) >= 5
    assert {m["jpeg_quality"] for m in metas} <= set(range(70, 91))


def test_a_hanger_and_a_tag_are_not_garment() -> None:
    """Every photo with a hanger's hook or a tag in view: nothing of them is in the mask (the
    mask does not reach above the garment's top, or out to the tag)."""
    checked = 0
    for spec in CATALOGUE:
        photo, enc = _flatlay(spec.garment_id)
        if not (photo.meta["hanger"] or photo.meta["tag"]):
            continue
        m = enc.fit.affine()
        truth = cv2.warpAffine(photo.mask.astype(np.uint8) * 255, m, (256, 256)) > 127
        extra = (enc.mask > 127) & ~cv2.dilate(truth.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert extra.sum() < 40, (spec.garment_id, photo.meta, int(extra.sum()))
        checked += 1
    assert checked >= 12


@pytest.mark.parametrize(
    "garment_id",
    ["tee-white-solid", "shirt-bw-minicheck", "dress-black-dots", "tank-beige-solid", "maxi-green-floral"],
)
def test_a_ghost_mannequin_shot_is_recovered(garment_id: str) -> None:
    """Outline and keypoints against the shot's own truth, sleeve length and category. The collar
    is left out: the inside of the back shows in the neckline, so whether the outline's neckline
    is the back's or (where the back is as dark as the backdrop) the front's depends on the shot.
    An open front (jacket, coat) is filled by the back too, so its category comes out as a
    shirt: not in this list, see docs/garments.md."""
    spec = spec_by_id(garment_id)
    s = photo_score(spec, "ghost", 0, source_encoding(spec))
    assert s["iou"] >= MIN_IOU, s
    others = {k: v for k, v in s["keypoint_errors"].items() if k != "collar"}
    assert max(others.values()) <= MAX_KEYPOINT, others
    assert s["category_ok"] and s["sleeve_ok"], s


# -- refused, with the reason -------------------------------------------------------------------------
def _jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def _table(photo: ProductPhoto) -> np.ndarray:
    """The photo's table without the garment: its border, stretched."""
    img = photo.image
    return cv2.resize(img[:40, :40], (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)


def _refused(data: bytes, source: str = "flatlay") -> str:
    with pytest.raises(GarmentError) as err:
        encode_garment(data, source=source)
    assert err.value.message
    return err.value.code


def test_an_empty_table_is_no_garment() -> None:
    assert _refused(_jpeg(_table(flatlay_photo(spec_by_id("tee-red-solid"), 0)))) == "no_garment"


def test_two_garments_side_by_side_are_several() -> None:
    a = render(spec_by_id("tee-red-solid")).image
    b = render(spec_by_id("tee-yellow-dots")).image
    assert _refused(_jpeg(np.hstack([a, b]))) == "several_garments"


def test_a_garment_off_the_edge_is_cut_off() -> None:
    img = render(spec_by_id("shirt-green-solid")).image
    assert _refused(_jpeg(img[:, 120:])) == "garment_cut_off"  # a sleeve runs off the left edge
    assert _refused(_jpeg(img[:500])) == "garment_cut_off"  # the hem is not in the photo


def test_a_garment_far_away_is_too_small() -> None:
    img = render(spec_by_id("tee-red-solid")).image
    small = cv2.resize(img, None, fx=0.12, fy=0.12, interpolation=cv2.INTER_AREA)
    canvas = np.full((900, 900, 3), img[5, 5], np.uint8)
    canvas[400 : 400 + small.shape[0], 400 : 400 + small.shape[1]] = small
    assert _refused(_jpeg(canvas)) == "garment_too_small"


def test_the_photographed_catalogue_infers_every_category_and_sleeve() -> None:
    """Every category and sleeve length occurs, so the per-garment checks above cover them all."""
    assert {s.category for s in CATALOGUE} == {"top", "tshirt", "shirt", "dress", "jacket"}
    assert {s.sleeve_length for s in CATALOGUE} == {"none", "short", "long"}


def test_ghost_photos_keep_the_collar_truth_on_the_back_neckline() -> None:
    spec = spec_by_id("tee-red-solid")
    ghost, flat = ghost_photo(spec, 0), render(spec)
    assert ghost.meta["background"] in ("white", "grey", "studio")
    # the back's neckline is higher than the front's: less of the neck is open (over the height)

    def depth(kp: dict) -> float:
        top = (kp["neck_left"][1] + kp["neck_right"][1]) / 2
        return (kp["collar"][1] - top) / ((kp["hem_left"][1] + kp["hem_right"][1]) / 2 - top)

    assert 0 < depth(ghost.keypoints) < 0.6 * depth(flat.keypoints)
