"""The certificate worker: its own process, scaled out by ops, sharing the certificates database.

It serves only ``/health``, ``/ready`` and ``/metrics`` over HTTP; its work arrives from Kafka.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.certificates.app import CertificatesSettings
from shared.service import ServiceSpec, create_app


class WorkerSettings(CertificatesSettings):
    service_name: str = "certificates-worker"


def build_app(settings: WorkerSettings | None = None) -> FastAPI:
    settings = settings or WorkerSettings()
    return create_app(
        ServiceSpec(
            name="certificates-worker",
            settings=settings,
            migrations=Path(__file__).parent / "migrations",
            migration_component="certificates",
        )
    )
