"""Piecewise-affine warp of a texture into a frame ROI, one ``cv2.remap`` per layer. Pure numpy + cv2.

Within a layer, each mesh shape is rasterised into a label image and every label carries the
affine frame -> canvas map of its shape, so the remap grid is six table look-ups and a few
multiply-adds per pixel, all vectorised. Layers (torso, sleeves) are composited "over" each other
with premultiplied alpha, so a sleeve's transparent margin never hides what lies beneath it.
"""

from __future__ import annotations

import cv2
import numpy as np

from services.generator.warp.geometry import Shape

_SUBPIXEL_BITS = 4
_OUTSIDE = -16.0  # maps pixels no shape covers outside the texture (transparent border)


def _inverse_affines(shapes: list[Shape]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 6) frame -> canvas coefficients from each shape's first three vertices, and which
    shapes are usable (not degenerate in the frame).

    Closed-form 3x3 inverses (adjugate / determinant) instead of ``np.linalg``: for a few dozen
    tiny systems LAPACK's per-call overhead, and OpenBLAS threads spinning after each call, cost
    more CPU than the whole remap (profiled: a quarter of the generator's samples)."""
    dst = np.array([s.target[:3] for s in shapes], dtype=np.float64)  # (n, 3, 2)
    src = np.array([s.source[:3] for s in shapes], dtype=np.float64)
    (x0, y0), (x1, y1), (x2, y2) = dst[:, 0].T, dst[:, 1].T, dst[:, 2].T
    # rows [x, y, 1]; cofactors of that matrix, transposed (the adjugate)
    adj = np.stack(
        [
            np.stack([y1 - y2, y2 - y0, y0 - y1], axis=1),
            np.stack([x2 - x1, x0 - x2, x1 - x0], axis=1),
            np.stack([x1 * y2 - x2 * y1, x2 * y0 - x0 * y2, x0 * y1 - x1 * y0], axis=1),
        ],
        axis=1,
    )  # (n, 3, 3)
    det = x0 * (y1 - y2) + x1 * (y2 - y0) + x2 * (y0 - y1)
    ok = np.abs(det) > 0.5  # twice the triangle area in px²: under a quarter pixel is no shape
    inv = adj / np.where(ok, det, 1.0)[:, None, None]
    coef = np.einsum("nij,njk->nik", inv, src)  # (n, 3, 2): [x, y, 1] @ coef = source
    coef[~ok] = 0.0
    return coef.transpose(0, 2, 1).reshape(len(shapes), 6), ok


def mesh_bounds(
    shapes: list[Shape], width: int, height: int, pad: int = 2
) -> tuple[int, int, int, int] | None:
    """Integer (x0, y0, x1, y1) box of the mesh in the frame, clipped; None when empty."""
    pts = np.concatenate([s.target for s in shapes])
    if not np.all(np.isfinite(pts)):
        return None
    x0, y0 = np.floor(pts.min(axis=0)).astype(int) - pad
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + pad + 1
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    return (int(x0), int(y0), int(x1), int(y1)) if x1 > x0 and y1 > y0 else None


def _warp_one(
    texture: np.ndarray, shape: Shape, coef: np.ndarray, usable: bool, roi: tuple[int, ...]
) -> np.ndarray:
    x0, y0, x1, y1 = roi
    w, h = x1 - x0, y1 - y0
    if not usable:
        return np.zeros((h, w, 4), np.uint8)
    m = coef.reshape(2, 3).copy()
    m[:, 2] += m[:, 0] * x0 + m[:, 1] * y0
    out = cv2.warpAffine(
        texture, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )  # fmt: skip
    inside = np.zeros((h, w), np.uint8)
    scale = float(1 << _SUBPIXEL_BITS)
    cv2.fillConvexPoly(
        inside, np.round((shape.target - (x0, y0)) * scale).astype(np.int32), 255, cv2.LINE_8, _SUBPIXEL_BITS
    )
    out[..., 3] = cv2.min(out[..., 3], inside)
    return out


def warp_into_roi(texture: np.ndarray, shapes: list[Shape], roi: tuple[int, int, int, int]) -> np.ndarray:
    """``texture`` (canvas BGRA) warped onto the box ``(x0, y0, x1, y1)`` of the frame by one
    layer of shapes (later shapes win where they overlap); alpha is zero where none lands."""
    x0, y0, x1, y1 = roi
    w, h = x1 - x0, y1 - y0
    coef, ok = _inverse_affines(shapes)
    if len(shapes) == 1:  # one affine piece (the torso): a plain warpAffine, clipped to the polygon
        return _warp_one(texture, shapes[0], coef[0], bool(ok[0]), roi)
    labels = np.zeros((h, w), np.uint8)
    scale = float(1 << _SUBPIXEL_BITS)
    for i, (shape, usable) in enumerate(zip(shapes, ok, strict=True)):
        if usable:
            pts = np.round((shape.target - (x0, y0)) * scale).astype(np.int32)
            cv2.fillConvexPoly(labels, pts, i + 1, cv2.LINE_8, _SUBPIXEL_BITS)
    table = np.zeros((len(shapes) + 1, 6), np.float32)
    table[0] = (0, 0, _OUTSIDE, 0, 0, _OUTSIDE)
    # the coefficients act on absolute frame coordinates; fold the ROI offset into the constant
    c = coef.astype(np.float64)
    c[:, 2] += c[:, 0] * x0 + c[:, 1] * y0
    c[:, 5] += c[:, 3] * x0 + c[:, 4] * y0
    table[1:] = c
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]
    t = table[labels]  # (h, w, 6)
    map_x = t[..., 0] * xs + t[..., 1] * ys + t[..., 2]
    map_y = t[..., 3] * xs + t[..., 4] * ys + t[..., 5]
    return cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_layers(
    texture: np.ndarray, layers: list[list[Shape]], roi: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Layers warped and stacked over each other inside ``roi``: premultiplied BGR (float32,
    0..255) and alpha (float32, 0..1). Each layer is remapped only over its own bounding box."""
    x0, y0, x1, y1 = roi
    colour = np.zeros((y1 - y0, x1 - x0, 3), np.float32)
    alpha = np.zeros((y1 - y0, x1 - x0), np.float32)
    first = True
    for shapes in layers:
        box = mesh_bounds(shapes, x1, y1)
        if box is None:
            continue
        bx0, by0, bx1, by1 = max(box[0], x0), max(box[1], y0), box[2], box[3]
        if bx1 <= bx0 or by1 <= by0:
            continue
        layer = warp_into_roi(texture, shapes, (bx0, by0, bx1, by1))
        a = layer[..., 3].astype(np.float32) * (1 / 255)
        sub = (slice(by0 - y0, by1 - y0), slice(bx0 - x0, bx1 - x0))
        premultiplied = layer[..., :3].astype(np.float32) * a[..., None]
        if first:  # nothing beneath yet
            colour[sub], alpha[sub], first = premultiplied, a, False
            continue
        keep = 1.0 - a
        colour[sub] = premultiplied + colour[sub] * keep[..., None]
        alpha[sub] = a + alpha[sub] * keep
    return colour, alpha
