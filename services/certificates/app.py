"""Composition root of the certificates service: settings, routes, subscriptions, lifespan."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from shared.service import ServiceSpec, create_app
from shared.settings import ServiceSettings


class CertificatesSettings(ServiceSettings):
    DEFAULT_DATABASE = "lessonstream_certificates"
    service_name: str = "certificates"


def build_app(settings: CertificatesSettings | None = None) -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory services.certificates.app:build_app`) and tests."""
    settings = settings or CertificatesSettings()
    return create_app(
        ServiceSpec(
            name="certificates",
            settings=settings,
            migrations=Path(__file__).parent / "migrations",
        )
    )
