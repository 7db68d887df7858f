"""The rules of sending mail, without I/O: what to send for an event, how a mail is
identified, how failures are classified, when the next try is due, and what the service
refuses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from shared.domain import DomainError
from shared.events import (
    CertificateIssued,
    CertificateRevoked,
    CourseCompleted,
    EnrollmentChanged,
    RecertificationScheduled,
)
from shared.retry import Backoff

# The events a mail is made from.
MailedEvent = CourseCompleted | CertificateIssued | CertificateRevoked | RecertificationScheduled


class MailKind(StrEnum):
    COURSE_COMPLETED = "course_completed"
    CERTIFICATE_READY = "certificate_ready"
    CERTIFICATE_REVOKED = "certificate_revoked"
    CERTIFICATE_REINSTATED = "certificate_reinstated"
    RECERTIFICATION_SCHEDULED = "recertification_scheduled"
    WEBHOOK_DISABLED = "webhook_disabled"  # to an endpoint's owner, not a learner


# The Message-ID's tag per kind (kept short so that the header fits on one line).
_MESSAGE_TAGS = {
    MailKind.COURSE_COMPLETED: "completed",
    MailKind.CERTIFICATE_READY: "certificate",
    MailKind.CERTIFICATE_REVOKED: "revoked",
    MailKind.CERTIFICATE_REINSTATED: "reinstated",
    MailKind.RECERTIFICATION_SCHEDULED: "recertification",
    MailKind.WEBHOOK_DISABLED: "webhook-disabled",
}


class MailStatus(StrEnum):
    PENDING = "pending"  # waiting for its (next) try
    SENDING = "sending"  # claimed by a worker until its lease ends
    SENT = "sent"  # the SMTP server accepted it
    FAILED = "failed"  # permanent failure (5xx): not retried, dead-lettered
    EXPIRED = "expired"  # temporary failures until the tries ran out: dead-lettered
    SKIPPED = "skipped"  # never sent, on purpose (too old, no address)


FINAL_STATUSES = frozenset({MailStatus.SENT, MailStatus.FAILED, MailStatus.EXPIRED, MailStatus.SKIPPED})


class AttemptOutcome(StrEnum):
    SENDING = "sending"  # in flight (written before the SMTP conversation starts)
    SENT = "sent"
    TEMPORARY_FAILURE = "temporary_failure"
    PERMANENT_FAILURE = "permanent_failure"
    # The process stopped mid-attempt; the server may or may not have accepted the mail.
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class PlannedMail:
    """What a consumed event turns into: one row of the outgoing-mail queue."""

    event_id: UUID
    kind: MailKind
    user_id: str
    course_id: int | None  # None: a mail about no course (an endpoint disabled)
    recipient: str
    message_id: str
    status: MailStatus
    note: str | None = None  # why it was skipped


_ADDRESS = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[^@\s<>(),;:\"\[\]\\]+\.[^@\s<>(),;:\"\[\]\\]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def header_safe(text: str, limit: int = 200) -> str:
    """Collapse control characters (CR/LF above all) so a value cannot start a new header."""
    cleaned = " ".join(_CONTROL.sub(" ", text).split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1].rstrip() + "…"


def valid_address(address: str) -> bool:
    return bool(_ADDRESS.match(address)) and len(address) <= 254


def message_id(kind: MailKind, event_id: UUID, from_address: str) -> str:
    """Stable for an (event, kind): a resend carries the same id, so it can be recognised."""
    domain = from_address.rpartition("@")[2] or "lessonstream.local"
    return f"<{event_id.hex}.{_MESSAGE_TAGS[kind]}@{domain}>"


def subject(kind: MailKind, course_title: str) -> str:
    """The subject; for ``WEBHOOK_DISABLED`` ``course_title`` is the endpoint's URL."""
    title = header_safe(course_title, 150)
    if kind is MailKind.WEBHOOK_DISABLED:
        return f"Your webhook endpoint {title} has been disabled"
    if kind is MailKind.COURSE_COMPLETED:
        return f"Congratulations, you completed {title}"
    if kind is MailKind.CERTIFICATE_REVOKED:
        return f"Your certificate for {title} has been revoked"
    if kind is MailKind.CERTIFICATE_REINSTATED:
        return f"Your certificate for {title} has been reinstated"
    if kind is MailKind.RECERTIFICATION_SCHEDULED:
        return f"Time to renew {title}: your course restarts soon"
    return f"Your certificate for {title} is ready"


