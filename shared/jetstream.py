"""JetStream buckets, got or created in one place (the session state, the garment index and
store). Every process that needs a bucket calls these at start, so whichever starts first makes
it and the others find it."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore


async def key_value(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """The KV bucket ``config.bucket``, created with ``config`` if it does not exist."""
    try:
        return await js.key_value(config.bucket)
    except BucketNotFoundError:
        return await js.create_key_value(config)


async def object_store(js: JetStreamContext, config: ObjectStoreConfig) -> ObjectStore:
    """The object store ``config.bucket``, created with ``config`` if it does not exist."""
    try:
        return await js.object_store(config.bucket)
    except (BucketNotFoundError, NotFoundError):
        # nats-py overwrites ``config.bucket`` with its ``bucket`` argument, so pass both
        return await js.create_object_store(config.bucket, config=config)
