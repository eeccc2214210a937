"""``chameleon bench garments``: what encoding costs once, and what a cached fetch costs always.

Starts an embedded nats-server unless ``NATS_URL`` is set, runs the garment service in this
process under a private subject prefix (fresh buckets, so every encode is real), loads the starter
catalogue one garment at a time, photographed as ``chameleon up`` loads it (``tools.product_photos``;
``--clean``: the generated flat-lays) (``encode_ms``: request to reply, encoder included), then measures
``get`` from ANOTHER process: a subprocess client that fetches every garment once (warm-up) and
then ``--rounds`` times round-robin. ``fetch_cached_ms`` is request to a received, schema-checked
reply (``GarmentClient.get_reply``); ``decode_ms`` is turning it into arrays
(``GarmentAsset.from_reply``: PNG and array decode, done once per garment by a caching worker);
``fetch_and_decode_ms`` is their sum per call. The last line printed is the JSON result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

from harness.natsserver import EmbeddedNats
from runtime.bus import connect
from runtime.metrics import percentiles
from runtime.service import serve_in_task
from services.garments.catalogue import catalogue_photos, starter_catalogue
from services.garments.encoder import encoder_version
from services.garments.handlers import GarmentHandlers
from services.garments.settings import GarmentSettings
from shared.garment_client import GarmentAsset, GarmentClient
from shared.subjects import Subjects
from tools.product_photos import catalogue_product_photos

GOAL_FETCH_P95_MS = 10.0


async def _fetch_worker(url: str, prefix: str, ids: list[str], rounds: int) -> dict:
    nc = await connect(url, "bench-garments-fetch")
    client = GarmentClient(nc, Subjects(prefix))
    for garment_id in ids:  # warm-up: connections, caches, code paths
        await client.get(garment_id)
    fetch, decode, sizes = [], [], []
    for i in range(rounds):
        garment_id = ids[i % len(ids)]
        t0 = time.perf_counter()
        reply = await client.get_reply(garment_id)
        t1 = time.perf_counter()
        GarmentAsset.from_reply(reply)
        t2 = time.perf_counter()
        fetch.append((t1 - t0) * 1e3)
        decode.append((t2 - t1) * 1e3)
        sizes.append(len(reply.encode()))
    await nc.drain()
    return {"fetch": fetch, "decode": decode, "sizes": sizes}


def _run_fetch_process(url: str, prefix: str, ids: list[str], rounds: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "tools.bench.garments",
        "--fetch-worker",
        "--url",
        url,
        "--prefix",
        prefix,
        "--ids",
        ",".join(ids),
        "--rounds",
        str(rounds),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"fetch subprocess failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


async def _bench(url: str, rounds: int, clean: bool = False) -> dict:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = GarmentSettings.from_env(nats_url=url, subject_prefix=prefix, summary_interval_s=3600.0)
    specs = starter_catalogue()
    images = (catalogue_photos if clean else catalogue_product_photos)([s.garment_id for s in specs])
    encode_ms, service_ms = [], []
    async with serve_in_task("garments", settings, lambda ctx: GarmentHandlers(ctx, settings)):
        nc = await connect(url, "bench-garments")
        client = GarmentClient(nc, Subjects(prefix))
        for spec, image in images:
            t0 = time.perf_counter()
            reply = await client.encode(
                image, garment_id=spec.garment_id, name=spec.name, category=spec.category
            )
            encode_ms.append((time.perf_counter() - t0) * 1e3)
            service_ms.append(reply.encode_ms)
            assert reply.created
        ids = [s.garment_id for s in specs]
        fetched = await asyncio.to_thread(_run_fetch_process, url, prefix, ids, rounds)
        js = nc.jetstream()
        subjects = Subjects(prefix)
        for delete in (js.delete_key_value, js.delete_object_store):
            bucket = subjects.garment_bucket if delete == js.delete_key_value else subjects.garment_objects
            try:
                await delete(bucket)
            except Exception as exc:  # cleanup only
                print(f"cleanup: {exc}", file=sys.stderr)
        await nc.drain()
    fetch = percentiles(fetched["fetch"], (50, 95, 99))
    full = [a + b for a, b in zip(fetched["fetch"], fetched["decode"], strict=True)]
    return {
        "bench": "garments",
        "garments": len(ids),
        "images": "clean" if clean else "photographed",
        "image_bytes_mean": sum(len(image) for _, image in images) // len(images),
        "encode_ms": {**percentiles(encode_ms, (50, 95)), "max": round(max(encode_ms), 2)},
        "encode_service_ms": percentiles(service_ms, (50, 95)),
        "fetch_cached_ms": {**fetch, "max": round(max(fetched["fetch"]), 3)},
        "decode_ms": percentiles(fetched["decode"], (50, 95)),
        "fetch_and_decode_ms": percentiles(full, (50, 95)),
        "fetch_rounds": rounds,
        "fetch_from": "subprocess",
        "reply_bytes": {"mean": sum(fetched["sizes"]) // len(fetched["sizes"]), "max": max(fetched["sizes"])},
        "goal_fetch_p95_ms": GOAL_FETCH_P95_MS,
        "goal_met": fetch["p95"] <= GOAL_FETCH_P95_MS,
        "encoder_version": encoder_version(settings.student_encoder, settings.canvas_size),
        "nats": "external" if GarmentSettings.from_env().nats_url else "embedded",
        "machine": _machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    system = f"{platform.system()} {platform.machine()}"
    return f"{cpu}, {cores} cores, {system}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chameleon bench garments", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=500, help="cached fetches measured")
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.add_argument("--clean", action="store_true", help="the clean generated flat-lays, not photographed")
    p.add_argument("--fetch-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    p.add_argument("--ids", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fetch_worker:
        print(json.dumps(asyncio.run(_fetch_worker(args.url, args.prefix, args.ids.split(","), args.rounds))))
        return 0
    url = GarmentSettings.from_env().nats_url
    server = None
    if not url:
        server = EmbeddedNats().start()
        url = server.url
    try:
        result = asyncio.run(_bench(url, args.rounds, args.clean))
    finally:
        if server:
            server.close()
    if not args.json:
        print(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
