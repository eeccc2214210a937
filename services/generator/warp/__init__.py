"""``warp``: the classical CPU try-on renderer (piecewise-affine garment warp + shading transfer)."""

from services.generator.warp.renderer import Reference, WarpBackend, WarpConfig, WarpRenderer

__all__ = ["Reference", "WarpBackend", "WarpConfig", "WarpRenderer"]
