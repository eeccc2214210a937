"""The one error with a code that every service raises for input it rejects.

Why one class: a rejection is data, not a crash. The frame stage, the control path and the
garment service all turn it into the same three things (an error event with ``code``, a
rate-limited log line, a metric labelled with ``code``), so they need one type to catch.
"""

from __future__ import annotations

from typing import ClassVar


class CodedError(Exception):
    """An error a caller sees as data: a machine-readable ``code`` and a ``message`` for humans.

    A subclass may restrict its codes with ``codes`` (checked at construction, so a typo in a code
    fails where it is written, not at the client that cannot interpret it).
    """

    codes: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, code: str, message: str, **data: object) -> None:
        if self.codes is not None and code not in self.codes:
            raise ValueError(f"unknown {type(self).__name__} code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data  # extra fields for the error event (e.g. ``retry_after_s``)
