"""Generator service: ``python -m services.generator.main``."""

from __future__ import annotations

from services.generator.handlers import GeneratorHandlers
from services.generator.settings import GeneratorSettings
from shared.service import service_main


def main() -> None:
    settings = GeneratorSettings.from_env()
    service_main("generator", settings, lambda ctx: GeneratorHandlers(ctx, settings))


if __name__ == "__main__":
    main()