def kind_of(event: MailedEvent) -> MailKind:
    if isinstance(event, CourseCompleted):
        return MailKind.COURSE_COMPLETED
    if isinstance(event, CertificateIssued):
        return MailKind.CERTIFICATE_READY
    if isinstance(event, RecertificationScheduled):
        return MailKind.RECERTIFICATION_SCHEDULED
    return MailKind.CERTIFICATE_REVOKED if event.status == "revoked" else MailKind.CERTIFICATE_REINSTATED


def recipient_of(event: Notice) -> tuple[str, str]:
    """Whom the mail goes to: (name, address); the learner, or the endpoint's owner."""
    if isinstance(event, WebhookDisabled):
        return event.owner_name, event.owner_email
    if isinstance(event, CourseCompleted | RecertificationScheduled):
        return event.user_name, event.user_email
    return event.student_name, event.student_email


def plan(
    event: MailedEvent,
    *,
    from_address: str,
    now: datetime,
    max_age: timedelta | None,
) -> PlannedMail:
    kind, recipient = kind_of(event), recipient_of(event)[1].strip()
    occurred = event.occurred_at if event.occurred_at.tzinfo else event.occurred_at.replace(tzinfo=UTC)
    status, note = MailStatus.PENDING, None
    if not valid_address(recipient):
        status, note = MailStatus.SKIPPED, "no valid recipient address"
    elif max_age is not None and now - occurred > max_age:
        status, note = MailStatus.SKIPPED, f"event older than {max_age}"
    return PlannedMail(
        event_id=event.event_id,
        kind=kind,
        user_id=event.user_id,
        course_id=event.course_id,
        recipient=recipient,
        message_id=message_id(kind, event.event_id, from_address),
        status=status,
        note=note,
    )


@dataclass(frozen=True)
class Failure:
    """Why an attempt did not deliver: temporary failures are retried, permanent ones are not."""

    temporary: bool
    detail: str
    smtp_code: int | None = None


def classify_smtp_code(code: int) -> bool:
    """True if an SMTP reply code means "try again later" (4xx); 5xx is permanent."""
    return not 500 <= code < 600


# How far the retries of a burst that failed together are spread: a delay is drawn from
# [d * (1 - RETRY_JITTER), d], d being the exponential step, so it never exceeds the cap.
RETRY_JITTER = 0.4


def retry_backoff(*, base_s: float, max_s: float) -> Backoff:
    """The schedule of a temporarily failing mail: ``base_s`` doubling after each try, at
    most ``max_s``, jittered downwards by up to ``RETRY_JITTER``."""
    return Backoff(first_s=base_s, max_s=max_s, jitter=RETRY_JITTER)


def retry_delay(attempt: int, *, base_s: float, max_s: float, draw: float | None = None) -> float:
    """Seconds until the next try after the ``attempt``-th one failed; ``draw`` in [0, 1)
    replaces the random draw (tests)."""
    return retry_backoff(base_s=base_s, max_s=max_s).delay(attempt, draw)


@dataclass(frozen=True)
class Decision:
    status: MailStatus
    outcome: AttemptOutcome
    retry_in_s: float | None = None  # set when status is PENDING
    dead_letter: bool = False


def after_failure(failure: Failure, attempt: int, *, max_attempts: int, delay_s: float) -> Decision:
    if not failure.temporary:
        return Decision(MailStatus.FAILED, AttemptOutcome.PERMANENT_FAILURE, dead_letter=True)
    if attempt >= max_attempts:
        return Decision(MailStatus.EXPIRED, AttemptOutcome.TEMPORARY_FAILURE, dead_letter=True)
    return Decision(MailStatus.PENDING, AttemptOutcome.TEMPORARY_FAILURE, retry_in_s=delay_s)


@dataclass(frozen=True)
class MailFilter:
    """What an admin narrows the sent-notification log to (unset: any)."""

    user_id: str | None = None
    course_id: int | None = None
    event_id: UUID | None = None
    status: MailStatus | None = None
    kind: MailKind | None = None


class NotificationNotFound(DomainError):
    """An admin asked for a mail the log does not hold."""

    def __init__(self, mail_id: int) -> None:
        super().__init__("No such notification", mail_id=mail_id)


# --- Webhooks ---------------------------------------------------------------------------


class WebhookDisabled(BaseModel):
    """What the owner of an endpoint the deliveries disabled is told (a mail of kind
    ``WEBHOOK_DISABLED``); ``event_id`` identifies this notice, the mail's Message-ID."""

    model_config = ConfigDict(frozen=True)

    event_id: UUID
    occurred_at: datetime  # when the endpoint was disabled
    endpoint_id: int
    url: str
    description: str
    reason: str
    failing_since: datetime | None
    last_error: str | None
    owner_email: str
    owner_name: str = ""
    created_by: str
    manage_url: str  # the endpoint in the admin API


