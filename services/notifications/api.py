"""Admin routes: the sent-notification log (what was sent to whom, every attempt and its
outcome), webhook endpoints, and their delivery logs and replays; the xAPI statements'
delivery log and replay."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field, StringConstraints

from services.notifications import usecases
from services.notifications.domain import (
    MAX_URL_LENGTH,
    DeliveryFilter,
    DeliveryNotFound,
    DeliveryStatus,
    EventType,
    MailFilter,
    MailKind,
    MailStatus,
    NotificationNotFound,
    OwnerEmailRequired,
    WebhookNotFound,
    WebhookUrlNotAllowed,
)
from services.notifications.usecases import NotificationsState
from shared import dead_letters_api
from shared.auth import AdminUser, InternalCaller
from shared.erasure import ReceiptNotFound, require_receipt
from shared.errors import ErrorMap, HttpError
from shared.openapi import errors
from shared.service import DbPool, state_of
from shared.validation import MAX_BIGINT, MAX_PAGE, STORABLE

router = APIRouter(prefix="/api/admin/notifications", tags=["notifications"])
webhooks = APIRouter(prefix="/api/admin/webhooks", tags=["webhooks"])
statements = APIRouter(prefix="/api/admin/xapi/deliveries", tags=["xapi"])
internal = APIRouter(prefix="/internal", tags=["internal"], include_in_schema=False)
# The service's dead letters: the admin routes every service has (shared.dead_letters_api).
ROUTERS = [router, webhooks, statements, internal, dead_letters_api.router("notifications")]

# The one place the service's refusals become HTTP answers.
ERRORS: ErrorMap = {
    NotificationNotFound: HttpError(404, "notification_not_found"),
    ReceiptNotFound: HttpError(404, "erasure_not_found"),
    WebhookNotFound: HttpError(404, "webhook_not_found"),
    DeliveryNotFound: HttpError(404, "delivery_not_found"),
    WebhookUrlNotAllowed: HttpError(400, "webhook_url_not_allowed"),
    OwnerEmailRequired: HttpError(400, "owner_email_required"),
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
    course_id: int | None
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


@router.get("/{mail_id}", response_model=dict[str, MailDetailOut], responses=errors((404, "notification_not_found")))
async def get_notification(
    pool: DbPool, _: AdminUser, mail_id: Annotated[int, Path(ge=1, le=MAX_BIGINT)]
) -> dict[str, MailDetailOut]:
    return {"data": MailDetailOut.model_validate(await usecases.get_mail(pool, mail_id))}


# --- Webhook endpoints ----------------------------------------------------------------

Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_URL_LENGTH), STORABLE]
Email = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=254,
                                         pattern=r"^[^@\s]+@[^@\s]+$"), STORABLE]
Description = Annotated[str, StringConstraints(max_length=500), STORABLE]
EventTypes = Annotated[list[EventType], Field(min_length=1, max_length=4)]
EndpointId = Annotated[int, Path(ge=1, le=MAX_BIGINT)]
DeliveryId = Annotated[int, Path(ge=1, le=MAX_BIGINT)]


class EndpointIn(BaseModel):
    url: Url
    event_types: EventTypes
    description: Description = ""
    # Who is told if the endpoint is disabled; default: the registering admin's address.
    owner_email: Email | None = None


class EndpointPatch(BaseModel):
    url: Url | None = None
    event_types: EventTypes | None = None
    description: Description | None = None
    owner_email: Email | None = None
    enabled: bool | None = None


class EndpointOut(BaseModel):
    id: int
    url: str
    event_types: list[str]
    description: str
    owner_email: str
    created_by: str
    enabled: bool
    disabled_at: datetime | None
    disabled_reason: str | None
    failing_since: datetime | None
    last_success_at: datetime | None
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointOut):
    # The signing secret (whsec_<base64>): shown when created or rotated, never again.
    secret: str


class EndpointPage(BaseModel):
    data: list[EndpointOut]
    meta: dict[str, Any]


class DeliveryAttemptOut(BaseModel):
    attempt: int
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    status_code: int | None
    error: str | None
    duration_ms: int | None
    response_excerpt: str | None


class _Delivery(BaseModel):
    """What every destination kind's delivery shows (the deliveries table is one for all)."""

    id: int
    message_id: str  # the same on every retry and replay (see each kind)
    event_id: UUID
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


