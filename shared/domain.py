"""What every service's pure domain may use: the base of the refusals it states.

Nothing here (or imported from here) does I/O or knows HTTP; each service maps its
refusals to a status and code in one place, its ``api.py`` (``ServiceSpec.errors``).
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A refusal stated by a service's domain or use cases, without HTTP. ``data`` goes to
    the error body's ``data`` when the service answers it."""

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
