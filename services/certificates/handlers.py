"""Event entry points of the certificate workers: issue once, re-render on request; and of
the API process: erase a learner (``learner-erased``).

All workers share one consumer group per topic, so the partitions are spread over them;
within a process, ``concurrency`` group members consume different partitions at once and
feed the render pool.
"""

from __future__ import annotations

from typing import Any

from services.certificates import usecases
from services.certificates.settings import CertificatesSettings, WorkerSettings
from services.certificates.usecases import CertificatesState, WorkerState
from shared.events import CertificateRequested, CourseCompleted, LearnerErased, Topic
from shared.inbox import EventContext, Subscription
from shared.lag import Watched

COMPLETIONS_GROUP = "certificates-worker"
REQUESTS_GROUP = "certificates-worker-requests"
ERASURES_GROUP = "certificates-erasures"


async def on_course_completed(event: CourseCompleted, ctx: EventContext) -> None:
    await usecases.issue(ctx.state(WorkerState), event, ctx)


async def on_certificate_requested(event: CertificateRequested, ctx: EventContext) -> None:
    await usecases.fulfil_request(ctx.state(WorkerState), event, ctx)


def subscriptions(settings: WorkerSettings) -> list[Subscription[Any]]:
    return _worker_subscriptions(settings.consumer_count())


def _worker_subscriptions(concurrency: int) -> list[Subscription[Any]]:
    return [
        Subscription(Topic.COURSE_COMPLETED, CourseCompleted, on_course_completed, COMPLETIONS_GROUP,
                     concurrency=concurrency),
        Subscription(Topic.CERTIFICATE_REQUESTED, CertificateRequested, on_certificate_requested,
                     REQUESTS_GROUP, concurrency=concurrency),
    ]


async def on_learner_erased(event: LearnerErased, ctx: EventContext) -> None:
    await usecases.erase_learner(ctx.state(CertificatesState), event, ctx)


def worker_groups() -> list[Watched]:
    """The workers' consumer groups, whose lag the API process reports as well."""
    return [Watched(sub.consumer, sub.topic) for sub in _worker_subscriptions(concurrency=1)]


def api_subscriptions(settings: CertificatesSettings) -> list[Subscription[Any]]:
    """What the certificates API process consumes: erasure requests (the workers render only)."""
    return [Subscription(Topic.LEARNER_ERASED, LearnerErased, on_learner_erased, ERASURES_GROUP)]
