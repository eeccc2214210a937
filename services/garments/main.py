"""Garment catalogue service: ``python -m services.garments.main``."""

from __future__ import annotations

from runtime.service import service_main
from services.garments.handlers import GarmentHandlers
from services.garments.settings import GarmentSettings


def main() -> None:
    settings = GarmentSettings.from_env()
    service_main("garments", settings, lambda ctx: GarmentHandlers(ctx, settings))


if __name__ == "__main__":
    main()
