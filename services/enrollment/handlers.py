"""Event entry points: progress (lessons, recalculations, completions) and certificates
(issued, revoked, reinstated), as the enrollment keeps them.

Each handler applies its use case inside ``ctx.transaction()``, the inbox transaction
that also marks the event applied, so a redelivery changes nothing.
"""

from __future__ import annotations

from typing import Any

from services.enrollment import usecases
from services.enrollment.settings import EnrollmentSettings
from shared.events import (
    CertificateIssued,
    CertificateRevoked,
    CourseCompleted,
    LessonCompleted,
    LessonReopened,
    ProgressRecalculated,
    Topic,
)
from shared.inbox import EventContext, Subscription


async def on_lesson_completed(event: LessonCompleted, ctx: EventContext) -> None:
    async with ctx.transaction() as conn:
        await usecases.record_progress(conn, event, event.completed_at)


async def on_lesson_reopened(event: LessonReopened, ctx: EventContext) -> None:
    async with ctx.transaction() as conn:
        await usecases.record_progress(conn, event, event.reopened_at)


async def on_progress_recalculated(event: ProgressRecalculated, ctx: EventContext) -> None:
    async with ctx.transaction() as conn:
        await usecases.record_recalculation(conn, event)


async def on_course_completed(event: CourseCompleted, ctx: EventContext) -> None:
    async with ctx.transaction() as conn:
        await usecases.record_completion(conn, event)


async def on_certificate_issued(event: CertificateIssued, ctx: EventContext) -> None:
    async with ctx.transaction() as conn:
        await usecases.record_certificate(conn, event)


async def on_certificate_revoked(event: CertificateRevoked, ctx: EventContext) -> None:
    async with ctx.transaction() as conn:
        await usecases.record_certificate_status(conn, event)


def subscriptions(settings: EnrollmentSettings) -> list[Subscription[Any]]:
    """What the enrollment consumes. One consumer group per topic: groups with different
    subscriptions would rebalance each other on every join."""
    return [
        Subscription(Topic.LESSON_COMPLETED, LessonCompleted, on_lesson_completed, "enrollment.lesson-completed"),
        Subscription(Topic.LESSON_REOPENED, LessonReopened, on_lesson_reopened, "enrollment.lesson-reopened"),
        Subscription(
            Topic.PROGRESS_RECALCULATED, ProgressRecalculated, on_progress_recalculated,
            "enrollment.progress-recalculated",
        ),
        Subscription(Topic.COURSE_COMPLETED, CourseCompleted, on_course_completed, "enrollment.course-completed"),
        Subscription(
            Topic.CERTIFICATE_ISSUED, CertificateIssued, on_certificate_issued, "enrollment.certificate-issued"
        ),
        Subscription(
            Topic.CERTIFICATE_REVOKED, CertificateRevoked, on_certificate_revoked, "enrollment.certificate-revoked"
        ),
    ]
