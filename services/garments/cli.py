"""``chameleon garments ...``: add, list and show garments, load the starter catalogue.

Talks to a running garment service over NATS (``NATS_URL`` / ``CHAMELEON_NATS_URL``, a
comma-separated list for a cluster; prefix ``CHAMELEON_SUBJECT_PREFIX``). Connecting gives up after
``connect_timeout_s`` (``CHAMELEON_CONNECT_TIMEOUT_S``, passed in by ``chameleon``). Exit status:
0 ok, 1 a garment was refused or the service failed, 2 usage or no NATS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from runtime.bus import connect
from runtime.logging import configure_logging
from services.garments.settings import GarmentSettings
from services.garments.starter import PhotoSource
from shared.client import NatsUnavailable
from shared.garment_client import GarmentClient, GarmentError
from shared.garment_schemas import GARMENT_CATEGORIES
from shared.subjects import Subjects


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chameleon garments", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser(
        "add", help="encode and store garment images (PNG cut-out, flat-lay or ghost-mannequin PNG/JPEG)"
    )
    add.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    add.add_argument(
        "--category", default="", choices=("", *GARMENT_CATEGORIES), help="default: inferred from the shape"
    )
    add.add_argument(
        "--from-person",
        action="store_true",
        help="each PATH is a photo of one person wearing the garment: cut it out of the photo",
    )
    add.add_argument("--id", dest="garment_id", default="", help="id (one PATH only); default: file name")
    add.add_argument("--name", default="", help="display name (one PATH only); default: the id")
    lst = sub.add_parser("list", help="list the catalogue")
    lst.add_argument("--category", default="", choices=("", *GARMENT_CATEGORIES))
    show = sub.add_parser("show", help="show one garment: keypoints, colours, sizes")
    show.add_argument("garment_id", metavar="ID")
    show.add_argument("--texture", type=Path, help="also write its canvas texture (RGBA PNG) here")
    sub.add_parser("load-catalogue", help="add the procedurally generated starter catalogue (photographed)")
    for sp in sub.choices.values():
        sp.add_argument("--json", action="store_true", help="print JSON lines")
        sp.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the service")
    return p


def main(
    argv: list[str] | None = None, connect_timeout_s: float = 5.0, photos: PhotoSource | None = None
) -> int:
    """``photos``: where ``load-catalogue`` gets its images (``chameleon`` passes the product-photo
    maker's; default the clean generated flat-lays)."""
    args = _parser().parse_args(argv)
    if args.command == "add" and len(args.paths) > 1 and (args.garment_id or args.name):
        print("--id and --name need exactly one PATH", file=sys.stderr)
        return 2
    settings = GarmentSettings.from_env()
    configure_logging("warning", json=False)  # stdout is for results; only problems go to stderr
    if not settings.nats_url:
        print("no NATS server: set NATS_URL (or CHAMELEON_NATS_URL), e.g. by `chameleon up`", file=sys.stderr)
        return 2
    return asyncio.run(_run(args, settings, connect_timeout_s, photos))


async def _run(
    args: argparse.Namespace, settings: GarmentSettings, connect_timeout_s: float, photos: PhotoSource | None
) -> int:
    try:
        nc = await connect(settings.nats_url, "garments-cli", give_up_after_s=connect_timeout_s)
    except NatsUnavailable as exc:
        print(f"chameleon garments: {exc}", file=sys.stderr)
        return 2
    subjects = Subjects(settings.subject_prefix)
    client = GarmentClient(nc, subjects, timeout_s=args.timeout, encode_timeout_s=args.timeout)
    try:
        if args.command == "add":
            jobs = []
            for path in args.paths:
                try:
                    image = path.read_bytes()
                except OSError as exc:
                    jobs.append((str(path), None, str(exc)))
                    continue
                garment_id = args.garment_id or _id_from_path(path)
                source = "person" if args.from_person else "flatlay"
                jobs.append(
                    (str(path), (image, garment_id, args.name or garment_id, args.category, source), "")
                )
            return await _add_all(client, jobs, args.json)
        if args.command == "load-catalogue":
            from services.garments.catalogue import catalogue_photos

            jobs = [
                (spec.garment_id, (photo, spec.garment_id, spec.name, spec.category, "flatlay"), "")
                for spec, photo in (photos or catalogue_photos)(None)
            ]
            return await _add_all(client, jobs, args.json)
        if args.command == "list":
            records = await client.list(args.category)
            for r in records:
                if args.json:
                    row = {k: v for k, v in r.to_dict().items() if k not in ("type", "v", "thumbnail_jpeg")}
                    print(json.dumps(row | {"thumbnail_bytes": len(r.thumbnail_jpeg)}))
                else:
                    how = f"{r.category_source}, {r.source_kind}" + (
                        f", {r.sleeve_length} sleeves" if r.sleeve_length else ""
                    )
                    versions = ", ".join(sorted(r.versions))
                    print(f"{r.garment_id:28s} {r.category:8s} {r.name}  ({how}) [{versions}]")
            if not args.json:
                print(f"{len(records)} garment(s)")
            return 0
        if args.command == "show":
            asset = await client.get(args.garment_id)
            info = {
                "garment_id": asset.garment_id,
                "name": asset.name,
                "category": asset.category,
                "content_key": asset.content_key,
                "encoder_version": asset.encoder_version,
                "canvas": asset.canvas_size,
                "source_size": list(asset.source_size),
                "mask_source": asset.mask_source,
                "source_kind": asset.source_kind,
                "inferred": asset.inferred,
                "coverage": asset.coverage,
                "keypoints": {k: [round(x, 1), round(y, 1)] for k, (x, y) in asset.keypoints.items()},
                "dominant_colours": asset.dominant_colours,
                "student": {"shape": list(asset.student.shape), "dtype": str(asset.student.dtype)},
            }
            if args.texture:
                import cv2

                cv2.imwrite(str(args.texture), asset.texture)
                info["texture"] = str(args.texture)
            print(json.dumps(info) if args.json else json.dumps(info, indent=2))
            return 0
    except GarmentError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await nc.drain()
    return 2


async def _add_all(client: GarmentClient, jobs: list, as_json: bool) -> int:
    """Send every encode at once (replicas share them) and report one line per input."""

    async def one(label: str, job: tuple | None, error: str) -> dict:
        if job is None:
            return {"input": label, "ok": False, "error_code": "bad_request", "error": error}
        image, garment_id, name, category, source = job
        try:
            r = await client.encode(image, garment_id=garment_id, name=name, category=category, source=source)
        except GarmentError as exc:
            return {"input": label, "ok": False, "error_code": exc.code, "error": exc.message}
        return {
            "input": label,
            "ok": True,
            "garment_id": r.garment_id,
            "created": r.created,
            "updated": r.updated,
            "encode_ms": r.encode_ms,
            "content_key": r.content_key,
        }

    results = await asyncio.gather(*(one(*job) for job in jobs))
    for r in results:
        if as_json:
            print(json.dumps(r))
        elif r["ok"]:
            state = "encoded" if r["created"] else "updated" if r["updated"] else "unchanged"
            print(f"{r['garment_id']:28s} {state:9s} {r['encode_ms']:7.1f} ms  {r['content_key'][:12]}")
        else:
            print(f"{r['input']}: error [{r['error_code']}] {r['error']}", file=sys.stderr)
    return 0 if all(r["ok"] for r in results) else 1


def _id_from_path(path: Path) -> str:
    from services.garments.assets import derive_garment_id

    return derive_garment_id(path.stem, "")
