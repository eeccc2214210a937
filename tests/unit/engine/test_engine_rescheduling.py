"""Invariants 3-8: the three rescheduling operations, no leak, O(1) swaps, determinism."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import torch
from engine_testkit import random_conditioning, random_latent

from services.generator.engine import Engine, StudentStream

pytestmark = pytest.mark.unit


def _context_rows(session: StudentStream) -> tuple[torch.Tensor, torch.Tensor]:
    layout = session.cache.layout
    rows = slice(layout.reference_offset, layout.sink_offset)
    return session.cache.keys[:, rows].clone(), session.cache.values[:, rows].clone()


def _history_rows(session: StudentStream) -> slice:
    layout = session.cache.layout
    return slice(layout.sink_offset, layout.total_tokens)


def _run(session: StudentStream, chunks: int, cond_seed: int) -> list[torch.Tensor]:
    return [session.step_latents(random_conditioning(session, cond_seed + i)) for i in range(chunks)]


def test_refresh_equals_fresh_forward_on_new_garment(engine64: Engine) -> None:
    ref, old, new = random_latent(1), random_latent(2), random_latent(3)
    with engine64.open_session(seed=0) as live, engine64.open_session(seed=0) as fresh:
        live.start_latents(ref, old)
        _run(live, 3, 0)
        before = _context_rows(live)
        live.refresh_garment_kv(new)
        fresh.start_latents(ref, new)
        after, expected = _context_rows(live), _context_rows(fresh)
        assert torch.equal(after[0], expected[0]) and torch.equal(after[1], expected[1])
        assert not torch.equal(after[0], before[0])  # control: the slot really changed
        assert live.cache.sink_ids == [0, 1, 2]  # refresh alone keeps history (paper Fig. 2)


def test_withdrawn_history_has_zero_influence(engine64: Engine) -> None:
    ref, gar = random_latent(1), random_latent(2)
    with (
        engine64.open_session(seed=5) as a,
        engine64.open_session(seed=5) as b,
        engine64.open_session(seed=6) as long,
    ):
        for s in (a, b, long):
            s.start_latents(ref, gar)
            _run(s, 4, 0)
        a.withdraw_history_kv()
        b.withdraw_history_kv()
        rows = _history_rows(b)
        b.cache.keys[:, rows] += 1e3 * torch.randn_like(b.cache.keys[:, rows])
        b.cache.values[:, rows] += 1e3 * torch.randn_like(b.cache.values[:, rows])
        first_a, first_b = _run(a, 1, 50)[0], _run(b, 1, 50)[0]
        assert torch.equal(first_a, first_b)
        # Batched with a session whose history is full, b's stale rows sit under the key mask.
        conds = [random_conditioning(s, 60) for s in (a, b, long)]
        alone = a.step_latents(conds[0])
        batched = engine64.generate_latents(
            [b, long], [b.latent_conditioning(conds[1]), long.latent_conditioning(conds[2])]
        )
        torch.testing.assert_close(batched[:1], alone, rtol=0, atol=1e-10)


def test_history_matters_before_withdraw(engine64: Engine) -> None:
    ref, gar = random_latent(1), random_latent(2)
    with engine64.open_session(seed=5) as a, engine64.open_session(seed=5) as b:
        for s in (a, b):
            s.start_latents(ref, gar)
            _run(s, 4, 0)
        b.cache.values[:, _history_rows(b)] += 1.0
        assert not torch.equal(_run(a, 1, 50)[0], _run(b, 1, 50)[0])


def test_no_leak_of_old_garment_or_history_except_last_frame(engine64: Engine) -> None:
    ref, new = random_latent(1), random_latent(9)
    with engine64.open_session(seed=7) as a, engine64.open_session(seed=7) as b:
        a.start_latents(ref, random_latent(2))
        b.start_latents(ref, random_latent(3))  # different old garment ...
        _run(a, 4, 0)
        _run(b, 4, 1000)  # ... and different history
        shared_last = a.last_latents
        assert not torch.equal(shared_last, b.last_latents)
        b.last_latents = shared_last.clone()  # only the last frame is held fixed
        a.swap_latents(new)
        b.swap_latents(new)
        assert torch.equal(_context_rows(a)[0], _context_rows(b)[0])
        for x, y in zip(_run(a, 3, 77), _run(b, 3, 77), strict=True):
            assert torch.equal(x, y)


def test_new_reference_is_reencoded_last_frame_through_same_prefill(engine64: Engine) -> None:
    auto = engine64.autoencoder
    ref, gar, new = random_latent(1), random_latent(2), random_latent(3)
    with engine64.open_session(seed=1) as live, engine64.open_session(seed=1) as fresh:
        live.start_latents(ref, gar)
        _run(live, 2, 0)
        with torch.no_grad():
            pixels = auto.decode(live.last_latents, first_is_image=False)
            expected_ref = auto.encode(pixels[:, -1:])  # a 1-frame video: a single image
        live.swap_latents(new)
        assert live.reference_latent.shape == ref.shape
        assert torch.equal(live.reference_latent, expected_ref)
        fresh.start_latents(expected_ref, new)
        got, want = _context_rows(live), _context_rows(fresh)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def _count_work(engine: Engine, action: Callable[[], None]) -> Counter:
    counts: Counter = Counter()

    def forward_hook(module, args, kwargs, output):
        counts["transformer_calls"] += 1
        counts["transformer_frames"] += args[0].shape[1]

    auto = engine.autoencoder
    original = {name: getattr(auto, name) for name in ("encode", "decode")}

    def counted(name: str) -> Callable:
        def wrapper(x, *args, **kwargs):
            counts[f"{name}_calls"] += 1
            counts[f"{name}_frames"] += x.shape[1]
            return original[name](x, *args, **kwargs)

        return wrapper

    handle = engine.transformer.register_forward_hook(forward_hook, with_kwargs=True)
    for name in original:
        setattr(auto, name, counted(name))
    try:
        action()
    finally:
        handle.remove()
        for name in original:
            delattr(auto, name)
    return counts


def test_swap_work_is_constant_in_history_length() -> None:
    from engine_testkit import make_engine

    engine = make_engine(torch.float32, sessions=2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(3)]
    counts = []
    for history_chunks in (1, 30):  # 3 vs 90 latent frames, the long one far past eviction
        with engine.open_session(seed=0) as s:
            s.start(images[0], images[1])
            for _ in range(history_chunks):
                s.step_latents()
            counts.append(_count_work(engine, lambda s=s: s.swap(images[2])))
    assert counts[0] == counts[1]
    assert counts[0] == Counter(
        transformer_calls=1,
        transformer_frames=2,
        decode_calls=1,
        decode_frames=1,
        encode_calls=2,
        encode_frames=2,
    )


def test_same_seed_and_swap_schedule_give_identical_output() -> None:
    from engine_testkit import make_engine

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]

    def run(seed: int) -> list[np.ndarray]:
        engine = make_engine(torch.float32, sessions=1, seed=0)
        frames = []
        with engine.open_session(seed=seed) as s:
            s.start(images[0], images[1])
            for i in range(7):
                if i in (2, 5):
                    s.swap(images[2 + (i == 5)])
                frames.append(s.step())
        return frames

    first, second, other = run(11), run(11), run(12)
    assert all(np.array_equal(x, y) for x, y in zip(first, second, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other, strict=True))
    assert first[0].shape == (9, 64, 64, 3) and first[1].shape == (12, 64, 64, 3)
