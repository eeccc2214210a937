"""RoPE tables: float64 angles, never bf16 tables, whatever the model's dtype."""

from __future__ import annotations

import pytest
import torch

from services.generator.engine import TINY
from services.generator.engine.rope import apply_rope, axis_pairs
from services.generator.engine.transformer import CausalVideoDiT

pytestmark = pytest.mark.unit

# Long-stream positions: bf16 has 8 bits of mantissa, so its angles alias here.
POSITIONS = (0, 1, 2, 517, 4099)


def _expected_angles(positions: tuple[int, ...]) -> torch.Tensor:
    """(1, F * tokens, 1, head_dim / 2) angles written out per token: time, row, column pairs."""
    t_pairs, h_pairs, w_pairs = axis_pairs(TINY.head_dim)
    theta = TINY.rope_theta

    def inv(i: int, pairs: int) -> float:
        return theta ** (-i / pairs)

    rows = []
    for f in positions:
        for r in range(TINY.grid_height):
            for c in range(TINY.grid_width):
                rows.append(
                    [f * inv(i, t_pairs) for i in range(t_pairs)]
                    + [r * inv(i, h_pairs) for i in range(h_pairs)]
                    + [c * inv(i, w_pairs) for i in range(w_pairs)]
                )
    return torch.tensor(rows, dtype=torch.float64)[None, :, None, :]


def _bf16_model() -> CausalVideoDiT:
    torch.manual_seed(0)
    return CausalVideoDiT(TINY).to(torch.bfloat16)  # moving the module must not touch the tables


def test_rope_tables_of_a_bf16_model_are_float32_with_float64_angles() -> None:
    cos, sin = _bf16_model().rope.cos_sin(torch.tensor([POSITIONS]), torch.bfloat16)
    assert cos.dtype == sin.dtype == torch.float32
    angles = _expected_angles(POSITIONS)
    torch.testing.assert_close(cos.double(), angles.cos(), rtol=0, atol=1e-6)
    torch.testing.assert_close(sin.double(), angles.sin(), rtol=0, atol=1e-6)


def test_rope_tables_of_a_float64_model_are_float64() -> None:
    torch.manual_seed(0)
    model = CausalVideoDiT(TINY).double()
    cos, sin = model.rope.cos_sin(torch.tensor([POSITIONS]), torch.float64)
    assert cos.dtype == sin.dtype == torch.float64
    angles = _expected_angles(POSITIONS)
    torch.testing.assert_close(cos, angles.cos(), rtol=0, atol=1e-12)
    torch.testing.assert_close(sin, angles.sin(), rtol=0, atol=1e-12)


def test_bf16_queries_are_rotated_by_exact_angles_then_rounded() -> None:
    cos, sin = _bf16_model().rope.cos_sin(torch.tensor([POSITIONS]), torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    tokens = len(POSITIONS) * TINY.tokens_per_frame
    x = torch.randn(1, tokens, TINY.num_heads, TINY.head_dim, generator=g).to(torch.bfloat16)
    got = apply_rope(x, cos, sin)
    assert got.dtype == torch.bfloat16
    angles = _expected_angles(POSITIONS)
    pairs = x.double().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    c, s = angles.cos(), angles.sin()
    exact = torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).flatten(-2)
    # One bf16 rounding of the exact rotation (unit roundoff 2^-8), nothing more.
    assert ((got.double() - exact).abs() <= 2**-8 * exact.abs() + 1e-6).all()
