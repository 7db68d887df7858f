"""Certificate rules without I/O: ids, verification codes, links, and what the API answers."""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel

from shared.events import CourseCompleted

# 15 random bytes = 120 bits: unguessable, and 24 base32 characters that read well in a URL.
_CODE_BYTES = 15
CODE_PATTERN = re.compile(r"^[a-z2-7]{24}$")


def certificate_number(year: int, sequence: int) -> str:
    """``CERT-2025-001``: the year of issue and that year's sequence (wider past 999)."""
    return f"CERT-{year}-{sequence:03d}"


def new_verification_code() -> str:
    return base64.b32encode(secrets.token_bytes(_CODE_BYTES)).decode().lower()


def is_plausible_code(code: str) -> bool:
    """Cheap shape check before touching the database."""
    return bool(CODE_PATTERN.fullmatch(code))


def pdf_url(public_base_url: str, code: str) -> str:
    return f"{public_base_url.rstrip('/')}/certificates/{code}.pdf"


def verification_url(public_base_url: str, code: str) -> str:
    return f"{public_base_url.rstrip('/')}/certificates/verify/{code}"


@dataclass(frozen=True)
class Identity:
    user_id: str
    course_id: int
    certificate_id: str
    verification_code: str
    issued_at: datetime


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


def request_is_stale(requested_at: datetime, now: datetime, retry_after: timedelta) -> bool:
    """A handed-over completion still without a certificate is handed over again after a while."""
    return now - requested_at >= retry_after
