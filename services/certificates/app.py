"""Composition root of the certificates service: settings, routes, subscriptions, lifespan.

This process serves the API (certificate lookup, PDF download, public verification, admin
templates and regeneration). It renders nothing: PDFs come from the workers (worker.py).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from pydantic import AliasChoices, Field

from shared.internal import internal_client
from shared.service import Runtime, ServiceSpec, create_app
from shared.settings import ServiceSettings


class CertificatesSettings(ServiceSettings):
    DEFAULT_DATABASE = "lessonstream_certificates"
    service_name: str = "certificates"

    platform_name: str = Field(
        "Lessonstream", validation_alias=AliasChoices("CERTIFICATE_PLATFORM_NAME", "platform_name")
    )
    signatory_name: str = Field(
        "Lessonstream", validation_alias=AliasChoices("CERTIFICATE_SIGNATORY_NAME", "signatory_name")
    )
    signatory_title: str = Field(
        "On behalf of the platform",
        validation_alias=AliasChoices("CERTIFICATE_SIGNATORY_TITLE", "signatory_title"),
    )
    # A completion handed to the workers and still without a certificate after this long is
    # handed over again (the first request may have been dead-lettered).
    request_retry_s: float = Field(
        300.0, gt=0, validation_alias=AliasChoices("CERTIFICATE_REQUEST_RETRY_S", "request_retry_s")
    )
    # How long a worker's reservation stays its own without renewal (renewed every third of
    # it while rendering): a killed worker's learners wait about this long, not request_retry_s.
    lease_s: float = Field(30.0, ge=3, validation_alias=AliasChoices("CERTIFICATE_LEASE_S", "lease_s"))
    # Browser/proxy cache lifetime of the current PDF (it changes when regenerated).
    pdf_max_age_s: int = Field(300, ge=0, validation_alias=AliasChoices("CERTIFICATE_PDF_MAX_AGE_S", "pdf_max_age_s"))


def build_app(settings: CertificatesSettings | None = None) -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory services.certificates.app:build_app`) and tests."""
    from services.certificates.api import CertificatesState, admin_router, internal_router, public_router, router

    settings = settings or CertificatesSettings()

    async def open_state(runtime: Runtime[CertificatesState]) -> CertificatesState:
        return CertificatesState(internal_client(settings, settings.progress_internal_url))

    async def close_state(state: CertificatesState) -> None:
        await state.close()

    return create_app(
        ServiceSpec(
            name="certificates",
            settings=settings,
            migrations=Path(__file__).parent / "migrations",
            routers=[router, public_router, admin_router, internal_router],
            open_state=open_state,
            close_state=close_state,
        )
    )
