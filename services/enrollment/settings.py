"""Settings of the enrollment service (environment variables, see shared.settings)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class EnrollmentSettings(ServiceSettings):
    DEFAULT_DATABASE = "lessonstream_enrollment"
    service_name: str = "enrollment"
    # How often the recertification job runs (also once at start): it notices completions
    # coming due and resets those whose time has come.
    recertification_interval_s: float = Field(86_400.0, gt=0)
    # How many days before the reset the learner is told (recertification-scheduled, a mail).
    recertification_notice_days: int = Field(14, ge=1, le=3650)
