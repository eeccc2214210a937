"""Conversions between the public numpy API (HxWx3 uint8 images, per-pixel-frame conditioning)
and the model's tensors. Kept apart so the session reads as the paper's algorithm, not plumbing.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import EngineConfig


def pixel_frames_in_chunk(config: EngineConfig, *, first_is_image: bool) -> int:
    """Pixel frames a chunk decodes to: the stream's first latent is one image, others 4 frames."""
    frames = config.chunk_frames * config.vae_temporal
    return frames - (config.vae_temporal - 1) if first_is_image else frames


def image_to_tensor(
    image: np.ndarray, config: EngineConfig, *, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """HxWx3 uint8 -> (1, 3, H, W) in [-1, 1] at the config's pixel resolution."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device=device, dtype=torch.float32)
    if image.dtype == np.uint8:
        x = x / 255.0
    x = x.permute(2, 0, 1)[None]
    size = (config.pixel_height, config.pixel_width)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return (x.clamp(0.0, 1.0) * 2.0 - 1.0).to(dtype)


def frames_to_uint8(frames: Tensor) -> np.ndarray:
    """(T, 3, H, W) in [-1, 1] -> (T, H, W, 3) uint8 (one copy, then in place: hot path)."""
    x = frames.detach().to(torch.float32, copy=True)
    x.add_(1.0).mul_(127.5).clamp_(0.0, 255.0).round_()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def conditioning_to_latent(
    conditioning: np.ndarray | Tensor | None,
    config: EngineConfig,
    *,
    first_is_image: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Per-pixel-frame pose/mask maps -> (chunk_frames, 4*Cc, h, w) at the latent grid.

    ``conditioning`` is (T, H, W, Cc) (numpy: float in [0, 1] or uint8) with T the chunk's pixel
    frames; ``None`` means no conditioning (zeros). Each map is area-downsampled to the latent
    grid, then the pixel frames of one latent are stacked on channels, mirroring the autoencoder's
    temporal fold (the lone first frame repeated).
    """
    frames = pixel_frames_in_chunk(config, first_is_image=first_is_image)
    h, w, cc = config.latent_height, config.latent_width, config.cond_channels
    if conditioning is None:
        return torch.zeros(config.chunk_frames, config.latent_cond_channels, h, w, device=device, dtype=dtype)
    cond = (
        conditioning
        if isinstance(conditioning, Tensor)
        else torch.from_numpy(np.ascontiguousarray(conditioning))
    )
    if cond.dtype == torch.uint8:
        cond = cond.float() / 255.0
    if cond.ndim != 4 or cond.shape[0] != frames or cond.shape[3] != cc:
        raise ValueError(f"conditioning must be ({frames}, H, W, {cc}), got {tuple(cond.shape)}")
    cond = cond.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2)
    cond = F.adaptive_avg_pool2d(cond, (h, w))
    if first_is_image:
        cond = torch.cat([cond[:1].expand(config.vae_temporal, -1, -1, -1), cond[1:]])
    cond = cond.reshape(config.chunk_frames, config.vae_temporal * cc, h, w)
    return cond.to(dtype)
