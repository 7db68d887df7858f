"""The rules of sending mail, without I/O: what to send for an event, how a mail is
identified, how failures are classified, when the next try is due, and what the service
refuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from uuid import UUID

from shared.domain import DomainError
from shared.events import CertificateIssued, CertificateRevoked, CourseCompleted, RecertificationScheduled
from shared.retry import Backoff

# The events a mail is made from.
MailedEvent = CourseCompleted | CertificateIssued | CertificateRevoked | RecertificationScheduled


class MailKind(StrEnum):
    COURSE_COMPLETED = "course_completed"
    CERTIFICATE_READY = "certificate_ready"
    CERTIFICATE_REVOKED = "certificate_revoked"
    CERTIFICATE_REINSTATED = "certificate_reinstated"
    RECERTIFICATION_SCHEDULED = "recertification_scheduled"


# The Message-ID's tag per kind (kept short so that the header fits on one line).
_MESSAGE_TAGS = {
    MailKind.COURSE_COMPLETED: "completed",
    MailKind.CERTIFICATE_READY: "certificate",
    MailKind.CERTIFICATE_REVOKED: "revoked",
    MailKind.CERTIFICATE_REINSTATED: "reinstated",
    MailKind.RECERTIFICATION_SCHEDULED: "recertification",
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
    course_id: int
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
    title = header_safe(course_title, 150)
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


def recipient_of(event: MailedEvent) -> tuple[str, str]:
    """The learner the event's mail goes to: (name, address)."""
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
