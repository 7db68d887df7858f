"""Erasing a learner (``learner-erased``): what every service does the same way.

Enrollment records the request and publishes ``learner-erased``; each service erases or
pseudonymises its own data in one transaction and records a receipt in its ``erasures``
table (the same shape in every database), which its internal API answers
(``GET /internal/erasures/{event_id}``) so that enrollment can show each service's status.

No table keeps the user id of an erased learner: a request and a receipt hold the
*subject*, the SHA-256 of the id, so that a second request for the same learner is
recognised and a forged event naming someone else is not confirmed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote
from uuid import UUID, uuid4

import httpx
from pydantic import BaseModel, ConfigDict, Field

from shared.db import Connection, Executor
from shared.domain import DomainError
from shared.events import LearnerErased
from shared.inbox import EventContext, RejectedEvent
from shared.internal import INTERNAL_PREFIX, PeerUnavailable, get_internal


def subject_of(user_id: str) -> str:
    """The learner's subject: what is kept instead of the id (hex SHA-256 of its UTF-8)."""
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()


def new_pseudonym() -> str:
    """A random id that replaces an erased learner's records' user id in one service:
    their figures still count, and nothing links them to the person (nor across services)."""
    return f"erased-{uuid4().hex}"


class ErasureRequest(BaseModel):
    """Enrollment's record of an erasure request: ``GET /internal/erasures/{event_id}``."""

    model_config = ConfigDict(frozen=True)

    event_id: UUID
    subject: str
    requested_at: datetime
    completed_at: datetime | None = None


class ErasureReceipt(BaseModel):
    """A service's record that it has erased a learner: ``GET /internal/erasures/{event_id}``.
    ``summary`` counts what was erased, by kind (rows, never their contents)."""

    model_config = ConfigDict(frozen=True)

    event_id: UUID
    subject: str
    erased_at: datetime
    summary: dict[str, int] = Field(default_factory=dict)


def needles(values: Iterable[str]) -> list[bytes]:
    """What a stored JSON payload holding one of ``values`` contains: the value as a JSON
    string (``"ada@example.com"``), and as a string inside a JSON string (a dead letter
    keeps the original message as text: ``\\"ada@example.com\\"``)."""
    found: list[bytes] = []
    for value in sorted({v for v in values if v}):
        quoted = json.dumps(value, ensure_ascii=False)
        found.append(quoted.encode())
        found.append(json.dumps(quoted, ensure_ascii=False)[1:-1].encode())
    return found


async def purge_outbox(conn: Connection, user_id: str, personal: Iterable[str] = ()) -> int:
    """Delete the outbox rows (published or not) that carry the learner: keyed by them
    (``user_id`` or ``user_id:...``), or whose payload holds the id, a name or an address of
    theirs (``personal``) as a JSON string. Unpublished rows go too: they would carry the
    person to the broker after the erasure. Returns how many."""
    status = await conn.execute(
        "DELETE FROM outbox WHERE key = $1 OR left(key, length($1) + 1) = $1 || ':' "
        "OR EXISTS (SELECT 1 FROM unnest($2::bytea[]) AS n (needle) WHERE position(n.needle IN payload) > 0)",
        user_id, needles([user_id, *personal]),
    )
    return int(status.split()[-1])


async def purge_dead_letters(conn: Connection, user_id: str, personal: Iterable[str] = ()) -> int:
    """Delete the dead letters (``shared.dead_letters``) that carry the learner: keyed by
    them, whose message holds their id, a name or an address as a JSON string, or whose
    error names one of these as a word of its own (a letter of another learner whose id
    merely contains this one stays). Returns how many."""
    values = sorted({v for v in (user_id, *personal) if v})
    status = await conn.execute(
        "DELETE FROM dead_letters WHERE message_key = convert_to($1, 'UTF8') "
        "OR position(convert_to($1 || ':', 'UTF8') IN message_key) = 1 "
        "OR EXISTS (SELECT 1 FROM unnest($2::bytea[]) AS n (needle) WHERE position(n.needle IN value) > 0) "
        "OR EXISTS (SELECT 1 FROM unnest($3::text[]) AS w (word) WHERE error ~ w.word)",
        user_id, needles(values), [rf"(^|[^\w@.:-]){re.escape(v)}($|[^\w@.:-])" for v in values],
    )
    return int(status.split()[-1])


async def record_receipt(conn: Connection, event_id: UUID, subject: str, requested_at: datetime,
                         summary: dict[str, int]) -> None:
    await conn.execute(
        "INSERT INTO erasures (event_id, subject, requested_at, summary) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (event_id) DO NOTHING",
        event_id, subject, requested_at, summary,
    )


