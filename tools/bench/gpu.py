"""The GPU check's measurements in one process: one CUDA start-up, one time budget.

``python -m tools.bench.gpu --device cuda --json --out FILE`` (= ``chameleon bench gpu``), the
measuring part of ``scripts/gpu_check.sh``. Sections, in this order; each is skipped with its
reason once the budget (``--budget-s``) is spent, and an error in one is recorded and the next runs:

1. ``engine``: ``tools.bench.engine.run_benchmark`` at the paper config, shortened;
2. ``throughput``: 1, 2, 4 and 8 sessions, batched (``Engine.step_batch``, one forward for all)
   and sequential (one step per session in turn), at ``tiny`` and at the paper shape with fewer
   blocks; per-session frames/s and the sessions one device serves at >= 15 frames/s;
3. ``bf16_drift``: the same random weights and the same noise streamed 200 frames in float32
   (TF32 off) and in bfloat16 at the paper shape (fewer blocks); max and mean abs difference of
   the output pixels per 50-frame window, and of the latents per chunk: does the error grow?;
4. ``compile``: ``torch.compile`` of the transformer inside the per-chunk step (``default``:
   inductor; ``reduce-overhead``: inductor + CUDA graphs) against eager, steady-state step time
   and the first step's difference from eager.

``--smoke`` runs every section on the CPU at tiny sizes in a few seconds (the pytest does); the
real numbers need a CUDA box. The report is written to ``--out`` after every section (a killed run
keeps what it measured) and printed as the last line. ``--summarize DIR --rc NAME=CODE ...`` merges
``DIR/bench_gpu.json``, the parts' exit codes and their logs into ``DIR/summary.json`` (the shell
script's last step).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.generator.engine.conditioning import pixel_frames_in_chunk
from services.generator.engine.config import PAPER, TINY, EngineConfig
from services.generator.engine.pool import CachePool
from services.generator.engine.session import Engine, StudentStream
from tools.bench.common import provenance
from tools.bench.engine import (
    DTYPES,
    BenchSettings,
    _images,
    _machine,
    _steady_session,
    _timed,
    run_benchmark,
)
from tools.eval.drift import chunk_ends, windows

Window = tuple[int, int]


def with_blocks(config: EngineConfig, blocks: int) -> EngineConfig:
    """The same shape (tokens, heads, widths, cache layout) with ``blocks`` transformer blocks."""
    return dataclasses.replace(config, name=f"{config.name}-{blocks}blocks", num_layers=blocks)


PAPER_FEWER_BLOCKS = with_blocks(PAPER, 10)  # throughput and compile: paper shape, a third of the depth
PAPER_DRIFT_BLOCKS = with_blocks(PAPER, 4)  # bf16 drift: the float32 reference is ~10x slower
GPU_ENGINE_BENCH = BenchSettings(
    iters=3, warmup=1, swap_repeats=1, history_frames=(10, 200), batch_sessions=2
)


@dataclass(frozen=True)
class GpuCheckSettings:
    """Sizes and time of one GPU check; the defaults fit a ~3-minute slot on one H100/H200."""

    device: str = "cuda"
    dtype: str = "bfloat16"
    budget_s: float = 170.0
    sections: tuple[str, ...] = ("engine", "throughput", "bf16_drift", "compile")
    engine_config: EngineConfig = PAPER
    engine_bench: BenchSettings = GPU_ENGINE_BENCH
    throughput_configs: tuple[EngineConfig, ...] = (TINY, PAPER_FEWER_BLOCKS)
    session_counts: tuple[int, ...] = (1, 2, 4, 8)
    throughput_iters: int = 3
    target_fps: float = 15.0
    drift_config: EngineConfig = PAPER_DRIFT_BLOCKS
    drift_frames: int = 200
    drift_window: int = 50
    compile_configs: tuple[EngineConfig, ...] = (TINY, PAPER_FEWER_BLOCKS)
    compile_modes: tuple[str, ...] = ("default", "reduce-overhead")
    compile_backend: str = "inductor"
    compile_iters: int = 8
    min_section_s: dict[str, float] = field(
        default_factory=lambda: {"engine": 60.0, "throughput": 20.0, "bf16_drift": 20.0, "compile": 30.0}
    )

    @classmethod
    def cpu_smoke(cls) -> GpuCheckSettings:
        """Every section on the CPU at tiny sizes: the plumbing, in seconds, not the numbers."""
        return cls(
            device="cpu",
            dtype="float32",
            budget_s=120.0,
            engine_config=TINY,
            engine_bench=BenchSettings(
                iters=2, warmup=1, swap_repeats=1, history_frames=(10, 30), batch_sessions=2
            ),
            throughput_configs=(with_blocks(TINY, 1),),
            session_counts=(1, 2),
            throughput_iters=1,
            drift_config=with_blocks(TINY, 1),  # bfloat16 matmuls are slow on most CPUs
            drift_frames=21,
            drift_window=12,
            compile_configs=(with_blocks(TINY, 1),),
            compile_modes=("default",),
            compile_backend="eager",  # dynamo only: no C++ build on a 2-core CPU
            compile_iters=1,
            min_section_s={},
        )


class Budget:
    """Seconds left of the check's slot; sections ask before they start."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def _release() -> None:
    """Give device memory back (after a section returns, its engines are unreferenced)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _describe(config: EngineConfig) -> dict[str, Any]:
    return {
        "config": config.name,
        "blocks": config.num_layers,
        "hidden": config.hidden,
        "pixels": f"{config.pixel_width}x{config.pixel_height}",
        "tokens_per_latent_frame": config.tokens_per_frame,
    }


def _weights_bytes(engine: Engine) -> int:
    modules = (engine.transformer, engine.autoencoder)
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


# ---------------------------------------------------------------------------------- throughput
def sessions_meeting(rows: dict[str, dict[str, Any]], key: str, target: float) -> int:
    """The largest session count whose ``key`` (frames/s per session) reaches ``target``; 0: none."""
    return max((int(n) for n, row in rows.items() if row.get(key, 0.0) >= target), default=0)


def throughput(config: EngineConfig, settings: GpuCheckSettings, budget: Budget) -> dict[str, Any]:
    """Per-session frames/s for each session count, batched and sequential, steady state."""
    dev, dtype = torch.device(settings.device), DTYPES[settings.dtype]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    most = max(settings.session_counts)
    engine = Engine.build(config, device=dev, dtype=dtype, max_sessions=most, seed=0)
    images = _images(config, 0, 3)
    sessions = [_steady_session(engine, images, seed=10 + i) for i in range(most)]
    frames = pixel_frames_in_chunk(config, first_is_image=False)
    rows: dict[str, dict[str, Any]] = {}
    for n in settings.session_counts:
        if budget.left() <= 0:
            rows[str(n)] = {"skipped": "budget"}
            continue
        subset = sessions[:n]
        engine.step_batch(subset)  # kernels and masks for this batch size
        batched = statistics.median(
            _timed(dev, lambda s=subset: engine.step_batch(s)) for _ in range(settings.throughput_iters)
        )
        sequential = statistics.median(
            _timed(dev, lambda s=subset: [x.step() for x in s]) for _ in range(settings.throughput_iters)
        )
        rows[str(n)] = {
            "batched_step_ms": round(batched * 1e3, 2),
            "batched_fps_per_session": round(frames / batched, 2),
            "batched_fps_total": round(n * frames / batched, 1),
            "sequential_round_ms": round(sequential * 1e3, 2),
            "sequential_fps_per_session": round(frames / sequential, 2),
        }
    session_bytes = CachePool.session_bytes(config, dtype)
    memory_cap = None
    if dev.type == "cuda":
        free = torch.cuda.get_device_properties(dev).total_memory - _weights_bytes(engine)
        memory_cap = int(0.9 * free // session_bytes)
    best_total = max((r.get("batched_fps_total", 0.0) for r in rows.values()), default=0.0)
    estimate = math.floor(best_total / settings.target_fps)
    for s in sessions:
        s.release()
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    return {
        **_describe(config),
        "dtype": settings.dtype,
        "frames_per_step": frames,
        "by_sessions": rows,
        "target_fps_per_session": settings.target_fps,
        "sessions_at_target_measured": {
            "batched": sessions_meeting(rows, "batched_fps_per_session", settings.target_fps),
            "sequential": sessions_meeting(rows, "sequential_fps_per_session", settings.target_fps),
        },
        # Upper bound: the best measured total throughput shared out at the target, no headroom.
        "sessions_at_target_estimate": estimate if memory_cap is None else min(estimate, memory_cap),
        "cache_bytes_per_session": session_bytes,
        "memory_cap_sessions": memory_cap,
        "peak_device_bytes": peak,
    }


# --------------------------------------------------------------------------------- bf16 drift
def pixel_diff_by_window(a: np.ndarray, b: np.ndarray, spans: list[Window]) -> list[dict[str, Any]]:
    """Max and mean abs difference (0..255) of two uint8 videos over each ``[start, end)``."""
    out = []
    for start, end in spans:
        diff = np.abs(a[start:end].astype(np.int16) - b[start:end].astype(np.int16))
        out.append(
            {"frames": [start, end], "max_abs": int(diff.max()), "mean_abs": round(float(diff.mean()), 4)}
        )
    return out


def _stream(engine: Engine, images: list[np.ndarray], frames: int) -> tuple[np.ndarray, list[torch.Tensor]]:
    """``frames`` output frames of one unconditioned stream and each chunk's clean latents."""
    pixels: list[np.ndarray] = []
    latents: list[torch.Tensor] = []
    with engine.open_session(seed=7) as session:
        session.start(images[0], images[1])
        while len(pixels) < frames:
            pixels.extend(session.step())
            assert session.last_latents is not None
            latents.append(session.last_latents.float().cpu())
    return np.stack(pixels[:frames]), latents


