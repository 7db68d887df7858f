"""Composition root of the certificates API: settings, routes, errors, lifespan.

This process serves the API (certificate lookup, PDF download, public verification, admin
templates and regeneration). It renders nothing: PDFs come from the workers (worker.py).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.certificates import api, handlers
from services.certificates.settings import CertificatesSettings
from services.certificates.usecases import CertificatesState, load_signing_keys
from shared.events import Topic
from shared.internal import internal_client
from shared.service import Runtime, ServiceSpec, create_app


def build_app(settings: CertificatesSettings | None = None) -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory services.certificates.app:build_app`) and tests."""
    settings = settings or CertificatesSettings()

    async def open_state(runtime: Runtime[CertificatesState]) -> CertificatesState:
        return CertificatesState(
            internal_client(settings, settings.progress_internal_url), load_signing_keys(settings),
            internal_client(settings, settings.enrollment_internal_url),
        )

    return create_app(
        ServiceSpec(
            name="certificates",
            settings=settings,
            migrations=Path(__file__).parent / "migrations",
            routers=api.ROUTERS,
            errors=api.ERRORS,
            publishes=[Topic.CERTIFICATE_REQUESTED, Topic.CERTIFICATE_REVOKED],
            # Erasure requests: one process of its own, not the scaled-out workers.
            subscriptions=handlers.api_subscriptions(settings),
            also_watched=handlers.worker_groups(),
            open_state=open_state,
        )
    )
