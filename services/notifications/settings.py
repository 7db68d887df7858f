"""Settings of the notifications service: the SMTP server, the sender identity, retries."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import AliasChoices, Field, SecretStr, model_validator

from shared.settings import ServiceSettings


def _env(name: str, field: str) -> AliasChoices:
    return AliasChoices(name, field)


class NotificationsSettings(ServiceSettings):
    DEFAULT_DATABASE = "lessonstream_notifications"
    service_name: str = "notifications"

    # --- SMTP -------------------------------------------------------------------------
    smtp_host: str = Field("127.0.0.1", validation_alias=_env("SMTP_HOST", "smtp_host"))
    smtp_port: int = Field(1025, ge=1, le=65535, validation_alias=_env("SMTP_PORT", "smtp_port"))
    # none: plain SMTP; starttls: upgrade after connecting; tls: TLS from the first byte (465).
    smtp_tls: Literal["none", "starttls", "tls"] = Field("none", validation_alias=_env("SMTP_TLS", "smtp_tls"))
    smtp_username: str = Field("", validation_alias=_env("SMTP_USERNAME", "smtp_username"))
    smtp_password: SecretStr = Field(SecretStr(""), validation_alias=_env("SMTP_PASSWORD", "smtp_password"))
    smtp_validate_certs: bool = Field(True, validation_alias=_env("SMTP_VALIDATE_CERTS", "smtp_validate_certs"))
    # A CA bundle for a server whose certificate is not signed by a public CA.
    smtp_ca_file: str | None = Field(None, validation_alias=_env("SMTP_CA_FILE", "smtp_ca_file"))
    # Applies to connecting and to each SMTP command.
    smtp_timeout_s: float = Field(15.0, gt=0, validation_alias=_env("SMTP_TIMEOUT_S", "smtp_timeout_s"))
    # Concurrent SMTP connections (one per sender worker), each reused from message to message.
    smtp_connections: int = Field(4, ge=1, le=64, validation_alias=_env("SMTP_CONNECTIONS", "smtp_connections"))
    # A connection unused this long is closed, so a reused one is never stale.
    smtp_idle_close_s: float = Field(10.0, gt=0, validation_alias=_env("SMTP_IDLE_CLOSE_S", "smtp_idle_close_s"))

    # --- What the mail says ------------------------------------------------------------
    mail_from_name: str = Field("Lessonstream", validation_alias=_env("MAIL_FROM_NAME", "mail_from_name"))
    mail_from_address: str = Field(
        "no-reply@lessonstream.local", validation_alias=_env("MAIL_FROM_ADDRESS", "mail_from_address")
    )
    # Where learners browse courses; links in mail point there. Unset: PUBLIC_BASE_URL.
    mail_site_url: str = Field("", validation_alias=_env("MAIL_SITE_URL", "mail_site_url"))
    mail_attach_certificate: bool = Field(
        False, validation_alias=_env("MAIL_ATTACH_CERTIFICATE", "mail_attach_certificate")
    )
    mail_attachment_timeout_s: float = Field(
        15.0, gt=0, validation_alias=_env("MAIL_ATTACHMENT_TIMEOUT_S", "mail_attachment_timeout_s")
    )
    mail_attachment_max_bytes: int = Field(
        10_000_000, gt=0, validation_alias=_env("MAIL_ATTACHMENT_MAX_BYTES", "mail_attachment_max_bytes")
    )
    # Events older than this are logged as skipped, not mailed: a new consumer group reads
    # its topics from the beginning and must not mail every learner the whole history. 0: no limit.
    mail_max_event_age_hours: float = Field(
        168.0, ge=0, validation_alias=_env("MAIL_MAX_EVENT_AGE_HOURS", "mail_max_event_age_hours")
    )

    # --- Delivery ----------------------------------------------------------------------
    mail_max_attempts: int = Field(8, ge=1, validation_alias=_env("MAIL_MAX_ATTEMPTS", "mail_max_attempts"))
    mail_retry_base_s: float = Field(30.0, gt=0, validation_alias=_env("MAIL_RETRY_BASE_S", "mail_retry_base_s"))
    mail_retry_max_s: float = Field(3600.0, gt=0, validation_alias=_env("MAIL_RETRY_MAX_S", "mail_retry_max_s"))
    # How long a claimed mail belongs to the worker sending it; after that (the process
    # died mid-send) another worker takes it over. Must exceed one send's worst case.
    mail_lease_s: float = Field(120.0, gt=0, validation_alias=_env("MAIL_LEASE_S", "mail_lease_s"))
    # Fallback poll for mail queued by another replica or falling due for a retry.
    mail_poll_interval_s: float = Field(
        1.0, gt=0, validation_alias=_env("MAIL_POLL_INTERVAL_S", "mail_poll_interval_s")
    )

    @property
    def site_url(self) -> str:
        return (self.mail_site_url or self.public_base_url).rstrip("/")

    @model_validator(mode="after")
    def _refuse_cleartext_credentials(self) -> Self:
        if self.env == "production" and self.smtp_username and self.smtp_tls == "none":
            raise ValueError("unsafe production settings: SMTP_USERNAME is set but SMTP_TLS is none")
        return self
