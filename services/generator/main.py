"""Generator service: ``python -m services.generator.main``."""

from __future__ import annotations

from runtime.service import service_main
from services.generator.handlers import GeneratorHandlers
from services.generator.settings import GeneratorSettings


def main() -> None:
    settings = GeneratorSettings.from_env()
    service_main("generator", settings, lambda ctx: GeneratorHandlers(ctx, settings))


if __name__ == "__main__":
    main()