class DeliveryOut(_Delivery):
    """A webhook delivery: its ``message_id`` is the webhook-id header."""

    endpoint_id: int


class DeliveryDetailOut(DeliveryOut):
    body: str  # exactly what is sent
    attempt_log: list[DeliveryAttemptOut]


class DeliveryPage(BaseModel):
    data: list[DeliveryOut]
    meta: dict[str, Any]


def _production(request: Request) -> bool:
    return state_of(request, NotificationsState).production


@webhooks.post("", status_code=201, response_model=dict[str, EndpointWithSecret],
               responses=errors((400, "webhook_url_not_allowed"), (400, "owner_email_required")))
async def create_webhook(
    request: Request, pool: DbPool, admin: AdminUser, body: EndpointIn
) -> dict[str, EndpointWithSecret]:
    endpoint, secret = await usecases.create_endpoint(
        pool, admin, url=body.url, event_types=list(body.event_types), description=body.description,
        owner_email=body.owner_email, production=_production(request),
    )
    return {"data": EndpointWithSecret.model_validate({**endpoint, "secret": secret})}


@webhooks.get("", response_model=EndpointPage)
async def list_webhooks(
    pool: DbPool,
    _: AdminUser,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 50,
) -> EndpointPage:
    rows, total = await usecases.list_endpoints(pool, page=page, per_page=per_page)
    return EndpointPage(
        data=[EndpointOut.model_validate(r) for r in rows], meta={"total": total, "page": page, "per_page": per_page}
    )


@webhooks.get("/{endpoint_id}", response_model=dict[str, EndpointOut], responses=errors((404, "webhook_not_found")))
async def get_webhook(pool: DbPool, _: AdminUser, endpoint_id: EndpointId) -> dict[str, EndpointOut]:
    return {"data": EndpointOut.model_validate(await usecases.get_endpoint(pool, endpoint_id))}


@webhooks.patch("/{endpoint_id}", response_model=dict[str, EndpointOut],
                responses=errors((400, "webhook_url_not_allowed"), (404, "webhook_not_found")))
async def update_webhook(
    request: Request, pool: DbPool, _: AdminUser, endpoint_id: EndpointId, body: EndpointPatch
) -> dict[str, EndpointOut]:
    changes = usecases.EndpointChanges(
        url=body.url, event_types=list(body.event_types) if body.event_types is not None else None,
        description=body.description, owner_email=body.owner_email, enabled=body.enabled,
    )
    endpoint = await usecases.update_endpoint(state_of(request, NotificationsState), pool, endpoint_id, changes)
    return {"data": EndpointOut.model_validate(endpoint)}


@webhooks.delete("/{endpoint_id}", status_code=204, responses=errors((404, "webhook_not_found")))
async def delete_webhook(pool: DbPool, _: AdminUser, endpoint_id: EndpointId) -> Response:
    await usecases.delete_endpoint(pool, endpoint_id)
    return Response(status_code=204)


@webhooks.post("/{endpoint_id}/rotate-secret", response_model=dict[str, EndpointWithSecret],
               responses=errors((404, "webhook_not_found")))
async def rotate_webhook_secret(
    pool: DbPool, _: AdminUser, endpoint_id: EndpointId
) -> dict[str, EndpointWithSecret]:
    endpoint, secret = await usecases.rotate_secret(pool, endpoint_id)
    return {"data": EndpointWithSecret.model_validate({**endpoint, "secret": secret})}


