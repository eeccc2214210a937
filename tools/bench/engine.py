"""Engine benchmark: throughput, engine overhead, swap cost vs history, cache memory, batching.

``python -m tools.bench.engine --config tiny --json`` prints one JSON object as its
LAST line. Engine and baseline timings are interleaved (A, B, A, B, ...) and summarised by
medians so a noisy shared machine shifts both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from services.generator.engine.conditioning import pixel_frames_in_chunk
from services.generator.engine.config import EngineConfig, get_config
from services.generator.engine.pool import CachePool
from services.generator.engine.session import Engine, StudentStream

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class BenchSettings:
    iters: int
    warmup: int
    swap_repeats: int
    history_frames: tuple[int, int] = (10, 1000)
    batch_sessions: int = 4
    seed: int = 0

    @classmethod
    def for_config(cls, config: EngineConfig) -> BenchSettings:
        if config.name == "tiny":
            return cls(iters=20, warmup=3, swap_repeats=5)
        return cls(iters=6, warmup=2, swap_repeats=2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], object]) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (+{os.cpu_count()} CPU cores)"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                model,
            )
    except OSError:
        pass
    return f"{os.cpu_count()}-core CPU ({model})"


def _images(config: EngineConfig, seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (config.pixel_height, config.pixel_width, 3)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]


def _steady_session(engine: Engine, images: list[np.ndarray], seed: int) -> StudentStream:
    """A session whose sink and FIFO are full: every further step is the steady state."""
    cfg = engine.config
    session = engine.open_session(seed=seed)
    session.start(images[0], images[1])
    fill_chunks = 1 + -(-cfg.fifo_frames // cfg.chunk_frames) + 1
    for _ in range(fill_chunks):
        session.step_latents()
    return session


def _bare_loop(engine: Engine, session: StudentStream) -> Callable[[], object]:
    """The same model calls as one engine step, on prebuilt inputs, with no cache management.

    4 denoising forwards + the t = 0 forward + the same decode, attending to the same (full)
    cache view, but no noise draws, no scheduling arithmetic, no commits, no conditioning
    conversion, no uint8 conversion.
    """
    cfg, dev, dt = engine.config, engine.device, engine.dtype
    x = torch.randn(engine.chunk_shape, device=dev, dtype=dt)
    cond = session.latent_conditioning(None)[None]
    positions = session.next_chunk_positions()
    times = [
        torch.full((1, cfg.chunk_frames), s * 1000.0, device=dev, dtype=dt) for s in engine.schedule.sigmas
    ]
    zero = torch.zeros(1, cfg.chunk_frames, device=dev, dtype=dt)
    model, cache, auto = engine.transformer, session.cache, engine.autoencoder

    @torch.no_grad()
    def run() -> object:
        for t in times:
            model(x, t, positions, cond, kv_cache=cache)
        model(x, zero, positions, cond, kv_cache=cache, return_output=False)
        return auto.decode(x, first_is_image=False)

    return run


def _session_bytes(session: StudentStream) -> int:
    held = [session.reference_latent, session.garment_latent, session.last_latents]
    return session.cache.nbytes + sum(t.numel() * t.element_size() for t in held if t is not None)


def run_benchmark(
    config: EngineConfig,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    settings: BenchSettings | None = None,
    weights: str | None = None,
) -> dict[str, Any]:
    """Measure the engine and return the report dict (see module docstring and docs/engine.md)."""
    settings = settings or BenchSettings.for_config(config)
    dev = torch.device(device)
    sessions_needed = max(settings.batch_sessions, 2)
    engine = Engine.build(
        config,
        device=dev,
        dtype=DTYPES[dtype],
        max_sessions=sessions_needed,
        weights=weights,
        seed=settings.seed,
    )
    images = _images(config, settings.seed, 3)
    steady_frames = pixel_frames_in_chunk(config, first_is_image=False)

    # --- single-session steady state, interleaved with the bare forward loop ----------------
    session = _steady_session(engine, images, seed=1)
    bare = _bare_loop(engine, session)
    for _ in range(settings.warmup):
        session.step()
        bare()
    bytes_after_warmup = _session_bytes(session)
    mem_after_warmup = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else None
    engine_times, bare_times, bytes_seen = [], [], set()
    for _ in range(settings.iters):
        engine_times.append(_timed(dev, session.step))
        bare_times.append(_timed(dev, bare))
        bytes_seen.add(_session_bytes(session))
    mem_growth = torch.cuda.memory_allocated(dev) - mem_after_warmup if mem_after_warmup is not None else None
    step_s = statistics.median(engine_times)
    bare_s = statistics.median(bare_times)
    session.release()

    # --- swap cost at two history lengths ----------------------------------------------------
    swap_ms: dict[str, Any] = {}
    for history in settings.history_frames:
        samples, frames_done = [], 0
        for r in range(settings.swap_repeats + 1):
            with engine.open_session(seed=2) as s:
                s.start(images[0], images[1])
                frames_done = 0
                while frames_done < history:
                    frames_done += s.pixel_frames_next_chunk
                    s.step_latents()
                took = _timed(dev, lambda s=s: s.swap(images[2]))
                if r > 0:  # the first swap of each history warms caches/kernels
                    samples.append(took * 1e3)
        # Best of N: co-tenant noise only ever adds time; the median is reported beside it.
        swap_ms[f"h{history}"] = round(min(samples), 3)
        swap_ms[f"h{history}_p50"] = round(statistics.median(samples), 3)
        swap_ms[f"h{history}_history_pixel_frames"] = frames_done
    low, high = settings.history_frames
    swap_ms["ratio"] = round(swap_ms[f"h{high}"] / swap_ms[f"h{low}"], 3)

    # --- batched step of N sessions vs N sequential steps -----------------------------------
    batch = [_steady_session(engine, images, seed=10 + i) for i in range(settings.batch_sessions)]
    for _ in range(settings.warmup):
        engine.step_batch(batch)
    seq_times, batch_times = [], []
    for _ in range(max(settings.iters // 2, 2)):
        seq_times.append(_timed(dev, lambda: [s.step() for s in batch]))
        batch_times.append(_timed(dev, lambda: engine.step_batch(batch)))
    for s in batch:
        s.release()

    return {
        "config": config.name,
        "device": str(dev),
        "dtype": dtype,
        "machine": _machine(dev),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "frames_per_s": round(steady_frames / step_s, 3),
        "tokens_per_s": round(config.chunk_frames * config.tokens_per_frame / step_s, 1),
        "step_ms": {
            "p50": round(step_s * 1e3, 3),
            "p95": round(float(np.percentile(engine_times, 95)) * 1e3, 3),
        },
        "bare_forward_loop_ms": round(bare_s * 1e3, 3),
        # Median of adjacent (bare, engine) pairs: bursts of co-tenant load hit both alike.
        "engine_vs_bare_forward_ratio": round(
            statistics.median(b / e for b, e in zip(bare_times, engine_times, strict=True)), 3
        ),
        "swap_ms": swap_ms,
        "cache_bytes_per_session": CachePool.session_bytes(config, DTYPES[dtype]),
        "cache_bytes_constant_after_warmup": bytes_seen == {bytes_after_warmup} and (mem_growth in (None, 0)),
        "device_memory_growth_bytes": mem_growth,
        "batched_sessions": settings.batch_sessions,
        "batched_speedup": round(statistics.median(seq_times) / statistics.median(batch_times), 3),
        "iters": settings.iters,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chameleon bench engine",
        description="Benchmark the generation engine.",
    )
    p.add_argument("--config", default="tiny", choices=["tiny", "paper"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--json", action="store_true", help="print only the JSON report")
    p.add_argument("--iters", type=int, help="timed steps (default depends on config)")
    p.add_argument("--warmup", type=int)
    p.add_argument("--swap-repeats", type=int)
    p.add_argument("--history-frames", type=int, nargs=2, metavar=("SHORT", "LONG"))
    p.add_argument("--batch-sessions", type=int)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--weights", help="safetensors checkpoint (default: random weights)")
    p.add_argument("--force", action="store_true", help="run even where it looks hopeless")
    return p


def step_flops(config: EngineConfig) -> float:
    """Rough transformer FLOPs of one steady-state chunk (5 forwards; VAE excluded)."""
    queries = config.chunk_frames * config.tokens_per_frame
    keys = queries + config.window_frames * config.tokens_per_frame
    d = config.hidden
    dense = 2 * queries * config.num_layers * (4 * d * d + 2 * d * config.mlp_hidden)
    attention = 4 * queries * keys * d * config.num_layers
    return (config.num_steps + 1) * float(dense + attention)


def _cpu_refusal(config: EngineConfig, dtype: torch.dtype, sessions: int) -> str | None:
    """Why this config should not run on this CPU (memory, or hours of compute), or None."""
    params = 12 * config.hidden * config.hidden * config.num_layers  # rough: attention + MLP
    need = (params * dtype.itemsize) + sessions * CachePool.session_bytes(config, dtype)
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        available = None
    if available is not None and need > 0.8 * available:
        return (
            f"config {config.name!r} needs about {need / 2**30:.0f} GiB "
            f"(model + {sessions} session caches), this host has {available / 2**30:.0f} "
            "GiB free: run it on a GPU (--device cuda --dtype bfloat16)"
        )
    flops = step_flops(config)
    if flops > 1e12:
        return (
            f"config {config.name!r} needs about {flops:.1e} FLOPs per chunk, hours on a "
            "CPU: run it on a GPU (--device cuda --dtype bfloat16) or pass --force"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = get_config(args.config)
    base = BenchSettings.for_config(config)
    settings = BenchSettings(
        iters=args.iters or base.iters,
        warmup=args.warmup if args.warmup is not None else base.warmup,
        swap_repeats=args.swap_repeats or base.swap_repeats,
        history_frames=tuple(args.history_frames) if args.history_frames else base.history_frames,
        batch_sessions=args.batch_sessions or base.batch_sessions,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "CUDA requested but not available"}))
        return 2
    if args.device == "cpu" and not args.force:
        problem = _cpu_refusal(config, DTYPES[args.dtype], max(settings.batch_sessions, 2))
        if problem:
            print(json.dumps({"error": problem, "config": config.name}))
            return 2
    report = run_benchmark(
        config, device=args.device, dtype=args.dtype, settings=settings, weights=args.weights
    )
    if not args.json:
        for key, value in report.items():
            print(f"{key:>36}: {value}", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
