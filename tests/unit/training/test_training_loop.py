"""Training smoke runs on tiny shapes and the swap evaluation on one short clip."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path

import pytest
import torch
from structlog.testing import capture_logs

from services.generator.engine import TINY, Engine
from services.generator.engine.sampler import FlowMatchSchedule
from services.generator.engine.weights import build_modules
from tools.training.common import (
    TrainConfig,
    build_pool,
    clip_conditioning_latent,
    gaussian_blur,
    lr_scale,
    restart_references,
    to_unit,
)
from tools.training.evaluate import POLICIES, evaluate
from tools.training.train import cli_flag, parse_config, student_loss, train

pytestmark = pytest.mark.unit

# The flags ``chameleon train`` had before TrainConfig, with their defaults (docs/training.md uses them).
DOCUMENTED_FLAGS = {
    "--config": "tiny",
    "--steps": 3000,
    "--ae-steps": 1500,
    "--ae-minutes": None,
    "--student-minutes": None,
    "--seed": 0,
    "--clips": 256,
    "--clip-frames": 49,
    "--batch": 16,
    "--ae-batch": 8,
    "--threads": 2,
    "--device": "cpu",
    "--lr": 1e-3,
    "--workers": 1,
    "--restart-p": 0.5,
    "--autoencoder-from": None,
    "--out": "out/train",
}


def test_no_flags_parse_to_the_default_train_config() -> None:
    assert parse_config([]) == TrainConfig()


def test_every_train_config_field_has_a_flag_that_sets_it_with_its_type() -> None:
    hints = typing.get_type_hints(TrainConfig)
    samples = {int: 7, float: 0.25, str: "x"}
    for option in dataclasses.fields(TrainConfig):
        kind = next(t for t in (*typing.get_args(hints[option.name]), hints[option.name]) if t in samples)
        value = samples[kind]
        parsed = parse_config([cli_flag(option), str(value)])
        assert parsed == dataclasses.replace(TrainConfig(), **{option.name: value}), option.name
        assert type(getattr(parsed, option.name)) is kind, option.name


def test_the_documented_flags_keep_their_names_and_defaults() -> None:
    defaults = {cli_flag(f): getattr(TrainConfig(), f.name) for f in dataclasses.fields(TrainConfig)}
    assert {flag: defaults.get(flag, "missing") for flag in DOCUMENTED_FLAGS} == DOCUMENTED_FLAGS


def test_teacher_forcing_loss_decreases_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    transformer, autoencoder = build_modules(TINY, seed=0)
    pool = build_pool(TINY, clips=2, frames=9, seed=0)
    with torch.no_grad():
        video = autoencoder.encode(to_unit(pool.video))
        ref = autoencoder.encode_image(to_unit(pool.reference))
        gar = autoencoder.encode_image(to_unit(pool.garment))
    cond = clip_conditioning_latent(pool.cond, TINY)
    transformer.train()
    opt = torch.optim.Adam(transformer.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = student_loss(transformer, TINY, video, cond, ref, gar, torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("sigma", FlowMatchSchedule.from_config(TINY).sigmas)
def test_noisy_tokens_do_not_leak_into_the_loss_of_earlier_chunks(
    sigma: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gradient check of the block mask through the real training forward, for every sigma a chunk
    can draw. The gradient is taken with respect to the sequence the forward sees, not the video
    it is built from: at sigma = 1 a noisy chunk does not depend on its clean latents at all."""
    monkeypatch.setattr(FlowMatchSchedule, "from_config", classmethod(lambda cls, config: cls((sigma,))))
    transformer, _ = build_modules(TINY, seed=0)
    frames, c, h, w = 6, TINY.latent_channels, TINY.latent_height, TINY.latent_width
    g = torch.Generator().manual_seed(0)
    video = torch.randn(1, frames, c, h, w, generator=g)
    cond = torch.zeros(1, frames, TINY.latent_cond_channels, h, w)
    ctx = torch.randn(1, 1, c, h, w, generator=g)
    seen: dict[str, torch.Tensor] = {}

    def as_leaf(module: object, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        seen["latents"] = args[0].detach().requires_grad_(True)
        seen["timesteps"] = args[1]
        return (seen["latents"], *args[1:]), kwargs

    def keep(module: object, args: object, kwargs: object, output: torch.Tensor) -> None:
        seen["out"] = output

    handles = [
        transformer.register_forward_pre_hook(as_leaf, with_kwargs=True),
        transformer.register_forward_hook(keep, with_kwargs=True),
    ]
    try:
        student_loss(transformer, TINY, video, cond, ctx, ctx, torch.Generator().manual_seed(0))
    finally:
        for handle in handles:
            handle.remove()
    noisy_t = seen["timesteps"][0, 2 + frames :]
    assert torch.allclose(noisy_t, torch.full_like(noisy_t, 1000.0 * sigma)), "the sigma is forced"
    out, latents = seen["out"], seen["latents"]
    weight = torch.randn(out[:, :3].shape, generator=torch.Generator().manual_seed(2))
    context, clean, noisy = [0, 1], list(range(2, 2 + frames)), list(range(2 + frames, 2 + 2 * frames))

    def frames_seen_by_noisy_chunk(b: int) -> list[int]:
        lo = 2 + frames + 3 * b
        (grad,) = torch.autograd.grad((out[:, lo : lo + 3] * weight).sum(), latents, retain_graph=True)
        return [i for i, g in enumerate(grad.abs().amax(dim=(0, 2, 3, 4)).tolist()) if g > 0]

    # Noisy chunk 0 sees the context and itself: nothing of chunk 1, clean or noisy.
    assert frames_seen_by_noisy_chunk(0) == context + noisy[:3]
    # Noisy chunk 1 sees the context, the clean copy of chunk 0 and itself.
    assert frames_seen_by_noisy_chunk(1) == context + clean[:3] + noisy[3:]


def test_three_step_run_saves_resumes_and_loads_through_the_engine(tmp_path: Path) -> None:
    config = TrainConfig(
        out=str(tmp_path),
        ae_steps=3,
        steps=3,
        clips=2,
        clip_frames=9,
        ae_batch=2,
        batch=2,
        threads=1,
        log_every=1,
    )
    with capture_logs() as events:
        summary = train(config)
    weights = tmp_path / "tiny.safetensors"
    assert summary["autoencoder_steps"] == 3 and summary["student_steps"] == 3
    assert len(summary["loss"]["student"]) == 3 and all(v[1] > 0 for v in summary["loss"]["student"])
    assert json.loads((tmp_path / "tiny.json").read_text())["data"]["seed"] == 0
    steps = [(e["phase"], e["step"]) for e in events if e["event"] == "train_step"]
    assert steps == [(phase, step) for phase in ("autoencoder", "student") for step in (1, 2, 3)]
    assert all(e["loss"] > 0 and e["log_level"] == "info" for e in events if e["event"] == "train_step")
    # The log file keeps its plain lines (the shipped tiny.log has them): one per event.
    lines = (tmp_path / "tiny.log").read_text().splitlines()
    assert len(lines) == len(events)
    line = (
        r"^\d\d:\d\d:\d\d autoencoder step 1 loss \d+\.\d{4} rec \d+\.\d{4} latent_power \d+\.\d{3} t \d+s$"
    )
    assert re.match(line, lines[1]), lines[1]
    assert re.match(r"^\d\d:\d\d:\d\d student step 3 loss \d+\.\d{4} lr \d\.\d\de-\d\d t \d+s$", lines[-2])
    engine = Engine.build(TINY, weights=str(weights))
    saved_state = torch.load(tmp_path / "train_state.pt", weights_only=False)["transformer"]
    for name, tensor in engine.transformer.state_dict().items():
        torch.testing.assert_close(tensor, saved_state[name])
    resumed = train(dataclasses.replace(config, steps=4))  # picks up at student step 3
    assert resumed["student_steps"] == 4 and "resumed" in (tmp_path / "tiny.log").read_text()


def test_evaluate_runs_all_four_policies_on_one_clip(tmp_path: Path) -> None:
    report = evaluate(None, clips=1, frames=21, swap_frame=9, out_dir=tmp_path, threads=1)
    assert tuple(report["policies"]) == POLICIES
    for row in report["policies"].values():
        assert {"ghost_ratio", "continuity", "psnr", "psnr_after", "attention_after_swap"} <= set(row)
        assert 0.0 <= row["ghost_ratio"] <= 1.0
    assert [row["layer"] for row in report["attention_before_swap"]] == list(range(TINY.num_layers))
    after = report["policies"]["full"]["attention_after_swap"]
    assert after["sink"] == 0 and after["window"] == 0
    assert report["policies"]["none"]["attention_after_swap"]["sink"] > 0  # chunk 0 stays
    assert set(report["goals"]) >= {"full_ghost_le_0.2x_refresh_only"}
    assert report["autoencoder_psnr"] > 0
    assert (tmp_path / "contact_sheet.png").is_file() and (tmp_path / "policies.png").is_file()


def test_restart_reference_is_a_single_image_latent_of_the_windows_last_frame() -> None:
    _, autoencoder = build_modules(TINY, seed=0)
    pool = build_pool(TINY, clips=2, frames=9, seed=0)
    window = to_unit(pool.restart_window)
    ref = restart_references(autoencoder, window, blur=0.0)
    assert ref.shape == (2, 1, TINY.latent_channels, TINY.latent_height, TINY.latent_width)
    # The same path a full swap takes: decode the 4-frame latent, keep its last frame, encode alone.
    with torch.no_grad():
        latent = autoencoder.encode(torch.cat([window[:, :1], window], dim=1))[:, 1:]
        last = autoencoder.decode(latent, first_is_image=False)[:, -1]
        torch.testing.assert_close(ref, autoencoder.encode_image(last))
        assert not torch.allclose(restart_references(autoencoder, window, blur=1.0), ref)


def test_gaussian_blur_keeps_flat_images_and_softens_edges() -> None:
    flat = torch.full((1, 3, 16, 16), 0.25)
    torch.testing.assert_close(gaussian_blur(flat, 1.0), flat)
    edge = torch.zeros(1, 3, 16, 16)
    edge[..., 8:] = 1.0
    out = gaussian_blur(edge, 1.0)
    assert 0.0 < out[0, 0, 0, 7] < 0.5 < out[0, 0, 0, 8] < 1.0


def test_the_learning_rate_warms_up_then_follows_the_cosine_to_a_tenth() -> None:
    assert lr_scale(0, 1000, 0.0, None) == pytest.approx(1.0)
    assert lr_scale(1000, 1000, 0.0, None) == pytest.approx(0.1)
    assert lr_scale(500, 1000, 0.0, None) == pytest.approx(0.55)
    assert lr_scale(0, 1000, 30.0, 1.0) == pytest.approx(0.55)  # half the time budget spent
    assert lr_scale(0, 1000, 0.0, None, warmup=100) == pytest.approx(0.01 * lr_scale(0, 1000, 0.0, None))
    assert lr_scale(49, 1000, 0.0, None, warmup=100) == pytest.approx(0.5 * lr_scale(49, 1000, 0.0, None))
    assert lr_scale(300, 1000, 0.0, None, warmup=100) == lr_scale(300, 1000, 0.0, None)
