"""Event entry points: each consumed event becomes one row in the outgoing-mail queue and one
delivery per webhook endpoint that wants it (``usecases.queue_mail``, and
``usecases.queue_enrollment_webhooks`` for enrollment changes, which are mailed to nobody),
and, with an LRS configured, its xAPI statements (``usecases.queue_video_statements`` for
viewing sessions, consumed only then): confirmed with its owner first, queued in the inbox
transaction."""

from __future__ import annotations

from typing import Any

from services.notifications.settings import NotificationsSettings
from services.notifications.usecases import (
    NotificationsState,
    erase_learner,
    queue_enrollment_webhooks,
    queue_mail,
    queue_video_statements,
)
from shared.events import (
    CertificateIssued,
    CertificateRevoked,
    CourseCompleted,
    EnrollmentChanged,
    LearnerErased,
    RecertificationScheduled,
    Topic,
    VideoSessionEnded,
)
from shared.inbox import EventContext, Subscription

# One consumer group per topic: a rebalance on one topic does not pause the other.
COMPLETED_CONSUMER = "notifications-course-completed"
CERTIFICATE_CONSUMER = "notifications-certificate-issued"
REVOCATION_CONSUMER = "notifications-certificate-revoked"
RECERTIFICATION_CONSUMER = "notifications-recertification-scheduled"
ENROLLMENT_CONSUMER = "notifications-enrollment-changed"
VIDEO_SESSIONS_CONSUMER = "notifications-video-sessions"
ERASURE_CONSUMER = "notifications-learner-erased"


async def on_course_completed(event: CourseCompleted, ctx: EventContext) -> None:
    await queue_mail(ctx.state(NotificationsState), event, ctx)


async def on_certificate_issued(event: CertificateIssued, ctx: EventContext) -> None:
    await queue_mail(ctx.state(NotificationsState), event, ctx)


async def on_certificate_revoked(event: CertificateRevoked, ctx: EventContext) -> None:
    await queue_mail(ctx.state(NotificationsState), event, ctx)


async def on_recertification_scheduled(event: RecertificationScheduled, ctx: EventContext) -> None:
    await queue_mail(ctx.state(NotificationsState), event, ctx)


async def on_enrollment_changed(event: EnrollmentChanged, ctx: EventContext) -> None:
    await queue_enrollment_webhooks(ctx.state(NotificationsState), event, ctx)


async def on_video_session_ended(event: VideoSessionEnded, ctx: EventContext) -> None:
    await queue_video_statements(ctx.state(NotificationsState), event, ctx)


async def on_learner_erased(event: LearnerErased, ctx: EventContext) -> None:
    await erase_learner(ctx.state(NotificationsState), event, ctx)


def subscriptions(settings: NotificationsSettings) -> list[Subscription[Any]]:
    # Viewing sessions only become xAPI statements: without an LRS they are not read at all
    # (no load from every learner's sessions), and a group created when an LRS is set reads
    # the topic from its start, so the sessions the topic still holds are stated too.
    xapi = (
        [Subscription(Topic.VIDEO_SESSIONS, VideoSessionEnded, on_video_session_ended, VIDEO_SESSIONS_CONSUMER)]
        if settings.xapi_enabled else []
    )
    return [
        Subscription(Topic.COURSE_COMPLETED, CourseCompleted, on_course_completed, COMPLETED_CONSUMER),
        Subscription(Topic.CERTIFICATE_ISSUED, CertificateIssued, on_certificate_issued, CERTIFICATE_CONSUMER),
        Subscription(Topic.CERTIFICATE_REVOKED, CertificateRevoked, on_certificate_revoked, REVOCATION_CONSUMER),
        Subscription(
            Topic.RECERTIFICATION_SCHEDULED, RecertificationScheduled, on_recertification_scheduled,
            RECERTIFICATION_CONSUMER,
        ),
        Subscription(Topic.ENROLLMENT_CHANGED, EnrollmentChanged, on_enrollment_changed, ENROLLMENT_CONSUMER),
        Subscription(Topic.LEARNER_ERASED, LearnerErased, on_learner_erased, ERASURE_CONSUMER),
        *xapi,
    ]
