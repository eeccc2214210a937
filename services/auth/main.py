"""Auth callout service: ``python -m services.auth.main``."""

from __future__ import annotations

from services.auth.handlers import AuthHandlers
from services.auth.settings import AuthSettings
from shared.service import service_main


def main() -> None:
    settings = AuthSettings.from_env()
    service_main("auth", settings, lambda ctx: AuthHandlers(ctx, settings))


if __name__ == "__main__":
    main()