def _noise_matches(dev: torch.device, low: torch.dtype, shape: tuple[int, ...]) -> bool:
    """Whether a generator draws the same normals in ``low`` as in float32 (rounded)."""
    g32, glow = torch.Generator(device=dev), torch.Generator(device=dev)
    g32.manual_seed(123), glow.manual_seed(123)
    a = torch.randn(shape, generator=g32, device=dev, dtype=torch.float32).to(low)
    b = torch.randn(shape, generator=glow, device=dev, dtype=low)
    return bool(torch.equal(a, b))


def bf16_drift(config: EngineConfig, settings: GpuCheckSettings) -> dict[str, Any]:
    """float32 (TF32 off) vs bfloat16, same weights (one seeded init, cast) and same seeds."""
    dev, low = torch.device(settings.device), torch.bfloat16
    images = _images(config, 0, 3)
    rendered = chunk_ends(config, settings.drift_frames)[-1]
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        ref = Engine.build(config, device=dev, dtype=torch.float32, max_sessions=1, seed=0)
        started = time.perf_counter()
        pix32, lat32 = _stream(ref, images, rendered)
        fp32_s = time.perf_counter() - started
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    fast = Engine.build(config, device=dev, dtype=low, max_sessions=1, seed=0)
    first32 = next(ref.transformer.parameters()).detach()
    first16 = next(fast.transformer.parameters()).detach()
    weights_match = bool(torch.equal(first32.to(low), first16))
    noise_match = _noise_matches(dev, low, ref.chunk_shape)
    del ref, first32, first16
    _release()
    started = time.perf_counter()
    pix16, lat16 = _stream(fast, images, rendered)
    bf16_s = time.perf_counter() - started
    del fast
    _release()
    n = settings.drift_frames
    by_window = pixel_diff_by_window(pix32[:n], pix16[:n], windows(n, settings.drift_window))
    rel = [
        round(float((b - a).abs().mean() / a.abs().mean().clamp_min(1e-12)), 5)
        for a, b in zip(lat32, lat16, strict=True)
    ]
    return {
        **_describe(config),
        "frames": n,
        "weights": "random (one seeded float32 init; the bf16 copy is its rounding)",
        "weights_match": weights_match,
        "noise_matches": noise_match,
        "pixel_diff_by_window": by_window,
        "mean_abs_last_over_first_window": round(
            by_window[-1]["mean_abs"] / max(by_window[0]["mean_abs"], 1e-9), 3
        ),
        "latent_rel_diff_by_chunk": rel,
        "fp32_seconds": round(fp32_s, 2),
        "bf16_seconds": round(bf16_s, 2),
        "fp32_reference": "TF32 off (matmul and cuDNN)",
    }


