"""The image measures on synthetic arrays whose answers can be worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.quality import PSNR_CAP_DB, contact_sheet, ghost_ratio, psnr_outside

pytestmark = pytest.mark.unit

RED, BLUE, WHITE = (0, 0, 255), (255, 0, 0), (255, 255, 255)


def test_ghost_ratio_counts_pixels_nearer_the_old_colours() -> None:
    img = np.zeros((2, 2, 3), np.uint8)
    img[:] = BLUE
    img[0, 0] = RED
    img[1, 1] = (10, 10, 240)  # a slightly dirty red is still old
    everywhere = np.full((2, 2), 255, np.uint8)
    assert ghost_ratio(img, everywhere, [RED], [BLUE]) == 0.5
    assert ghost_ratio(img, everywhere, [BLUE], [RED, WHITE]) == 0.5
    top_row = np.array([[1, 1], [0, 0]], np.uint8)
    assert ghost_ratio(img, top_row, [RED], [BLUE]) == 0.5
    assert ghost_ratio(img, np.zeros((2, 2), np.uint8), [RED], [BLUE]) == 0.0
    assert ghost_ratio(img, everywhere, [], [BLUE]) == 0.0
    assert ghost_ratio(img, everywhere, [RED], []) == 1.0


def test_ghost_ratio_compares_in_lab_not_bgr() -> None:
    # in BGR, (0, 128, 0) is equally far (128) from black and from (0, 255, 0); in Lab it is far
    # nearer the bright green's hue than black
    img = np.full((1, 1, 3), (0, 128, 0), np.uint8)
    assert ghost_ratio(img, np.ones((1, 1)), [(0, 0, 0)], [(0, 255, 0)]) == 0.0


def test_psnr_outside_by_hand() -> None:
    a = np.full((4, 4, 3), 100, np.uint8)
    b = a.copy()
    b[:2] += 1  # off by one everywhere in the top half: mse 1 there
    assert psnr_outside(a, a, None) == PSNR_CAP_DB
    top = np.zeros((4, 4), np.uint8)
    top[:2] = 255
    assert psnr_outside(b, a, top) == PSNR_CAP_DB  # the difference is all inside the mask
    assert psnr_outside(b, a, 255 - top) == pytest.approx(10 * math.log10(255**2 / 1.0))
    assert psnr_outside(b, a, None) == pytest.approx(10 * math.log10(255**2 / 0.5))
    assert psnr_outside(b, a, np.full((4, 4), 255, np.uint8)) == PSNR_CAP_DB  # nothing outside
    with pytest.raises(ValueError):
        psnr_outside(a, a[:2], None)


def test_contact_sheet_lays_out_rows_of_input_and_output() -> None:
    before = np.zeros((100, 200, 3), np.uint8)
    after = np.full((100, 200, 3), 200, np.uint8)
    sheet = contact_sheet(
        [("a", before, after), ("b", before, np.full((100, 200), 50, np.uint8))], tile_w=320
    )
    # per row: 24 px label bar + 160 px tiles; 4 px between rows; two 320 px tiles and a 4 px gap
    assert sheet.shape == (2 * (24 + 160) + 4, 2 * 320 + 4, 3) and sheet.dtype == np.uint8
    assert (sheet[24:184, :320] == 0).all() and (sheet[24:184, 324:] == 200).all()
    assert (sheet[212:, 324:] == 50).all()
    assert (sheet[:24] != 32).any()  # the label is drawn on the bar
    with pytest.raises(ValueError):
        contact_sheet([])


def test_garment_pixels_excludes_what_still_shows_the_camera() -> None:
    from harness.quality import garment_pixels, ghost_ratio

    red, blue, beige = (40, 40, 200), (200, 60, 20), (150, 190, 210)
    inp = np.full((4, 6, 3), beige, np.uint8)  # the person's own coat
    out = inp.copy()
    out[:, 0:2] = blue  # the new garment
    out[:, 2:3] = red  # a ghost of the old one
    # columns 3-5 keep the coat (wider than the garment)
    region = np.full((4, 6), 255, np.uint8)
    shown = garment_pixels(out, inp, region, [red], [blue])
    assert shown[:, 0:3].all() and not shown[:, 3:].any()
    assert ghost_ratio(out, shown, [red], [blue]) == pytest.approx(1 / 3)
    # counted over the whole region the coat pixels (nearer red than blue) would read as ghosts
    assert ghost_ratio(out, region, [red], [blue]) > 0.5
