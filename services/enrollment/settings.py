"""Settings of the enrollment service (environment variables, see shared.settings)."""

from __future__ import annotations

from shared.settings import ServiceSettings


class EnrollmentSettings(ServiceSettings):
    DEFAULT_DATABASE = "lessonstream_enrollment"
    service_name: str = "enrollment"
