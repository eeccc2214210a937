"""The one exception the garment code raises for anything a caller should see as an error reply."""

from __future__ import annotations

from shared.garment_schemas import GARMENT_ERROR_CODES


class GarmentError(Exception):
    """An error with a machine-readable ``code`` from ``GARMENT_ERROR_CODES``."""

    def __init__(self, code: str, message: str) -> None:
        if code not in GARMENT_ERROR_CODES:
            raise ValueError(f"unknown garment error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
