"""What the certificates API does: lookups, templates and regenerations, with the state it runs on.

Refusals are the domain's (``domain.NotEnrolled`` ...); ``api.ERRORS`` answers them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import asyncpg
import httpx

from services.certificates import domain, store
from services.certificates.domain import (
    Certificate,
    CompletionStatus,
    MissOutcome,
    QueuedRegeneration,
    RegenerationProgress,
)
from services.certificates.rendering import (
    TemplateError,
    default_template_source,
    validate_template,
)
from services.certificates.settings import CertificatesSettings
from shared import db
from shared.db import Executor
from shared.events import CertificateRequested
from shared.internal import get_internal

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


# -- the API ------------------------------------------------------------------------------------

@dataclass
class CertificatesState:
    """What the certificates API runs on: its client of progress's internal API."""

    progress: httpx.AsyncClient

    async def close(self) -> None:
        await self.progress.aclose()


async def _ask_progress(client: httpx.AsyncClient, course_id: int, user_id: str) -> CompletionStatus | None:
    """Progress's own answer (read-your-writes); None when the learner is not enrolled.
    Progress unreachable or failing: ``PeerUnavailable``."""
    path = f"/internal/courses/{course_id}/learners/{quote(user_id, safe='')}/completion"
    body = await get_internal(client, path, "progress")
    return None if body is None else CompletionStatus.model_validate_json(body)


async def learner_certificate(
    pool: asyncpg.Pool, state: CertificatesState, user_id: str, course_id: int, *, retry_after: timedelta
) -> Certificate | None:
    """The learner's certificate, or None while it is being made (the API answers "pending").

    On a miss the API's own tables are not trusted: the course-completed event may not have
    arrived. Refuses with ``NotEnrolled``, ``CourseNotComplete`` or ``CertificateNotAvailable``.
    """
    cert = await store.get_certificate(pool, user_id, course_id)
    if cert is not None:
        return cert
    # A worker holds a live lease (it is rendering), or the API handed the completion over a
    # moment ago: pending. A lease that ran out (its worker died) or a stale hand-over: ask
    # progress again and hand the work over anew; the next worker keeps the reserved identity.
    work = await store.work_in_flight(pool, user_id, course_id)
    if domain.is_pending(work, retry_after):
        return None
    # Nothing in flight: the course-completed event may not have arrived. Ask progress.
    status = await _ask_progress(state.progress, course_id, user_id)
    if status is None:
        raise domain.NotEnrolled("You must be enrolled in this course")
    outcome = domain.decide_on_miss(status)
    if outcome is MissOutcome.NOT_COMPLETE:
        raise domain.CourseNotComplete(
            "You must complete all lessons to get a certificate", progress_percentage=status.progress_percentage
        )
    if outcome is MissOutcome.NO_CERTIFICATE:
        raise domain.CertificateNotAvailable("This course does not award certificates")
    if outcome is MissOutcome.REQUEST and status.course_completed is not None:
        # Hand the completion to the workers through the outbox: this process never renders.
        event = CertificateRequested(
            user_id=user_id, course_id=course_id, reason="issue", completion=status.course_completed
        )
        async with pool.acquire() as conn, conn.transaction():
            await store.record_request(conn, event, work.now)
    return None


async def certificate_pdf(pool: Executor, code: str, version: int | None) -> store.PdfFile:
    """The current PDF of the certificate with this code, or the numbered ``version``."""
    found = await store.get_pdf(pool, code, version) if domain.is_plausible_code(code) else None
    if found is None:
        raise domain.CertificateNotFound("No certificate has this code")
    return found


async def certificate_by_code(pool: Executor, code: str) -> Certificate:
    """The certificate a verification code stands for (public verification)."""
    cert = await store.get_certificate_by_code(pool, code) if domain.is_plausible_code(code) else None
    if cert is None:
        raise domain.CertificateNotFound("No certificate has this verification code")
    return cert


async def issued_certificate(pool: Executor, certificate_id: str) -> Certificate:
    """What was issued under this id (consumers of certificate-issued confirm events with it)."""
    cert = await store.get_certificate_by_id(pool, certificate_id)
    if cert is None:
        raise domain.CertificateNotFound("No certificate has this id")
    return cert


@dataclass(frozen=True)
class TemplateInfo:
    course_id: int
    custom: bool  # False: the course uses the default template
    revision: int
    template: str


async def course_template(pool: Executor, course_id: int) -> TemplateInfo:
    """The course's template, or the default one."""
    current = await store.get_template(pool, course_id)
    return TemplateInfo(
        course_id=course_id,
        custom=current.source is not None,
        revision=current.revision,
        template=current.source if current.source is not None else default_template_source(),
    )


async def save_template(pool: Executor, course_id: int, source: str, by: str) -> int:
    """Keep a course's own template once it compiles and renders sample data; its revision."""
    try:
        validate_template(source)
    except TemplateError as exc:
        raise domain.InvalidTemplate("The template does not render", error=str(exc)) from exc
    return await store.set_template(pool, course_id, source, by)


async def reset_template(pool: Executor, course_id: int, by: str) -> int:
    """Back to the default template; the new revision."""
    return await store.set_template(pool, course_id, None, by)


def _regeneration_event(user_id: str, course_id: int, regeneration_id: int) -> CertificateRequested:
    return CertificateRequested(
        user_id=user_id, course_id=course_id, reason="regenerate", regeneration_id=regeneration_id
    )


async def regenerate(pool: asyncpg.Pool, course_id: int, requested_by: str) -> QueuedRegeneration:
    """Queue a re-rendering of each of the course's certificates (the workers render them)."""
    async with pool.acquire() as conn:
        regeneration_id, count = await store.request_regeneration(
            conn, course_id, requested_by, _regeneration_event
        )
    return QueuedRegeneration(course_id, regeneration_id, count)


async def regenerate_courses(
    settings: CertificatesSettings, course_ids: Sequence[int], requested_by: str = "cli"
) -> list[QueuedRegeneration]:
    """The regenerate commands' work, outside a running service: migrate the database if
    needed, then queue each course's re-rendering in the outbox as the API does."""
    await db.migrate_service(settings.database_url, "certificates", MIGRATIONS)
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        return [await regenerate(pool, course_id, requested_by) for course_id in course_ids]
    finally:
        await pool.close()


async def regeneration_status(pool: Executor, course_id: int, regeneration_id: int) -> RegenerationProgress:
    found = await store.regeneration_status(pool, course_id, regeneration_id)
    if found is None:
        raise domain.RegenerationNotFound("No such regeneration for this course")
    return found


async def course_certificates(
    pool: Executor, course_id: int, page: int, per_page: int
) -> tuple[list[Certificate], int]:
    """One page of the course's issued certificates, and how many there are."""
    return await store.list_course_certificates(pool, course_id, per_page, (page - 1) * per_page)
