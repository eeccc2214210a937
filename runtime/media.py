"""Media helpers: JPEG coding, and the real test photos extracted from registry packages.

No photo is committed (licences differ). ``ensure_sample_media`` takes ``bus.jpg`` and
``zidane.jpg`` out of the ``ultralytics`` wheel, fetched from PyPI like any dependency with
``pip download --no-deps`` (never installed: it would pull opencv-python and torchvision), into a
cache folder. It runs during set-up (``make media``); at run time we only read the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator
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


class UndecodableImage(ValueError):
    """Bytes that are not an image, or a JPEG whose coded data does not match its header."""


def decode_image(data: bytes, reduced: bool = False) -> np.ndarray:
    """Decode JPEG/PNG bytes to BGR, or raise ``UndecodableImage`` saying why.

    Stricter than ``cv2.imdecode``: a JPEG that libjpeg decodes only by guessing is refused, such
    as one whose data ends before the image its header declares (a header that lies about the
    size) or holds bad Huffman codes (garbage after a valid header). libjpeg says so only by
    printing a warning to the process's stderr, once per image, so the decode runs with that file
    descriptor captured: the warning becomes this error's message instead of a raw line on
    stderr. ``reduced``: an eighth-size grey decode, which still reads every coded bit, at about
    60% of the cost (the check of a frame that goes on undecoded)."""
    if not data:
        raise UndecodableImage("empty payload")
    arr = np.frombuffer(data, dtype=np.uint8)
    flag = cv2.IMREAD_REDUCED_GRAYSCALE_8 if reduced else cv2.IMREAD_COLOR
    with _native_stderr() as messages:
        img = cv2.imdecode(arr, flag)
    if img is None:
        raise UndecodableImage(f"{len(data)} bytes are not a decodable JPEG/PNG image")
    guessed = [m for m in messages if _GUESSED.match(m)]
    if guessed:
        raise UndecodableImage(f"corrupt image data ({len(data)} bytes): {guessed[0]}")
    return img


def decode_jpeg(data: bytes) -> np.ndarray | None:
    """Decode JPEG/PNG bytes to BGR; None when the bytes are not an image, or are a JPEG libjpeg
    could only decode by guessing (``decode_image``)."""
    try:
        return decode_image(data)
    except UndecodableImage:
        return None


# What libjpeg (jerror.h, JWRN_*) and libpng print while decoding; anything else written to stderr
# meanwhile came from another thread and is passed on. Of those, the ones that mean pixels were
# guessed: the coded data ran out or did not decode. The others (extraneous bytes before a
# marker, a bad ICC or JFIF thumbnail field: common from webcams) leave the image intact.
_DECODER_MESSAGE = re.compile(
    rb"^(Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters|Inconsistent progression"
    rb"|Unsupported marker type|Unknown Adobe color transform|Warning: (thumbnail image size|unknown JFIF)"
    rb"|libpng (warning|error))"
)
_GUESSED = re.compile(
    r"^(Corrupt JPEG data: (premature end|bad Huffman|bad arithmetic|found marker)"
    r"|Premature end of JPEG file|Invalid SOS parameters|Inconsistent progression|libpng error)"
)
_native_lock = threading.Lock()  # one decode at a time owns file descriptor 2
_CAPTURE_RESET_BYTES = 1 << 20


class _CaptureFile:
    """Where file descriptor 2 points while a decode runs: one append-only file per process. A
    write another thread began just before the decode ended lands after what was read, so it is
    read (and passed on) after the next decode instead of being lost or overwritten."""

    def __init__(self) -> None:
        with tempfile.TemporaryFile() as f:
            self.fd = os.dup(f.fileno())
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) | os.O_APPEND)
        self.read_to = 0

    def take(self) -> bytes:
        """The whole lines written since the last take (a line still being written, one page of
        it so far, is taken with its end next time)."""
        end = os.fstat(self.fd).st_size
        data = os.pread(self.fd, end - self.read_to, self.read_to)
        data = data[: data.rfind(b"\n") + 1]
        self.read_to += len(data)
        if self.read_to > _CAPTURE_RESET_BYTES and self.read_to == os.fstat(self.fd).st_size:
            os.ftruncate(self.fd, 0)
            self.read_to = 0
        return data


_capture: list[_CaptureFile] = []  # made on the first decode


@contextlib.contextmanager
def _native_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to file descriptor 2 during the block; yields the list the
    decoders' messages are put in when it ends (the rest goes on to stderr)."""
    messages: list[str] = []
    with _native_lock:
        if not _capture:
            _capture.append(_CaptureFile())
        capture = _capture[0]
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to capture, nothing to protect
            yield messages
            return
        try:
            os.dup2(capture.fd, 2)
            try:
                yield messages
            finally:
                os.dup2(saved, 2)
        finally:
            os.close(saved)
        written = capture.take()
    others = []
    for line in written.splitlines(keepends=True):
        if _DECODER_MESSAGE.match(line):
            messages.append(line.decode("utf-8", "replace").strip())
        else:
            others.append(line)
    if others:
        with contextlib.suppress(OSError):
            os.write(2, b"".join(others))


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