# ----------------------------------------------------------------------------------- compile
def compile_step(config: EngineConfig, settings: GpuCheckSettings, budget: Budget) -> dict[str, Any]:
    """Eager vs ``torch.compile``d transformer inside ``StudentStream.step`` (steady state).

    Eager is timed before and after the compiled runs and the faster of the two is the baseline,
    so a slow start (or a neighbour's burst) does not show up as a compile gain.
    """
    dev, dtype = torch.device(settings.device), DTYPES[settings.dtype]
    engine = Engine.build(config, device=dev, dtype=dtype, max_sessions=2, seed=0)
    eager = engine.transformer
    images = _images(config, 0, 3)

    def steady_ms(session: StudentStream) -> float:
        return statistics.median(_timed(dev, session.step) for _ in range(settings.compile_iters)) * 1e3

    def eager_ms() -> float:
        with _steady_session(engine, images, seed=1) as s:
            s.step()
            return steady_ms(s)

    def compiled(mode: str) -> dict[str, Any]:
        torch._dynamo.reset()
        kwargs: dict[str, Any] = {"backend": settings.compile_backend}
        if settings.compile_backend == "inductor":
            kwargs["mode"] = mode
        with _steady_session(engine, images, seed=1) as a:
            a.step()
            assert a.last_latents is not None
            want = a.last_latents.float()
        skips_before = _cudagraph_skips()
        session = _steady_session(engine, images, seed=1)  # the same state as ``a`` had
        engine.transformer = torch.compile(eager, **kwargs)  # type: ignore[assignment]
        try:
            started = time.perf_counter()
            session.step()
            first_s = time.perf_counter() - started
            assert session.last_latents is not None
            diff = float((session.last_latents.float() - want).abs().max())
            for _ in range(2):  # CUDA graphs are recorded on the calls after the first
                session.step()
            ms = steady_ms(session)
        finally:
            engine.transformer = eager
            session.release()
        return {
            "backend": settings.compile_backend,
            "first_step_s": round(first_s, 2),
            "step_ms": round(ms, 2),
            "max_abs_diff_vs_eager_first_step": diff,
            "cudagraph_skips": _cudagraph_skips() - skips_before,
        }

    before = eager_ms()
    result: dict[str, Any] = {**_describe(config), "dtype": settings.dtype}
    minimum = settings.min_section_s.get("compile", 0.0)
    for mode in settings.compile_modes:
        if budget.left() < minimum:
            result[mode] = {"skipped": f"budget: {budget.left():.0f} s left"}
            continue
        try:
            result[mode] = compiled(mode)
        except Exception as exc:  # one mode failing to compile must not lose the other
            result[mode] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    torch._dynamo.reset()
    after = eager_ms()
    baseline = min(before, after)
    result["eager_step_ms"] = {"before": round(before, 2), "after": round(after, 2)}
    for mode in settings.compile_modes:
        if "step_ms" in result[mode]:
            result[mode]["speedup_vs_eager"] = round(baseline / result[mode]["step_ms"], 3)
    speedups = [
        result[m]["speedup_vs_eager"] for m in settings.compile_modes if "speedup_vs_eager" in result[m]
    ]
    result["helps"] = bool(speedups) and max(speedups) >= 1.05
    return result


