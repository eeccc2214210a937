"""The first warp renderer (before issue 15), frozen as the baseline of ``chameleon eval render
--renderer legacy``, the real-photo sheet and ``chameleon bench warp``: a
T-shirt-shaped mesh laid over the torso. An offline yardstick, never served: it keeps its own
per-garment cache and edge fill instead of hooking into the serving renderer's.

Per frame: body points from the landmarks (lightly smoothed over time) -> a piecewise-affine mesh
(torso + sleeves, ``geometry``) -> the garment texture remapped into the mesh's bounding box
(``raster``) -> composited inside warped alpha ∩ garment region ∩ dilated person mask, minus
head, hands and (short sleeves) forearms, with the frame's own shading multiplied in. Pixels the
garment does not cover are copied, so they stay bit-identical to the input.

A session maps a swap onto the paper's three operations (see ``WarpRenderer.swap``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from services.generator.rendering import FrameInput, Garment, RenderedFrame
from services.generator.warp.geometry import GarmentGeometry, body_mesh
from services.generator.warp.raster import mesh_bounds, warp_layers
from shared.body import LM, garment_region, head_mask

HAND_POINTS = ((15, 17, 19, 21), (16, 18, 20, 22))  # wrist, pinky, index, thumb per hand


@dataclass(frozen=True)
class LegacyConfig:
    smoothing: float = 0.6  # weight of the newest body points in the exponential average
    snap_fraction: float = 0.25  # a jump over this many shoulder widths resets the average
    shading_strength: float = 0.7  # how much of the frame's fold shading reaches the garment
    shading_clip: tuple[float, float] = (0.6, 1.4)
    light_clip: tuple[float, float] = (0.75, 1.1)  # the global light gain from the reference
    skin_luma: float = 150.0  # face luminance of a well-exposed frame (the reference's yardstick)
    reference_rate: float = 0.05  # how fast the reference follows the light between swaps
    visibility: float = 0.5
    feather_px: int = 1


@dataclass
class Reference:
    """What the renderer knows about the wearer and the light, estimated from frames.

    ``light`` multiplies the garment's colours (a dim scene dims the garment); it comes from the
    face's luminance against ``LegacyConfig.skin_luma``. ``skin_bgr`` is the face's median colour.
    """

    light: float
    skin_bgr: tuple[int, int, int]


def _bleed(texture: np.ndarray) -> np.ndarray:
    """Fill the transparent canvas with nearby garment colour, so bilinear sampling at the
    garment's edge never mixes in the canvas' black."""
    colour = texture[..., :3].astype(np.float32)
    alpha = texture[..., 3:].astype(np.float32) / 255.0
    num = cv2.GaussianBlur(colour * alpha, (0, 0), 6)
    den = cv2.GaussianBlur(alpha, (0, 0), 6)[..., None]
    filled = np.where(alpha > 0.99, colour, num / np.maximum(den, 1e-3))
    mixed = colour * alpha + filled * (1 - alpha)  # keep the garment's own colours where it is opaque
    return np.dstack([np.clip(mixed, 0, 255).astype(np.uint8), texture[..., 3]])


class PreparedGarments:
    """This renderer's per-garment data (its edge-bled texture, the canvas mesh), once per garment
    id (the baseline only ever sees catalogue garments), shared by the renderers a swap makes."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[np.ndarray, GarmentGeometry]] = {}

    def get(self, garment: Garment) -> tuple[np.ndarray, GarmentGeometry]:
        item = self._items.get(garment.garment_id)
        if item is None:
            geometry = GarmentGeometry.from_keypoints(garment.keypoints, garment.category)
            item = self._items[garment.garment_id] = (_bleed(garment.texture_bgra), geometry)
        return item


