"""``chameleon_glass_to_glass_seconds`` over a real nats-server: a stage that publishes a frame
observes capture time to its publish, so the histogram shows what the frame's age was as it left."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from service_testkit import until

from runtime.bus import connect
from runtime.media import encode_jpeg
from runtime.service import serve_in_task
from services.ingest.handlers import IngestHandlers
from services.ingest.settings import IngestSettings
from shared.client import publish_frame
from shared.headers import FrameMeta, now_ns
from shared.subjects import Channel, Subjects

pytestmark = pytest.mark.service
AGE_S = 0.2  # the frame was captured this long before it was sent


async def test_a_published_frame_is_observed_from_its_capture_time(nats_url: str) -> None:
    subjects = Subjects(f"g2g{uuid.uuid4().hex[:8]}")
    settings = IngestSettings(nats_url=nats_url, subject_prefix=subjects.prefix, admit_stages="")
    jpeg = encode_jpeg(np.full((480, 640, 3), 120, np.uint8))
    async with serve_in_task("ingest", settings, lambda ctx: IngestHandlers(ctx, settings)) as ingest:
        nc = await connect(nats_url, "camera")
        try:
            got: list[bytes] = []

            async def on_frame(msg) -> None:  # type: ignore[no-untyped-def]
                got.append(msg.data)

            await nc.subscribe(subjects.session("s1", Channel.INGESTED), cb=on_frame)
            meta = FrameMeta("s1", 1, now_ns() - int(AGE_S * 1e9), 640, 480)
            await publish_frame(nc, subjects.camera("s1"), jpeg, meta)
            await until(lambda: got, 10)
        finally:
            await nc.close()
        registry = ingest.ctx.metrics.registry
        count = registry.get_sample_value("chameleon_glass_to_glass_seconds_count", {"service": "ingest"})
        total = registry.get_sample_value("chameleon_glass_to_glass_seconds_sum", {"service": "ingest"})
        assert count == 1
        assert AGE_S <= total < AGE_S + 1.0, total
        below = registry.get_sample_value(
            "chameleon_glass_to_glass_seconds_bucket", {"service": "ingest", "le": "0.15"}
        )
        assert below == 0  # 0.2 s old at least: not in the 150 ms bucket
