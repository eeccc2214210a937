"""One worker's KV cache memory, preallocated once for N sessions from a memory budget.

Admission control lives here: a session beyond capacity gets ``AtCapacity`` immediately instead
of an out-of-memory error in the middle of someone else's stream. Slots are handed out lowest
first so concurrent sessions tend to be consecutive, which lets a batched step read their caches
as one slice instead of a gather.
"""

from __future__ import annotations

import torch

from .config import EngineConfig
from .kv_cache import CacheLayout, KVCache


class AtCapacity(RuntimeError):
    """The worker's cache pool has no free slot; try another worker or later."""


class CachePool:
    def __init__(
        self,
        config: EngineConfig,
        *,
        capacity: int | None = None,
        memory_budget_bytes: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if capacity is None and memory_budget_bytes is None:
            raise ValueError("give a capacity, a memory budget, or both")
        self.config = config
        self.layout = CacheLayout.from_config(config)
        self.bytes_per_session = self.session_bytes(config, dtype)
        limit = capacity if capacity is not None else 1 << 62
        if memory_budget_bytes is not None:
            limit = min(limit, memory_budget_bytes // self.bytes_per_session)
        if limit < 1:
            raise ValueError(
                f"memory budget {memory_budget_bytes} B is below one session "
                f"({self.bytes_per_session} B for config {config.name!r})"
            )
        self.capacity = int(limit)
        shape = (
            config.num_layers,
            self.capacity,
            self.layout.total_tokens,
            config.num_heads,
            config.head_dim,
        )
        self._keys = torch.zeros(shape, device=device, dtype=dtype)
        self._values = torch.zeros(shape, device=device, dtype=dtype)
        self._free = list(range(self.capacity))
        self._in_use: dict[int, KVCache] = {}

    @staticmethod
    def session_bytes(config: EngineConfig, dtype: torch.dtype) -> int:
        """Bytes of one session's K and V over all layers (what the budget is divided by)."""
        layout = CacheLayout.from_config(config)
        per_row = config.num_heads * config.head_dim * torch.empty((), dtype=dtype).element_size()
        return 2 * config.num_layers * layout.total_tokens * per_row

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    @property
    def nbytes(self) -> int:
        return 2 * self._keys.numel() * self._keys.element_size()

    def acquire(self) -> KVCache:
        if not self._free:
            raise AtCapacity(
                f"engine at capacity: {self.capacity}/{self.capacity} sessions in use "
                f"({self.bytes_per_session / 2**20:.1f} MiB of KV cache each)"
            )
        slot = self._free.pop(0)
        cache = KVCache(
            self.layout,
            self._keys[:, slot],
            self._values[:, slot],
            slot=slot,
            store=(self._keys, self._values),
        )
        self._in_use[slot] = cache
        return cache

    def release(self, cache: KVCache) -> None:
        """Return a slot; releasing twice is a no-op so session teardown can be idempotent."""
        if self._in_use.get(cache.slot) is not cache:
            return
        del self._in_use[cache.slot]
        cache.reset()
        self._free.append(cache.slot)
        self._free.sort()
