"""Image measures for rendered frames: ghosting after a swap, PSNR outside the garment, and a
contact sheet to look at. Pure numpy + cv2; colours are BGR uint8 like every frame."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

PSNR_CAP_DB = 100.0  # what identical pixels score


def _lab(bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 (any shape ending in 3) -> CIE Lab float32 (L 0..100, a/b about -128..127)."""
    flat = np.ascontiguousarray(bgr, dtype=np.uint8).reshape(-1, 1, 3).astype(np.float32) / 255.0
    return cv2.cvtColor(flat, cv2.COLOR_BGR2LAB).reshape(-1, 3)


def _nearest(lab: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return np.min(np.linalg.norm(lab[:, None, :] - palette[None, :, :], axis=2), axis=1)


def ghost_ratio(
    output_bgr: np.ndarray,
    region_mask: np.ndarray,
    old_colours: Sequence[Sequence[int]],
    new_colours: Sequence[Sequence[int]],
) -> float:
    """Fraction of the pixels in ``region_mask`` whose colour is nearer (in Lab, nearest over each
    list) to one of the OLD garment's dominant colours than to any of the NEW garment's. Ties count
    as new. 0.0 for an empty region; 1.0 for any pixel in the region when ``new_colours`` is empty.
    """
    sel = np.asarray(region_mask) > 0
    if not sel.any() or not len(old_colours):
        return 0.0
    pixels = _lab(output_bgr[sel])
    if not len(new_colours):
        return 1.0
    d_old = _nearest(pixels, _lab(np.array(old_colours, np.uint8)))
    d_new = _nearest(pixels, _lab(np.array(new_colours, np.uint8)))
    return float(np.count_nonzero(d_old < d_new)) / len(pixels)


def garment_pixels(
    output_bgr: np.ndarray,
    input_bgr: np.ndarray,
    region_mask: np.ndarray,
    old_colours: Sequence[Sequence[int]],
    new_colours: Sequence[Sequence[int]],
) -> np.ndarray:
    """Where the output shows a garment: pixels of ``region_mask`` whose output colour is nearer
    (Lab) to a garment's dominant colours, old or new, than to the camera's own pixel there.

    This is the population ghosting is measured on: a pixel that still shows the person's own
    clothes (a coat wider than the drawn garment, a feathered edge) is neither garment, and
    counting it would make the ratio depend on what the person happened to wear."""
    sel = np.asarray(region_mask) > 0
    out = np.zeros(sel.shape, np.uint8)
    palette = [*old_colours, *new_colours]
    if not sel.any() or not palette:
        return out
    lab_out = _lab(output_bgr[sel])
    d_garment = _nearest(lab_out, _lab(np.array(palette, np.uint8)))
    d_camera = np.linalg.norm(lab_out - _lab(input_bgr[sel]), axis=1)
    out[sel] = np.where(d_garment < d_camera, 255, 0).astype(np.uint8)
    return out


def psnr_outside(output_bgr: np.ndarray, input_bgr: np.ndarray, mask: np.ndarray | None) -> float:
    """PSNR in dB between output and input over the pixels OUTSIDE ``mask`` (None: everywhere),
    peak 255, capped at ``PSNR_CAP_DB`` (also for identical pixels or nothing outside the mask)."""
    if output_bgr.shape != input_bgr.shape:
        raise ValueError(f"shapes differ: {output_bgr.shape} vs {input_bgr.shape}")
    outside = np.ones(output_bgr.shape[:2], bool) if mask is None else np.asarray(mask) == 0
    if not outside.any():
        return PSNR_CAP_DB
    diff = output_bgr[outside].astype(np.float64) - input_bgr[outside].astype(np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * np.log10(255.0**2 / mse))


def _tile(img: np.ndarray, tile_w: int) -> np.ndarray:
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    tile_h = max(1, round(h * tile_w / w))
    return cv2.resize(img, (tile_w, tile_h), interpolation=cv2.INTER_AREA if w > tile_w else cv2.INTER_LINEAR)


def contact_sheet(rows: list[tuple[str, np.ndarray, np.ndarray]], tile_w: int = 320) -> np.ndarray:
    """One row per ``(label, input, output)``: the two frames side by side, ``tile_w`` wide each,
    under a label bar. Returns a BGR uint8 image (``cv2.imwrite`` it as PNG)."""
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    bar_h, gap = 24, 4
    out_rows = []
    for label, before, after in rows:
        a, b = _tile(before, tile_w), _tile(after, tile_w)
        h = max(a.shape[0], b.shape[0])
        body = np.full((h, 2 * tile_w + gap, 3), 255, np.uint8)
        body[: a.shape[0], :tile_w] = a
        body[: b.shape[0], tile_w + gap :] = b
        bar = np.full((bar_h, body.shape[1], 3), 32, np.uint8)
        cv2.putText(
            bar, label, (6, bar_h - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA
        )
        out_rows += [bar, body, np.full((gap, body.shape[1], 3), 255, np.uint8)]
    return np.vstack(out_rows[:-1])


def write_rows(path: Path, rows: list[np.ndarray], gap: int = 4) -> None:
    """Rows of tiles (BGR, any widths) stacked into one PNG at ``path``, white-padded to the
    widest and ``gap`` px apart, compressed hard: the evaluations' contact sheets stay a few
    hundred KB in docs/img."""
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.vstack(padded), [cv2.IMWRITE_PNG_COMPRESSION, 9])
