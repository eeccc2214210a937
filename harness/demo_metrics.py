"""The demo's quality figures, measured from what its client received: ghosting two frames after
each swap, PSNR outside the garment pooled over the stream, and a contact sheet around each swap.

Ghosting only means something when the output is the camera's scene with a garment drawn on it:
an output that does not resemble its input outside the garment (a whole frame generated at low
resolution, colour blobs) shows no old garment either, and would score a perfectly "clean" swap.
So below ``RESEMBLES_INPUT_MIN_DB`` the swap figures are reported as not applicable, never as 0.

``chameleon demo`` runs the pipeline and calls ``demo_quality`` once the stream is over; the
per-image measures it builds on live in ``harness.quality``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from harness.quality import contact_sheet, garment_pixels, ghost_ratio
from runtime.media import decode_jpeg
from services.generator.inputs import frame_input
from shared.headers import FrameMeta
from shared.schemas import Conditioning, Event, SchemaError

Colours = Mapping[str, Sequence[tuple[int, int, int]]]  # garment id -> dominant BGR colours
MIN_GARMENT_PIXELS = 50  # fewer shown garment pixels than this: too few to judge a swap by
# PSNR outside the garment below this: not the camera's scene (JPEG alone keeps it above 35 dB;
# another photo, or the same one blurred beyond recognition, scores near 10-20 dB)
RESEMBLES_INPUT_MIN_DB = 20.0


class OutputFrame(Protocol):
    """An output frame as a viewer received it (``shared.client.Frame``)."""

    meta: FrameMeta
    jpeg: bytes


@dataclass
class ReceivedStream:
    """The output frames by input sequence (a re-rendered sequence keeps its last frame) and the
    conditioning each was made from."""

    outputs: dict[int, OutputFrame]
    conditioning: Callable[[int], Conditioning | None]

    @classmethod
    def of(
        cls, outputs: Sequence[OutputFrame], conditioning: Callable[[int], Conditioning | None]
    ) -> ReceivedStream:
        return cls({r.meta.seq: r for r in outputs}, conditioning)

    @property
    def seqs(self) -> list[int]:
        return sorted(self.outputs)

    def pair(self, seq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None] | None:
        """Output frame, its input frame, garment region and person mask for ``seq`` (decoded the
        way the generator decodes conditioning), or None when either side is missing or malformed."""
        c, out = self.conditioning(seq), decode_jpeg(self.outputs[seq].jpeg)
        if c is None or out is None:
            return None
        try:
            inp = frame_input(c)
        except SchemaError:
            return None
        if out.shape != inp.frame_bgr.shape:
            return None
        return out, inp.frame_bgr, inp.garment_mask, inp.person_mask


def _psnr_outside(stream: ReceivedStream, person: bool) -> float | None:
    """PSNR of every output against its own input outside a region (the garment region, or with
    ``person`` the person; dilated by 2 px for the feathered edge), pooled over all pixels of all
    frames; 100 when nothing differs, None when no output could be paired with its input."""
    sq_err, n_px = 0.0, 0
    for s in stream.seqs:
        if (p := stream.pair(s)) is None:
            continue
        out, inp, garment, body = p
        region = body if person else garment
        keep = (
            np.ones(inp.shape[:2], bool)
            if region is None
            else cv2.dilate(region, np.ones((5, 5), np.uint8)) == 0
        )
        diff = out[keep].astype(np.float64) - inp[keep].astype(np.float64)
        sq_err += float((diff**2).sum())
        n_px += diff.size
    if n_px == 0:
        return None
    return 100.0 if sq_err == 0 else float(10 * np.log10(255.0**2 / (sq_err / n_px)))


def psnr_outside_garment_db(stream: ReceivedStream) -> float | None:
    """PSNR outside preprocess's garment region: the shoulders-to-hips polygon of the category
    preprocess is configured for. A renderer that repaints the person's real clothing (sleeves to
    the wrist, a coat's real hem) changes pixels outside it on purpose: then read
    ``psnr_background_db`` for what must not change."""
    return _psnr_outside(stream, person=False)


def psnr_background_db(stream: ReceivedStream) -> float | None:
    """PSNR outside the person (preprocess's segmentation): the scene no renderer may touch."""
    return _psnr_outside(stream, person=True)


def not_applicable(psnr_db: float | None) -> str | None:
    """Why ghosting cannot be judged on this stream, or None when it can: the output must
    resemble its input outside the garment (``RESEMBLES_INPUT_MIN_DB``)."""
    if psnr_db is None or psnr_db >= RESEMBLES_INPUT_MIN_DB:
        return None
    return (
        f"output does not resemble its input: PSNR outside the garment {psnr_db:.1f} dB "
        f"< {RESEMBLES_INPUT_MIN_DB:.0f} dB"
    )


def _shown_after(
    stream: ReceivedStream, later: list[int], old: str | None, new: str, colours: Colours
) -> tuple[int, np.ndarray, np.ndarray] | str:
    """The frame a swap's ghosting is measured on: ``(seq, output, garment pixels shown)``, or
    why there is none."""
    if not later:
        return "no output frame two after the swap"
    if old is None or old == new:
        return "no output frame with another garment before the swap"
    s = later[0]
    if (p := stream.pair(s)) is None or p[2] is None:
        return f"no garment region in output frame {s}"
    out, inp, region, _ = p
    shown = garment_pixels(out, inp, region, colours[old], colours[new])
    if np.count_nonzero(shown) < MIN_GARMENT_PIXELS:
        return f"fewer than {MIN_GARMENT_PIXELS} garment pixels shown in output frame {s}"
    return s, out, shown


def demo_quality(
    outputs: Sequence[OutputFrame],
    conditioning: Callable[[int], Conditioning | None],
    swaps_applied: Sequence[Event],
    colours: Colours,
    sheet: str = "",
) -> dict:
    """Ghosting two frames after each swap, and PSNR outside the garment region pooled over
    every frame (output against its own input). A swap that cannot be measured (no output frame
    two after it, too little garment in view, an output that does not resemble its input) is
    listed under ``swaps_unmeasured`` with the reason, so ``swaps_measured`` + those = the applied
    swaps given. ``resembles_input`` is False (and ``metrics_not_applicable`` says why, the ghost
    ratios null) when the PSNR outside the garment is under ``RESEMBLES_INPUT_MIN_DB``.

    Ghosting is measured on the pixels that show a garment (``garment_pixels``: in the garment
    region, nearer a garment's colours than the camera's own pixel): a pixel that still shows
    the person's own clothes is neither the old garment nor the new. With ``sheet``, a contact
    sheet of the frame before, at and two after each swap is written there (PNG)."""
    stream = ReceivedStream.of(outputs, conditioning)
    psnr = psnr_outside_garment_db(stream)
    background = psnr_background_db(stream)
    why_not = not_applicable(psnr)
    seqs = stream.seqs
    garment_of = {r.meta.seq: r.meta.garment_id for r in outputs}
    ghosts: list[float] = []
    details: list[dict] = []
    unmeasured: list[dict] = []
    rows = []
    for ev in swaps_applied:
        first = int(ev.data["first_seq"])
        new = str(ev.data["garment_id"])
        before = [s for s in seqs if s < first]
        old = garment_of.get(before[-1]) if before else None
        later = [s for s in seqs if s >= first + 2]
        if sheet:
            rows += _sheet_rows(stream, garment_of, [*before[-1:], first, *later[:1]], first)
        measured = why_not or _shown_after(stream, later, old, new, colours)
        if isinstance(measured, str):
            unmeasured.append(
                {"event_id": ev.data.get("event_id"), "to": new, "first_seq": first, "reason": measured}
            )
            continue
        s, out, shown = measured
        ghosts.append(ghost_ratio(out, shown, colours[old], colours[new]))
        details.append(
            {
                "from": old,
                "to": new,
                "first_seq": first,
                "measured_seq": s,
                "latency_ms": ev.data.get("latency_ms"),
                "apply_ms": ev.data.get("apply_ms"),
                "delivery_ms": ev.data.get("delivery_ms"),
                "wait_ms": ev.data.get("wait_ms"),
                "ghost_ratio_2f": round(ghosts[-1], 4),
            }
        )
    if sheet and rows:
        Path(sheet).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(sheet, contact_sheet(rows))
    return {
        "ghost_ratio_2f": round(max(ghosts), 4) if ghosts else None,
        # every applied swap is in exactly one of these: measured (its details) or not (why not)
        "swaps_measured": len(details),
        "swap_details": details,
        "swaps_unmeasured": unmeasured,
        "ghost_ratio_2f_mean": round(float(np.mean(ghosts)), 4) if ghosts else None,
        "psnr_outside_garment_db": None if psnr is None else round(psnr, 2),
        "psnr_background_db": None if background is None else round(background, 2),
        "resembles_input": None if psnr is None else why_not is None,
        "metrics_not_applicable": why_not,  # null: the ghost figures above mean what they say
    }


def _sheet_rows(
    stream: ReceivedStream, garment_of: Mapping[int, str | None], seqs: Sequence[int], swap_seq: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Input | output rows of the contact sheet for the frames ``seqs`` around one swap."""
    rows = []
    for k in seqs:
        ck = stream.conditioning(k)
        if ck is None or k not in stream.outputs:
            continue
        inp, out = decode_jpeg(ck.frame_jpeg), decode_jpeg(stream.outputs[k].jpeg)
        if inp is not None and out is not None:
            label = f"seq {k} {garment_of.get(k)}" + ("  <- swap" if k == swap_seq else "")
            rows.append((label, inp, out))
    return rows
