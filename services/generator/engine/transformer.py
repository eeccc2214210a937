"""Causal video DiT: per-frame timesteps, 3D RoPE, block-causal attention through a KV cache.

One forward takes a stack of latent frames with a timestep PER FRAME (in-context reference and
garment frames ride along at t = 0), adds the per-frame pose/mask conditioning to the tokens and
returns the flow-matching velocity. Attention goes through ``kv_cache.attend`` when a cache is
given (streaming) or through an explicit boolean mask when not (full teacher-forcing forward). We
never use ``is_causal=True``: with a cache the query and key lengths differ and the implicit
top-left triangle would be wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import EngineConfig
from .kv_cache import AttentionContext
from .rope import Rope3D, apply_rope

AttentionProbe = Callable[[int, Tensor, Tensor, "Tensor | None"], None]


def patchify(latents: Tensor, patch: int) -> Tensor:
    """(B, F, C, H, W) -> (B, F * H/p * W/p, C * p * p), frame-major then row-major."""
    b, f, c, h, w = latents.shape
    x = latents.reshape(b, f, c, h // patch, patch, w // patch, patch)
    x = x.permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(b, f * (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: Tensor, frames: int, channels: int, height: int, width: int, patch: int) -> Tensor:
    b = tokens.shape[0]
    x = tokens.reshape(b, frames, height // patch, width // patch, channels, patch, patch)
    x = x.permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, frames, channels, height, width)


def timestep_embedding(timesteps: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of (B, F) timesteps, computed in at least float32."""
    half = dim // 2
    dtype = torch.promote_types(timesteps.dtype, torch.float32)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=timesteps.device, dtype=dtype) / half)
    args = timesteps.to(dtype)[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def teacher_forcing_mask(
    num_chunks: int,
    chunk_frames: int,
    tokens_per_frame: int,
    *,
    context_frames: int = 2,
    include_noisy: bool = True,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Boolean (N, N) mask (True = may attend) for [context | clean chunks | noisy chunks].

    Conditioning sees only conditioning; clean chunk j sees conditioning and clean chunks <= j;
    noisy chunk b sees conditioning, clean chunks < b and itself. This is the in-context
    teacher-forcing layout of the paper's streaming distillation, and exactly what the streaming
    cache reproduces chunk by chunk (invariant 1).
    """
    kinds = [0] * context_frames + [1] * (num_chunks * chunk_frames)
    chunks = [-1] * context_frames + [i // chunk_frames for i in range(num_chunks * chunk_frames)]
    if include_noisy:
        kinds += [2] * (num_chunks * chunk_frames)
        chunks += [i // chunk_frames for i in range(num_chunks * chunk_frames)]
    kind = torch.tensor(kinds, device=device)
    chunk = torch.tensor(chunks, device=device)
    kq, kk = kind[:, None], kind[None, :]
    cq, ck = chunk[:, None], chunk[None, :]
    allowed = (kk == 0) & (kq >= 0)
    allowed |= (kq == 1) & (kk == 1) & (ck <= cq)
    allowed |= (kq == 2) & (kk == 1) & (ck < cq)
    allowed |= (kq == 2) & (kk == 2) & (ck == cq)
    frame_mask = allowed
    return frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


class SelfAttention(nn.Module):
    def __init__(self, config: EngineConfig, layer_index: int) -> None:
        super().__init__()
        d = config.hidden
        self.layer_index = layer_index
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.q_norm = nn.RMSNorm(d, eps=config.norm_eps)
        self.k_norm = nn.RMSNorm(d, eps=config.norm_eps)
        self.probe: AttentionProbe | None = None  # diagnostics only (inspect_attention)

    def project_qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, D) -> q, k, v as (B, N, H, Dh); q and k rotated by absolute positions."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = self.q_norm(q).view(b, n, self.num_heads, self.head_dim)
        k = self.k_norm(k).view(b, n, self.num_heads, self.head_dim)
        v = v.view(b, n, self.num_heads, self.head_dim)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        kv_cache: AttentionContext | None,
        attn_mask: Tensor | None,
    ) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.project_qkv(x, cos, sin)
        if kv_cache is not None:
            k, v, attn_mask = kv_cache.attend(self.layer_index, k, v)
        if self.probe is not None:
            self.probe(self.layer_index, q, k, attn_mask)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask
        )
        return self.out(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Pre-norm attention + MLP, each modulated (shift, scale, gate) by the frame's timestep."""

    def __init__(self, config: EngineConfig, layer_index: int) -> None:
        super().__init__()
        d = config.hidden
        self.norm1 = nn.LayerNorm(d, eps=config.norm_eps, elementwise_affine=False)
        self.attn = SelfAttention(config, layer_index)
        self.norm2 = nn.LayerNorm(d, eps=config.norm_eps, elementwise_affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(d, config.mlp_hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.mlp_hidden, d),
        )
        self.modulation = nn.Parameter(torch.randn(6, d) / math.sqrt(d))

    def forward(
        self,
        x: Tensor,
        time_mod: Tensor,
        cos: Tensor,
        sin: Tensor,
        kv_cache: AttentionContext | None,
        attn_mask: Tensor | None,
    ) -> Tensor:
        b, n, d = x.shape
        frames = time_mod.shape[1]
        mod = (self.modulation + time_mod).unsqueeze(3)  # (B, F, 6, 1, D): broadcast over tokens
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(2)

        def per_frame(t: Tensor) -> Tensor:
            return t.view(b, frames, n // frames, d)

        h = (per_frame(self.norm1(x)) * (1 + scale1) + shift1).view(b, n, d)
        x = x + (per_frame(self.attn(h, cos, sin, kv_cache, attn_mask)) * gate1).view(b, n, d)
        h = (per_frame(self.norm2(x)) * (1 + scale2) + shift2).view(b, n, d)
        return x + (per_frame(self.mlp(h)) * gate2).view(b, n, d)


class CausalVideoDiT(nn.Module):
    """The student backbone. Build with a config; load weights separately (``weights.py``)."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__()
        self.config = config
        d, p = config.hidden, config.patch_size
        self.patch_embed = nn.Linear(config.latent_channels * p * p, d)
        # No bias: all-zero conditioning (the in-context frames) must add exactly nothing.
        self.cond_embed = nn.Linear(config.latent_cond_channels * p * p, d, bias=False)
        self.time_embed = nn.Sequential(nn.Linear(config.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(DiTBlock(config, i) for i in range(config.num_layers))
        self.head_norm = nn.LayerNorm(d, eps=config.norm_eps, elementwise_affine=False)
        self.head_modulation = nn.Parameter(torch.randn(2, d) / math.sqrt(d))
        self.head = nn.Linear(d, config.latent_channels * p * p)
        self.rope = Rope3D(config.head_dim, config.grid_height, config.grid_width, config.rope_theta)

    def forward(
        self,
        latents: Tensor,
        timesteps: Tensor,
        frame_positions: Tensor,
        cond: Tensor | None = None,
        *,
        kv_cache: AttentionContext | None = None,
        attn_mask: Tensor | None = None,
        return_output: bool = True,
    ) -> Tensor | None:
        """Velocity for ``latents`` (B, F, C, h, w).

        ``timesteps`` (B, F) is the model time (0..1000) of each frame; ``frame_positions`` (B, F)
        the absolute RoPE frame index; ``cond`` (B, F, 4*Cc, h, w) the pose/mask conditioning at
        the latent grid, added to the tokens. With ``kv_cache`` the forward also stores its K/V in
        the cache's scratch (the caller decides whether to commit them). ``return_output=False``
        skips the head: cache-writing passes need K/V only.
        """
        cfg = self.config
        b, frames, c, h, w = latents.shape
        x = self.patch_embed(patchify(latents, cfg.patch_size))
        if cond is not None:
            x = x + self.cond_embed(patchify(cond.to(x.dtype), cfg.patch_size))
        emb = self.time_embed(timestep_embedding(timesteps, cfg.freq_dim).to(x.dtype))
        time_mod = self.time_proj(emb).view(b, frames, 6, cfg.hidden)
        cos, sin = self.rope.cos_sin(frame_positions, x.dtype)
        for block in self.blocks:
            x = block(x, time_mod, cos, sin, kv_cache, attn_mask)
        if not return_output:
            return None
        shift, scale = (self.head_modulation + emb[:, :, None, :]).unsqueeze(3).unbind(2)
        x = self.head_norm(x).view(b, frames, -1, cfg.hidden) * (1 + scale) + shift
        out = self.head(x.view(b, -1, cfg.hidden))
        return unpatchify(out, frames, c, h, w, cfg.patch_size)
