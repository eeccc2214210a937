"""`chameleon eval drift`: window and range arithmetic, swap placement, the long clips, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.generator.engine import TINY
from tools.eval import drift
from tools.eval.drift import (
    DriftClip,
    DriftSettings,
    chunk_ends,
    clip_drift,
    effective_swap_frames,
    ghost_ratio,
    make_drift_clip,
    motion_index,
    range_psnr,
    windows,
)
from tools.training.data import make_clip
from tools.training.evaluate import EVAL_SEED, MIN_COLOUR_GAP, clip_metrics

pytestmark = pytest.mark.unit


def _psnr_of_mse(mse: float) -> float:
    return 10.0 * np.log10(255.0**2 / mse)


def test_windows_tile_the_clip_exactly() -> None:
    assert windows(600, 50) == [(s, s + 50) for s in range(0, 600, 50)]
    assert windows(120, 50) == [(0, 50), (50, 100), (100, 120)]


@pytest.mark.parametrize(
    ("bad_frame", "inside"), [(19, False), (20, True), (69, True), (70, False), (500, False)]
)
def test_range_psnr_counts_start_and_not_end(bad_frame: int, inside: bool) -> None:
    """Error 1 on every pixel, 100 on one frame: only [20, 70) may see the bad frame."""
    truth = np.zeros((600, 2, 2, 3), np.uint8)
    generated = np.ones_like(truth)
    generated[bad_frame] = 100
    want = _psnr_of_mse((49 + 100**2) / 50) if inside else _psnr_of_mse(1.0)
    assert range_psnr(generated, truth, (20, 70)) == pytest.approx(want, abs=1e-9)


def test_late_defaults_to_the_last_100_frames() -> None:
    assert DriftSettings().late_range == (500, 600)
    assert DriftSettings().early == (20, 70)
    assert DriftSettings(frames=300, early=(0, 50)).late_range == (200, 300)
    with pytest.raises(ValueError, match="early"):
        DriftSettings(frames=60)  # 20-70 does not fit in 60 frames


def test_swaps_land_on_the_next_chunk_boundary() -> None:
    """First chunk 9 frames, then 12: requested 100, 200, .. land on 105, 201, 309, 405, 501."""
    ends = chunk_ends(TINY, 600)
    assert ends[:3] == [9, 21, 33] and ends[-1] == 609 and ends[-2] < 600
    assert effective_swap_frames(TINY, 600, 100) == [105, 201, 309, 405, 501]
    assert effective_swap_frames(TINY, 120, 50) == [57, 105]
    assert effective_swap_frames(TINY, 600, 1000) == []


def test_motion_ping_pongs_without_repeating_the_turn() -> None:
    seq = [motion_index(f, 49) for f in range(200)]
    assert seq[:49] == list(range(49))
    assert seq[49:97] == list(range(47, -1, -1)) and seq[97] == 1
    assert max(seq) == 48 and min(seq) == 0


def _synthetic_clip(frames: int, swaps: list[int]) -> DriftClip:
    """Ground truth zeros; the garment mask everywhere; two garment colours alternate."""
    truth = np.zeros((frames, 2, 2, 3), np.uint8)
    colours = [(200, 0, 0), (0, 0, 200)]
    bounds = [0, *swaps, frames]
    for s in range(len(bounds) - 1):
        truth[bounds[s] : bounds[s + 1]] = colours[s % 2]
    return DriftClip(
        frames=truth,
        garment_mask=np.ones(truth.shape[:3], bool),
        conditioning=np.zeros((*truth.shape[:3], 4), np.uint8),
        reference=truth[0],
        garments=[f"g{s}" for s in range(len(swaps) + 1)],
        garment_images=[truth[0]] * (len(swaps) + 1),
        swap_frames=swaps,
    )


def test_clip_drift_windows_and_late_over_early_by_hand() -> None:
    """Error 1 in window w's frames w*50 .. w*50+49 is (w + 1): any boundary slip shows."""
    clip = _synthetic_clip(600, [105, 201, 309, 405, 501])
    generated = clip.frames.astype(np.int16).copy()
    for w in range(12):
        generated[w * 50 : (w + 1) * 50] += w + 1
    report = clip_drift(clip, generated.astype(np.uint8), DriftSettings(), chunk=12)
    assert report["psnr_by_window"] == pytest.approx([_psnr_of_mse((w + 1) ** 2) for w in range(12)])
    early_mse = (30 * 1 + 20 * 4) / 50  # frames 20-49 in window 0, 50-69 in window 1
    late_mse = (50 * 11**2 + 50 * 12**2) / 100
    assert report["psnr_early"] == pytest.approx(_psnr_of_mse(early_mse))
    assert report["psnr_late"] == pytest.approx(_psnr_of_mse(late_mse))
    assert len(report["ghost_ratio_by_swap"]) == 5


