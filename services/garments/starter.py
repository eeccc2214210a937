"""Load the procedural starter catalogue into a running garment service (``chameleon up``, the
demo, tests): through the service's own API, like any other catalogue client."""

from __future__ import annotations

from collections.abc import Callable

from services.garments.catalogue import GarmentSpec, catalogue_photos
from shared.garment_client import GarmentClient
from shared.garment_schemas import GarmentEncodeReply

# ``garment_ids -> [(spec, image bytes)]``: the clean generated flat-lays by default; ``chameleon
# up`` and the demo pass ``tools.product_photos.catalogue_product_photos`` (photographed ones)
PhotoSource = Callable[[list[str] | None], list[tuple[GarmentSpec, bytes]]]


async def add_starter_garments(
    client: GarmentClient, garment_ids: list[str] | None = None, photos: PhotoSource | None = None
) -> list[GarmentEncodeReply]:
    """Add the procedural starter catalogue (idempotent: an image already stored is not re-encoded)."""
    return [
        await client.encode(photo, garment_id=spec.garment_id, name=spec.name, category=spec.category)
        for spec, photo in (photos or catalogue_photos)(garment_ids)
    ]