class ReceiptNotFound(DomainError):
    """The service has no receipt under this event id: it has not erased that learner (yet)."""

    default_message = "This service has not erased this learner (yet)"


async def require_receipt(conn: Executor, event_id: UUID) -> ErasureReceipt:
    """The service's receipt of the erasure ``event_id``, as its internal API answers it."""
    found = await receipt(conn, event_id)
    if found is None:
        raise ReceiptNotFound()
    return found


async def receipt(conn: Executor, event_id: UUID) -> ErasureReceipt | None:
    row = await conn.fetchrow(
        "SELECT event_id, subject, erased_at, summary::text AS summary FROM erasures WHERE event_id = $1",
        event_id,
    )
    if row is None:
        return None
    return ErasureReceipt(event_id=row["event_id"], subject=row["subject"], erased_at=row["erased_at"],
                          summary=json.loads(row["summary"]))


async def export_rows(conn: Executor, tables: Sequence[tuple[str, str]], user_id: str,
                      omit: Sequence[str] = ()) -> dict[str, list[Any]]:
    """Every row of ``tables`` (name, user column: names from the code, never from a
    request) whose user column is ``user_id``, as JSON objects without the ``omit`` columns
    (secrets, file contents)."""
    found: dict[str, list[Any]] = {}
    for table, column in tables:
        text = await conn.fetchval(
            f"SELECT coalesce(jsonb_agg(to_jsonb(t) - $2::text[]), '[]')::text FROM {table} t "
            f"WHERE t.{column} = $1",
            user_id, list(omit),
        )
        found[table] = json.loads(text)
    return found


# -- erasure ------------------------------------------------------------------------------------


async def confirm_erasure(enrollment: httpx.AsyncClient, claimed: LearnerErased) -> ErasureRequest:
    """Enrollment's record of the erasure request behind a learner-erased event
    (``GET /internal/erasures/{event_id}``): ``RejectedEvent`` when enrollment recorded no
    such request, or one for another learner (its subject is not the claimed id's), so a
    forged event erases nobody; ``TransientError`` when enrollment cannot answer."""
    body = await get_internal(enrollment, f"{INTERNAL_PREFIX}/erasures/{claimed.event_id}", "enrollment")
    if body is None:
        raise RejectedEvent(f"enrollment recorded no erasure request {claimed.event_id}")
    request = ErasureRequest.model_validate_json(body)
    if request.subject != subject_of(claimed.user_id):
        raise RejectedEvent(f"learner-erased {claimed.event_id} names another learner than enrollment's request")
    return request


async def erasure_receipt(client: httpx.AsyncClient, peer: str, event_id: UUID) -> ErasureReceipt | None:
    """``peer``'s receipt of the erasure ``event_id`` (None: not erased yet);
    ``PeerUnavailable`` when it cannot be asked."""
    body = await get_internal(client, f"{INTERNAL_PREFIX}/erasures/{event_id}", peer)
    return ErasureReceipt.model_validate_json(body) if body is not None else None


async def learner_export(client: httpx.AsyncClient, peer: str, user_id: str) -> dict[str, object]:
    """Everything ``peer`` holds on the learner (``GET /internal/learners/{user_id}/export``);
    ``PeerUnavailable`` when it cannot be asked."""
    path = f"{INTERNAL_PREFIX}/learners/{quote(user_id, safe='')}/export"
    body = await get_internal(client, path, peer)
    if body is None:
        raise PeerUnavailable(peer, f"answered 404 to {path}")
    found: dict[str, object] = json.loads(body)
    return found


# What a service erases, in the inbox transaction: (rows erased by table, the learner's
# names and addresses it held, for the outbox purge). ``pseudonym`` replaces the user id
# where the service keeps records for their figures.
Eraser = Callable[[Connection, str, str], Awaitable[tuple[dict[str, int], list[str]]]]


async def apply(ctx: EventContext, enrollment: httpx.AsyncClient, event: LearnerErased, erase: Eraser) -> None:
    """A service's handling of ``learner-erased``: nothing again for a redelivery; confirmed
    with enrollment first (a forged event erases nobody: ``RejectedEvent``); then, in the
    inbox transaction, ``erase``, the outbox purged of the learner, and the receipt that the
    service's internal API answers."""
    if await ctx.already_applied():
        return
    request = await confirm_erasure(enrollment, event)
    async with ctx.transaction() as conn:
        summary, personal = await erase(conn, event.user_id, new_pseudonym())
        summary["outbox"] = await purge_outbox(conn, event.user_id, personal)
        summary["dead_letters"] = await purge_dead_letters(conn, event.user_id, personal)
        await record_receipt(conn, event.event_id, request.subject, request.requested_at, summary)
