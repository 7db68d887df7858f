"""Certificate rules without I/O: ids, verification codes, links, what the API answers, and its refusals."""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel

from shared.domain import DomainError
from shared.events import CourseCompleted

# 15 random bytes = 120 bits: unguessable, and 24 base32 characters that read well in a URL.
_CODE_BYTES = 15
CODE_PATTERN = re.compile(r"^[a-z2-7]{24}$")


def certificate_number(year: int, sequence: int) -> str:
    """``CERT-2025-001``: the year of issue and that year's sequence (wider past 999)."""
    return f"CERT-{year}-{sequence:03d}"


def new_verification_code() -> str:
    return base64.b32encode(secrets.token_bytes(_CODE_BYTES)).decode().lower()


def new_status_index() -> int:
    """A random entry on a status list: its position says nothing of the order of issue."""
    return secrets.randbelow(STATUS_LIST_SIZE)


def is_plausible_code(code: str) -> bool:
    """Cheap shape check before touching the database."""
    return bool(CODE_PATTERN.fullmatch(code))


def app_url(public_base_url: str) -> str:
    """The reference web app on the gateway (the verification page links back to it)."""
    return f"{public_base_url.rstrip('/')}/app/"


def pdf_url(public_base_url: str, code: str) -> str:
    return f"{public_base_url.rstrip('/')}/certificates/{code}.pdf"


def verification_url(public_base_url: str, code: str) -> str:
    return f"{public_base_url.rstrip('/')}/certificates/verify/{code}"


def credential_url(public_base_url: str, code: str, version: int | None = None) -> str:
    """The signed credential behind a certificate (its current rendering, or ``version``);
    as public as the PDF, behind the same unguessable code."""
    url = f"{public_base_url.rstrip('/')}/certificates/{code}/credential"
    return url if version is None else f"{url}?version={version}"


def achievement_url(public_base_url: str, course_id: int) -> str:
    """What a course's credentials say was achieved, one id per course."""
    return f"{public_base_url.rstrip('/')}/achievements/course-{course_id}"


def status_list_url(public_base_url: str, status_list: int) -> str:
    return f"{public_base_url.rstrip('/')}/certificates/status/{status_list}"


# Entries per revocation status list: 131,072 bits (16 KB), the W3C minimum, so that the
# list says nothing of how many certificates were issued; a list is filled to half at most.
STATUS_LIST_SIZE = 131_072
STATUS_LIST_FILL = STATUS_LIST_SIZE // 2


def status_list_for(issued_on_last_list: int, last_list: int) -> int:
    """The list a new certificate's entry goes on: the last one until it is half full."""
    return last_list if issued_on_last_list < STATUS_LIST_FILL else last_list + 1


def valid_until(valid_from: datetime, validity_days: int | None) -> datetime | None:
    """When a credential expires: the course's validity period after issue, or never."""
    return None if validity_days is None else valid_from + timedelta(days=validity_days)


class CredentialState(StrEnum):
    VALID = "valid"
    REVOKED = "revoked"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"  # a regenerated certificate's earlier credential
    INVALID = "invalid"  # the proof does not verify with the issuer's keys


def credential_state(
    *, proof_valid: bool, revoked: bool, valid_until: datetime | None, version: int, current_version: int,
    now: datetime,
) -> CredentialState:
    """What a verifier is told, most serious first: a broken proof, then revocation (which
    applies to every version), expiry, and last an earlier version of a regenerated one."""
    if not proof_valid:
        return CredentialState.INVALID
    if revoked:
        return CredentialState.REVOKED
    if valid_until is not None and now >= valid_until:
        return CredentialState.EXPIRED
    if version < current_version:
        return CredentialState.SUPERSEDED
    return CredentialState.VALID


@dataclass(frozen=True)
class Identity:
    user_id: str
    course_id: int
    certificate_id: str
    verification_code: str
    issued_at: datetime
    status_list: int | None = None  # the certificate's revocation entry (None: issued before credentials)
    status_index: int | None = None
    attempt: int = 1  # the learner's attempt at the course: one certificate per attempt


