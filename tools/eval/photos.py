"""`python -m tools.eval.photos --sheet PNG`: the warp renderers on the real photos.

Every real photo with a person the project has without a download at run time: bus.jpg and
zidane.jpg (``make media``, from the ultralytics wheel) and grace_hopper.jpg (inside the
matplotlib wheel, a MediaPipe dependency). Each goes through the real preprocessing (MediaPipe),
then the legacy and the current renderer draw two catalogue garments. The sheet has one row per
photo where MediaPipe finds a body: the photo, then legacy and current for each garment,
cropped to the person. The last line printed is one JSON object: per photo, whether a body was
found, and per renderer and garment: the share of preprocess's garment region the garment
covers, for the current renderer the share of the clothing it found (that region less skin)
repainted as garment or bare arm (what the real-photo test asserts, >= 0.8), and the garment
pixels outside the person mask.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

GARMENTS = ("tee-red-solid", "shirt-blue-checks")
TILE_HEIGHT = 300


def photos() -> dict[str, np.ndarray]:
    import matplotlib

    from runtime.media import read_image, sample_photo

    out = {}
    for name in ("bus.jpg", "zidane.jpg"):
        try:
            out[name] = read_image(sample_photo(name))
        except (FileNotFoundError, OSError):
            continue  # not fetched yet: `make media`
    hopper = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    out["grace_hopper.jpg"] = read_image(str(hopper))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.eval.photos", description=__doc__.splitlines()[0])
    parser.add_argument("--sheet", type=Path, help="write the contact sheet PNG here")
    args = parser.parse_args(argv)

    import cv2

    from harness.quality import write_rows
    from services.generator.warp import WarpRenderer
    from tools.eval.legacy_warp import LegacyWarpRenderer
    from tools.samples import catalogue_garment, preprocessed_frames

    cv2.setNumThreads(1)
    garments = {g: catalogue_garment(g) for g in GARMENTS}
    report: dict = {"photos": {}}
    rows = []
    for name, img in photos().items():
        frame = preprocessed_frames([img])[0]
        entry: dict = {"body_found": frame.landmarks is not None}
        report["photos"][name] = entry
        if frame.landmarks is None or frame.person_mask is None:
            continue
        tiles = [img]
        clothing = frame.garment_mask > 0 if frame.garment_mask is not None else None
        person = frame.person_mask > 0
        for gid, garment in garments.items():
            for label, maker in (("legacy", LegacyWarpRenderer), ("current", WarpRenderer)):
                session = maker("photos", garment)
                found = None
                if label == "current":
                    detail = session.render_detail(frame)
                    out, drawn = detail.frame.image_bgr, detail.garment
                    if detail.clothing is not None and clothing is not None:
                        # the test's measure: what preprocess called clothing, less what the
                        # renderer took for skin, repainted as garment or as bare arm
                        found = clothing & (detail.clothing > 0)
                        repainted = (detail.garment > 0) | (detail.skin > 0)
                else:
                    r = session.render(frame)[0]
                    out, drawn = r.image_bgr, r.drawn_mask
                tiles.append(out)
                m = drawn > 0 if drawn is not None else np.zeros(person.shape, bool)
                covered = float(m[clothing].mean()) if clothing is not None else None
                entry[f"{label}/{gid}"] = {
                    "garment_mask_covered": None if covered is None else round(covered, 3),
                    "clothing_repainted": None if found is None else round(float(repainted[found].mean()), 3),
                    "outside_person_px": int((m & ~person).sum()),
                }
        ys, xs = np.nonzero(person)
        pad = 20
        y0, y1 = max(0, ys.min() - pad), min(img.shape[0], ys.max() + pad)
        x0, x1 = max(0, xs.min() - pad), min(img.shape[1], xs.max() + pad)
        scale = TILE_HEIGHT / (y1 - y0)
        row = [
            cv2.resize(t[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for t in tiles
        ]
        rows.append(np.hstack([np.pad(t, ((0, 0), (0, 4), (0, 0)), constant_values=255) for t in row]))
    if args.sheet and rows:
        write_rows(args.sheet, rows)
        report["sheet"] = str(args.sheet)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
