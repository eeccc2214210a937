"""Load the procedural starter catalogue into a running garment service (``chameleon up``, the
demo, tests): through the service's own API, like any other catalogue client."""

from __future__ import annotations

from services.garments.catalogue import catalogue_photos
from shared.garment_client import GarmentClient
from shared.garment_schemas import GarmentEncodeReply


async def add_starter_garments(
    client: GarmentClient, garment_ids: list[str] | None = None
) -> list[GarmentEncodeReply]:
    """Add the procedural starter catalogue (idempotent: an image already stored is not re-encoded)."""
    return [
        await client.encode(photo, garment_id=spec.garment_id, name=spec.name, category=spec.category)
        for spec, photo in catalogue_photos(garment_ids)
    ]