class Certificate(BaseModel):
    certificate_id: str
    user_id: str
    course_id: int
    verification_code: str
    student_name: str
    student_email: str
    course_title: str
    completed_at: datetime
    issued_at: datetime
    current_version: int
    issued_event_id: UUID | None = None  # the certificate-issued event (NULL before it was kept)
    valid_until: datetime | None = None  # when its credentials expire (None: never)
    revoked_at: datetime | None = None
    revocation_reason: str | None = None
    status_changed_at: datetime | None = None  # the latest revocation or reinstatement
    attempt: int = 1  # the learner's attempt at the course it certifies


class CompletionStatus(BaseModel):
    """The progress service's answer (internal completion API)."""

    completed: bool
    progress_percentage: int
    course_completed: CourseCompleted | None = None


class MissOutcome(StrEnum):
    NOT_COMPLETE = "not_complete"
    NO_CERTIFICATE = "no_certificate"  # the course does not issue certificates
    REQUEST = "request"  # hand the completion to the workers, answer pending
    WAIT = "wait"  # complete, but progress gave no event to hand over: the event is on its way


def decide_on_miss(status: CompletionStatus) -> MissOutcome:
    if not status.completed:
        return MissOutcome.NOT_COMPLETE
    if status.course_completed is None:
        return MissOutcome.WAIT
    if not status.course_completed.certificate_enabled:
        return MissOutcome.NO_CERTIFICATE
    return MissOutcome.REQUEST


@dataclass(frozen=True)
class WorkInFlight:
    """What the API knows of a certificate being made, all on the database's clock."""

    now: datetime
    lease_until: datetime | None  # a worker's reservation (None: none, or made before leases)
    requested_at: datetime | None  # the API's last hand-over to the workers


def is_pending(work: WorkInFlight, retry_after: timedelta) -> bool:
    """Answer "pending" and wait, or (False) ask progress again and hand the work over anew.

    A live lease means a worker is rendering right now. Otherwise a recent hand-over is
    waited for, but only if it came after the last lease ran out: an older one was taken up
    by a worker that then died, and waiting for it would leave the learner pending for
    ``retry_after`` instead of one lease. ``retry_after`` still bounds a hand-over no worker
    took up at all (dead-lettered before it reserved anything).
    """
    if work.lease_until is not None and work.lease_until > work.now:
        return True
    if work.requested_at is None or work.now - work.requested_at >= retry_after:
        return False
    return work.lease_until is None or work.requested_at > work.lease_until


@dataclass(frozen=True)
class QueuedRegeneration:
    """One course's re-rendering, queued for the workers."""

    course_id: int
    regeneration_id: int
    certificates: int

    def summary(self) -> str:
        """The line both regenerate commands print."""
        return (f"course {self.course_id}: regeneration {self.regeneration_id} "
                f"queued for {self.certificates} certificates")


@dataclass(frozen=True)
class RegenerationProgress:
    regeneration_id: int
    course_id: int
    total: int
    done: int  # certificates re-rendered so far
    requested_at: datetime
    requested_by: str

    @property
    def status(self) -> str:
        return "done" if self.done >= self.total else "running"


# -- refusals ---------------------------------------------------------------------------------

class NotEnrolled(DomainError):
    """Progress does not know the learner in the course."""


class CourseNotComplete(DomainError):
    """The learner has not completed the course yet (``progress_percentage`` in the data)."""


class CertificateNotAvailable(DomainError):
    """The course awards no certificates."""


class CertificateNotFound(DomainError):
    """No certificate has this code or id."""


class AlreadyInState(DomainError):
    """Revoking a revoked certificate, or reinstating one that is not revoked."""


class StatusListNotFound(DomainError):
    """No certificate's entry is on this status list."""


class RegenerationNotFound(DomainError):
    """No such regeneration for this course."""


class InvalidTemplate(DomainError):
    """A course template that does not compile or render (``error`` in the data)."""
