"""Every real photo and clip with a person that a registry package ships, fetched at set-up.

Nothing is committed (licences differ) and nothing downloads at run time: ``chameleon media``
(part of ``make``) takes each file out of its package into the media cache; the evaluations and
tests read the cache and skip, saying why, what is missing.

- ``bus.jpg``, ``zidane.jpg``: the ultralytics wheel (PyPI, ``pip download --no-deps``): a street
  with a full body in a beige coat; two men in suits, one pointing across the other;
- ``astronaut.png``, ``camera.png``: the scikit-image wheel (PyPI, the same way): a portrait in an
  orange suit; a cameraman in a dark coat seen from the side, black and white;
- ``messi5.jpg``, ``basketball1.png`` + ``basketball2.png``, ``vtest.avi``: Debian's opencv-doc
  (``apt-get download``): a footballer mid-kick; two frames of two men throwing a ball, black and
  white, one seen from behind; a clip of people walking in a hall;
- ``grace_hopper.jpg``: the matplotlib wheel (installed with MediaPipe): a portrait in a dark
  uniform with badges.

The packages are read as archives (a wheel is a zip, a .deb an ar archive holding a tar), so only
``pip`` and, for the Debian files, ``apt-get`` are needed. Also searched, nothing with a person:
MediaPipe's, OpenCV's and torchvision's wheels, imageio (fetches its images at run time), SciPy
(its ``face`` is a raccoon), scikit-image's other images (its GIF clip is 25x14 pixels).
"""

from __future__ import annotations

import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from runtime.media import MediaError, ensure_sample_media, media_dir

SKIMAGE_WHEEL = "scikit-image==0.26.0"
DEBIAN_PACKAGE = "opencv-doc"
OPENCV_DOC_DATA = "usr/share/doc/opencv-doc/examples/data/"


@dataclass(frozen=True)
class MediaItem:
    name: str  # the file's name in the media cache
    kind: str  # "photo" or "clip"
    source: str  # where it comes from
    what: str


ITEMS = (
    MediaItem(
        "bus.jpg", "photo", "PyPI ultralytics wheel", "a full body in a fluffy beige coat, arms crossed"
    ),
    MediaItem(
        "zidane.jpg", "photo", "PyPI ultralytics wheel", "two men in dark suits, one arm across the other"
    ),
    MediaItem(
        "grace_hopper.jpg", "photo", "matplotlib wheel", "a close-up portrait in a dark uniform, badges"
    ),
    MediaItem("astronaut.png", "photo", f"PyPI {SKIMAGE_WHEEL}", "a portrait in an orange suit with patches"),
    MediaItem(
        "camera.png",
        "photo",
        f"PyPI {SKIMAGE_WHEEL}",
        "a cameraman from the side, dark coat, black and white",
    ),
    MediaItem("messi5.jpg", "photo", f"Debian {DEBIAN_PACKAGE}", "a footballer mid-kick, striped shirt"),
    MediaItem(
        "basketball1.png",
        "clip",
        f"Debian {DEBIAN_PACKAGE}",
        "two frames: two men throwing a ball, one from behind",
    ),
    MediaItem("vtest.avi", "clip", f"Debian {DEBIAN_PACKAGE}", "people walking in a hall, seen from above"),
)
CLIP_FRAMES = {"basketball1.png": ("basketball1.png", "basketball2.png")}  # a clip of stills


class MediaUnavailable(RuntimeError):
    """A real media file is not in the cache (``chameleon media`` fetches it)."""


def path_of(name: str) -> Path:
    """The cached file, or ``MediaUnavailable`` saying how to get it."""
    if name == "grace_hopper.jpg":
        import matplotlib

        path = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / name
    else:
        path = media_dir() / name
    if not path.is_file():
        raise MediaUnavailable(f"{name} is not in {path.parent}: run `chameleon media` (or `make media`)")
    return path


def available() -> list[tuple[MediaItem, Path]]:
    """The items in the cache, in ``ITEMS`` order."""
    out = []
    for item in ITEMS:
        try:
            out.append((item, path_of(item.name)))
        except MediaUnavailable:
            continue
    return out


def _pip_download(spec: str, tmp: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, spec]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wheels = list(Path(tmp).glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise MediaUnavailable(f"could not fetch {spec} from the package index: {proc.stderr[-300:]}")
    return wheels[0]


def _from_skimage(target: Path) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(_pip_download(SKIMAGE_WHEEL, tmp)) as zf:
        for name in ("astronaut.png", "camera.png"):
            (target / name).write_bytes(zf.read(f"skimage/data/{name}"))
    return ["astronaut.png", "camera.png"]


def _deb_data(deb: bytes) -> tarfile.TarFile:
    """The data archive of a .deb (an ar archive: a header, then 60-byte member headers)."""
    if not deb.startswith(b"!<arch>\n"):
        raise MediaUnavailable("not a Debian package")
    i = 8
    while i + 60 <= len(deb):
        name = deb[i : i + 16].decode().strip().rstrip("/")
        size = int(deb[i + 48 : i + 58].decode().strip())
        body = deb[i + 60 : i + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".xz"):
                body = lzma.decompress(body)
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        i += 60 + size + (size & 1)
    raise MediaUnavailable("no data archive in the Debian package")


def _from_debian(target: Path) -> list[str]:
    if shutil.which("apt-get") is None:
        raise MediaUnavailable("apt-get not found: the OpenCV sample media come from Debian's opencv-doc")
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o777)  # apt's sandbox user writes the download as itself
        proc = subprocess.run(
            ["apt-get", "download", "-q", DEBIAN_PACKAGE],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=600,
        )
        debs = list(Path(tmp).glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if proc.returncode != 0 or not debs:
            raise MediaUnavailable(f"apt-get download {DEBIAN_PACKAGE} failed: {proc.stderr[-300:]}")
        names = ["messi5.jpg", "basketball1.png", "basketball2.png", "vtest.avi"]
        with _deb_data(debs[0].read_bytes()) as tar:
            members = {m.name.lstrip("./"): m for m in tar.getmembers()}
            for name in names:
                member = members.get(OPENCV_DOC_DATA + name)
                data = tar.extractfile(member) if member is not None else None
                if data is None:
                    raise MediaUnavailable(f"{name} not in {DEBIAN_PACKAGE}")
                (target / name).write_bytes(data.read())
    return names


def fetch_all() -> dict[str, str]:
    """Fetch what is missing from the cache; per source, "ok" or why it could not be fetched."""
    target = media_dir()
    target.mkdir(parents=True, exist_ok=True)
    report: dict[str, str] = {}
    steps = {
        "ultralytics": (("bus.jpg", "zidane.jpg"), lambda: ensure_sample_media(fetch=True)),
        "scikit-image": (("astronaut.png", "camera.png"), lambda: _from_skimage(target)),
        "opencv-doc": (
            ("messi5.jpg", "basketball1.png", "basketball2.png", "vtest.avi"),
            lambda: _from_debian(target),
        ),
    }
    for source, (names, fetch) in steps.items():
        if all((target / n).is_file() for n in names):
            report[source] = "ok"
            continue
        try:
            fetch()
            report[source] = "ok"
        except (MediaUnavailable, MediaError, OSError, subprocess.SubprocessError) as exc:
            report[source] = str(exc)
    return report


if __name__ == "__main__":
    print(json.dumps(fetch_all()))
