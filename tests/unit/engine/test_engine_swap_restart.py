"""After a withdraw the stream restarts: RoPE positions and noise, whatever the history length.

The histories compared here have DIFFERENT lengths (one chunk vs four, the long one past the
first eviction): with equal lengths, positions that keep running or a noise stream that depends on
how many draws came before would go unnoticed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from engine_testkit import random_conditioning, random_latent

from services.generator.engine import TINY, Engine, StudentStream
from services.generator.engine.session import noise_seed

pytestmark = pytest.mark.unit

SHORT, LONG = 1, 4  # chunks of history before the swap


@contextmanager
def _recorded_calls(engine: Engine) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """(latents, frame_positions) of every transformer call inside the block."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(module, args, kwargs):
        calls.append((args[0].clone(), args[2].clone()))

    handle = engine.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def _chunk_positions(calls: list[tuple[torch.Tensor, torch.Tensor]]) -> list[list[int]]:
    """One row per chunk: every one of its 4 denoising calls and its t = 0 pass share positions."""
    per_chunk = TINY.num_steps + 1
    assert len(calls) % per_chunk == 0
    rows = []
    for i in range(0, len(calls), per_chunk):
        positions = {tuple(p[0].tolist()) for _, p in calls[i : i + per_chunk]}
        assert len(positions) == 1, positions
        rows.append(list(positions.pop()))
    return rows


def _run(session: StudentStream, chunks: int, cond_seed: int) -> list[torch.Tensor]:
    return [session.step_latents(random_conditioning(session, cond_seed + i)) for i in range(chunks)]


def test_positions_restart_after_the_context_on_every_swap_whatever_the_history(engine64: Engine) -> None:
    ref, gar = random_latent(1), random_latent(2)
    for history in (SHORT, LONG):
        with engine64.open_session(seed=0) as s:
            with _recorded_calls(engine64) as before:
                s.start_latents(ref, gar)
                _run(s, history, 0)
            assert before[0][1].tolist() == [[0, 1]]  # reference, garment
            assert _chunk_positions(before[1:]) == [[2 + 3 * c + i for i in range(3)] for c in range(history)]
            for swap in range(2):
                with _recorded_calls(engine64) as after:
                    s.swap_latents(random_latent(10 + swap))
                    _run(s, 2, 100)
                assert after[0][1].tolist() == [[0, 1]], f"swap {swap}: the prefill"
                assert _chunk_positions(after[1:]) == [[2, 3, 4], [5, 6, 7]], (
                    f"history {history}, swap {swap}"
                )


def test_refresh_alone_keeps_positions_running(engine64: Engine) -> None:
    with engine64.open_session(seed=0) as s:
        s.start_latents(random_latent(1), random_latent(2))
        _run(s, 2, 0)
        s.refresh_garment_kv(random_latent(3))
        with _recorded_calls(engine64) as calls:
            _run(s, 1, 10)
        assert _chunk_positions(calls) == [[8, 9, 10]]


def test_noise_after_a_swap_does_not_depend_on_history_length(engine64: Engine) -> None:
    ref, gar, new = random_latent(1), random_latent(2), random_latent(3)
    first_noise = []
    for history in (SHORT, LONG):
        with engine64.open_session(seed=21) as s:
            s.start_latents(ref, gar)
            _run(s, history, 0)
            s.swap_latents(new)
            with _recorded_calls(engine64) as calls:
                _run(s, 2, 50)
            # Each chunk's first denoising input is pure noise (sigma = 1). The later inputs also
            # depend on the rebuilt reference, which differs here (see the no-leak test below).
            first_noise.append(torch.stack([latents for latents, _ in calls[:: TINY.num_steps + 1]]))
    assert torch.equal(first_noise[0], first_noise[1])


def test_every_swap_draws_fresh_noise(engine64: Engine) -> None:
    seeds = [noise_seed(21, k) for k in range(4)]
    assert seeds[0] == 21 and len(set(seeds)) == 4
    noise = []
    with engine64.open_session(seed=21) as s:
        s.start_latents(random_latent(1), random_latent(2))
        for k in range(3):
            if k:
                s.swap_latents(random_latent(3))
            with _recorded_calls(engine64) as calls:
                _run(s, 1, 0)
            noise.append(calls[0][0])
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[1], noise[2])


def test_a_swap_continues_exactly_like_a_fresh_start_from_the_new_context(engine64: Engine) -> None:
    ref, gar, new = random_latent(1), random_latent(2), random_latent(3)
    for history in (SHORT, LONG):
        with engine64.open_session(seed=9) as live, engine64.open_session(seed=noise_seed(9, 1)) as fresh:
            live.start_latents(ref, gar)
            _run(live, history, 0)
            live.swap_latents(new)
            assert live.reference_latent is not None
            fresh.start_latents(live.reference_latent, new)
            # Four chunks: the new sink, a full FIFO and one eviction, all as after a fresh start.
            for _ in range(4):
                assert torch.equal(live.step_latents(), fresh.step_latents()), f"history {history}"


def test_no_leak_with_histories_of_different_lengths(engine64: Engine) -> None:
    """Invariant 5 with unequal histories: old garment, history length and content all differ."""
    ref, new = random_latent(1), random_latent(9)
    with engine64.open_session(seed=7) as a, engine64.open_session(seed=7) as b:
        a.start_latents(ref, random_latent(2))
        b.start_latents(ref, random_latent(3))
        _run(a, SHORT, 0)
        _run(b, LONG, 1000)
        assert a.last_latents is not None and b.last_latents is not None
        b.last_latents = a.last_latents.clone()  # only the last frame is held fixed
        a.swap_latents(new)
        b.swap_latents(new)
        for x, y in zip(_run(a, 3, 77), _run(b, 3, 77), strict=True):
            assert torch.equal(x, y)