def _capsule(mask: np.ndarray, a: np.ndarray, b: np.ndarray, thickness: float) -> None:
    t = max(1, round(thickness))
    p, q = (round(float(a[0])), round(float(a[1]))), (round(float(b[0])), round(float(b[1])))
    cv2.line(mask, p, q, 255, t)
    cv2.circle(mask, p, t // 2, 255, -1)
    cv2.circle(mask, q, t // 2, 255, -1)


class LegacyWarpRenderer:
    """One stream's renderer state: the garment (texture + warp data), the smoothed body points
    (temporal history) and the reference (light / skin estimate)."""

    chunked = False  # one frame in, one frame out: a swap can re-render the latest frame at once

    def __init__(
        self,
        session_id: str,
        garment: Garment,
        config: LegacyConfig | None = None,
        prepared: PreparedGarments | None = None,
    ) -> None:
        self.session_id = session_id
        self.config = config or LegacyConfig()
        self._prepared = prepared or PreparedGarments()
        self.frames = 0
        self.closed = False
        self._points: np.ndarray | None = None
        self._reference: Reference | None = None
        self._reschedule(garment)

    # -- the swap: the paper's three operations ----------------------------------------------------
    def swap(self, garment: Garment) -> LegacyWarpRenderer:
        """A fresh renderer on ``garment`` (``Renderer.swap``): the three operations below on a new
        object, so a frame this one is still drawing on another thread is left undisturbed (the
        caller drops it) and the swap never waits for it. The garment's warp data is prepared once
        per worker and shared, so this is cheap."""
        return LegacyWarpRenderer(self.session_id, garment, self.config, self._prepared)

    def _reschedule(self, garment: Garment) -> None:
        """The three rescheduling operations of the paper, as this renderer has them:
        1. refresh the garment: new texture (edge-bled for sampling) and new warp data (canvas
           mesh, sleeve axes, long/short sleeves, body-region category);
        2. withdraw history: the smoothed body points are dropped, so the next frame's mesh comes
           from that frame alone. No frame-level blending exists, so no old pixel can return;
        3. re-estimate the reference: the light / skin estimate is cleared and re-derived from
           the next (latest) frame instead of being carried over.
        """
        self._refresh_garment(garment)
        self.withdraw_history()
        self._reference = None

    def _refresh_garment(self, garment: Garment) -> None:
        self.texture, self.geometry = self._prepared.get(garment)
        self.garment = garment
        self.garment_id = garment.garment_id

    def withdraw_history(self) -> None:
        """Forget the temporal smoothing of body points (a swap, or the person was lost)."""
        self._points = None

    def flush(self) -> list[RenderedFrame]:
        """Nothing held back: every ``render`` returned its frame (``Renderer.flush``)."""
        return []

    def close(self) -> None:
        self.closed = True
        self.withdraw_history()
        self._reference = None

    # -- per frame -----------------------------------------------------------------------------------
    def render(self, frame: FrameInput) -> list[RenderedFrame]:
        """One frame in, one frame out. Without a person, landmarks or region: the input as is."""
        self.frames += 1
        image, drawn = self._render(frame)
        if drawn is None:
            self.withdraw_history()
        return [RenderedFrame(frame.seq, image, self.garment_id, drawn)]

    def _smoothed(self, px: np.ndarray) -> np.ndarray:
        c = self.config
        if self._points is not None:
            shoulder_w = float(np.hypot(*(px[LM.LEFT_SHOULDER] - px[LM.RIGHT_SHOULDER])))
            jump = float(np.max(np.hypot(*(px[11:27] - self._points[11:27]).T)))
            if jump <= c.snap_fraction * max(shoulder_w, 4.0):
                px = c.smoothing * px + (1 - c.smoothing) * self._points
        self._points = px
        return px

    def _estimate_reference(self, frame: np.ndarray, px: np.ndarray) -> Reference:
        """Median colour of a small patch between the eyes and the mouth (cheeks and nose)."""
        h, w = frame.shape[:2]
        centre = (px[0] + (px[9] + px[10]) / 2) / 2
        r = max(2, int(0.25 * float(np.hypot(*(px[LM.LEFT_EAR] - px[LM.RIGHT_EAR])))))
        cx, cy = round(float(centre[0])), round(float(centre[1]))
        patch = frame[max(0, cy - r) : min(h, cy + r + 1), max(0, cx - r) : min(w, cx + r + 1)]
        if patch.size == 0:
            return self._reference or Reference(1.0, (0, 0, 0))
        skin = np.median(patch.reshape(-1, 3), axis=0)
        luma = float(0.114 * skin[0] + 0.587 * skin[1] + 0.299 * skin[2])
        lo, hi = self.config.light_clip
        light = float(np.clip(np.sqrt(luma / self.config.skin_luma), lo, hi))
        new = Reference(light, (int(skin[0]), int(skin[1]), int(skin[2])))
        if self._reference is None:
            return new
        k = self.config.reference_rate
        return Reference((1 - k) * self._reference.light + k * new.light, new.skin_bgr)

    def _keep_mask(self, px: np.ndarray, s: float, roi: tuple[int, int, int, int]) -> np.ndarray:
        """What stays in front of the garment inside ``roi``: head, hands, and the forearms under
        short sleeves. Drawn in ROI coordinates, so it costs the ROI, not the frame."""
        x0, y0, x1, y1 = roi
        w, h = x1 - x0, y1 - y0
        px = px - (x0, y0)
        lm = np.zeros((33, 4), np.float32)
        lm[:, 0], lm[:, 1], lm[:, 3] = px[:, 0] / w, px[:, 1] / h, 1.0
        keep = head_mask(lm, w, h)
        for hand in HAND_POINTS:
            pts = np.round(px[list(hand)]).astype(np.int32)
            cv2.fillConvexPoly(keep, cv2.convexHull(pts), 255)
            for p in hand[1:]:
                _capsule(keep, px[hand[0]], px[p], 0.12 * s)
        if not self.geometry.long_sleeves:
            for elbow, wrist in ((LM.LEFT_ELBOW, LM.LEFT_WRIST), (LM.RIGHT_ELBOW, LM.RIGHT_WRIST)):
                _capsule(keep, px[elbow], px[wrist], 0.26 * s)
        return keep

    def _render(self, frame: FrameInput) -> tuple[np.ndarray, np.ndarray | None]:
        img = frame.frame_bgr
        lm = frame.landmarks
        if lm is None or lm.shape[0] < 33 or not np.all(np.isfinite(lm[:33, :2])):
            return img, None
        h, w = img.shape[:2]
        region = garment_region(
            lm, w, h, self.geometry.region_category, frame.person_mask, self.config.visibility
        )
        if frame.garment_mask is not None and region is not None:
            region = cv2.bitwise_or(region, frame.garment_mask)
        if region is None or not region.any():
            return img, None
        px = self._smoothed(lm[:33, :2].astype(np.float64) * (w, h))
        layers = body_mesh(self.geometry, px, lm[:33, 2])
        roi = mesh_bounds([shape for layer in layers for shape in layer], w, h)
        if roi is None:
            return img, None
        x0, y0, x1, y1 = roi
        s = max(float(np.hypot(*(px[LM.LEFT_SHOULDER] - px[LM.RIGHT_SHOULDER]))), 4.0)
        mask = region[y0:y1, x0:x1].copy()
        if frame.person_mask is not None:
            k = max(3, int(0.06 * s) | 1)
            near = cv2.dilate(
                frame.person_mask[y0:y1, x0:x1], cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
            )
            mask = cv2.min(mask, near)
        mask[self._keep_mask(px, s, roi) > 0] = 0
        if self.config.feather_px > 0:
            k = 2 * self.config.feather_px + 1
            mask = cv2.GaussianBlur(mask, (k, k), 0)
        colour, alpha = warp_layers(self.texture, layers, roi)
        a = alpha * mask.astype(np.float32) * (1 / 255)
        drawn_roi = a >= 0.5 / 255  # lighter than that rounds back to the input pixel
        if not drawn_roi.any():
            return img, None

        if self._reference is None or self.frames % 15 == 0:
            self._reference = self._estimate_reference(img, px)
        out = img.copy()
        patch = img[y0:y1, x0:x1]
        shade = self._shading(patch, s)
        garment = colour * (shade * (mask.astype(np.float32) * (1 / 255)))[..., None]
        blended = garment + patch.astype(np.float32) * (1 - a)[..., None] + 0.5
        np.copyto(out[y0:y1, x0:x1], np.clip(blended, 0, 255).astype(np.uint8), where=drawn_roi[..., None])
        drawn = np.zeros((h, w), np.uint8)
        drawn[y0:y1, x0:x1][drawn_roi] = 255
        return out, drawn

    def _shading(self, patch: np.ndarray, s: float) -> np.ndarray:
        """Fold shading of the frame: luminance over its heavily blurred self, softened, times
        the reference's light gain."""
        c = self.config
        luma = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY).astype(np.float32) + 1.0
        ph, pw = luma.shape
        small = cv2.resize(luma, (max(1, pw // 4), max(1, ph // 4)), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), max(1.0, 0.06 * s))
        base = cv2.resize(small, (pw, ph), interpolation=cv2.INTER_LINEAR)
        ratio = np.clip(luma / base, *c.shading_clip)
        light = self._reference.light if self._reference else 1.0
        return (1.0 + c.shading_strength * (ratio - 1.0)) * light
