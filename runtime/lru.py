"""A bounded least-recently-used map: the one cache every service keeps per worker (decoded
garments, prepared garment data, encoded replies). Shared between threads where a renderer's
pool threads prepare garments (``PreparedGarments``), so each operation holds a lock."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``capacity`` entries; ``get`` and ``put`` make an entry the newest, and the oldest
    is evicted (and returned by ``put``) when the map is full. Each operation is atomic (a lock):
    two threads may compute the same value at once, never corrupt the order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> list[tuple[K, V]]:
        """Store ``value``; returns the evicted entries (oldest first) so a caller can free them."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            evicted = []
            while len(self._items) > self.capacity:
                evicted.append(self._items.popitem(last=False))
            return evicted

    def pop(self, key: K) -> V | None:
        with self._lock:
            return self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> Iterator[K]:
        with self._lock:
            return iter(list(self._items))
