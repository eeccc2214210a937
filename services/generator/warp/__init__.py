"""``warp``: the classical CPU try-on renderer (the garment mapped onto the person's own clothing,
part by part, with that clothing's shading)."""

from services.generator.warp.renderer import RenderDetail, WarpBackend, WarpConfig, WarpRenderer

__all__ = ["RenderDetail", "WarpBackend", "WarpConfig", "WarpRenderer"]
