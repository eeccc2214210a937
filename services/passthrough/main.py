"""Pass-through stage: ``python -m services.passthrough.main``."""

from __future__ import annotations

from services.passthrough.handlers import PassthroughHandlers
from shared.service import service_main
from shared.settings import BaseSettings


def main() -> None:
    settings = BaseSettings.from_env()
    service_main("passthrough", settings, lambda ctx: PassthroughHandlers(ctx, settings))


if __name__ == "__main__":
    main()
