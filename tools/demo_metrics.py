"""The demo's quality figures, measured from what its client received: ghosting two frames after
each swap, PSNR outside the garment pooled over the stream, and a contact sheet around each swap.

``chameleon demo`` runs the pipeline and calls ``demo_quality`` once the stream is over; the
per-image measures it builds on live in ``tools.quality``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from services.generator.inputs import frame_input
from shared.headers import FrameMeta
from shared.media import decode_jpeg
from shared.schemas import Conditioning, Event, SchemaError
from tools.quality import contact_sheet, garment_pixels, ghost_ratio

Colours = Mapping[str, Sequence[tuple[int, int, int]]]  # garment id -> dominant BGR colours
MIN_GARMENT_PIXELS = 50  # fewer shown garment pixels than this: too few to judge a swap by


class OutputFrame(Protocol):
    """An output frame as a viewer received it (``services.watch.client.Received``)."""

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

    def pair(self, seq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """Output frame, its input frame and garment region for ``seq`` (decoded the way the
        generator decodes conditioning), or None when either side is missing or malformed."""
        c, out = self.conditioning(seq), decode_jpeg(self.outputs[seq].jpeg)
        if c is None or out is None:
            return None
        try:
            inp = frame_input(c)
        except SchemaError:
            return None
        return (out, inp.frame_bgr, inp.garment_mask) if out.shape == inp.frame_bgr.shape else None


def psnr_outside_garment_db(stream: ReceivedStream) -> float:
    """PSNR of every output against its own input outside the garment region (dilated by 2 px
    for the feathered edge), pooled over all pixels of all frames; 100 when nothing differs."""
    sq_err, n_px = 0.0, 0
    for s in stream.seqs:
        if (p := stream.pair(s)) is None:
            continue
        out, inp, region = p
        keep = (
            np.ones(inp.shape[:2], bool)
            if region is None
            else cv2.dilate(region, np.ones((5, 5), np.uint8)) == 0
        )
        diff = out[keep].astype(np.float64) - inp[keep].astype(np.float64)
        sq_err += float((diff**2).sum())
        n_px += diff.size
    return 100.0 if n_px == 0 or sq_err == 0 else 10 * np.log10(255.0**2 / (sq_err / n_px))


def demo_quality(
    outputs: Sequence[OutputFrame],
    conditioning: Callable[[int], Conditioning | None],
    swaps_applied: Sequence[Event],
    colours: Colours,
    sheet: str = "",
) -> dict:
    """Ghosting two frames after each swap, and PSNR outside the garment region pooled over
    every frame (output against its own input).

    Ghosting is measured on the pixels that show a garment (``garment_pixels``: in the garment
    region, nearer a garment's colours than the camera's own pixel): a pixel that still shows
    the person's own clothes is neither the old garment nor the new. With ``sheet``, a contact
    sheet of the frame before, at and two after each measured swap is written there (PNG)."""
    stream = ReceivedStream.of(outputs, conditioning)
    seqs = stream.seqs
    garment_of = {r.meta.seq: r.meta.garment_id for r in outputs}
    ghosts: list[float] = []
    details: list[dict] = []
    rows = []
    for ev in swaps_applied:
        first = int(ev.data["first_seq"])
        new = str(ev.data["garment_id"])
        before = [s for s in seqs if s < first]
        old = garment_of.get(before[-1]) if before else None
        later = [s for s in seqs if s >= first + 2]
        if not later or old is None or old == new:
            continue
        s = later[0]
        if (p := stream.pair(s)) is None or p[2] is None:
            continue
        out, inp, region = p
        shown = garment_pixels(out, inp, region, colours[old], colours[new])
        if np.count_nonzero(shown) < MIN_GARMENT_PIXELS:
            continue
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
        if sheet:
            for k in (before[-1], first, s):
                ck = conditioning(k)
                if ck is not None:
                    label = f"seq {k} {garment_of.get(k)}" + ("  <- swap" if k == first else "")
                    rows.append((label, decode_jpeg(ck.frame_jpeg), decode_jpeg(stream.outputs[k].jpeg)))
    if sheet and rows:
        Path(sheet).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(sheet, contact_sheet(rows))
    return {
        "ghost_ratio_2f": round(max(ghosts), 4) if ghosts else None,
        "swap_details": details,
        "ghost_ratio_2f_mean": round(float(np.mean(ghosts)), 4) if ghosts else None,
        "psnr_outside_garment_db": round(float(psnr_outside_garment_db(stream)), 2),
    }
