"""The certificate worker: its own process, scaled out by ops, sharing the certificates database.

It serves only ``/health``, ``/ready`` and ``/metrics`` over HTTP; its work arrives from Kafka:
``course-completed`` (every learner's completion) and ``certificate-requested`` (completions
the API handed over, and re-renderings). All workers share one consumer group per topic, so
the partitions are spread over them; within a process, ``concurrency`` group members consume
different partitions at once and feed the render pool.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from services.certificates.handlers import CertificateWorker
from services.certificates.rendering import Renderer
from services.certificates.settings import WorkerSettings
from shared.events import CertificateRequested, CourseCompleted, Topic
from shared.inbox import Subscription
from shared.internal import internal_client
from shared.service import Runtime, ServiceSpec, create_app

COMPLETIONS_GROUP = "certificates-worker"
REQUESTS_GROUP = "certificates-worker-requests"


@dataclass
class WorkerState:
    renderer: Renderer
    progress: httpx.AsyncClient  # progress confirms every completion before it is certified

    async def close(self) -> None:
        await asyncio.to_thread(self.renderer.close, True)  # waits for a render in flight
        await self.progress.aclose()


def build_app(settings: WorkerSettings | None = None) -> FastAPI:
    settings = settings or WorkerSettings()
    opened: list[WorkerState] = []  # the running state, for the handlers

    def running() -> WorkerState:
        return opened[-1]

    worker = CertificateWorker(
        settings, lambda: running().renderer, lambda: running().progress,
        signatory_name=settings.signatory_name, signatory_title=settings.signatory_title,
        platform_name=settings.platform_name, lease_s=settings.lease_s,
    )

    async def open_state(runtime: Runtime[WorkerState]) -> WorkerState:
        renderer = Renderer(settings.render_pool_size())
        await renderer.start()
        state = WorkerState(renderer, internal_client(settings, settings.progress_internal_url))
        opened.append(state)
        return state

    async def close_state(state: WorkerState) -> None:
        opened.remove(state)
        await state.close()

    subscriptions: list[Subscription[Any]] = [
        Subscription(Topic.COURSE_COMPLETED, CourseCompleted, worker.on_course_completed, COMPLETIONS_GROUP,
                     concurrency=settings.consumer_count()),
        Subscription(Topic.CERTIFICATE_REQUESTED, CertificateRequested, worker.on_certificate_requested,
                     REQUESTS_GROUP, concurrency=settings.consumer_count()),
    ]
    return create_app(
        ServiceSpec(
            name="certificates-worker",
            settings=settings,
            migrations=Path(__file__).parent / "migrations",
            migration_component="certificates",  # same database and migrations as the API
            subscriptions=subscriptions,
            open_state=open_state,
            close_state=close_state,
        )
    )
