"""Preprocess service: ``python -m services.preprocess.main``."""

from __future__ import annotations

from runtime.service import service_main
from services.preprocess.handlers import PreprocessHandlers
from services.preprocess.settings import PreprocessSettings


def main() -> None:
    settings = PreprocessSettings.from_env()
    service_main("preprocess", settings, lambda ctx: PreprocessHandlers(ctx, settings))


if __name__ == "__main__":
    main()
