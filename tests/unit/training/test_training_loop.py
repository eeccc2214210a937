"""Training smoke runs on tiny shapes and the swap evaluation on one short clip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from services.generator.engine import TINY, Engine
from services.generator.engine.weights import build_modules
from tools.training.evaluate import POLICIES, evaluate
from tools.training.train import (
    build_pool,
    clip_conditioning_latent,
    gaussian_blur,
    restart_references,
    student_loss,
    to_unit,
    train,
)

pytestmark = pytest.mark.unit


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


def test_noisy_tokens_do_not_leak_into_the_loss_of_earlier_chunks() -> None:
    """Gradient check of the block mask through the real training forward."""
    transformer, _ = build_modules(TINY, seed=0)
    frames, c, h, w = 6, TINY.latent_channels, TINY.latent_height, TINY.latent_width
    video = torch.randn(1, frames, c, h, w, requires_grad=True)
    cond = torch.zeros(1, frames, TINY.latent_cond_channels, h, w)
    ctx = torch.randn(1, 1, c, h, w)
    seen: dict[str, torch.Tensor] = {}

    def keep(module: object, args: object, kwargs: object, output: torch.Tensor) -> None:
        seen["out"] = output

    handle = transformer.register_forward_hook(keep, with_kwargs=True)
    try:
        student_loss(transformer, TINY, video, cond, ctx, ctx, torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    out = seen["out"]
    weight = torch.randn(out[:, :3].shape, generator=torch.Generator().manual_seed(2))

    def grad_of_noisy_chunk(b: int) -> torch.Tensor:
        lo = 2 + frames + 3 * b
        (grad,) = torch.autograd.grad((out[:, lo : lo + 3] * weight).sum(), video, retain_graph=True)
        return grad.abs().amax(dim=(0, 2, 3, 4))

    first, second = grad_of_noisy_chunk(0), grad_of_noisy_chunk(1)
    assert first[3:].max() == 0, "noisy chunk 0 must not see chunk 1 (clean or noisy)"
    assert second[:3].min() > 0, "noisy chunk 1 sees the clean copy of chunk 0"
    assert second[3:].min() > 0, "and itself"


def test_three_step_run_saves_resumes_and_loads_through_the_engine(tmp_path: Path) -> None:
    kw = {"clips": 2, "clip_frames": 9, "ae_batch": 2, "batch": 2, "threads": 1, "log_every": 1}
    summary = train(out=tmp_path, ae_steps=3, steps=3, **kw)
    weights = tmp_path / "tiny.safetensors"
    assert summary["autoencoder_steps"] == 3 and summary["student_steps"] == 3
    assert len(summary["loss"]["student"]) == 3 and all(v[1] > 0 for v in summary["loss"]["student"])
    assert json.loads((tmp_path / "tiny.json").read_text())["data"]["seed"] == 0
    assert "student step 3" in (tmp_path / "tiny.log").read_text()
    engine = Engine.build(TINY, weights=str(weights))
    saved_state = torch.load(tmp_path / "train_state.pt", weights_only=False)["transformer"]
    for name, tensor in engine.transformer.state_dict().items():
        torch.testing.assert_close(tensor, saved_state[name])
    resumed = train(out=tmp_path, ae_steps=3, steps=4, **kw)  # picks up at student step 3
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
