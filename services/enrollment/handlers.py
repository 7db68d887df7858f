"""Event entry points: progress and certificates, as the enrollment keeps them.

Each handler applies its effect inside ``ctx.transaction()`` (so a redelivery changes
nothing) with the enrollment row locked, and compares the event's own timestamps with
what is stored, so an older event never overwrites newer state whatever the order of
arrival across topics.
"""

from __future__ import annotations

import logging
from datetime import datetime
from uuid import uuid4

from services.enrollment import domain, store
from services.enrollment.domain import Enrollment
from shared import outbox
from shared.db import Connection
from shared.events import (
    CertificateIssued,
    CourseCompleted,
    LessonCompleted,
    LessonReopened,
    Topic,
    utcnow,
)
from shared.inbox import EventContext, Subscription

log = logging.getLogger(__name__)


class UnknownEnrollment(Exception):
    """The owner of enrollments has no enrollment for this event: retried, then dead-lettered."""


async def _enrollment(conn: Connection, user_id: str, course_id: int) -> Enrollment:
    enrollment = await store.get_enrollment(conn, user_id, course_id, lock=True)
    if enrollment is None:
        # Progress only accepts work from enrolled learners, and this service commits an
        # enrollment before anyone can learn of it: this is not a replica lag to wait out.
        raise UnknownEnrollment(f"no enrollment of user {user_id!r} in course {course_id}")
    return enrollment


async def _apply_progress(
    conn: Connection, event: LessonCompleted | LessonReopened, at: datetime
) -> None:
    enrollment = await _enrollment(conn, event.user_id, event.course_id)
    await store.touch_last_accessed(conn, enrollment.id, at)
    if domain.is_newer_progress(enrollment, at, event.occurred_at):
        await store.set_progress(
            conn, enrollment.id, percentage=event.progress_percentage, completed_lessons=event.completed_lessons,
            total_lessons=event.total_lessons, at=at, seq=event.occurred_at,
        )
    else:
        log.info("ignoring progress of %s older than what is stored", event.event_id)


async def on_lesson_completed(event: LessonCompleted, ctx: EventContext) -> None:
    async with ctx.transaction() as conn:
        await _apply_progress(conn, event, event.completed_at)


async def on_lesson_reopened(event: LessonReopened, ctx: EventContext) -> None:
    async with ctx.transaction() as conn:
        await _apply_progress(conn, event, event.reopened_at)


async def on_course_completed(event: CourseCompleted, ctx: EventContext) -> None:
    async with ctx.transaction() as conn:
        enrollment = await _enrollment(conn, event.user_id, event.course_id)
        change = domain.apply_completion(enrollment, event.completed_at, event.occurred_at)
        await store.set_completion(
            conn, enrollment.id, completed_at=change.completed_at, progress_to_full=change.progress_to_full,
            seq=event.occurred_at,
        )
        await store.touch_last_accessed(conn, enrollment.id, event.completed_at)
        if change.status_changed:
            updated = await store.change_enrollment(conn, enrollment.id, change.status, utcnow(), uuid4())
            await outbox.add(conn, domain.enrollment_event(updated))


async def on_certificate_issued(event: CertificateIssued, ctx: EventContext) -> None:
    async with ctx.transaction() as conn:
        enrollment = await _enrollment(conn, event.user_id, event.course_id)
        if domain.is_newer_certificate(enrollment, event.issued_at):
            await store.set_certificate(
                conn, enrollment.id, certificate_id=event.certificate_id, url=event.certificate_url,
                issued_at=event.issued_at,
            )


# One consumer group per topic: groups with different subscriptions would rebalance
# each other on every join.
SUBSCRIPTIONS: list[Subscription[LessonCompleted] | Subscription[LessonReopened] | Subscription[CourseCompleted]
                    | Subscription[CertificateIssued]] = [
    Subscription(Topic.LESSON_COMPLETED, LessonCompleted, on_lesson_completed, "enrollment.lesson-completed"),
    Subscription(Topic.LESSON_REOPENED, LessonReopened, on_lesson_reopened, "enrollment.lesson-reopened"),
    Subscription(Topic.COURSE_COMPLETED, CourseCompleted, on_course_completed, "enrollment.course-completed"),
    Subscription(Topic.CERTIFICATE_ISSUED, CertificateIssued, on_certificate_issued, "enrollment.certificate-issued"),
]
