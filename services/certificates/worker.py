"""The certificate worker: its own process, scaled out by ops, sharing the certificates database.

The second composition root of the service (the API's is app.py, which this imports nothing
of). It serves only ``/health``, ``/ready`` and ``/metrics`` over HTTP; its work arrives from
Kafka: ``course-completed`` (every learner's completion) and ``certificate-requested``
(completions the API handed over, and re-renderings); see handlers.py.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.certificates import handlers
from services.certificates.rendering import Renderer
from services.certificates.settings import WorkerSettings
from services.certificates.usecases import WorkerState, load_signing_keys
from shared.events import Topic
from shared.internal import internal_client
from shared.service import Runtime, ServiceSpec, create_app


def build_app(settings: WorkerSettings | None = None) -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory services.certificates.worker:build_app`) and tests."""
    settings = settings or WorkerSettings()

    async def open_state(runtime: Runtime[WorkerState]) -> WorkerState:
        renderer = Renderer(settings.render_pool_size(), settings.service_name)
        await renderer.start()
        return WorkerState(
            settings, renderer, internal_client(settings, settings.progress_internal_url), load_signing_keys(settings)
        )

    return create_app(
        ServiceSpec(
            name="certificates-worker",
            settings=settings,
            migrations=Path(__file__).parent / "migrations",
            migration_component="certificates",  # same database and migrations as the API
            subscriptions=handlers.subscriptions(settings),
            # What it publishes through its outbox, for the event documents (/asyncapi.json).
            publishes=[Topic.CERTIFICATE_ISSUED],
            open_state=open_state,
        )
    )
