"""Media helpers: JPEG coding, and the real test photos extracted from registry packages.

No photo is committed (licences differ). ``ensure_sample_media`` takes ``bus.jpg`` and
``zidane.jpg`` out of the ``ultralytics`` wheel, fetched from PyPI like any dependency with
``pip download --no-deps`` (never installed: it would pull opencv-python and torchvision), into a
cache folder. It runs during set-up (``make media``); at run time we only read the cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

ULTRALYTICS_WHEEL = "ultralytics==8.3.0"
ULTRALYTICS_ASSETS = ("bus.jpg", "zidane.jpg")


class MediaError(RuntimeError):
    """A sample photo is missing and could not be extracted."""


def media_dir() -> Path:
    d = os.environ.get("CHAMELEON_MEDIA_DIR")
    return Path(d) if d else Path.home() / ".cache" / "fashion-chameleon" / "media"


def ensure_sample_media(fetch: bool = True) -> Path:
    """Make sure the sample photos are in ``media_dir()``; return that folder."""
    target = media_dir()
    if all((target / n).is_file() for n in ULTRALYTICS_ASSETS):
        return target
    if not fetch:
        raise MediaError(f"sample photos missing in {target}: run `make media`")
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, ULTRALYTICS_WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        wheels = list(Path(tmp).glob("ultralytics-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise MediaError(
                f"could not fetch {ULTRALYTICS_WHEEL} from the package index: {proc.stderr[-400:]}"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            for name in ULTRALYTICS_ASSETS:
                (target / name).write_bytes(zf.read(f"ultralytics/assets/{name}"))
    return target


def sample_photo(name: str = "bus.jpg", fetch: bool = False) -> Path:
    """Path of a sample photo (``bus.jpg``: full body; ``zidane.jpg``: two upper bodies)."""
    path = ensure_sample_media(fetch=fetch) / name
    if not path.is_file():
        raise MediaError(f"{path} not found")
    return path


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise MediaError(f"cannot read image {path}")
    return img


def encode_jpeg(img: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray | None:
    """Decode JPEG/PNG bytes to BGR; None when the bytes are not an image."""
    if not data:
        return None
    arr = np.frombuffer(data, dtype=np.uint8)
    return cv2.imdecode(arr, cv2.IMREAD_COLOR)


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG, DAC are not frames
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM: no length field


def jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header without decoding it; None unless the bytes are a
    structurally complete JPEG: SOI, a frame header (SOF) with sane fields, then a scan (SOS), and
    EOI at the end (zero padding after it allowed).

    Microseconds instead of a 3-5 ms decode: ingest uses it to forward a fitting JPEG untouched.
    Entropy-coded data is not checked; the first stage that decodes reports a frame that fails.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8 or not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return None
    i, size = 2, None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2 or i + 2 + length > n:
            return None
        if marker in _SOF_MARKERS:
            if length < 8:
                return None
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            components = data[i + 9]
            if width == 0 or height == 0 or components not in (1, 3, 4):
                return None
            size = (width, height)
        elif marker == 0xDA:  # start of scan: the entropy-coded data follows
            return size
        i += 2 + length
    return None


def fit_size(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """Largest (w, h) with the aspect of (width, height) that fits in the box, even-sized."""
    scale = min(box_w / width, box_h / height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)