# What a mail is made from: an event a learner is told about, or a notice to an owner.
Notice = MailedEvent | WebhookDisabled

EventType = Literal["course.completed", "certificate.issued", "certificate.revoked", "enrollment.changed"]
EVENT_TYPES: tuple[EventType, ...] = (
    "course.completed", "certificate.issued", "certificate.revoked", "enrollment.changed",
)
# The events webhooks announce: the mailed ones (but recertification notices) and enrollment changes.
WebhookEvent = CourseCompleted | CertificateIssued | CertificateRevoked | EnrollmentChanged

WEBHOOK_KIND = "webhook"  # deliveries.destination_kind of a webhook endpoint
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# How long the previous secret keeps signing after a rotation (receivers switch over).
ROTATION_OVERLAP = timedelta(hours=24)
MAX_URL_LENGTH = 2000


def event_type_of(event: WebhookEvent) -> EventType:
    if isinstance(event, CourseCompleted):
        return "course.completed"
    if isinstance(event, CertificateIssued):
        return "certificate.issued"
    if isinstance(event, CertificateRevoked):
        return "certificate.revoked"
    return "enrollment.changed"


def webhook_message_id(event_id: UUID) -> str:
    """The webhook-id of an event's message: the same on every retry and replay, and to every
    endpoint (each receiver dedupes its own)."""
    return f"msg_{event_id.hex}"


def _iso(value: datetime) -> str:
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def webhook_data(event: WebhookEvent) -> dict[str, Any]:
    """The ``data`` of a webhook: what the owner confirmed, without internal ids (event ids,
    enrollment ids) a receiver could not use."""
    if isinstance(event, CourseCompleted):
        return {
            "user_id": event.user_id, "user_name": event.user_name, "user_email": event.user_email,
            "course_id": event.course_id, "course_title": event.course_title, "attempt": event.attempt,
            "completed_at": _iso(event.completed_at), "certificate_enabled": event.certificate_enabled,
        }
    if isinstance(event, CertificateIssued):
        return {
            "user_id": event.user_id, "student_name": event.student_name, "student_email": event.student_email,
            "course_id": event.course_id, "course_title": event.course_title, "attempt": event.attempt,
            "certificate_id": event.certificate_id, "verification_code": event.verification_code,
            "issued_at": _iso(event.issued_at), "certificate_url": event.certificate_url,
            "verification_url": event.verification_url, "credential_url": event.credential_url,
        }
    if isinstance(event, CertificateRevoked):
        return {
            "user_id": event.user_id, "student_name": event.student_name, "student_email": event.student_email,
            "course_id": event.course_id, "course_title": event.course_title,
            "certificate_id": event.certificate_id, "verification_code": event.verification_code,
            "status": event.status, "reason": event.reason, "changed_at": _iso(event.changed_at),
            "verification_url": event.verification_url,
        }
    return {
        "user_id": event.user_id, "username": event.username, "display_name": event.display_name,
        "email": event.email, "course_id": event.course_id, "status": event.status, "attempt": event.attempt,
        "revision": event.revision, "enrolled_at": _iso(event.enrolled_at),
    }


def webhook_body(event: WebhookEvent) -> dict[str, Any]:
    """The Standard Webhooks payload: ``type``, ``timestamp`` (when it happened), ``data``."""
    return {"type": event_type_of(event), "timestamp": _iso(event.occurred_at), "data": webhook_data(event)}


def new_secret() -> str:
    """A signing secret in the ``whsec_<base64>`` form the Standard Webhooks libraries take."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with the decoded secret."""
    signed = message_id.encode() + b"." + str(timestamp).encode() + b"." + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets_: Sequence[str], message_id: str, timestamp: int, body: bytes) -> str:
    """``webhook-signature``: one signature per current secret, space separated (the newest
    first; the previous one while a rotation overlaps)."""
    return " ".join(signature(s, message_id, timestamp, body) for s in secrets_)


def url_refusal(url: str, *, production: bool) -> str | None:
    """Why ``url`` cannot be a webhook target as written (None: it can, so far). Only http(s)
    with a host; https in production, and no literal address that is not public there."""
    if len(url) > MAX_URL_LENGTH:
        return f"the URL is longer than {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises on a bad port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "only http and https URLs can receive webhooks"
    if not host:
        return "the URL names no host"
    try:
        host.encode("idna")
    except UnicodeError:
        return "the host name is not valid"
    if production and parts.scheme != "https":
        return "webhooks are sent over https only"
    if production:
        literal = _literal_address(host)
        if literal is not None and address_refused(literal):
            return f"{host} is not a public address"
    return None


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def address_refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a target address is off limits in production (SSRF): private, loopback,
    link-local, multicast, reserved, unspecified, or otherwise not globally reachable."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address_refused(address.ipv4_mapped)
    return (
        address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
        or address.is_reserved or address.is_unspecified or not address.is_global
    )


