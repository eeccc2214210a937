"""The warp backend's settings from the environment reach the renderer a session gets."""

from __future__ import annotations

import pytest

from runtime.settings import SettingsError
from services.generator.backends import make_backend
from services.generator.settings import GeneratorSettings
from services.generator.warp import WarpConfig
from tools.samples import catalogue_garment

pytestmark = pytest.mark.unit


def test_the_default_pixel_budget_is_the_renderers_own() -> None:
    assert GeneratorSettings().warp_pixel_budget == WarpConfig().pixel_budget


def test_the_pixel_budget_from_the_environment_is_the_one_a_sessions_renderer_draws_with() -> None:
    settings = GeneratorSettings.from_env({"CHAMELEON_WARP_PIXEL_BUDGET": "30000"})
    backend = make_backend("warp", settings)
    renderer = backend.open("s", catalogue_garment("tee-red-solid"))
    try:
        assert renderer.config.pixel_budget == 30_000
    finally:
        renderer.close()


def test_a_negative_pixel_budget_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match="CHAMELEON_WARP_PIXEL_BUDGET"):
        GeneratorSettings.from_env({"CHAMELEON_WARP_PIXEL_BUDGET": "-1"})
