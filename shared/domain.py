"""What every service's pure domain may use: who is acting (``User``, from a verified
token) and the base of the refusals it states.

Nothing here (or imported from here) does I/O or knows HTTP; each service maps its
refusals to a status and code in one place, its ``api.py`` (``ServiceSpec.errors``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

Role = Literal["learner", "instructor", "admin"]


class DomainError(Exception):
    """A refusal stated by a service's domain or use cases, without HTTP. ``data`` goes to
    the error body's ``data`` when the service answers it. A refusal that always says the
    same sets ``default_message`` and is raised without arguments."""

    default_message: ClassVar[str] = ""

    def __init__(self, message: str = "", **data: Any) -> None:
        message = message or self.default_message
        super().__init__(message)
        self.message = message
        self.data = data


class User(BaseModel):
    """The caller, as its verified token describes it (``shared.auth`` verifies it)."""

    id: str = Field(alias="sub")
    name: str = ""
    email: str = ""
    roles: list[Role] = Field(default_factory=lambda: list[Role](["learner"]))
    username: str = ""
    avatar: str | None = None

    model_config = {"populate_by_name": True, "frozen": True}

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def is_instructor(self) -> bool:
        return "instructor" in self.roles
