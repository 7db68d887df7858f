"""Event entry points: keep the local replicas of catalog, enrollments and certificates."""

from __future__ import annotations

from typing import Any

from services.progress import usecases
from services.progress.settings import ProgressSettings
from services.progress.usecases import ProgressState
from shared.events import CertificateIssued, CourseCatalogEntry, EnrollmentChanged, LearnerErased, Topic
from shared.inbox import EventContext, Subscription


async def on_course(event: CourseCatalogEntry, ctx: EventContext) -> None:
    await usecases.keep_course(ctx.transaction, ctx.state(ProgressState).replicas, event)


async def on_enrollment(event: EnrollmentChanged, ctx: EventContext) -> None:
    await usecases.keep_enrollment(ctx.transaction, ctx.state(ProgressState).replicas, event)


async def on_certificate(event: CertificateIssued, ctx: EventContext) -> None:
    await usecases.keep_certificate(ctx.transaction, event)


async def on_learner_erased(event: LearnerErased, ctx: EventContext) -> None:
    await usecases.erase_learner(ctx.state(ProgressState), event, ctx)


def subscriptions(settings: ProgressSettings) -> list[Subscription[Any]]:
    """One consumer group per topic."""
    return [
        Subscription(Topic.COURSE_CATALOG, CourseCatalogEntry, on_course, "progress-catalog"),
        Subscription(Topic.ENROLLMENT_CHANGED, EnrollmentChanged, on_enrollment, "progress-enrollments"),
        Subscription(Topic.CERTIFICATE_ISSUED, CertificateIssued, on_certificate, "progress-certificates"),
        Subscription(Topic.LEARNER_ERASED, LearnerErased, on_learner_erased, "progress-erasures"),
    ]
