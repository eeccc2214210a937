"""Invariant 2 (sink kept, FIFO exact, budget never exceeded) plus pool admission and batching."""

from __future__ import annotations

import pytest
import torch
from engine_testkit import make_engine, random_conditioning, random_latent

from services.generator.engine import TINY, AtCapacity, CachePool, KVCache
from services.generator.engine.kv_cache import EVICTION_LOG, CacheLayout

pytestmark = pytest.mark.unit


def _write_scratch(cache: KVCache, frame_ids: list[int]) -> None:
    """Stand-in for a t = 0 forward: each frame's K/V rows carry its id."""
    tpf = cache.layout.tokens_per_frame
    start = cache.layout.scratch_end - len(frame_ids) * tpf
    for i, fid in enumerate(frame_ids):
        cache.keys[:, start + i * tpf : start + (i + 1) * tpf] = float(fid)
        cache.values[:, start + i * tpf : start + (i + 1) * tpf] = -float(fid)


def _visible_ids(cache: KVCache) -> list[int]:
    """Frame ids read back from the rows attention would see (one per frame)."""
    tpf, start = cache.layout.tokens_per_frame, cache.layout.sink_offset
    video_frames = len(cache.sink_ids) + cache.fifo_filled
    rows = cache.keys[0, start : start + video_frames * tpf : tpf, 0, 0]
    return [int(x) for x in rows]


def test_sink_kept_fifo_exact_budget_held_over_1000_frames_and_swaps() -> None:
    cache = KVCache.allocate(TINY)
    layout = cache.layout
    chunk, sink, fifo = TINY.chunk_frames, layout.sink_video_frames, layout.fifo_frames
    stream_start, expected_evicted = 0, []
    nbytes = cache.nbytes
    frame = 0
    swaps = 0
    while frame < 1000:
        ids = list(range(frame, frame + chunk))
        _write_scratch(cache, ids)
        cache.commit_frames(ids)
        frame += chunk
        generated = list(range(stream_start, frame))
        assert cache.sink_ids == generated[:sink]
        assert cache.window_ids() == generated[sink:][-fifo:]
        expected_evicted_now = expected_evicted + generated[sink:][:-fifo]
        assert list(cache.evicted) == expected_evicted_now[-EVICTION_LOG:]
        assert cache.evicted_total == len(expected_evicted_now)
        visible = _visible_ids(cache)
        assert visible[: len(cache.sink_ids)] == cache.sink_ids
        assert sorted(visible) == sorted(cache.sink_ids + cache.window_ids())
        assert cache.cached_frames <= layout.budget_frames
        assert cache.nbytes == nbytes
        if frame % 99 == 0:  # swap: history withdrawn, sink re-forms from the next chunk
            expected_evicted = expected_evicted_now
            cache.withdraw_history()
            stream_start = frame
            swaps += 1
            assert cache.sink_ids == [] and cache.window_ids() == []
    assert swaps >= 9


def test_visible_rows_hold_exactly_sink_and_window() -> None:
    cache = KVCache.allocate(TINY)
    for start in range(0, 30, 3):
        ids = [start, start + 1, start + 2]
        _write_scratch(cache, ids)
        cache.commit_frames(ids)
    assert sorted(_visible_ids(cache)) == sorted(cache.sink_ids + cache.window_ids())
    assert cache.sink_ids == [0, 1, 2]
    assert cache.window_ids() == list(range(24, 30))


def test_model_stream_respects_budget_and_constant_memory() -> None:
    engine = make_engine(torch.float32, sessions=1)
    with engine.open_session(seed=0) as session:
        session.start_latents(random_latent(0, torch.float32), random_latent(1, torch.float32))
        budget = session.cache.layout.budget_frames
        before = session.cache.nbytes
        for i in range(12):
            session.step_latents(random_conditioning(session, i))
            assert session.cache.cached_frames <= budget
            if i in (4, 8):
                session.swap_latents(random_latent(10 + i, torch.float32))
                assert session.cache.sink_ids == []
                assert session.cache.cached_frames == 2
        assert session.cache.sink_ids == [27, 28, 29]  # sink re-formed by the chunk after a swap
        assert session.cache.nbytes == before


def test_pool_admission_and_release() -> None:
    per = CachePool.session_bytes(TINY, torch.float32)
    pool = CachePool(TINY, memory_budget_bytes=int(per * 2.5))
    assert pool.capacity == 2 and pool.nbytes == 2 * per
    a, b = pool.acquire(), pool.acquire()
    with pytest.raises(AtCapacity, match="at capacity"):
        pool.acquire()
    pool.release(a)
    pool.release(a)  # idempotent
    c = pool.acquire()
    assert c.slot == a.slot and pool.in_use == 2
    pool.release(b)
    pool.release(c)
    assert pool.in_use == 0
    with pytest.raises(ValueError, match="below one session"):
        CachePool(TINY, memory_budget_bytes=per - 1)


def test_engine_refuses_session_beyond_capacity() -> None:
    engine = make_engine(torch.float32, sessions=1)
    first = engine.open_session()
    with pytest.raises(AtCapacity):
        engine.open_session()
    first.release()
    engine.open_session().release()


def test_paper_layout_matches_paper_budget() -> None:
    from services.generator.engine import PAPER

    layout = CacheLayout.from_config(PAPER)
    assert PAPER.tokens_per_frame == 880 and PAPER.hidden == 3072
    assert layout.budget_frames == 23
    cached = 2 * PAPER.num_layers * layout.budget_frames * 880 * PAPER.hidden * 2  # bf16
    assert 7.0e9 < cached < 8.0e9  # the paper's "about 7.5 GB per stream"


@pytest.mark.parametrize("order", ["pool_slice", "gather"])
def test_batched_step_equals_per_session_steps(order: str) -> None:
    engine = make_engine(torch.float64, sessions=6)
    histories = [0, 2, 5]  # first chunk, partial FIFO, FIFO full with eviction
    batch = [engine.open_session(seed=s) for s in range(3)]
    alone = [engine.open_session(seed=s) for s in range(3)]
    for group in (batch, alone):
        for i, (session, history) in enumerate(zip(group, histories, strict=True)):
            session.start_latents(random_latent(i), random_latent(10 + i))
            for h in range(history):
                session.step_latents(random_conditioning(session, 100 * i + h))
    if order == "gather":
        batch = [batch[2], batch[0]]
        alone = [alone[2], alone[0]]
    conds = [random_conditioning(s, 7 + i) for i, s in enumerate(alone)]
    expected = [s.step(c) for s, c in zip(alone, conds, strict=True)]
    got = engine.step_batch(batch, conds)
    for e, g, sb, sa in zip(expected, got, batch, alone, strict=True):
        assert e.shape == g.shape
        assert abs(e.astype(int) - g.astype(int)).max() <= 1
        torch.testing.assert_close(sb.last_latents, sa.last_latents, rtol=0, atol=1e-10)
        assert sb.cache.sink_ids == sa.cache.sink_ids
        assert sb.cache.window_ids() == sa.cache.window_ids()
