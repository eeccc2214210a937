"""``warp``: the classical CPU try-on renderer (piecewise-affine garment warp + shading transfer)."""

from services.generator.warp.session import Reference, WarpBackend, WarpConfig, WarpSession

__all__ = ["Reference", "WarpBackend", "WarpConfig", "WarpSession"]
