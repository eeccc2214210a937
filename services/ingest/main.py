"""Frame ingest service: ``python -m services.ingest.main``."""

from __future__ import annotations

from runtime.service import service_main
from services.ingest.handlers import IngestHandlers
from services.ingest.settings import IngestSettings


def main() -> None:
    settings = IngestSettings.from_env()
    service_main("ingest", settings, lambda ctx: IngestHandlers(ctx, settings))


if __name__ == "__main__":
    main()
