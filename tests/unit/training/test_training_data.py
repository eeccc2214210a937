"""Procedural clips: deterministic, shaped like the engine expects, masks match what is drawn."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from services.garments.catalogue import spec_by_id
from services.generator.engine import TINY
from services.generator.engine.conditioning import conditioning_to_latent
from tools.training.common import clip_conditioning_latent
from tools.training.data import FILLED_LANDMARKS, L_SH, R_HIP, RESTART_LATENTS, make_clip

pytestmark = pytest.mark.unit

RED_TEE, GREEN_SHIRT = spec_by_id("tee-red-solid"), spec_by_id("shirt-green-solid")


def test_same_seed_same_clip_other_seed_differs() -> None:
    a, b, c = make_clip(3, 9), make_clip(3, 9), make_clip(4, 9)
    for field in ("frames", "person_mask", "garment_mask", "landmarks", "conditioning", "reference"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.frames, c.frames)


def test_shapes_and_dtypes() -> None:
    clip = make_clip(0, 9)
    assert clip.frames.shape == (9, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.person_mask.shape == clip.garment_mask.shape == (9, 64, 64)
    assert clip.landmarks.shape == (9, 33, 4) and clip.landmarks.dtype == np.float32
    assert clip.conditioning.shape == (9, 64, 64, 4) and clip.conditioning.dtype == np.uint8
    assert clip.reference.shape == clip.garment_image.shape == (64, 64, 3)
    assert set(np.flatnonzero(clip.landmarks[0, :, 3])) == set(FILLED_LANDMARKS)
    assert clip.swap_frame is None
    # The figure moves: consecutive frames differ, but smoothly.
    diff = np.abs(np.diff(clip.frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    assert (diff > 0).all() and (diff < 20).all()


def test_masks_match_the_drawn_figure() -> None:
    clip = make_clip(7, 9, catalogue=[RED_TEE])
    person, garment = clip.person_mask, clip.garment_mask
    assert not (garment & ~person).any(), "the garment is worn by the person"
    assert 0.03 < person.mean() < 0.5 and 0.01 < garment.mean() < person.mean()
    # The conditioning is the service's own maps of these masks.
    np.testing.assert_array_equal(clip.conditioning[..., 0] > 0, person)
    np.testing.assert_array_equal(clip.conditioning[..., 1] > 0, garment)
    # Inside the (eroded) garment mask the pixels are the red tee; outside the person they are not.
    for t in range(9):
        inner = cv2.erode(garment[t].astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        red = clip.frames[t][inner].astype(float).mean(axis=0)
        assert red[0] > 150 and red[1] < 90 and red[2] < 90, red
        # Landmarks land on the figure: shoulders and hips inside the person mask.
        for idx in (L_SH, R_HIP):
            x, y = (clip.landmarks[t, idx, :2] * 64).astype(int)
            assert person[t, min(y, 63), min(x, 63)]


def test_swap_clip_changes_the_garment_at_the_swap_frame() -> None:
    clip = make_clip(5, 13, swap_frame=5, catalogue=[RED_TEE, GREEN_SHIRT], min_colour_gap=60)
    assert {clip.garment_a, clip.garment_b} == {RED_TEE.garment_id, GREEN_SHIRT.garment_id}
    means = np.stack([clip.frames[t][clip.garment_mask[t]].astype(float).mean(axis=0) for t in range(13)])
    before, after = means[:5], means[5:]
    assert np.abs(before - before[0]).max() < 25 and np.abs(after - after[0]).max() < 25
    assert np.linalg.norm(before.mean(0) - after.mean(0)) > 80
    # The reference wears A (frame 0) and the garment images are the two flat-lays.
    np.testing.assert_array_equal(clip.reference, clip.frames[0])
    assert not np.array_equal(clip.garment_images[clip.garment_a], clip.garment_images[clip.garment_b])


def test_clip_conditioning_latent_matches_the_engine_per_chunk() -> None:
    clip = make_clip(1, 21)
    whole = clip_conditioning_latent(torch.from_numpy(clip.conditioning)[None], TINY)[0]
    kw = {"device": torch.device("cpu"), "dtype": torch.float32}
    first = conditioning_to_latent(clip.conditioning[:9], TINY, first_is_image=True, **kw)
    second = conditioning_to_latent(clip.conditioning[9:21], TINY, first_is_image=False, **kw)
    torch.testing.assert_close(whole, torch.cat([first, second]))


def test_restart_window_is_the_latent_before_the_restart_worn_in_garment_a() -> None:
    clip = make_clip(5, 9, restart=True, catalogue=[RED_TEE, GREEN_SHIRT])
    r = clip.restart_latent
    assert r in RESTART_LATENTS and clip.restart_window is not None
    assert clip.restart_window.shape == (4, 64, 64, 3)
    # Same figure and pose as the full swap clip's frames 4(r-1)-3 .. 4(r-1), which still wear A.
    swap = make_clip(5, 4 * (r - 1) + 1, swap_frame=4 * (r - 1) + 1, catalogue=[RED_TEE, GREEN_SHIRT])
    assert swap.garment_a == clip.garment_a
    np.testing.assert_array_equal(clip.restart_window, swap.frames[-4:])
    # Without ``restart`` nothing extra is rendered.
    assert make_clip(5, 9).restart_window is None