def test_ghost_of_each_swap_looks_at_its_own_segment() -> None:
    """Generated frames keep the OLD colour for the first 6 frames after swap 2 only."""
    swaps = [105, 201, 309]
    clip = _synthetic_clip(400, swaps)
    generated = clip.frames.copy()
    generated[201:207] = clip.frames[200]  # swap 2 (index 1) ghosts for half a chunk
    report = clip_drift(clip, generated, DriftSettings(frames=400), chunk=12)
    assert report["ghost_ratio_by_swap"] == pytest.approx([0.0, 6 / 108, 0.0])
    assert report["ghost_ratio_by_swap_first_chunk"] == pytest.approx([0.0, 0.5, 0.0])
    assert report["colour_gap_by_swap"] == pytest.approx([200 * np.sqrt(2)] * 3)


def test_ghost_ratio_is_evaluate_py_s_ghost_on_a_single_swap() -> None:
    clip = make_clip(EVAL_SEED, 33, swap_frame=21, min_colour_gap=MIN_COLOUR_GAP)
    worn_a = make_clip(EVAL_SEED, 33, swap_frame=33, min_colour_gap=MIN_COLOUR_GAP).frames
    rng = np.random.default_rng(0)
    for generated in (worn_a, (worn_a // 2 + clip.frames // 2), rng.integers(0, 256, clip.frames.shape)):
        generated = generated.astype(np.uint8)
        mine = ghost_ratio(generated, clip.frames, clip.garment_mask, (0, 21), (21, 33))
        assert mine == pytest.approx(clip_metrics(clip, generated)["ghost_ratio"], abs=1e-12)
    assert ghost_ratio(worn_a, clip.frames, clip.garment_mask, (0, 21), (21, 33)) > 0.5  # still wearing A


def test_drift_clip_is_eval_swap_s_clip_until_its_motion_loops() -> None:
    """One swap at 21: the same figure, garments, frames, masks and maps as make_clip's swap clip."""
    settings = DriftSettings(frames=49, early=(0, 10), motion_frames=49)
    long = make_drift_clip(EVAL_SEED, 60, [21], settings, (64, 64))
    ref = make_clip(EVAL_SEED, 49, swap_frame=21, min_colour_gap=MIN_COLOUR_GAP)
    assert long.garments == [ref.garment_a, ref.garment_b]
    np.testing.assert_array_equal(long.frames[:49], ref.frames)
    np.testing.assert_array_equal(long.garment_mask[:49], ref.garment_mask)
    np.testing.assert_array_equal(long.conditioning[:49], ref.conditioning)
    np.testing.assert_array_equal(long.reference, ref.reference)
    np.testing.assert_array_equal(long.garment_images[1], ref.garment_images[ref.garment_b])
    np.testing.assert_array_equal(long.frames[49:60], ref.frames[47:36:-1])  # played backwards


def test_later_garments_differ_in_colour_from_the_one_before() -> None:
    settings = DriftSettings(frames=49, early=(0, 10), motion_frames=9)
    clip = make_drift_clip(EVAL_SEED + 1, 49, [9, 21, 33, 45], settings, (64, 64))
    assert len(clip.garments) == 5
    assert all(a != b for a, b in zip(clip.garments, clip.garments[1:], strict=False))


def test_alternate_order_swaps_back_and_forth_between_eval_swap_s_pair() -> None:
    settings = DriftSettings(frames=49, early=(0, 10), motion_frames=9, garments="alternate")
    clip = make_drift_clip(EVAL_SEED, 49, [9, 21, 33], settings, (64, 64))
    ref = make_clip(EVAL_SEED, 9, swap_frame=9, min_colour_gap=MIN_COLOUR_GAP)
    assert clip.garments == [ref.garment_a, ref.garment_b, ref.garment_a, ref.garment_b]
    again = [motion_index(f, 9) for f in range(21, 33)]  # A again, at 5 6 7 8 7 6 .. 0 1 2
    np.testing.assert_array_equal(clip.frames[21:33], ref.frames[again])
    with pytest.raises(ValueError, match="garments"):
        DriftSettings(garments="random")


def test_cli_report_shape_on_a_short_run(capsys: pytest.CaptureFixture[str]) -> None:
    """The real engine and shipped weights on one 120-frame clip with two swaps."""
    args = ["--json", "--clips", "1", "--frames", "120", "--swap-every", "50", "--threads", "1"]
    assert drift.main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["windows"] == [[0, 50], [50, 100], [100, 120]]
    assert len(report["psnr_by_window"]) == len(report["autoencoder_psnr_by_window"]) == 3
    assert report["swap_frames"] == [57, 105]
    assert report["early"] == [20, 70] and report["late"] == [20, 120]
    assert len(report["ghost_ratio_by_swap"]) == len(report["colour_gap_by_swap"]) == 2
    assert report["psnr_late_over_early"] == round(report["psnr_late"] / report["psnr_early"], 4)
    assert 10 < report["psnr_early"] < 40 and report["weights"].endswith("tiny.safetensors")
    assert report["clips"] == 1 and report["frames"] == 120 and report["config"] == "tiny"
    assert set(report["goals"]) == {"late_over_early_ge_0.95", "no_swap_ghost_worse_than_first"}