def refused_addresses(addresses: Sequence[str]) -> list[str]:
    """Those of ``addresses`` (as a resolver gives them) a webhook must not be sent to."""
    refused = []
    for text in addresses:
        literal = _literal_address(text.split("%", 1)[0])  # an IPv6 zone index is not part of it
        if literal is None or address_refused(literal):
            refused.append(text)
    return refused


# --- The delivery queue (any destination kind) -------------------------------------------


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its (next) attempt
    SENDING = "sending"  # claimed by a delivery worker until its lease ends
    DELIVERED = "delivered"  # the destination accepted it (2xx)
    FAILED = "failed"  # every attempt of the schedule failed (a replay queues it again)
    HELD = "held"  # its destination is disabled: it waits until the destination is enabled again


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to, as a destination kind's sender reports it."""

    delivered: bool
    status_code: int | None = None
    error: str | None = None
    duration_ms: int = 0
    response_excerpt: str | None = None
    retry: bool = True  # False: retrying cannot help, the delivery fails now
    hold: bool = False  # the destination is disabled: not an attempt that failed, the delivery waits


@dataclass(frozen=True)
class DeliveryDecision:
    status: DeliveryStatus
    retry_in_s: float | None = None
    exhausted: bool = False  # the schedule ran out (or retrying cannot help)


def after_attempt(outcome: Outcome, tries: int, schedule: Sequence[float]) -> DeliveryDecision:
    """What follows the ``tries``-th attempt since the delivery was queued (or replayed):
    ``schedule[n]`` is the wait before attempt ``n + 1``; after ``len(schedule)`` failed
    attempts the delivery has failed."""
    if outcome.hold:
        return DeliveryDecision(DeliveryStatus.HELD)
    if outcome.delivered:
        return DeliveryDecision(DeliveryStatus.DELIVERED)
    if not outcome.retry or tries >= len(schedule):
        return DeliveryDecision(DeliveryStatus.FAILED, exhausted=True)
    return DeliveryDecision(DeliveryStatus.PENDING, retry_in_s=schedule[tries])


# --- xAPI statements (a destination kind of the delivery queue) ------------------------------

XAPI_KIND = "xapi"  # deliveries.destination_kind of a statement for the configured LRS (destination 0)
# LRS answers that retrying the same statement cannot change: it is malformed or too large.
_LRS_REFUSALS = frozenset({400, 413, 415, 422})


def lrs_answer(status_code: int) -> tuple[bool, bool]:
    """(delivered, worth retrying) for the LRS's answer to ``PUT /statements?statementId=``.
    2xx stored it; 409 is the LRS already holding a statement under our id, which only we
    make and always from the same event (deterministic ids): stored before, delivered. A
    malformed or oversized statement is refused for good; anything else (401/403 until the
    credentials are fixed, 404 until the URL is, 429, 5xx) is retried on the schedule."""
    if 200 <= status_code < 300 or status_code == 409:
        return True, False
    return False, status_code not in _LRS_REFUSALS


def sustained_failure(
    *, exhausted: bool, failing_since: datetime | None, now: datetime, disable_after: timedelta | None
) -> str | None:
    """Why an endpoint should be disabled after a failed attempt (None: not yet): a delivery
    exhausted its schedule, or nothing was delivered for ``disable_after``."""
    if exhausted:
        return "every attempt of a delivery failed"
    if disable_after is not None and failing_since is not None and now - failing_since >= disable_after:
        return f"no delivery succeeded for {_duration(disable_after)}"
    return None


def _duration(span: timedelta) -> str:
    seconds = span.total_seconds()
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} seconds"


@dataclass(frozen=True)
class DeliveryFilter:
    status: DeliveryStatus | None = None


class WebhookNotFound(DomainError):
    """An admin named an endpoint that is not registered."""

    def __init__(self, endpoint_id: int) -> None:
        super().__init__("No such webhook endpoint", endpoint_id=endpoint_id)


class DeliveryNotFound(DomainError):
    """An admin named a delivery this endpoint does not have."""

    def __init__(self, delivery_id: int) -> None:
        super().__init__("No such delivery", delivery_id=delivery_id)


class WebhookUrlNotAllowed(DomainError):
    """A target the service will not send to (scheme, or an address that is not public)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"This URL cannot receive webhooks: {reason}", reason=reason)


class OwnerEmailRequired(DomainError):
    """An endpoint needs an owner to tell when it is disabled: the token carries no address."""

    default_message = "owner_email is required: the token carries no email address"