@webhooks.get("/{endpoint_id}/deliveries", response_model=DeliveryPage, responses=errors((404, "webhook_not_found")))
async def list_webhook_deliveries(
    pool: DbPool,
    _: AdminUser,
    endpoint_id: EndpointId,
    status: DeliveryStatus | None = None,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeliveryPage:
    rows, total = await usecases.list_deliveries(
        pool, endpoint_id, DeliveryFilter(status=status), page=page, per_page=per_page
    )
    return DeliveryPage(
        data=[DeliveryOut.model_validate(r) for r in rows], meta={"total": total, "page": page, "per_page": per_page}
    )


@webhooks.get("/{endpoint_id}/deliveries/{delivery_id}", response_model=dict[str, DeliveryDetailOut],
              responses=errors((404, "webhook_not_found"), (404, "delivery_not_found")))
async def get_webhook_delivery(
    pool: DbPool, _: AdminUser, endpoint_id: EndpointId, delivery_id: DeliveryId
) -> dict[str, DeliveryDetailOut]:
    return {"data": DeliveryDetailOut.model_validate(await usecases.get_delivery(pool, endpoint_id, delivery_id))}


@webhooks.post("/{endpoint_id}/deliveries/{delivery_id}/replay", response_model=dict[str, DeliveryDetailOut],
               responses=errors((404, "webhook_not_found"), (404, "delivery_not_found")))
async def replay_webhook_delivery(
    request: Request, pool: DbPool, _: AdminUser, endpoint_id: EndpointId, delivery_id: DeliveryId
) -> dict[str, DeliveryDetailOut]:
    delivery = await usecases.replay_delivery(state_of(request, NotificationsState), pool, endpoint_id, delivery_id)
    return {"data": DeliveryDetailOut.model_validate(delivery)}


# --- xAPI statements ---------------------------------------------------------------------


class StatementDeliveryOut(_Delivery):
    """An xAPI statement delivery: its ``message_id`` is the statement id."""


class StatementDeliveryDetailOut(StatementDeliveryOut):
    body: str  # the statement, exactly as sent
    attempt_log: list[DeliveryAttemptOut]


class StatementDeliveryPage(BaseModel):
    data: list[StatementDeliveryOut]
    meta: dict[str, Any]


@statements.get("", response_model=StatementDeliveryPage)
async def list_statement_deliveries(
    pool: DbPool,
    _: AdminUser,
    status: DeliveryStatus | None = None,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 50,
) -> StatementDeliveryPage:
    rows, total = await usecases.list_statement_deliveries(
        pool, DeliveryFilter(status=status), page=page, per_page=per_page
    )
    return StatementDeliveryPage(
        data=[StatementDeliveryOut.model_validate(r) for r in rows],
        meta={"total": total, "page": page, "per_page": per_page},
    )


@statements.get("/{delivery_id}", response_model=dict[str, StatementDeliveryDetailOut])
async def get_statement_delivery(
    pool: DbPool, _: AdminUser, delivery_id: DeliveryId
) -> dict[str, StatementDeliveryDetailOut]:
    return {"data": StatementDeliveryDetailOut.model_validate(await usecases.get_statement_delivery(pool, delivery_id))}


@statements.post("/{delivery_id}/replay", response_model=dict[str, StatementDeliveryDetailOut])
async def replay_statement_delivery(
    request: Request, pool: DbPool, _: AdminUser, delivery_id: DeliveryId
) -> dict[str, StatementDeliveryDetailOut]:
    delivery = await usecases.replay_statement_delivery(state_of(request, NotificationsState), pool, delivery_id)
    return {"data": StatementDeliveryDetailOut.model_validate(delivery)}


# --- internal: erasure and export of a learner (enrollment asks) -----------------------------


@internal.get("/erasures/{event_id}")
async def erasure(event_id: UUID, _: InternalCaller, pool: DbPool) -> dict[str, Any]:
    """This service's receipt of a learner's erasure (404 while it has not erased them)."""
    return (await require_receipt(pool, event_id)).model_dump(mode="json")


@internal.get("/learners/{user_id}/export")
async def learner_export(user_id: str, _: InternalCaller, pool: DbPool) -> dict[str, Any]:
    """Everything this service holds on the learner (its part of an export)."""
    return await usecases.export_learner(pool, user_id)
