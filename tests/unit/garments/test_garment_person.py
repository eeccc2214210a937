"""``garments add --from-person``: a garment cut out of a photo of the procedural figure wearing it
(real MediaPipe pose and segmentation on the photo), and what cannot be used, refused.

What "usable" means here, measured against the figure's own masks: the pixels the cut took are
the garment's (precision), most of the garment that shows was taken (recall), the flat garment
has every keypoint, its sleeve length is the garment's, no skin came with it, and its main colour
is the garment's."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.garments.catalogue import render, spec_by_id
from services.garments.encoder import encode_garment
from services.garments.person import garment_from_person
from shared.garment_client import GarmentError
from shared.garment_schemas import KEYPOINT_NAMES
from tools.product_photos import flatlay_photo, worn_photo

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("garment_id", "pose"),
    [
        ("tee-red-solid", "front"),
        ("tee-red-solid", "hand_on_chest"),  # a forearm across the chest hides some of it
        ("shirt-blue-checks", "hand_on_chest"),
        ("tee-white-solid", "front"),
        ("tee-beige-solid", "front"),  # the colour of the model's skin
    ],
)
def test_a_worn_garment_is_cut_out_usable(garment_id: str, pose: str) -> None:
    spec = spec_by_id(garment_id)
    photo = worn_photo(spec, 0, pose)
    cut = garment_from_person(photo.image)
    taken, truth = cut.photo_mask, photo.mask
    precision = (taken & truth).sum() / taken.sum()
    recall = (taken & truth).sum() / truth.sum()
    assert precision >= 0.9 and recall >= 0.85, (precision, recall, cut.report)

    enc = encode_garment(photo.data, source="person")
    assert (enc.source_kind, enc.mask_source) == ("person", "person")
    assert set(enc.keypoints) == set(KEYPOINT_NAMES)
    assert enc.inferred is not None and enc.inferred.sleeve_length == spec.sleeve_length, cut.report
    inside = enc.texture[..., 3] > 127
    skin = np.array(photo.meta["skin_bgr"], np.float32)
    if np.linalg.norm(np.array(spec.colours[0], np.float32) - skin) > 60:
        near_skin = np.linalg.norm(enc.texture[..., :3].astype(np.float32) - skin, axis=2) < 25
        assert (near_skin & inside).sum() / inside.sum() <= 0.02
    # its main colour is one of the garment's own (as the clean flat-lay's encoding has them), in
    # chromaticity: the figure's light and folds change the brightness
    own = np.array([c["bgr"] for c in encode_garment(render(spec).png()).dominant_colours], np.float32)
    main = np.array(enc.dominant_colours[0]["bgr"], np.float32)
    chroma = own / (own.sum(axis=1, keepdims=True) + 1), main / (main.sum() + 1)
    assert np.linalg.norm(chroma[0] - chroma[1], axis=1).min() <= 0.04, (main, own)


def _jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 88])[1].tobytes()


def _refused(data: bytes) -> GarmentError:
    with pytest.raises(GarmentError) as err:
        encode_garment(data, source="person")
    assert err.value.message
    return err.value


def test_a_photo_without_a_person_is_refused() -> None:
    assert _refused(flatlay_photo(spec_by_id("tee-red-solid"), 0).data).code == "no_person"


def test_two_people_are_refused() -> None:
    a = worn_photo(spec_by_id("tee-red-solid"), 0, "front").image
    b = worn_photo(spec_by_id("shirt-blue-checks"), 0, "hand_on_chest").image
    assert _refused(_jpeg(np.hstack([a, b]))).code == "several_garments"


def test_a_person_cut_off_at_the_chest_is_refused() -> None:
    a = worn_photo(spec_by_id("tee-red-solid"), 0, "front").image
    assert _refused(_jpeg(a[:330])).code == "garment_cut_off"


def test_a_person_far_away_is_too_small() -> None:
    a = worn_photo(spec_by_id("tee-red-solid"), 0, "front").image
    small = cv2.resize(a, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA)
    canvas = cv2.resize(a[:20, :20], (600, 800))
    canvas[300 : 300 + small.shape[0], 230 : 230 + small.shape[1]] = small
    assert _refused(_jpeg(canvas)).code == "garment_too_small"
