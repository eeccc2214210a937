"""Small trainable video autoencoder with Wan's causal time structure.

The first latent frame encodes ONE pixel frame alone (an image); every later latent encodes the
next ``vae_temporal`` (4) pixel frames. A latent depends only on its own pixel frames, so it is
causal, and encoding a single image is the same code path as encoding the first frame of a video:
that is what lets the reference be re-encoded "alone, as a single image" after a swap.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import EngineConfig


class CausalVideoAutoencoder(nn.Module):
    """Per-frame 2D conv pyramid + a temporal fold of ``vae_temporal`` frames into one latent."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__()
        self.config = config
        ch, fold = config.ae_channels, config.vae_temporal
        levels = int(math.log2(config.vae_spatial))
        down: list[nn.Module] = [nn.Conv2d(3, ch, 3, padding=1), nn.SiLU()]
        for _ in range(levels):
            down += [nn.Conv2d(ch, ch, 3, stride=2, padding=1), nn.SiLU()]
        self.frame_encoder = nn.Sequential(*down)
        self.fold = nn.Conv2d(fold * ch, config.latent_channels, 1)
        self.unfold = nn.Conv2d(config.latent_channels, fold * ch, 1)
        up: list[nn.Module] = []
        for _ in range(levels):
            up += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(ch, ch, 3, padding=1),
                nn.SiLU(),
            ]
        up.append(nn.Conv2d(ch, 3, 3, padding=1))
        self.frame_decoder = nn.Sequential(*up)

    @staticmethod
    def latent_frames(pixel_frames: int, temporal: int) -> int:
        if pixel_frames < 1 or (pixel_frames - 1) % temporal:
            raise ValueError(f"a video must have 1 + {temporal}k frames, got {pixel_frames}")
        return 1 + (pixel_frames - 1) // temporal

    def encode(self, video: Tensor) -> Tensor:
        """(B, 1 + 4k, 3, H, W) in [-1, 1] -> (B, 1 + k, C, h, w).

        The lone first frame is repeated to fill its temporal group (Wan's causal padding).
        """
        cfg = self.config
        b, t = video.shape[:2]
        n = self.latent_frames(t, cfg.vae_temporal)
        feats = self.frame_encoder(video.flatten(0, 1))
        feats = feats.view(b, t, *feats.shape[1:])
        first = feats[:, :1].expand(b, cfg.vae_temporal, *feats.shape[2:])
        groups = torch.cat([first, feats[:, 1:]], dim=1)
        groups = groups.reshape(b * n, cfg.vae_temporal * feats.shape[2], *feats.shape[3:])
        latents = self.fold(groups)
        return latents.view(b, n, *latents.shape[1:])

    def encode_image(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 1, C, h, w): a single image as the first latent frame of a video."""
        return self.encode(image[:, None])

    def decode_raw(self, latents: Tensor, *, first_is_image: bool) -> Tensor:
        """(B, n, C, h, w) -> (B, T, 3, H, W), unclamped (for training losses)."""
        cfg = self.config
        b, n = latents.shape[:2]
        feats = self.unfold(latents.flatten(0, 1))
        feats = feats.view(b * n * cfg.vae_temporal, cfg.ae_channels, *feats.shape[2:])
        frames = self.frame_decoder(feats)
        frames = frames.view(b, n * cfg.vae_temporal, *frames.shape[1:])
        if first_is_image:
            # The image latent's group holds one frame repeated; its last slot is the frame.
            frames = frames[:, cfg.vae_temporal - 1 :]
        return frames

    def decode(self, latents: Tensor, *, first_is_image: bool) -> Tensor:
        """Pixel frames in [-1, 1]; this clamped output is what the reference is rebuilt from."""
        return self.decode_raw(latents, first_is_image=first_is_image).clamp(-1.0, 1.0)
