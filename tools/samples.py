"""Ready-made inputs for the benchmark, the visual check and the tests: catalogue garments through
the real encoder, and frames through the real preprocessing (MediaPipe). Not used when serving."""

from __future__ import annotations

import numpy as np

from services.generator.rendering import FrameInput, Garment


def catalogue_garment(garment_id: str) -> Garment:
    """A starter-catalogue garment rendered as a flat-lay PNG and encoded like an upload."""
    from services.garments import catalogue, encoder

    spec = catalogue.spec_by_id(garment_id)
    enc = encoder.encode_garment(catalogue.render(spec).png())
    colours = [(int(c["bgr"][0]), int(c["bgr"][1]), int(c["bgr"][2])) for c in enc.dominant_colours]
    return Garment(garment_id, spec.category, enc.texture, enc.keypoints, colours)


def photographed_garment(garment_id: str, seed: int = 0, kind: str = "flatlay") -> Garment:
    """A starter-catalogue garment as a shop would photograph it (``tools.product_photos``: a
    flat-lay with folds, shadow, tilt and JPEG, or ``kind="ghost"``), encoded like an upload; the
    same kind of object as ``catalogue_garment``. The category is the catalogue's (as
    ``chameleon up`` loads it); ``garments add`` without one would infer it."""
    from services.garments import catalogue, encoder
    from tools.product_photos import flatlay_photo, ghost_photo

    spec = catalogue.spec_by_id(garment_id)
    photo = flatlay_photo(spec, seed) if kind == "flatlay" else ghost_photo(spec, seed)
    enc = encoder.encode_garment(photo.data)
    colours = [(int(c["bgr"][0]), int(c["bgr"][1]), int(c["bgr"][2])) for c in enc.dominant_colours]
    return Garment(garment_id, spec.category, enc.texture, enc.keypoints, colours)


def preprocessed_frames(frames: list[np.ndarray], warmup: int = 2, fps: float = 30.0) -> list[FrameInput]:
    """Each frame through one session of the real preprocessing (pose, masks, garment region).

    The first frame is also fed ``warmup`` times first, so tracking has settled like on a stream.
    """
    from services.preprocess import conditioning as cond
    from services.preprocess.pipeline import SessionPreprocessor

    pre = SessionPreprocessor("warp-samples")
    out = []
    try:
        feed = [frames[0]] * warmup + list(frames)
        for i, frame in enumerate(feed):
            result = pre.process(frame, i, 1000.0 + i * 1000.0 / fps)
            if i < warmup:
                continue
            msg = result.conditioning
            out.append(
                FrameInput(
                    seq=i - warmup,
                    frame_bgr=frame,
                    landmarks=result.landmarks,
                    person_mask=cond.decode_png(msg.person_mask_png) if msg.person_mask_png else None,
                    garment_mask=cond.decode_png(msg.garment_mask_png) if msg.garment_mask_png else None,
                )
            )
    finally:
        pre.close()
    return out


# -- hostile inputs (tests and `chameleon bench fuzz`) --------------------------------------------------
def with_sof_size(jpeg: bytes, w: int, h: int) -> bytes:
    """The same JPEG with its frame header (SOF) claiming ``w`` x ``h``: a header that lies."""
    out, i = bytearray(jpeg), 2
    while out[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + ((out[i + 2] << 8) | out[i + 3])
    out[i + 5 : i + 9] = bytes([h >> 8, h & 255, w >> 8, w & 255])
    return bytes(out)


def garbage_scan(jpeg: bytes, seed: int = 1) -> bytes:
    """``jpeg``'s headers up to its scan, then random bytes (no markers), then EOI."""
    sos = jpeg.index(b"\xff\xda")
    noise = (
        np.random.default_rng(seed).integers(0, 255, 5000, dtype=np.uint8).tobytes().replace(b"\xff", b"\0")
    )
    return jpeg[: sos + 2 + ((jpeg[sos + 2] << 8) | jpeg[sos + 3])] + noise + b"\xff\xd9"