def _cudagraph_skips() -> int:
    """Inductor's count of graphs it did not run as CUDA graphs (mutated inputs, CPU tensors..)."""
    return int(torch._dynamo.utils.counters["inductor"]["cudagraph_skips"])


# ------------------------------------------------------------------------------------- check
def run_check(settings: GpuCheckSettings, out: Path | None = None) -> dict[str, Any]:
    """Run the sections in order within the budget; the report is rewritten after each."""
    started = time.perf_counter()
    budget = Budget(settings.budget_s)
    dev = torch.device(settings.device)
    report: dict[str, Any] = {
        "bench": "gpu",
        "device": str(dev),
        "device_name": _machine(dev),
        "dtype": settings.dtype,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "budget_s": settings.budget_s,
        **provenance(),
    }

    def save() -> None:
        report.pop("seconds", None)  # kept last
        report["seconds"] = round(time.perf_counter() - started, 1)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=1) + "\n")

    def section(name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        need = settings.min_section_s.get(name.split(":")[0], 0.0)
        if budget.left() < need:
            return {"skipped": f"budget: {budget.left():.0f} s left, needs about {need:.0f}"}
        begun = time.perf_counter()
        try:
            result = run()
        except Exception as exc:  # one failed section must not cost the others their slot
            result = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        result["section_seconds"] = round(time.perf_counter() - begun, 1)
        _release()
        return result

    plan: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    if "engine" in settings.sections:
        cfg, bench = settings.engine_config, settings.engine_bench
        plan.append(
            (
                "engine",
                lambda: run_benchmark(cfg, device=settings.device, dtype=settings.dtype, settings=bench),
            )
        )
    if "throughput" in settings.sections:
        for cfg in settings.throughput_configs:
            plan.append((f"throughput:{cfg.name}", lambda c=cfg: throughput(c, settings, budget)))
    if "bf16_drift" in settings.sections:
        plan.append(("bf16_drift", lambda: bf16_drift(settings.drift_config, settings)))
    if "compile" in settings.sections:
        for cfg in settings.compile_configs:
            plan.append((f"compile:{cfg.name}", lambda c=cfg: compile_step(c, settings, budget)))
    for name, run in plan:
        group, _, config_name = name.partition(":")
        result = section(name, run)
        if config_name:
            report.setdefault(group, {})[config_name] = result
        else:
            report[group] = result
        save()
    save()
    return report


# ------------------------------------------------------------------------------------ summary
def summarize(out_dir: Path, exit_codes: dict[str, int], seconds: float | None = None) -> dict[str, Any]:
    """``DIR/summary.json``: each part's exit code and last log line, and the bench report."""
    parts: dict[str, Any] = {}
    for name, rc in exit_codes.items():
        log = out_dir / f"{name}.log"
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
        parts[name] = {"rc": rc, "ok": rc == 0, "last_line": tail[0][:300] if tail else None}
        if rc == 124:
            parts[name]["timed_out"] = True
    bench_file = out_dir / "bench_gpu.json"
    summary: dict[str, Any] = {
        "gpu_check": "scripts/gpu_check.sh",
        "ok": all(p["ok"] for p in parts.values()),
        "seconds": seconds,
        "parts": parts,
        "bench": json.loads(bench_file.read_text()) if bench_file.is_file() else None,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chameleon bench gpu", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--smoke", action="store_true", help="every section on the CPU at tiny sizes")
    p.add_argument("--budget-s", type=float, help="seconds for all sections (default 170)")
    p.add_argument("--sections", nargs="+", choices=GpuCheckSettings.sections)
    p.add_argument("--fewer-blocks", type=int, help="blocks of the paper shape in throughput/compile (10)")
    p.add_argument("--drift-blocks", type=int, help="blocks of the paper shape in bf16_drift (4)")
    p.add_argument("--out", type=Path, help="write the report here too (rewritten after each section)")
    p.add_argument("--json", action="store_true", help="only the JSON report (always the last line)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--summarize", type=Path, metavar="DIR", help="merge DIR's parts into DIR/summary.json")
    p.add_argument("--rc", action="append", default=[], metavar="NAME=CODE", help="with --summarize")
    p.add_argument("--seconds", type=float, help="with --summarize: the whole check's wall time")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.summarize:
        codes = {k: int(v) for k, v in (item.split("=", 1) for item in args.rc)}
        print(json.dumps(summarize(args.summarize, codes, args.seconds)))
        return 0
    settings = GpuCheckSettings.cpu_smoke() if args.smoke else GpuCheckSettings(device=args.device)
    changes: dict[str, Any] = {}
    if args.budget_s is not None:
        changes["budget_s"] = args.budget_s
    if args.sections:
        changes["sections"] = tuple(args.sections)
    if args.fewer_blocks:
        fewer = with_blocks(PAPER, args.fewer_blocks)
        changes["throughput_configs"] = (TINY, fewer)
        changes["compile_configs"] = (TINY, fewer)
    if args.drift_blocks:
        changes["drift_config"] = with_blocks(PAPER, args.drift_blocks)
    settings = dataclasses.replace(settings, **changes)
    if settings.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"bench": "gpu", "error": "CUDA requested but not available (try --smoke)"}))
        return 2
    report = run_check(settings, args.out)
    if not args.json:
        for key, value in report.items():
            print(f"{key:>14}: {value}", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
