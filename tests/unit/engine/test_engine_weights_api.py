"""Build/load separation, checkpoint validation, config sizes and the public numpy API."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_testkit import make_engine

from services.generator.engine import (
    PAPER,
    TINY,
    EngineConfig,
    WeightsMismatchError,
    build_modules,
    get_config,
    load_weights,
    save_weights,
)
from services.generator.engine.autoencoder import CausalVideoAutoencoder

pytestmark = pytest.mark.unit


def test_save_then_load_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "student.safetensors"
    source = build_modules(TINY, seed=1)
    save_weights(path, TINY, *source)
    target = build_modules(TINY, seed=2)
    assert not torch.equal(source[0].head.weight, target[0].head.weight)
    load_weights(path, TINY, *target)
    for a, b in zip(source, target, strict=True):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(x, y), name


def test_load_refuses_other_sizes_with_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "student.safetensors"
    save_weights(path, TINY, *build_modules(TINY))
    wider = dataclasses.replace(TINY, name="wider", mlp_hidden=256)
    with pytest.raises(WeightsMismatchError, match="mlp_hidden: expected 256, checkpoint has 128"):
        load_weights(path, wider, *build_modules(wider))


def test_load_refuses_wrong_shapes(tmp_path: Path) -> None:
    path = tmp_path / "student.safetensors"
    modules = build_modules(TINY)
    save_weights(path, TINY, *modules)
    other = dataclasses.replace(TINY, mlp_hidden=96)
    with pytest.raises(WeightsMismatchError, match="shape"):
        load_weights(path, TINY, *build_modules(other))


def test_config_validation_and_lookup() -> None:
    assert get_config("tiny") is TINY and get_config("paper") is PAPER
    with pytest.raises(ValueError, match="unknown engine config"):
        get_config("huge")
    with pytest.raises(ValueError, match="window_frames"):
        dataclasses.replace(TINY, window_frames=5)
    assert EngineConfig.from_dict(PAPER.to_dict()) == PAPER
    assert (PAPER.num_layers, PAPER.num_heads, PAPER.head_dim) == (30, 24, 128)
    assert (PAPER.chunk_frames, PAPER.num_steps, PAPER.window_frames, PAPER.sink_frames) == (
        3,
        4,
        23,
        5,
    )


def test_autoencoder_time_structure() -> None:
    auto = CausalVideoAutoencoder(TINY)
    video = torch.rand(1, 9, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = auto.encode(video)
        assert latents.shape == (1, 3, TINY.latent_channels, 8, 8)
        assert auto.decode(latents, first_is_image=True).shape == (1, 9, 3, 64, 64)
        # Causal: a latent never sees later frames; the first sees only the first frame.
        changed = video.clone()
        changed[:, 5:] = 0
        other = auto.encode(changed)
        assert torch.equal(latents[:, :2], other[:, :2])
        torch.testing.assert_close(auto.encode_image(video[:, 0]), latents[:, :1])
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        auto.encode(video[:, :4])


def test_public_numpy_api_shapes_and_conditioning() -> None:
    engine = make_engine(torch.float32, sessions=1)
    rng = np.random.default_rng(0)
    person = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    garment = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with engine.open_session(seed=0) as s:
        s.start(person, garment)
        assert s.pixel_frames_next_chunk == 9
        cond = rng.random((9, 100, 100, TINY.cond_channels), dtype=np.float32)
        frames = s.step(cond)
        assert frames.shape == (9, 64, 64, 3) and frames.dtype == np.uint8
        assert s.pixel_frames_next_chunk == 12
        with pytest.raises(ValueError, match="conditioning must be"):
            s.step(cond)
        assert s.step(None).shape == (12, 64, 64, 3)
        s.swap(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        assert s.step().shape == (12, 64, 64, 3)
    with pytest.raises(RuntimeError, match="released"):
        s.step()


def test_conditioning_changes_output() -> None:
    engine = make_engine(torch.float32, sessions=2)
    rng = np.random.default_rng(0)
    person, garment = (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2))
    outs = []
    for cond in (None, np.ones((9, 64, 64, TINY.cond_channels), dtype=np.float32)):
        with engine.open_session(seed=0) as s:
            s.start(person, garment)
            outs.append(s.step(cond))
    assert not np.array_equal(outs[0], outs[1])


def test_paper_model_builds_on_meta_device() -> None:
    transformer, _ = build_modules(PAPER, device="meta", dtype=torch.bfloat16, seed=None)
    params = sum(p.numel() for p in transformer.parameters())
    # Wan2.2-TI2V-5B blocks without the text cross-attention (about 1.1B of the 5B).
    assert 3.5e9 < params < 4.5e9
