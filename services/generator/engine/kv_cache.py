"""Segmented per-session KV cache: reference | garment | sink | FIFO window.

Buffer layout per layer (token rows, fixed at allocation, never resized)::

    [ scratch | reference | garment | sink | FIFO ring ]

``scratch`` receives the K/V of the tokens being computed right now (a chunk during denoising, or
the two in-context frames during a prefill). Because it sits immediately in front of the reference
and the filled part of the cache is always a prefix of what follows, attention reads ONE contiguous
view ``[scratch_end - n, scratch_end + used)`` with no concatenation and no mask. The FIFO is a ring
of frame slots: eviction only moves a head pointer; attention is order-independent because
positions are baked into the keys by RoPE before they are stored.

The cache is pure bookkeeping plus preallocated tensors; the model calls ``attend`` from each layer
and the session decides when a forward's scratch is committed (and to which segment).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .config import EngineConfig

Segment = str
SEGMENTS: tuple[Segment, ...] = ("current", "reference", "garment", "sink", "window")
EVICTION_LOG = 64  # most recent evicted frame ids kept for inspection and tests


@dataclass(frozen=True)
class CacheLayout:
    """Token offsets of every segment inside one layer's buffer."""

    tokens_per_frame: int
    scratch_frames: int
    context_frames: int
    sink_video_frames: int
    fifo_frames: int

    @classmethod
    def from_config(cls, config: EngineConfig) -> CacheLayout:
        return cls(
            tokens_per_frame=config.tokens_per_frame,
            scratch_frames=max(config.chunk_frames, config.context_frames),
            context_frames=config.context_frames,
            sink_video_frames=config.sink_video_frames,
            fifo_frames=config.fifo_frames,
        )

    @property
    def scratch_end(self) -> int:
        return self.scratch_frames * self.tokens_per_frame

    @property
    def reference_offset(self) -> int:
        return self.scratch_end

    @property
    def garment_offset(self) -> int:
        return self.reference_offset + self.tokens_per_frame

    @property
    def sink_offset(self) -> int:
        return self.reference_offset + self.context_frames * self.tokens_per_frame

    @property
    def window_offset(self) -> int:
        return self.sink_offset + self.sink_video_frames * self.tokens_per_frame

    @property
    def total_tokens(self) -> int:
        return self.window_offset + self.fifo_frames * self.tokens_per_frame

    @property
    def budget_frames(self) -> int:
        """Frames the cache may hold (scratch excluded): the paper's window of 23."""
        return self.context_frames + self.sink_video_frames + self.fifo_frames


