"""The warp backend: a classical, CPU-only try-on renderer behind ``Backend``/``Renderer``.

Per frame: the person's own upper-body clothing is found (segmentation ∩ body zones, minus head,
hands and skin; ``region``); the new garment is mapped onto it part by part (the torso fitted to
the clothing's silhouette row by row, each sleeve along its shoulder-elbow-wrist chain;
``mapping``); its albedo is multiplied by the old clothing's normalised luminance (``shading``);
where a short sleeve replaces a long one the arm is repainted in the wearer's shaded skin colour.
Layers stack with soft edges, never past the person mask; pixels the garment does not touch are
copied, so they stay bit-identical to the input.

A session maps a swap onto the paper's three operations (see ``WarpRenderer.swap``).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from runtime.lru import LRU
from services.generator.rendering import AtCapacity, FrameInput, Garment, RenderedFrame
from services.generator.warp import mapping, region
from services.generator.warp.fit import Fit, FitConfig, facing_width, fit_garment
from services.generator.warp.geometry import GarmentGeometry
from services.generator.warp.region import ARMS, RegionConfig, SkinModel
from services.generator.warp.shading import Materials, ShadingConfig, shading_gain
from shared.body import LM


@dataclass(frozen=True)
class WarpConfig:
    """Every size and rate of the renderer. Lengths are in body scales (about a shoulder width)
    unless they say px, so one set of numbers serves a small webcam frame and a large crop."""

    smoothing: float = 0.6  # weight of the newest body points in the exponential average, moving
    still_weight: float = 0.15  # ... and for a barely moving one
    deadband: float = 0.05  # body scales (median point) per frame below which the points are held
    release: float = 0.05  # ... and how far the landmarks must wander from held points to move them
    still_luma: float = 0.8  # grey levels of mean change (an eighth size) under which a person is still
    moving_fraction: float = 0.03  # body scales per frame (median point) that count as moving
    snap_fraction: float = 0.25  # a jump over this many shoulder widths resets the average
    profile_rate: float = 0.35  # weight of the newest torso outline in its exponential average
    visibility: float = 0.5
    hold_frames: int = 3  # frames without landmarks drawn from the last ones (tracker dropouts)
    skin_every: int = 30  # frames between skin-colour re-estimates (a slow follow of the light)
    skin_settle: int = 5  # ... but every frame for the first few (a first detection's face is rough)
    edge_sigma: float = 1.0  # px: the soft edge's Gaussian (the ramp is about 4 sigma wide)
    outside_alpha: float = 0.45  # the most garment a pixel outside the person mask may get
    bare_width: float = 0.3  # body scales: a bare forearm's thickness where it crosses the torso
    wide_arm: float = 0.7  # body scales: how far across an arm its old sleeve may be found
    # garment seam widths before a sleeve's root that its cloth runs on into the shoulder (at
    # least half the sleeve's length): the shoulder's round before a cap sleeve is that cloth
    shoulder_run: float = 0.15
    # a long sleeve (reaching this share of the arm, or more) also covers the old clothing up to
    # cuff_past body scales past the wrist: an old cuff there, never the hand (blocked)
    long_sleeve: float = 0.9
    cuff_past: float = 0.25
    behind_z: float = 0.35  # body scales of depth: a shoulder this much farther is behind
    neck_margin: float = 0.1  # body scales below the garment's collar that skin is still neck
    turned_spread: float = 0.7  # shoulders closer than this share of a facing width: turned
    facing_margin: float = 0.2  # torso lengths of shoulder spread before facing may flip
    # a garment magnified k times (body px per canvas px: k >= 2 on a close-up) is drawn on the
    # frame shrunk floor(k / work_k) times and brought back to size: the canvas is still not
    # minified there, so no texture detail is lost, and the cost stops growing with the person
    work_k: float = 1.0
    work_max: int = 3  # the most a frame is shrunk
    # the renderer's cost grows with its ROI (about 0.18 ms per 1,000 px on the 2-core VM): an ROI
    # over this many frame pixels is drawn on the frame shrunk by sqrt(ROI / budget), rounded up
    # to an eighth, and brought back to size like a magnified one; 0: never for size alone
    pixel_budget: int = 64_000
    region: RegionConfig = field(default_factory=RegionConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    shading: ShadingConfig = field(default_factory=ShadingConfig)


@dataclass(frozen=True)
class RenderDetail:
    """What one render drew, for tests and evaluations: the garment's coverage (without the
    repainted skin) and everything the pipeline found, all full-frame uint8 0/255; with
    ``render_detail(measure=True)``, per part (``torso``, ``sleeve_left``, ``sleeve_right``) the
    garment's scale there: the median of the canvas pixels per body pixel along the least
    squeezed direction (a pattern's period on the body is its period on the canvas over it)."""

    frame: RenderedFrame
    garment: np.ndarray | None = None  # where the new garment's alpha is at least 0.5
    clothing: np.ndarray | None = None  # the old clothing found in the frame
    skin: np.ndarray | None = None  # arm repainted as skin (a short sleeve over a long one)
    scales: dict[str, float] = field(default_factory=dict)


_DISC5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
_DISC7 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))  # a soft edge's reach (sigma 1 px)
ARM_POINTS = ([13, 15, 17, 19, 21], [14, 16, 18, 20, 22])  # per arm: elbow, wrist, hand


def _bleed(texture: np.ndarray) -> np.ndarray:
    """BGRA: the transparent canvas filled with nearby garment colour, so sampling at (or past)
    the garment's edge never mixes in the canvas' black (sleeves and a silhouette-fitted torso
    sample a little outside the garment, so the fill reaches the whole canvas); the alpha stays
    the garment's own, so its outline (neckline, hem) can be sampled too."""
    colour = texture[..., :3].astype(np.float32)
    # the antialiased rim mixes in the photo's background: treat it as transparent too
    core = cv2.erode((texture[..., 3] > 250).astype(np.uint8), np.ones((5, 5), np.uint8))
    alpha = core.astype(np.float32)[..., None]
    if alpha.sum() < 1:
        return np.ascontiguousarray(texture)
    filled = np.empty_like(colour)
    filled[:] = (colour * alpha).reshape(-1, 3).sum(axis=0) / alpha.sum()  # the garment's mean colour
    for sigma in (24, 6):  # wide first, then the near edge overrides where it has support
        num = cv2.GaussianBlur(colour * alpha, (0, 0), sigma)
        den = cv2.GaussianBlur(alpha, (0, 0), sigma)[..., None]
        filled = np.where(den > 0.02, num / np.maximum(den, 1e-4), filled)
    mixed = colour * alpha + filled * (1 - alpha)  # keep the garment's own colours where it is opaque
    return np.dstack([np.clip(mixed, 0, 255).astype(np.uint8), texture[..., 3]])


