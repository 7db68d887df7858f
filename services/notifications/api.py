"""Admin reads of the sent-notification log: what was sent to whom, every attempt and its outcome."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from services.notifications import usecases
from services.notifications.domain import MailFilter, MailKind, MailStatus, NotificationNotFound
from shared.auth import AdminUser
from shared.errors import ErrorMap, HttpError
from shared.service import DbPool
from shared.validation import MAX_BIGINT, MAX_PAGE

router = APIRouter(prefix="/api/admin/notifications", tags=["notifications"])
ROUTERS = [router]

# The one place the service's refusals become HTTP answers.
ERRORS: ErrorMap = {
    NotificationNotFound: HttpError(404, "notification_not_found"),
}


class AttemptOut(BaseModel):
    attempt: int
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    smtp_code: int | None
    detail: str | None


class MailOut(BaseModel):
    id: int
    event_id: UUID
    kind: str
    user_id: str
    course_id: int
    recipient: str
    message_id: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    smtp_response: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None


class MailDetailOut(MailOut):
    attempt_log: list[AttemptOut]


class MailPage(BaseModel):
    data: list[MailOut]
    meta: dict[str, Any]


@router.get("", response_model=MailPage)
async def list_notifications(
    pool: DbPool,
    _: AdminUser,
    user_id: Annotated[str | None, Query(max_length=200)] = None,
    course_id: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,  # an integer column
    event_id: UUID | None = None,
    status: MailStatus | None = None,
    kind: MailKind | None = None,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 50,
) -> MailPage:
    rows, total = await usecases.list_mail(
        pool,
        MailFilter(user_id=user_id, course_id=course_id, event_id=event_id, status=status, kind=kind),
        page=page,
        per_page=per_page,
    )
    return MailPage(
        data=[MailOut.model_validate(r) for r in rows],
        meta={"total": total, "page": page, "per_page": per_page},
    )


@router.get("/{mail_id}", response_model=dict[str, MailDetailOut])
async def get_notification(
    pool: DbPool, _: AdminUser, mail_id: Annotated[int, Path(ge=1, le=MAX_BIGINT)]
) -> dict[str, MailDetailOut]:
    return {"data": MailDetailOut.model_validate(await usecases.get_mail(pool, mail_id))}
