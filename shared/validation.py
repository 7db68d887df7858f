"""Field types for request models and parameters: values PostgreSQL can store.

A client's value that the database would refuse (a NUL character in text, an integer
beyond 64 bits) must be a 400 naming the field at the edge, before anything is looked up,
buffered or half written. ``shared.errors`` maps the database's own refusals to 400 as
a safety net; these types are the rule.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

MAX_BIGINT = 2**63 - 1  # PostgreSQL bigint; also the most asyncpg will encode as int8
MAX_PAGE = 1_000_000  # with at most a few hundred per page, an offset well inside bigint


def storable(value: str) -> bool:
    """Whether PostgreSQL can store ``value`` as text: no U+0000 ("invalid byte sequence
    for encoding UTF8: 0x00") and no lone surrogate (JSON's "\\ud800", not UTF-8 at all)."""
    if "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def storable_text(value: str) -> str:
    if not storable(value):
        raise ValueError("must not contain NUL characters or invalid Unicode")
    return value


# Any string a request may carry into the database. With StringConstraints, put STORABLE
# after them (``Annotated[str, StringConstraints(...), STORABLE]``): a validator before the
# constraints would make pydantic check lengths before stripping whitespace.
STORABLE = AfterValidator(storable_text)
Text = Annotated[str, STORABLE]
# Ids of bigint columns (and of integer ones, whose routes bound them lower themselves).
BigId = Annotated[int, Field(ge=1, le=MAX_BIGINT)]
Page = Annotated[int, Field(ge=1, le=MAX_PAGE)]
