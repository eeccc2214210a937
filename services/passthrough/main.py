"""Pass-through stage: ``python -m services.passthrough.main``."""

from __future__ import annotations

from runtime.service import service_main
from runtime.settings import BaseSettings
from services.passthrough.handlers import PassthroughHandlers


def main() -> None:
    settings = BaseSettings.from_env()
    service_main("passthrough", settings, lambda ctx: PassthroughHandlers(ctx, settings))


if __name__ == "__main__":
    main()