class AttentionContext(Protocol):
    """What an attention layer needs from a cache: store my K/V, give me everything to attend."""

    def attend(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Return (keys, values, mask) shaped (B, L, H, D), (B, L, H, D), (B, 1, 1, L) or None."""
        ...


class KVCache:
    """One session's cache: views of preallocated (layers, tokens, heads, head_dim) buffers.

    State is a handful of integers; the tensors never change shape. ``frame_ids`` records which
    stream frame occupies each video slot so tests can check the sink and FIFO exactly.
    """

    def __init__(
        self,
        layout: CacheLayout,
        keys: Tensor,
        values: Tensor,
        *,
        slot: int = 0,
        store: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        expected = layout.total_tokens
        if keys.shape != values.shape or keys.shape[1] != expected:
            raise ValueError(f"cache buffers must be (layers, {expected}, heads, dim) twice")
        self.layout = layout
        self.keys = keys
        self.values = values
        self.slot = slot
        self.store = store  # the pool tensors these views come from, for batched fast paths
        self.reset()

    @classmethod
    def allocate(
        cls,
        config: EngineConfig,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> KVCache:
        """A standalone cache (tests, single-session tools); services use ``CachePool``."""
        layout = CacheLayout.from_config(config)
        shape = (config.num_layers, layout.total_tokens, config.num_heads, config.head_dim)
        return cls(
            layout,
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
        )

    # ----------------------------------------------------------------------------- bookkeeping
    def reset(self) -> None:
        """Forget everything (a new session); buffers are kept, stale rows are never visible."""
        self.has_context = False
        self.sink_ids: list[int] = []
        self.fifo_slots: list[int | None] = [None] * self.layout.fifo_frames
        self.fifo_filled = 0
        self.fifo_head = 0  # slot written next (the oldest once the ring is full)
        # Bounded: a stream runs for hours and its bookkeeping must not grow with it.
        self.evicted: deque[int] = deque(maxlen=EVICTION_LOG)
        self.evicted_total = 0
        self._prefilling = False

    @property
    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() * 2

    @property
    def cached_frames(self) -> int:
        """Frames currently visible to attention (reference, garment, sink, FIFO)."""
        context = self.layout.context_frames if self.has_context else 0
        return context + len(self.sink_ids) + self.fifo_filled

    @property
    def visible_tokens(self) -> int:
        """Rows after the scratch that attention reads; zero during an in-context prefill."""
        return 0 if self._prefilling else self.cached_frames * self.layout.tokens_per_frame

    def window_ids(self) -> list[int]:
        """Stream frame ids in the FIFO, oldest first."""
        if self.fifo_filled < self.layout.fifo_frames:
            ring = self.fifo_slots[: self.fifo_filled]
        else:
            ring = self.fifo_slots[self.fifo_head :] + self.fifo_slots[: self.fifo_head]
        return [i for i in ring if i is not None]

    def segment_rows(self) -> dict[Segment, tuple[int, int]]:
        """Visible row ranges per segment, relative to the start of the cache (after scratch)."""
        tpf = self.layout.tokens_per_frame
        rows: dict[Segment, tuple[int, int]] = {}
        start = 0
        if self.has_context:
            rows["reference"] = (0, tpf)
            rows["garment"] = (tpf, 2 * tpf)
            start = 2 * tpf
        rows["sink"] = (start, start + len(self.sink_ids) * tpf)
        start = rows["sink"][1]
        rows["window"] = (start, start + self.fifo_filled * tpf)
        return rows

    # ------------------------------------------------------------------------------ attention
    def attend(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor, None]:
        """Store this forward's K/V in the scratch and return the contiguous visible view."""
        if keys.shape[0] != 1:
            raise ValueError("a KVCache serves one session; use KVBatch for several")
        end = self.layout.scratch_end
        start = end - keys.shape[1]
        if start < 0:
            raise ValueError(f"{keys.shape[1]} query tokens exceed the scratch of {end}")
        self.keys[layer, start:end] = keys[0]
        self.values[layer, start:end] = values[0]
        stop = end + self.visible_tokens
        return self.keys[layer, start:stop][None], self.values[layer, start:stop][None], None

    # ------------------------------------------------------------------------------- writes
    def begin_context_prefill(self) -> None:
        """Hide everything cached: in-context tokens attend only to each other (paper's prefill)."""
        self._prefilling = True

    def cancel_context_prefill(self) -> None:
        """A failed prefill leaves the previous context in place (its rows were not touched)."""
        self._prefilling = False

    def commit_context(self) -> None:
        """Move the scratch's last two frames (reference, garment) into their slots, all layers."""
        if not self._prefilling:
            raise RuntimeError("commit_context without begin_context_prefill")
        n = self.layout.context_frames * self.layout.tokens_per_frame
        src = slice(self.layout.scratch_end - n, self.layout.scratch_end)
        dst = slice(self.layout.reference_offset, self.layout.reference_offset + n)
        self.keys[:, dst] = self.keys[:, src]
        self.values[:, dst] = self.values[:, src]
        self.has_context = True
        self._prefilling = False

    def commit_frames(self, frame_ids: list[int]) -> None:
        """Write the scratch's clean K/V (the t = 0 pass) for these stream frames into the cache.

        Frames fill the sink first; once it is full they enter the FIFO, which evicts exactly its
        overflow, oldest first. The sink is never evicted (only ``withdraw_history`` clears it).
        """
        tpf = self.layout.tokens_per_frame
        first_row = self.layout.scratch_end - len(frame_ids) * tpf
        for i, frame_id in enumerate(frame_ids):
            src = slice(first_row + i * tpf, first_row + (i + 1) * tpf)
            if len(self.sink_ids) < self.layout.sink_video_frames:
                offset = self.layout.sink_offset + len(self.sink_ids) * tpf
                self.sink_ids.append(frame_id)
            else:
                if self.layout.fifo_frames == 0:
                    self.evicted.append(frame_id)
                    self.evicted_total += 1
                    continue
                slot = self.fifo_head
                old = self.fifo_slots[slot]
                if old is not None:
                    self.evicted.append(old)
                    self.evicted_total += 1
                self.fifo_slots[slot] = frame_id
                self.fifo_head = (slot + 1) % self.layout.fifo_frames
                self.fifo_filled = min(self.fifo_filled + 1, self.layout.fifo_frames)
                offset = self.layout.window_offset + slot * tpf
            dst = slice(offset, offset + tpf)
            self.keys[:, dst] = self.keys[:, src]
            self.values[:, dst] = self.values[:, src]

    def withdraw_history(self) -> None:
        """Drop sink and FIFO (paper, rescheduling op 2). O(1): only bookkeeping changes.

        The rows stay in memory but fall outside every attention view from now on, so their
        attention weight is exactly zero; the next generated chunk forms the new sink.
        """
        self.sink_ids = []
        self.fifo_slots = [None] * self.layout.fifo_frames
        self.fifo_filled = 0
        self.fifo_head = 0


class KVBatch:
    """Several sessions' caches behind one ``attend`` so their chunks share one forward.

    Sessions may hold different amounts of history: the view spans the longest and a key mask hides
    the rest per row. When the caches are consecutive slots of one pool the view is free (a slice);
    otherwise it is gathered.
    """

    def __init__(self, caches: list[KVCache]) -> None:
        if not caches:
            raise ValueError("KVBatch needs at least one cache")
        if len({id(c) for c in caches}) != len(caches):
            raise ValueError("a session can appear only once in a batch")
        if any(c.layout != caches[0].layout for c in caches):
            raise ValueError("caches in a batch must share a layout")
        self.caches = caches
        self.layout = caches[0].layout
        store = caches[0].store
        slots = [c.slot for c in caches]
        self._pool_slice: slice | None = None
        if (
            store is not None
            and all(c.store is store for c in caches)
            and slots == list(range(slots[0], slots[0] + len(slots)))
        ):
            self._pool_slice = slice(slots[0], slots[0] + len(slots))
        self._mask_cache: dict[int, Tensor | None] = {}

    def _mask(self, queries: int, device: torch.device) -> Tensor | None:
        if queries not in self._mask_cache:
            visible = [c.visible_tokens for c in self.caches]
            if len(set(visible)) == 1:
                self._mask_cache[queries] = None
            else:
                length = queries + max(visible)
                limit = torch.tensor([queries + v for v in visible], device=device)
                keep = torch.arange(length, device=device)[None] < limit[:, None]
                self._mask_cache[queries] = keep[:, None, None, :]
        return self._mask_cache[queries]

    def attend(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        end = self.layout.scratch_end
        start = end - keys.shape[1]
        stop = end + max(c.visible_tokens for c in self.caches)
        mask = self._mask(keys.shape[1], keys.device)
        if self._pool_slice is not None:
            store_k, store_v = self.caches[0].store  # type: ignore[misc]
            store_k[layer, self._pool_slice, start:end] = keys
            store_v[layer, self._pool_slice, start:end] = values
            return (
                store_k[layer, self._pool_slice, start:stop],
                store_v[layer, self._pool_slice, start:stop],
                mask,
            )
        for b, cache in enumerate(self.caches):
            cache.keys[layer, start:end] = keys[b]
            cache.values[layer, start:end] = values[b]
        k = torch.stack([c.keys[layer, start:stop] for c in self.caches])
        v = torch.stack([c.values[layer, start:stop] for c in self.caches])
        return k, v, mask
