"""The admin API of a service's dead letters, one router per service (``router(name)``).

Every service lists its own dead letters under ``/api/admin/dead-letters/<service>``: the
gateway routes by path and merges the four OpenAPI documents, so each service's paths
carry its name. The work is ``shared.dead_letters``; this module parses and maps refusals.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request
from pydantic import AwareDatetime, BaseModel, Field

from shared import dead_letters
from shared.auth import AdminUser
from shared.dead_letters import DeadLetterFilter, DeadLetterStatus, ReplayOutcome, StoredDeadLetter
from shared.errors import ApiError, not_found
from shared.events import Topic
from shared.openapi import errors
from shared.service import DbPool
from shared.settings import ServiceSettings
from shared.validation import MAX_BIGINT, MAX_PAGE

PREFIX = "/api/admin/dead-letters"
MAX_SELECTION = 1000

LetterId = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="The dead letter's id in this service")]
Source = Annotated[Topic | None, Query(description="Only letters of this source topic")]
Since = Annotated[
    AwareDatetime | None, Query(description="Only letters written at or after this time (ISO 8601, with an offset)")
]


class DeadLetterOut(BaseModel):
    id: int
    consumer_group: str = Field(description="The consumer that gave up (its group name, without a topic prefix)")
    source_topic: str
    partition: int
    offset: int
    message_key: str | None = Field(description="The message's key, decoded as UTF-8 (with replacement)")
    event_id: UUID | None = Field(description="The event the message names, when it names one")
    event_type: str | None
    error: str
    attempts: int
    created_at: datetime
    status: DeadLetterStatus = Field(
        description="`pending`; `replayed` (written back to its topic); `applied` (its consumer had applied it)"
    )
    replayed_at: datetime | None
    replay_count: int = Field(description="How many times it was written back to its topic")
    replayed_by: str | None


class DeadLetterDetailOut(DeadLetterOut):
    value: str = Field(description="The message's value, decoded as UTF-8 (with replacement)")
    letter_id: UUID = Field(description="The event id of the `dead-letter` event that announced it")


class DeadLetterPage(BaseModel):
    data: list[DeadLetterOut]
    meta: dict[str, Any]


class ReplayOut(BaseModel):
    outcome: ReplayOutcome = Field(
        description="`replayed`: written back to its topic; `already_replayed`: it was before, nothing written; "
                    "`already_applied`: its consumer has applied the event, nothing written"
    )
    dead_letter: DeadLetterDetailOut


class ReplayedOut(BaseModel):
    id: int
    outcome: ReplayOutcome


class SelectionOut(BaseModel):
    counts: dict[str, int] = Field(description="How many letters had each outcome")
    items: list[ReplayedOut]


def _out(letter: StoredDeadLetter, model: type[DeadLetterOut] = DeadLetterOut) -> Any:
    fields = letter.model_dump()
    fields["message_key"] = (
        letter.message_key.decode("utf-8", "replace") if letter.message_key is not None else None
    )
    fields["value"] = letter.value.decode("utf-8", "replace")
    return model.model_validate(fields)


def _settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.settings
    return settings


def router(service: str) -> APIRouter:
    """The dead-letter routes of ``service`` (its name in the paths)."""
    routes = APIRouter(prefix=f"{PREFIX}/{service}", tags=["dead letters"])

    @routes.get("", response_model=DeadLetterPage, summary=f"List the dead letters of {service}")
    async def list_dead_letters(
        pool: DbPool,
        _: AdminUser,
        source: Source = None,
        since: Since = None,
        status: DeadLetterStatus | None = None,
        page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
        per_page: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> DeadLetterPage:
        """Newest first, paged."""
        found = DeadLetterFilter(source.value if source else None, since, status)
        rows, total = await dead_letters.list_letters(pool, found, page=page, per_page=per_page)
        return DeadLetterPage(data=[_out(r) for r in rows], meta={"total": total, "page": page, "per_page": per_page})

    @routes.post("/replay", response_model=dict[str, SelectionOut], summary=f"Replay dead letters of {service}")
    async def replay_dead_letters(
        request: Request,
        pool: DbPool,
        admin: AdminUser,
        source: Source = None,
        since: Since = None,
        limit: Annotated[int, Query(ge=1, le=MAX_SELECTION, description="At most this many letters")] = 100,
    ) -> dict[str, SelectionOut]:
        """The pending letters the filters select, oldest first: each written back to its topic
        once, at most one copy per event, none for an event its consumer has applied since,
        none older than the inbox retention (`expired`)."""
        found = DeadLetterFilter(source.value if source else None, since)
        done = await dead_letters.replay_selection(
            pool, found, by=f"admin:{admin.id}", retention_days=_settings(request).inbox_retention_days,
            limit=limit,
        )
        counts: dict[str, int] = {}
        for item in done:
            counts[item.outcome.value] = counts.get(item.outcome.value, 0) + 1
        items = [ReplayedOut(id=item.id, outcome=item.outcome) for item in done]
        return {"data": SelectionOut(counts=counts, items=items)}

    @routes.get("/{dead_letter_id}", response_model=dict[str, DeadLetterDetailOut],
                responses=errors((404, "dead_letter_not_found")), summary=f"Show a dead letter of {service}")
    async def get_dead_letter(
        pool: DbPool, _: AdminUser, dead_letter_id: LetterId
    ) -> dict[str, DeadLetterDetailOut]:
        try:
            letter = await dead_letters.get_letter(pool, dead_letter_id)
        except dead_letters.DeadLetterNotFound as exc:
            raise _not_found(dead_letter_id) from exc
        return {"data": _out(letter, DeadLetterDetailOut)}

    @routes.post("/{dead_letter_id}/replay", response_model=dict[str, ReplayOut],
                 responses=errors((404, "dead_letter_not_found"), (409, "dead_letter_expired")),
                 summary=f"Replay a dead letter of {service}")
    async def replay_dead_letter(
        request: Request,
        pool: DbPool,
        admin: AdminUser,
        dead_letter_id: LetterId,
        force: Annotated[bool, Query(description="Write it back again although it was replayed before")] = False,
    ) -> dict[str, ReplayOut]:
        """Write the message back to its topic through the outbox, and remove the inbox marker
        dead-lettering left, so that its consumer applies it once."""
        try:
            outcome, letter = await dead_letters.replay(
                pool, dead_letter_id, by=f"admin:{admin.id}",
                retention_days=_settings(request).inbox_retention_days, force=force,
            )
        except dead_letters.DeadLetterNotFound as exc:
            raise _not_found(dead_letter_id) from exc
        except dead_letters.DeadLetterExpired as exc:
            raise ApiError(
                409, "dead_letter_expired",
                "The letter is older than the inbox retention: other consumers may apply it again",
                id=dead_letter_id,
            ) from exc
        return {"data": ReplayOut(outcome=outcome, dead_letter=_out(letter, DeadLetterDetailOut))}

    return routes


def _not_found(dead_letter_id: int) -> ApiError:
    return not_found("dead_letter_not_found", "No dead letter has this id in this service", id=dead_letter_id)
