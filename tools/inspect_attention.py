"""Where does a new chunk look? Per-layer attention mass on each cache segment (paper Fig. 2).

Runs a session into its steady state, then one probing denoising forward of the next chunk (no
commit, so the stream is untouched) and sums the softmax weights of the chunk's queries over the
key rows of: the chunk itself, reference, garment, sink and FIFO window. The paper's observation
that new frames attend mostly to history, not to the garment, is what motivates withdrawing the
history on a swap. The same probe is repeated right after a swap. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from services.generator.engine.config import get_config
from services.generator.engine.kv_cache import SEGMENTS
from services.generator.engine.session import Engine, StudentStream
from tools.bench.engine import DTYPES


def _segment_bounds(session: StudentStream, queries: int) -> dict[str, tuple[int, int]]:
    bounds = {"current": (0, queries)}
    for name, (lo, hi) in session.cache.segment_rows().items():
        bounds[name] = (queries + lo, queries + hi)
    return bounds


def probe_attention(engine: Engine, session: StudentStream, *, step: int = 0) -> list[dict[str, float]]:
    """Attention mass per segment and layer for the session's next chunk at denoising ``step``."""
    cfg = engine.config
    queries = cfg.chunk_frames * cfg.tokens_per_frame
    bounds = _segment_bounds(session, queries)
    per_layer: dict[int, dict[str, float]] = {}

    def probe(layer: int, q: Tensor, k: Tensor, mask: Tensor | None) -> None:
        mass = torch.zeros(k.shape[1], dtype=torch.float64, device=k.device)
        for h in range(q.shape[2]):  # one head at a time: bounded memory at paper scale
            scores = q[0, :, h].float() @ k[0, :, h].float().T / math.sqrt(q.shape[-1])
            mass += scores.softmax(dim=-1).sum(dim=0).double()
        mass /= q.shape[1] * q.shape[2]
        per_layer[layer] = {name: float(mass[lo:hi].sum()) for name, (lo, hi) in bounds.items()}

    blocks = engine.transformer.blocks
    for block in blocks:
        block.attn.probe = probe
    try:
        sigma = engine.schedule.sigmas[step]
        # Own generator: probing must not advance the session's noise stream.
        noise = torch.Generator(device=engine.device).manual_seed(0)
        x = torch.randn(engine.chunk_shape, generator=noise, device=engine.device, dtype=engine.dtype)
        t = torch.full((1, cfg.chunk_frames), sigma * 1000.0, device=engine.device, dtype=engine.dtype)
        cond = session.latent_conditioning(None)[None]
        with torch.no_grad():
            positions = session.next_chunk_positions()
            engine.transformer(x, t, positions, cond, kv_cache=session.cache)
    finally:
        for block in blocks:
            block.attn.probe = None
    return [
        {"layer": i, **{s: round(per_layer[i].get(s, 0.0), 5) for s in SEGMENTS}} for i in sorted(per_layer)
    ]


def _mean(layers: list[dict[str, float]]) -> dict[str, float]:
    return {s: round(float(np.mean([row[s] for row in layers])), 5) for s in SEGMENTS}


def inspect(
    config_name: str = "tiny",
    *,
    device: str = "cpu",
    dtype: str = "float32",
    chunks: int = 6,
    step: int = 0,
    weights: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    config = get_config(config_name)
    engine = Engine.build(
        config, device=device, dtype=DTYPES[dtype], max_sessions=1, weights=weights, seed=seed
    )
    rng = np.random.default_rng(seed)
    shape = (config.pixel_height, config.pixel_width, 3)
    person, garment, new_garment = (rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(3))
    with engine.open_session(seed=seed) as session:
        session.start(person, garment)
        for _ in range(chunks):
            session.step_latents()
        steady = probe_attention(engine, session, step=step)
        cached = {"sink": list(session.cache.sink_ids), "window": session.cache.window_ids()}
        session.swap(new_garment)
        after_swap = probe_attention(engine, session, step=step)
    return {
        "config": config.name,
        "weights": weights or "random",
        "chunks_before_probe": chunks,
        "denoising_step": step,
        "cached_frame_ids": cached,
        "layers": steady,
        "mean": _mean(steady),
        "after_swap": {"layers": after_swap, "mean": _mean(after_swap)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="chameleon inspect attention",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--config", default="tiny", choices=["tiny", "paper"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--chunks", type=int, default=6, help="chunks generated before probing")
    p.add_argument("--step", type=int, default=0, help="denoising step index to probe")
    p.add_argument("--weights", help="safetensors checkpoint (default: random weights)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    report = inspect(
        args.config,
        device=args.device,
        dtype=args.dtype,
        chunks=args.chunks,
        step=args.step,
        weights=args.weights,
        seed=args.seed,
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