def _band(mask: np.ndarray, a: np.ndarray, b: np.ndarray, width: float) -> None:
    """A flat-ended band of ``width`` from ``a`` to ``b`` (a capsule without the round caps)."""
    d = b - a
    n = float(np.hypot(*d))
    if n < 1e-6:
        return
    side = np.array([-d[1], d[0]]) / n * width / 2
    pts = np.array([a + side, b + side, b - side, a - side])
    cv2.fillConvexPoly(mask, np.round(np.clip(pts, -1e5, 1e5)).astype(np.int32), 255)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    """The mask (uint8 0/255) as a float32 0-1 coverage with a soft edge: blurred as uint8 (a
    256th of coverage is far below what shows, and it is several times faster than float)."""
    if sigma > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    return mask.astype(np.float32) * np.float32(1 / 255)


def _open_blobs(mask: np.ndarray, k: int) -> np.ndarray:
    """``mask`` opened with a ``k``-pixel disc: what is narrower than ``k`` goes. A large disc (a
    person filling the frame) is applied at a reduced scale, where it is at most 9 pixels: the
    cost stays flat with the person's size, and what survives is kept at full resolution."""
    box = _bbox(mask, k)
    if box is None:
        return mask
    x0, y0, x1, y1 = box
    if (x1 - x0) * (y1 - y0) < mask.size:  # only where there is something to open
        out = np.zeros_like(mask)
        out[y0:y1, x0:x1] = _open_blobs(np.ascontiguousarray(mask[y0:y1, x0:x1]), k)
        return out
    f = max(1, k // 9)
    if f == 1:
        return cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    h, w = mask.shape
    small = cv2.resize(mask, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    small = np.where(small >= 128, 255, 0).astype(np.uint8)
    ks = max(3, (k // f) | 1)
    small = cv2.morphologyEx(small, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (ks, ks)))
    kept = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    return cv2.bitwise_and(mask, kept)


def _bbox(mask: np.ndarray, pad: int) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the non-zero pixels of a uint8 mask, padded; None when empty. Read off
    the image itself, without listing its pixels (a close-up's masks hold a hundred thousand)."""
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask))
    if w == 0 or h == 0:
        return None
    return max(0, x - pad), max(0, y - pad), min(mask.shape[1], x + w + pad), min(mask.shape[0], y + h + pad)


class WarpRenderer:
    """One stream's renderer state: the garment (texture + warp data), the smoothed body points and
    torso outline (temporal history) and the reference (the wearer's skin colour)."""

    chunked = False  # one frame in, one frame out: a swap can re-render the latest frame at once

    def __init__(
        self,
        session_id: str,
        garment: Garment,
        config: WarpConfig | None = None,
        prepared: PreparedGarments | None = None,
        backend: WarpBackend | None = None,
    ) -> None:
        self.session_id = session_id
        self.config = config or WarpConfig()
        self._prepared = prepared or PreparedGarments()
        self._backend = backend
        self.frames = 0
        self.closed = False
        self._points: np.ndarray | None = None
        self._profile: mapping.TorsoProfile | None = None
        self._hem: float | None = None
        self._rate = 1.0  # this frame's weight for the outline's and hem's averages
        self._facing = 1.0  # +1: the image-left shoulder is MediaPipe's right (facing the camera)
        self._skin: SkinModel | None = None
        self._bare: tuple[int, int, int] | None = None  # a bare arm's colour: the face's, grey on grey
        self._skin_seen = 0  # estimates since the reference was cleared
        self._materials: Materials | None = None  # the person's materials (shading), re-learned with the skin
        self._work: float = 1  # the frame is drawn shrunk this many times (a close-up), with hysteresis
        self._roi_px = 0.0  # the last ROI's area in frame pixels (what the pixel budget caps)
        self._reschedule(garment)

    # -- the swap: the paper's three operations ----------------------------------------------------
    def swap(self, garment: Garment) -> WarpRenderer:
        """A fresh renderer on ``garment`` (``Renderer.swap``): the three operations below on a new
        object, so a frame this one is still drawing on another thread is left undisturbed (the
        caller drops it) and the swap never waits for it. The garment's warp data is prepared once
        per worker and shared, so this is cheap."""
        if self._backend is not None:
            return self._backend.open(self.session_id, garment)
        return WarpRenderer(self.session_id, garment, self.config, self._prepared)

    def _reschedule(self, garment: Garment) -> None:
        """The three rescheduling operations of the paper, as this renderer has them:
        1. refresh the garment: new texture (edge-bled for sampling) and new warp data (canvas
           outline, sleeve axes, long/short sleeves, category);
        2. withdraw history: the smoothed body points and torso outline are dropped, so the next
           frame's mapping comes from that frame alone. No frame-level blending exists, so no old
           pixel can return;
        3. re-estimate the reference: the skin colour is cleared and re-learned from the next
           (latest) frame's face instead of being carried over.
        """
        self._refresh_garment(garment)
        self.withdraw_history()
        self._skin = self._bare = None
        self._skin_seen = 0
        self._materials = None
        self._facing_w: float | None = None  # px: the wearer's facing shoulder width, held

    def _refresh_garment(self, garment: Garment) -> None:
        self.texture, self.geometry = self._prepared.get(garment)
        self.garment = garment
        self.garment_id = garment.garment_id

    def withdraw_history(self) -> None:
        """Forget the temporal smoothing (a swap, or the person was lost)."""
        self._points = None
        self._profile = None
        self._hem = None
        self._holding = False  # the body points are held (a still person)
        self._last_grey: tuple[np.ndarray, np.ndarray] | None = None  # the frame before, tiny
        self._last: tuple[np.ndarray, np.ndarray | None] | None = None  # a dropout's stand-in
        self._held = 0
        self._fits = 0  # frames drawn from the tracker's own landmarks (not held ones)

    def flush(self) -> list[RenderedFrame]:
        """Nothing held back: every ``render`` returned its frame (``Renderer.flush``)."""
        return []

    def close(self) -> None:
        self.closed = True
        self.withdraw_history()
        self._skin = self._bare = None

    # -- per frame -----------------------------------------------------------------------------------
    def render(self, frame: FrameInput) -> list[RenderedFrame]:
        """One frame in, one frame out. Without a person, landmarks or region: the input as is."""
        return [self.render_detail(frame, masks=False).frame]

    def render_detail(self, frame: FrameInput, measure: bool = False, masks: bool = True) -> RenderDetail:
        """``render`` with the masks it drew (tests, evaluations). Never raises on bad input: a
        frame the renderer cannot use comes back unchanged, with the history withdrawn.

        A tracker that loses the person for a frame or two (no landmarks) while the frame is
        otherwise fine gets the last landmarks (and person mask, if that is missing too) for up
        to ``hold_frames`` frames: a still person's garment does not blink off and on. With
        ``masks=False`` (``render``) only the frame is filled in: no full-size masks to build."""
        self.frames += 1
        held = False
        if frame.landmarks is None and self._last is not None and self._held < self.config.hold_frames:
            lm, person = self._last
            frame = replace(
                frame,
                landmarks=lm,
                person_mask=frame.person_mask if frame.person_mask is not None else person,
            )
            held = True
        # points from one detection only are a rough fit: the tracker's next frame replaces them
        try:
            self._choose_work(frame)
            detail = self._render(frame, refit=self._fits == 1 and not held, measure=measure, masks=masks)
        except (ValueError, cv2.error, FloatingPointError, IndexError):
            detail = None
        if detail is None:
            self.withdraw_history()
            return RenderDetail(RenderedFrame(frame.seq, frame.frame_bgr, self.garment_id, None))
        if held:
            self._held += 1
        else:
            self._held = 0
            self._fits += 1
            self._last = (frame.landmarks, frame.person_mask)
        return detail

    def _choose_work(self, frame: FrameInput) -> None:
        """How many times to shrink this frame: the garment's nominal magnification (its seams on
        the shoulders, ``fit_garment``'s scale from the raw landmarks) over ``work_k``, held until
        it is 10 % past the next step (a person stepping closer does not flip it to and fro), or
        what brings the last ROI within ``pixel_budget``, whichever is more. On a change the
        pixel-valued history is brought to the new size."""
        lm, img = frame.landmarks, frame.frame_bgr
        if (
            lm is None
            or img is None
            or img.ndim != 3
            or lm.shape[0] < 33
            or not np.all(np.isfinite(lm[:25, :2]))
        ):
            return
        h, w = img.shape[:2]
        px = lm[:25, :2].astype(np.float64) * (w, h)
        across = float(np.hypot(*(px[LM.LEFT_SHOULDER] - px[LM.RIGHT_SHOULDER])))
        torso = float(np.hypot(*((px[11] + px[12]) / 2 - (px[23] + px[24]) / 2)))
        facing = max(across, self.config.fit.facing_ratio * torso)
        g = self.geometry
        k = self.config.fit.seam_width * facing / max(g.seam_width or g.width, 1.0)
        steps = k / self.config.work_k
        budget = self.config.pixel_budget
        need = float(np.sqrt(self._roi_px / budget)) if budget and self._roi_px else 1.0
        top = self.config.work_max
        want = max(
            int(np.clip(np.floor(steps), 1, top)),
            float(np.clip(np.ceil(need * 8) / 8, 1.0, top)),  # in eighths
        )
        work = self._work
        if want > work and (steps >= (work + 1) * 1.1 or need > work * 1.05):
            work = want
        elif want < work and max(steps, need) < work * 0.9:
            work = want
        if work != self._work:
            ratio = self._work / work
            if self._points is not None:
                self._points = self._points * ratio
            if self._facing_w is not None:
                self._facing_w *= ratio
            self._last_grey = None
            self._work = work

    def _still(self, img: np.ndarray, person: np.ndarray) -> bool:
        """Whether the person's pixels are the same as last frame's up to camera noise (mean
        absolute change under ``still_luma`` grey levels, at an eighth of the size): then the
        person is still, whatever the tracker's landmarks wander."""
        h, w = img.shape[:2]
        size = (max(1, w // 8), max(1, h // 8))
        grey = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(person, size, interpolation=cv2.INTER_NEAREST) > 0
        prev, self._last_grey = self._last_grey, (grey, mask)
        if prev is None or prev[0].shape != grey.shape:
            return False
        both = mask & prev[1]
        if both.sum() < 8:
            return False
        change = float(np.abs(grey[both].astype(np.int16) - prev[0][both]).mean())
        return change < self.config.still_luma

    def _smoothed(self, px: np.ndarray, still: bool = False, refit: bool = False) -> np.ndarray:
        """The body points the mapping uses, stable when the person is: once the points move less
        than ``deadband`` in a frame they are held, and released only when the landmarks wander
        further than ``release`` from them (hysteresis: a tracker's jitter on a still person never
        moves the texture); moving points follow an exponential average whose weight grows with
        the motion; a jump past ``snap_fraction`` starts afresh. Sets ``self._rate``, the weight
        the torso outline and hem get this frame (0 while held). ``still``: the person's pixels
        did not change (``_still``): held whatever the landmarks do, short of a snap, unless
        ``refit``: the held points come from one detection only, and a first fit is rough, so the
        tracker's second frame replaces them even on a still person (once: held from then on)."""
        c = self.config
        self._rate = 1.0
        if self._points is not None:
            shoulder_w = float(np.hypot(*(px[LM.LEFT_SHOULDER] - px[LM.RIGHT_SHOULDER])))
            torso = float(np.hypot(*((px[11] + px[12]) / 2 - (px[23] + px[24]) / 2)))
            scale = max(shoulder_w, 0.6 * torso, 4.0)
            steps = np.hypot(*(px[11:25] - self._points[11:25]).T)
            moved = float(np.median(steps))
            if (still and moved <= c.snap_fraction * scale and not refit) or moved < (
                c.release if self._holding else c.deadband
            ) * scale:
                self._holding = True
                self._rate = 0.0
                if not still:
                    # the torso holds still; an arm moving on its own (a hand raised to the chest)
                    # is not held with it: the median point above hides one arm's motion
                    for arm in ARM_POINTS:
                        if float(np.max(np.hypot(*(px[arm] - self._points[arm]).T))) > c.release * scale:
                            self._points = self._points.copy()
                            self._points[arm] = px[arm]
                return self._points
            self._holding = False
            if float(np.max(steps)) <= c.snap_fraction * scale:
                motion = moved / (c.moving_fraction * scale)
                k = c.still_weight + (c.smoothing - c.still_weight) * min(1.0, motion)
                px = k * px + (1 - k) * self._points
                self._rate = c.still_weight + (c.profile_rate - c.still_weight) * min(1.0, motion)
            else:
                self._profile, self._hem = None, None
        self._points = px
        return px

    def _usable(self, frame: FrameInput) -> np.ndarray | None:
        """The person mask when the frame has a body to dress, else None."""
        lm = frame.landmarks
        img = frame.frame_bgr
        if (
            img is None
            or img.ndim != 3
            or img.shape[2] != 3
            or img.dtype != np.uint8
            or min(img.shape[:2]) < 8
        ):
            return None
        if lm is None or lm.ndim != 2 or lm.shape[0] < 33 or lm.shape[1] < 4:
            return None
        if not np.all(np.isfinite(lm[:33, :4])):
            return None
        person = frame.person_mask if frame.person_mask is not None else frame.garment_mask
        if person is None:  # landmarks without segmentation: the body zones stand in for it
            person = np.zeros(img.shape[:2], np.uint8)
        elif person.shape != img.shape[:2] or person.dtype != np.uint8:
            return None
        for i in (LM.LEFT_SHOULDER, LM.RIGHT_SHOULDER):
            x, y, _, vis = lm[i]
            if vis < self.config.visibility or not (-0.1 <= x <= 1.1 and -0.1 <= y <= 1.1):
                return None
        return person

    def _render(
        self, frame: FrameInput, refit: bool = False, measure: bool = False, masks: bool = True
    ) -> RenderDetail | None:
        c, rc = self.config, self.config.region
        person_full = self._usable(frame)
        if person_full is None:
            return None
        source = frame.frame_bgr  # the frame as it came: what the output is composed on
        source_person = person_full
        landmarks_only = frame.person_mask is None and frame.garment_mask is None
        work = self._work
        img = source
        if work > 1:  # landmarks are normalised: only the image and the person mask shrink
            img = _shrunk(source, work)
            person_full = _shrink_mask(person_full, img.shape[:2])
        h, w = img.shape[:2]
        self._small_size = (h, w)
        lm = frame.landmarks[:33]
        px = self._smoothed(lm[:, :2].astype(np.float64) * (w, h), self._still(img, person_full), refit)
        # facing the camera or away, with hysteresis: a side view's shoulders nearly overlap, and
        # their order flipping on jitter would mirror the garment from frame to frame
        across = float(px[LM.LEFT_SHOULDER, 0] - px[LM.RIGHT_SHOULDER, 0])
        if abs(across) > c.facing_margin * max(float(np.hypot(*(px[11] - px[23]))), 4.0):
            self._facing = 1.0 if across > 0 else -1.0
        whole = region.body_in_roi(px, self._facing)
        s = whole.scale
        g = self.geometry
        # the wearer's facing shoulder width: followed while the person faces the camera, held
        # while turned (a side view's landmarks shrink it; the garment on it should not shrink)
        seen = facing_width(whole, c.fit)
        across = float(np.hypot(*(px[LM.LEFT_SHOULDER] - px[LM.RIGHT_SHOULDER])))
        turned = across < c.turned_spread * c.fit.facing_ratio * whole.torso_len
        if self._facing_w is None:
            self._facing_w = seen
        elif turned:
            self._facing_w = max(self._facing_w, seen)
        else:  # as fast as the torso outline follows: held with the body points (a still person)
            self._facing_w += self._rate * (seen - self._facing_w)
        whole_fit = fit_garment(g, whole, _chains(whole), c.fit, self._facing_w)
        # the ROI: the upper body, where the old top may end, and where this garment's hem and
        # sleeves reach
        hem_v = max(whole_fit.hem_v, rc.hem_band[1])
        pts = px[[11, 12, 13, 14, 15, 16, 23, 24]]
        pts = np.vstack([pts, px[11:13] - whole.ey * 0.3 * s])
        bottom = whole.centre + whole.ey * (hem_v + 0.05) * whole.torso_len
        flare = max(whole_fit.hem_half, 1.0) * s
        pts = np.vstack([pts, bottom - whole.ex * flare, bottom + whole.ex * flare])
        pad = 0.35 * s
        x0, y0 = np.floor(np.clip(pts.min(axis=0) - pad, 0, (w, h))).astype(int)
        x1, y1 = np.ceil(np.clip(pts.max(axis=0) + pad, 0, (w, h))).astype(int)
        if x1 - x0 < 4 or y1 - y0 < 4:
            return None
        shape = (int(y1 - y0), int(x1 - x0))
        self._roi_px = shape[0] * shape[1] * work * work
        patch = img[y0:y1, x0:x1]
        person = person_full[y0:y1, x0:x1]
        b = region.body_in_roi(px - (x0, y0), self._facing)
        fit = fit_garment(g, b, _chains(b), c.fit, self._facing_w)

        relearn = self._skin_due()
        if relearn:
            # on a grey frame every grey pixel would pass for skin: no skin test, but a bare arm
            # is still the face's (grey) tone, not a default skin colour painted into the photo
            face = SkinModel.from_face(img, px, rc.skin_min_spread, s)
            skin_model = None if region.is_greyscale(patch) else face
            if face is not None:
                self._bare = face.bgr
            if skin_model is not None or self._skin is None:
                self._skin = skin_model
            self._skin_seen += 1
        old_zone = region.torso_zone(b, shape, rc, rc.hem_band[1])
        arms = region.arm_masks(b, shape, rc)
        arms_any = cv2.bitwise_or(arms[0], arms[1])
        lm_roi = np.zeros((33, 4), np.float32)
        lm_roi[:, :2] = (px - (x0, y0)) / (shape[1], shape[0])
        head = region.head_zone(b, shape, rc)
        raw_skin = self._skin.mask(patch, rc.skin_tolerance) if self._skin is not None else None
        hands = region.hands_mask(b, shape, rc, raw_skin, patch)
        blocked = cv2.bitwise_or(head, hands)
        body_zone = cv2.bitwise_or(old_zone, arms_any)
        # where this garment lies on the torso: down to its own hem (and below the hips by its own
        # outline, hanging over the gap between the legs)
        zone = region.torso_zone(b, shape, rc, fit.hem_v + 0.02, fit.hem_half)
        hanging = region.below(b, shape, 1.0)  # below the hips: the garment hangs by its own outline
        if landmarks_only:
            person = body_zone.copy()
        else:  # the segmentation runs a few pixels wide: its rim is trimmed once, for every use
            person = region.trim_to_silhouette(
                patch,
                person,
                cv2.bitwise_and(person, cv2.bitwise_or(body_zone, zone)),
                s,
                rc.edge_band,
                rc.edge_sigma,
            )
        candidate = cv2.bitwise_and(person, body_zone)
        candidate[blocked > 0] = 0
        skin = None
        if raw_skin is not None:
            # skin comes in blobs (arms, neck); skin-like specks are a pattern's squares or dots
            skin = _open_blobs(raw_skin, max(3, int(rc.skin_min_blob * s) | 1))
            in_torso = cv2.bitwise_and(candidate, old_zone)
            torso_px = cv2.countNonZero(in_torso)
            if torso_px and cv2.countNonZero(cv2.bitwise_and(skin, in_torso)) > rc.skin_guard * torso_px:
                skin[old_zone > 0] = 0  # the clothes are skin-coloured: trust the zone on the torso
            clothing = cv2.bitwise_and(candidate, cv2.bitwise_not(skin))
        else:
            clothing = candidate
        clothing = cv2.morphologyEx(clothing, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        clothing, self._hem = region.hem_by_colour(
            patch, b, clothing, rc, old_zone, self._hem, self._rate, arms_any, person
        )
        if cv2.countNonZero(cv2.bitwise_and(clothing, old_zone)) < 30:
            return None

        # the torso's garment: the person in the zone, less the head, the hands and bare arms in
        # front
        surface = cv2.bitwise_and(zone, cv2.bitwise_or(person, hanging))
        others: list[np.ndarray] | None = None
        if skin is not None:
            # skin past the wrist, along the forearm, is the hand: a tracker often puts the wrist
            # short of it (crossed arms, a hand on the other elbow)
            hand_skin = cv2.bitwise_and(skin, region.past_wrists(b, shape, rc))
            pieces = region.SkinPieces.of(skin)
            hand_skin = cv2.bitwise_or(hand_skin, region.lone_hands(b, pieces, head, rc))
            # skin above the garment's collar is the neck: as out of bounds as the head (cut out
            # after the soft edges too); bare arms in front of the torso stay in front
            collar_v = (float(fit.canvas_v(g, g.keypoints["collar"][1])) + c.neck_margin * s) / b.torso_len
            neck = cv2.bitwise_and(skin, cv2.bitwise_not(region.below(b, shape, collar_v)))
            neck = cv2.bitwise_and(neck, region.strip(b, shape, 0.5 * b.scale))
            # closed and grown a little: the skin test misses a few pixels of a hand or a neck
            # (a shadow, a highlight), and a soft edge must not reach into them
            kept = cv2.morphologyEx(cv2.bitwise_or(hand_skin, neck), cv2.MORPH_CLOSE, _DISC5)
            blocked = cv2.bitwise_or(blocked, cv2.dilate(kept, _DISC5))
            # skin in the arms' capsules is an arm in front of the torso (a bare forearm across
            # it), and so is the skin a forearm and its hand lie on (a hand resting on the
            # chest or the other elbow, where the tracker's wrist falls short); other skin on the
            # torso (an old V-neck's chest) is covered
            arm_skin = region.forearm_skin(b, skin, rc)
            surface[cv2.bitwise_and(skin, arms_any) > 0] = 0
            # a margin as wide as the soft edge's tail: the garment's edge must not reach the hand
            surface[cv2.dilate(cv2.bitwise_or(*arm_skin), _DISC7) > 0] = 0
            # a sleeve covers its own arm's skin (a long sleeve over a bare forearm), never skin
            # lying mostly off its arm: the other arm's forearm and hand across it (crossed arms)
            others = [cv2.dilate(region.skin_off_arm(pieces, arms[i]), _DISC7) for i in (0, 1)]
            # and a sliver of skin at the outline too thin for a blob is a hand peeking out
            sliver = region.skin_at_the_outline(
                patch, self._skin, raw_skin, skin, person, (rc.sliver_area * s * s, rc.hand_area * s * s)
            )
            if sliver.any():
                sliver = cv2.dilate(sliver, _DISC5)
                others = [cv2.bitwise_or(o, sliver) for o in others]
        surface[blocked > 0] = 0
        # the torso's outline without arms hanging beside it (they would widen the garment); an
        # arm over the torso (crossed arms, a side view's near arm) is within the torso's outline
        beside = cv2.bitwise_and(arms_any, cv2.bitwise_not(region.strip(b, shape, b.shoulder_half + 0.1 * s)))
        own = cv2.bitwise_and(surface, cv2.bitwise_not(beside))
        profile = mapping.measure_profile(
            b, own if cv2.countNonZero(own) > 0.3 * cv2.countNonZero(surface) else surface, g, fit
        )
        if profile is None:
            return None
        profile = profile.blend(self._profile, self._rate)
        self._profile = profile

        shade_on = cv2.bitwise_and(person, cv2.bitwise_or(candidate, surface))
        gain, self._materials = shading_gain(patch, shade_on, s, c.shading, self._materials, relearn)
        colour = np.zeros((*shape, 3), np.float32)
        alpha = np.zeros(shape, np.float32)
        garment_alpha = np.zeros(shape, np.float32)
        skin_drawn = np.zeros(shape, np.uint8)

        def stack(mask: np.ndarray, texel: Callable | tuple, is_garment: bool) -> None:
            box = _bbox(mask, 4)
            if box is None:
                return
            bx0, by0, bx1, by1 = box
            sub = (slice(by0, by1), slice(bx0, bx1))
            a = _soft(mask[sub], c.edge_sigma / work)
            if callable(texel):
                layer, cover = texel(box)  # float32, ours to change; the garment's own coverage
                if cover is not None:
                    a *= cover
            else:
                layer = np.empty((by1 - by0, bx1 - bx0, 3), np.float32)
                layer[:] = texel
            # albedos are stacked; the light (one gain for every layer) multiplies them once, below
            # "over", in place: c += a (layer - c); alpha += a (1 - alpha)
            layer -= colour[sub]
            layer *= a[..., None]
            colour[sub] += layer
            alpha[sub] += a * (1.0 - alpha[sub])
            if is_garment:
                garment_alpha[sub] += a * (1.0 - garment_alpha[sub])
            else:
                garment_alpha[sub] *= 1.0 - a

        scales: dict[str, float] = {}

        def torso_texel(box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
            maps = mapping.torso_map(g, fit, b, profile, box)
            if measure:
                scales["torso"] = mapping.pattern_scale(maps, surface[box[1] : box[3], box[0] : box[2]])
            sampled = mapping.remap(self.texture, maps)
            return sampled[..., :3].astype(np.float32), sampled[..., 3].astype(np.float32) * np.float32(
                1 / 255
            )

        arm_layers = self._arm_layers(
            b, fit, person, clothing, blocked, zone, lm, others, scales if measure else None
        )
        for layer in (item for item in arm_layers if item[0]):
            stack(*layer[1:])
        stack(surface, torso_texel, True)
        for layer in (item for item in arm_layers if not item[0]):
            stack(*layer[1:])
            if not layer[3]:
                skin_drawn |= layer[1]

        # one factor: head and hands stay in front (soft edge included); outside the person mask
        # the coverage is capped below a half, except where the garment hangs by its own outline
        # (below the hips). Only over the box the layers drew in: on a close-up the ROI is most
        # of the frame, and most of it is untouched.
        painted = _bbox((alpha > 0).view(np.uint8), 0)
        if painted is None:
            return None
        px0, py0, px1, py1 = painted
        box = (slice(py0, py1), slice(px0, px1))
        a_box = alpha[box]
        factor = np.minimum(1.0, np.float32(c.outside_alpha) / np.maximum(a_box, 1e-6))
        factor[(person[box] > 0) | (cv2.bitwise_and(hanging, zone)[box] > 0)] = 1.0
        factor[blocked[box] > 0] = 0.0
        colour[box] *= (gain[box] * factor)[..., None]
        a_box *= factor
        garment_alpha[box] *= factor
        drawn_roi = alpha >= 0.5 / 255
        if not drawn_roi[box].any():
            return None
        if work > 1:
            return self._compose_up(
                frame.seq,
                source,
                (x0 + px0, y0 + py0, x0 + px1, y0 + py1),
                colour[box],
                a_box,
                blocked[box],
                None if landmarks_only else source_person,
                (person[box] > 0) if landmarks_only else cv2.bitwise_and(hanging, zone)[box] > 0,
                {
                    "garment": (garment_alpha >= 0.5).view(np.uint8) * 255,
                    "clothing": clothing,
                    "skin": skin_drawn,
                }
                if masks
                else None,
                (x0, y0, x1, y1),
                {k: v / work for k, v in scales.items()},
            )
        blended = cv2.add(colour[box], patch[box].astype(np.float32) * (1.0 - a_box)[..., None])
        out = img.copy()
        # float -> uint8 with rounding and saturation in one cv2 call
        np.copyto(
            out[y0 + py0 : y0 + py1, x0 + px0 : x0 + px1],
            cv2.convertScaleAbs(blended),
            where=drawn_roi[box][..., None],
        )

        def full(m: np.ndarray) -> np.ndarray:
            f = np.zeros((h, w), np.uint8)
            f[y0:y1, x0:x1] = m
            return f

        rendered = RenderedFrame(frame.seq, out, self.garment_id, full(drawn_roi.view(np.uint8) * 255))
        if not masks:
            return RenderDetail(rendered)
        return RenderDetail(
            rendered,
            garment=full((garment_alpha >= 0.5).astype(np.uint8) * 255),
            clothing=full(clothing),
            skin=full(skin_drawn),
            scales=scales,
        )

    def _compose_up(
        self,
        seq: int,
        source: np.ndarray,
        box: tuple[int, int, int, int],
        colour: np.ndarray,
        alpha: np.ndarray,
        blocked: np.ndarray,
        person: np.ndarray | None,
        hanging: np.ndarray,
        masks: dict[str, np.ndarray] | None,
        roi: tuple[int, int, int, int],
        scales: dict[str, float],
    ) -> RenderDetail | None:
        """The layers drawn on the shrunk frame, brought to the frame's own size and laid over it:
        premultiplied colour and coverage resized bilinearly, then the rules that must hold at
        full size applied again there: nothing on the head or hands (their mask grown by the
        resize's reach), at most ``outside_alpha`` outside the person (the frame's own person
        mask, ``person``) but where the garment hangs below the hips (``hanging``, over the
        painted box of the shrunk frame; without segmentation, ``person`` is None and
        ``hanging`` is the body zones standing in for it). ``box``: the painted box, ``roi`` the ROI, in the
        shrunk frame's pixels."""
        big_h, big_w = source.shape[:2]
        small_h, small_w = self._small_size
        sx, sy = big_w / small_w, big_h / small_h
        bx0, by0 = int(np.floor(box[0] * sx)), int(np.floor(box[1] * sy))
        bx1, by1 = min(big_w, int(np.ceil(box[2] * sx))), min(big_h, int(np.ceil(box[3] * sy)))
        size = (bx1 - bx0, by1 - by0)
        if size[0] < 1 or size[1] < 1:
            return None
        colour = cv2.resize(colour, size, interpolation=cv2.INTER_LINEAR)
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_LINEAR)
        # the head and hands, grown by what the bilinear resize can carry into them
        keep_out = cv2.resize(blocked, size, interpolation=cv2.INTER_LINEAR) > 0
        inside = cv2.resize(hanging.view(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        if person is not None:
            inside |= person[by0:by1, bx0:bx1] > 0
        cap = np.where(inside, np.float32(1.0), np.float32(self.config.outside_alpha))
        factor = np.minimum(1.0, cap / np.maximum(alpha, 1e-6)).astype(np.float32)
        factor[keep_out] = 0.0
        colour *= factor[..., None]
        alpha *= factor
        drawn = alpha >= 0.5 / 255
        if not drawn.any():
            return None
        patch = source[by0:by1, bx0:bx1]
        blended = cv2.add(colour, patch.astype(np.float32) * (1.0 - alpha)[..., None])
        out = source.copy()
        np.copyto(out[by0:by1, bx0:bx1], cv2.convertScaleAbs(blended), where=drawn[..., None])
        drawn_full = np.zeros((big_h, big_w), np.uint8)
        drawn_full[by0:by1, bx0:bx1] = drawn.view(np.uint8) * 255
        rendered = RenderedFrame(seq, out, self.garment_id, drawn_full)
        if masks is None:
            return RenderDetail(rendered)

        def full(m: np.ndarray) -> np.ndarray:
            f = np.zeros((small_h, small_w), np.uint8)
            f[roi[1] : roi[3], roi[0] : roi[2]] = m
            return cv2.resize(f, (big_w, big_h), interpolation=cv2.INTER_NEAREST)

        garment = full(masks["garment"])  # where the garment is, at least half covering
        cover = np.zeros((big_h, big_w), bool)
        cover[by0:by1, bx0:bx1] = alpha >= 0.5
        garment[~cover] = 0
        return RenderDetail(
            rendered,
            garment=garment,
            clothing=full(masks["clothing"]),
            skin=full(masks["skin"]),
            scales=scales,
        )

    def _skin_due(self) -> bool:
        c = self.config
        return self._skin is None or self._skin_seen < c.skin_settle or self.frames % c.skin_every == 0

    def _arm_layers(
        self,
        b: region.Body,
        fit: Fit,
        person: np.ndarray,
        clothing: np.ndarray,
        blocked: np.ndarray,
        zone: np.ndarray,
        lm: np.ndarray,
        others: list[np.ndarray] | None = None,
        scales: dict[str, float] | None = None,
    ) -> list[tuple]:
        """Per arm, in draw order: (behind the torso?, mask, texel source, is garment) for its
        sleeve and, where the old clothing runs past the new sleeve, its repainted skin. A sleeve
        is as long as the garment's own, at the torso's scale, and as wide as its flat-lay says
        (a flattened tube), within the person; where the old clothing is wider (a loose coat's
        sleeve) it covers that too, up to where it ends."""
        c, g = self.config, self.geometry
        shape = person.shape
        s = b.scale
        items = []
        near_blocked: np.ndarray | None = None  # the head and hands, and a soft edge's reach into them
        run = c.shoulder_run * (g.seam_width or g.width)  # canvas px a sleeve's cloth runs into the shoulder
        for index, (chain, side, outward) in enumerate(
            zip(_chains(b), ("left", "right"), (1.0, -1.0), strict=True)
        ):
            upper = float(np.hypot(*(chain[1] - chain[0])))
            fore = float(np.hypot(*(chain[2] - chain[1])))
            reach = fit.reach[side]
            half = fit.sleeve_half[side]
            on_arm = min(reach, upper + fore)
            ends = [chain[0]]
            if on_arm <= 0.0:  # sleeveless: the whole arm comes out of the armhole
                rest = [chain[0], chain[1], chain[2]]
            elif on_arm <= upper:
                ends.append(chain[0] + (chain[1] - chain[0]) * (on_arm / max(upper, 1e-6)))
                rest = [ends[-1], chain[1], chain[2]]
            else:
                ends += [
                    chain[1],
                    chain[1] + (chain[2] - chain[1]) * min(1.0, (on_arm - upper) / max(fore, 1e-6)),
                ]
                rest = [ends[-1], chain[2]]
            sleeve = np.zeros(shape, np.uint8)
            wide = np.zeros(shape, np.uint8)
            for i, (a, e) in enumerate(itertools.pairwise(ends)):
                if i == len(ends) - 2:  # flat at the cuff (a sleeve ends there, and a long one at the hand)
                    _band(sleeve, a, e, 2 * half)
                    cv2.circle(sleeve, region._pt(a), round(half), 255, -1)
                else:
                    region.capsule(sleeve, a, e, 2 * half)
                _band(wide, a, e, c.wide_arm * s)
            cv2.circle(wide, region._pt(chain[0]), round(c.wide_arm * s / 2), 255, -1)
            past = reach - upper - fore
            if reach >= c.long_sleeve * (upper + fore):
                past = max(past, c.cuff_past * s)
            if past > 0:  # a cuff past the wrist covers old clothing only, never the hand
                d = chain[2] - chain[1]
                cuff = chain[2] + d / max(float(np.hypot(*d)), 1e-6) * past
                band = np.zeros(shape, np.uint8)
                _band(band, chain[2], cuff, 2 * half)
                if near_blocked is None:  # once a frame, for both arms
                    near_blocked = cv2.dilate(blocked, _DISC7) > 0
                band[near_blocked] = 0
                wide |= band
            sleeve = cv2.bitwise_or(cv2.bitwise_and(sleeve, person), cv2.bitwise_and(wide, clothing))
            if on_arm <= 0.0:
                sleeve[:] = 0
            sleeve[blocked > 0] = 0
            if others is not None:  # skin that is not this arm's stays in front of its sleeve
                sleeve[others[index] > 0] = 0
            beyond = np.zeros(shape, np.uint8)
            beyond_wide = np.zeros(shape, np.uint8)
            for a, e in itertools.pairwise(rest):
                region.capsule(beyond, a, e, c.bare_width * s)
                region.capsule(beyond_wide, a, e, c.wide_arm * s)
            beyond |= cv2.bitwise_and(beyond_wide, cv2.bitwise_not(zone))
            bare = cv2.bitwise_and(cv2.bitwise_and(beyond, clothing), cv2.bitwise_not(sleeve))
            bare[blocked > 0] = 0
            # an old sleeve is as wide as the arm: a thin ring of clothing around a bare forearm
            # (crossed in front of the torso) is the torso's, not a sleeve to repaint as skin
            bare = _open_blobs(bare, max(3, int(0.5 * c.bare_width * s) | 1))
            sh = ARMS[0][0] if side == "left" else ARMS[1][0]
            wr = ARMS[0][2] if side == "left" else ARMS[1][2]
            other = LM.LEFT_SHOULDER if sh == LM.RIGHT_SHOULDER else LM.RIGHT_SHOULDER
            behind = (float(lm[sh, 2]) - float(lm[other, 2])) * person.shape[1] > c.behind_z * s
            depth = float(lm[wr, 2])
            skin = self._bare if self._bare is not None else (120, 140, 180)
            skin_gain = tuple(v / c.shading.exposure for v in skin)

            def texel(box, side=side, outward=outward, chain=chain, half=half, sleeve=sleeve):
                maps = mapping.sleeve_map(g, side, outward, chain, fit.k, half, box, run)
                if scales is not None:
                    scales[f"sleeve_{side}"] = mapping.pattern_scale(
                        maps, sleeve[box[1] : box[3], box[0] : box[2]]
                    )
                return mapping.remap(self.texture, maps)[..., :3].astype(np.float32), None

            items.append((depth, behind, [(behind, sleeve, texel, True), (behind, bare, skin_gain, False)]))
        items.sort(key=lambda item: -item[0])  # the farther wrist first, the nearer on top
        return [layer for _, _, layers in items for layer in layers]


def _shrunk(img: np.ndarray, work: float) -> np.ndarray:
    """The frame ``work`` times smaller. Bilinear where ``work`` is not whole: OpenCV's area
    resize costs 2 ms a 640x480 frame there."""
    h, w = img.shape[:2]
    size = (max(8, round(w / work)), max(8, round(h / work)))
    return cv2.resize(img, size, interpolation=_shrink_interpolation(work))


def _shrink_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 0/255 mask at ``shape``: the share of each small pixel's area that is set, over a half."""
    if mask.shape == shape:
        return mask
    work = mask.shape[0] / shape[0]
    small = cv2.resize(mask, (shape[1], shape[0]), interpolation=_shrink_interpolation(work))
    return np.where(small >= 128, 255, 0).astype(np.uint8)


def _shrink_interpolation(work: float) -> int:
    return cv2.INTER_AREA if abs(work - round(work)) < 1e-6 else cv2.INTER_LINEAR


def _chains(b: region.Body) -> list[list[np.ndarray]]:
    """Shoulder, elbow, wrist per image side: the image-left arm (the garment's left sleeve) first."""
    return [[b.px[sh], b.px[el], b.px[wr]] for sh, el, wr in ARMS]


class PreparedGarments:
    """Per-garment warp data (edge-bled texture, canvas mesh), computed once per worker and shared
    by its sessions, so a swap does not redo it: the renderer's analogue of the paper's
    precomputed garment K/V. Keyed by garment id and texture content; least recently used evicted."""

    def __init__(self, capacity: int = 64) -> None:
        self._items: LRU[tuple[str, bytes], tuple[np.ndarray, GarmentGeometry]] = LRU(capacity)

    def get(self, garment: Garment) -> tuple[np.ndarray, GarmentGeometry]:
        tex = garment.texture_bgra
        if tex.ndim != 3 or tex.shape[2] != 4 or tex.dtype != np.uint8:
            raise ValueError(f"garment texture must be HxWx4 uint8 BGRA, got {tex.shape} {tex.dtype}")
        key = (garment.garment_id, hashlib.blake2b(np.ascontiguousarray(tex), digest_size=12).digest())
        item = self._items.get(key)
        if item is None:
            item = (
                _bleed(tex),
                GarmentGeometry.from_keypoints(garment.keypoints, garment.category, tex[..., 3]),
            )
            self._items.put(key, item)
        return item


class WarpBackend:
    """``Backend`` for the warp renderer: no weights, no capacity limit but ``max_sessions``."""

    name = "warp"

    def __init__(self, config: WarpConfig | None = None, max_sessions: int = 64) -> None:
        self.config = config or WarpConfig()
        self.max_sessions = max_sessions
        self._open: dict[str, WarpRenderer] = {}
        self._prepared = PreparedGarments()

    def prepare(self, garment: Garment) -> None:
        """Precompute the garment's warp data now (off any swap's path)."""
        self._prepared.get(garment)

    def free_slots(self) -> int:
        return self.max_sessions - sum(1 for r in self._open.values() if not r.closed)

    def open(self, session_id: str, garment: Garment) -> WarpRenderer:
        self._open = {k: v for k, v in self._open.items() if not v.closed}
        if session_id not in self._open and len(self._open) >= self.max_sessions:
            raise AtCapacity(f"warp backend has {len(self._open)} sessions open")
        session = WarpRenderer(session_id, garment, self.config, self._prepared, backend=self)
        self._open[session_id] = session
        return session
