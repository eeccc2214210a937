"""Binary masks on the wire as run lengths (``Conditioning`` v2). Pure numpy.

Why not PNG: a 640x480 bilevel PNG costs about 0.5 ms to encode in preprocess and as much to
decode in the generator, twice a frame (person and garment masks), for about 1 KB each; these run
lengths cost a tenth of that each way (numpy, no zlib) for about 2 KB each (docs/benchmarks.md).

Format: the mask's pixels in row-major order, as alternating runs of "out" (0) and "in" (255),
starting with an "out" run (of length 0 when the first pixel is in). Each run length is a
little-endian uint16; a run longer than 65535 is written as 65535, a run of 0 of the other value,
and the rest. The runs must add up to exactly width x height of the frame they belong to, so a
message cannot make a reader allocate more than the frame it also carries.
"""

from __future__ import annotations

import numpy as np

MAX_RUN = 0xFFFF


class MaskError(ValueError):
    """Run lengths that do not make a mask of the size expected."""


def encode_rle(mask: np.ndarray) -> bytes:
    """A 2-D mask (anything > 0 is in) → run-length bytes."""
    if mask.ndim != 2:
        raise MaskError(f"expected a 2-D mask, got shape {mask.shape}")
    flat = mask.reshape(-1) > 0
    if flat.size == 0:
        return b""
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size])))
    if flat[0]:
        runs = np.concatenate(([0], runs))
    if int(runs.max()) > MAX_RUN:
        runs = _split_long(runs)
    return runs.astype("<u2").tobytes()


def _split_long(runs: np.ndarray) -> np.ndarray:
    """Each run over ``MAX_RUN`` as ``MAX_RUN, 0, MAX_RUN, 0, ..., rest``: the zero-length runs of
    the other value keep the alternation."""
    pieces = (runs + MAX_RUN - 1) // MAX_RUN  # uint16 pieces per run (a run of 0 stays one piece)
    pieces[runs == 0] = 1
    out = np.zeros(int(2 * pieces.sum() - runs.size), np.int64)
    starts = np.concatenate(([0], np.cumsum(2 * pieces - 1)[:-1]))
    for i in np.flatnonzero(pieces > 1):  # the few long runs: top and bottom of the frame
        k, start = int(pieces[i]), int(starts[i])
        out[start : start + 2 * k - 2 : 2] = MAX_RUN
        out[start + 2 * k - 2] = runs[i] - MAX_RUN * (k - 1)
    short = pieces == 1
    out[starts[short]] = runs[short]
    return out


def decode_rle(data: bytes, width: int, height: int) -> np.ndarray:
    """Run-length bytes → uint8 (height, width) mask of 0/255; ``MaskError`` when they do not
    describe exactly ``width`` x ``height`` pixels."""
    if len(data) % 2:
        raise MaskError(f"{len(data)} bytes are not whole uint16 run lengths")
    runs = np.frombuffer(data, dtype="<u2")
    total = int(runs.sum(dtype=np.int64))
    if total != width * height:
        raise MaskError(f"run lengths cover {total} pixels, not {width}x{height}")
    values = np.zeros(runs.size, np.uint8)
    values[1::2] = 255
    return np.repeat(values, runs.astype(np.intp)).reshape(height, width)
