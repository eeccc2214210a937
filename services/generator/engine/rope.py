"""3D rotary position embedding over (frame, row, column), Wan-style axis split.

Keys are rotated with ABSOLUTE frame positions before they enter the KV cache, so a cached key
never needs re-rotation when the window slides; only the query's own positions matter.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs per axis: rows and columns get a third each, time gets the remainder."""
    pairs = head_dim // 2
    spatial = pairs // 3
    return pairs - 2 * spatial, spatial, spatial


def _inverse_frequencies(pairs: int, theta: float) -> Tensor:
    return theta ** (-torch.arange(pairs, dtype=torch.float64) / max(pairs, 1))


class Rope3D(nn.Module):
    """Produces cos/sin tables for tokens laid out frame-major, then row-major within a frame."""

    def __init__(self, head_dim: int, grid_height: int, grid_width: int, theta: float) -> None:
        super().__init__()
        t_pairs, h_pairs, w_pairs = axis_pairs(head_dim)
        self.tokens_per_frame = grid_height * grid_width
        rows = torch.arange(grid_height, dtype=torch.float64)
        cols = torch.arange(grid_width, dtype=torch.float64)
        row_angles = rows[:, None] * _inverse_frequencies(h_pairs, theta)[None]
        col_angles = cols[:, None] * _inverse_frequencies(w_pairs, theta)[None]
        spatial = torch.cat(
            [
                row_angles[:, None, :].expand(grid_height, grid_width, h_pairs),
                col_angles[None, :, :].expand(grid_height, grid_width, w_pairs),
            ],
            dim=-1,
        ).reshape(self.tokens_per_frame, h_pairs + w_pairs)
        # Plain float64 tensors, not buffers: ``module.to(bfloat16)`` would otherwise quantise the
        # angle tables, and they are derived from the config so never belong in a checkpoint.
        self._spatial_angles = spatial
        self._time_frequencies = _inverse_frequencies(t_pairs, theta)
        self._on_device: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _tables(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (
                self._spatial_angles.to(device),
                self._time_frequencies.to(device),
            )
        return self._on_device[device]

    def cos_sin(self, frame_positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Tables of shape (B, F * tokens_per_frame, 1, head_dim // 2) for ``apply_rope``.

        Angles are computed in float64 (positions grow without bound in a long stream) and cast to
        at least float32; bf16 angles would alias after a few hundred frames.
        """
        batch, frames = frame_positions.shape
        spatial_angles, time_frequencies = self._tables(frame_positions.device)
        time_angles = frame_positions.to(torch.float64)[..., None] * time_frequencies
        time_angles = time_angles[:, :, None, :].expand(
            batch, frames, self.tokens_per_frame, time_angles.shape[-1]
        )
        spatial = spatial_angles[None, None].expand(batch, frames, -1, -1)
        angles = torch.cat([time_angles, spatial], dim=-1)
        angles = angles.reshape(batch, frames * self.tokens_per_frame, 1, angles.shape[-1])
        table_dtype = torch.promote_types(dtype, torch.float32)
        return angles.cos().to(table_dtype), angles.sin().to(table_dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs of ``x`` (B, N, H, D); math in the tables' precision."""
    pairs = x.to(cos.dtype).unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)
