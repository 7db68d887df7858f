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

    # Application passwords (HTTP Basic, exchanged at the gateway for a bearer token).
    # Failed sign-ins allowed per user and per client address within the window; beyond
    # them, 429 until the window ends (a right password too).
    app_password_max_failures_per_user: int = Field(10, ge=1)
    app_password_max_failures_per_address: int = Field(10, ge=1)
    app_password_failure_window_s: float = Field(900.0, gt=0)
    # A verified credential is remembered this long before its password is looked at
    # again (never on the event loop: argon2id runs in a thread); a revocation takes
    # effect within it.
    app_password_cache_s: float = Field(30.0, gt=0, le=3600)
    # Lifetime of the exchanged bearer token; one is reused until a quarter of it is left.
    app_password_token_ttl_s: int = Field(900, ge=60, le=86_400)
    # Concurrent argon2id computations per process (each holds 19 MiB).
    app_password_hash_threads: int = Field(2, ge=1, le=32)
    # In production, Basic credentials are refused unless the gateway saw HTTPS
    # (X-Forwarded-Proto); this allows plain HTTP (a TLS terminator in front of the gateway
    # that does not say so, or a closed network).
    allow_basic_over_http: bool = False

    # How often incomplete erasure requests are looked at: once every service has erased
    # the learner, the request is complete and its learner-erased row leaves the outbox.
    erasure_check_interval_s: float = Field(10.0, gt=0)
