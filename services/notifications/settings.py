"""Settings of the notifications service: the SMTP server, the sender identity, retries.

Each env name is its field's name in capitals (pydantic-settings matches them without
aliases), e.g. ``SMTP_HOST`` for ``smtp_host``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.settings import ServiceSettings


class NotificationsSettings(ServiceSettings):
    DEFAULT_DATABASE = "lessonstream_notifications"
    service_name: str = "notifications"

    # --- SMTP -------------------------------------------------------------------------
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(1025, ge=1, le=65535)
    # none: plain SMTP; starttls: upgrade after connecting; tls: TLS from the first byte (465).
    smtp_tls: Literal["none", "starttls", "tls"] = "none"
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_validate_certs: bool = True
    # A CA bundle for a server whose certificate is not signed by a public CA.
    smtp_ca_file: str | None = None
    # Applies to connecting and to each SMTP command.
    smtp_timeout_s: float = Field(15.0, gt=0)
    # Concurrent SMTP connections (one per sender worker), each reused from message to message.
    smtp_connections: int = Field(4, ge=1, le=64)
    # A connection unused this long is closed, so a reused one is never stale.
    smtp_idle_close_s: float = Field(10.0, gt=0)

    # --- What the mail says ------------------------------------------------------------
    mail_from_name: str = "Lessonstream"
    mail_from_address: str = "no-reply@lessonstream.local"
    # Where learners browse courses; links in mail point there. Unset: PUBLIC_BASE_URL.
    mail_site_url: str = ""
    mail_attach_certificate: bool = False
    mail_attachment_timeout_s: float = Field(15.0, gt=0)
    mail_attachment_max_bytes: int = Field(10_000_000, gt=0)
    # Events older than this are logged as skipped, not mailed: a new consumer group reads
    # its topics from the beginning and must not mail every learner the whole history. 0: no limit.
    mail_max_event_age_hours: float = Field(168.0, ge=0)

    # --- Delivery ----------------------------------------------------------------------
    mail_max_attempts: int = Field(8, ge=1)
    mail_retry_base_s: float = Field(30.0, gt=0)
    mail_retry_max_s: float = Field(3600.0, gt=0)
    # How long a claimed mail belongs to the worker sending it; after that (the process
    # died mid-send) another worker takes it over. Must exceed one send's worst case.
    mail_lease_s: float = Field(120.0, gt=0)
    # Safety poll: workers are woken at commit by a notification (``mail_due``) whenever mail
    # is queued or retried by any process, and sleep until the next retry is due; this only
    # bounds how long a missed notification can delay a mail.
    mail_poll_interval_s: float = Field(60.0, gt=0)

    # --- Deliveries (webhooks, and any other destination kind) ------------------------------
    # Concurrent delivery workers per process (each one request at a time).
    delivery_workers: int = Field(4, ge=1, le=64)
    # How long a claimed delivery belongs to its worker; after that (the process died
    # mid-request) another worker delivers it again. Must exceed WEBHOOK_TIMEOUT_S.
    delivery_lease_s: float = Field(60.0, gt=0)
    # Safety poll, as for mail: workers are woken by ``delivery_due`` notifications.
    delivery_poll_interval_s: float = Field(60.0, gt=0)
    # Seconds before each attempt of a delivery: the first (0: at once), then the waits after
    # each failure. After the last attempt fails, the delivery has failed. The default is the
    # Standard Webhooks schedule: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    # In the environment: comma-separated numbers ("0,5,300") or a JSON list.
    delivery_retry_schedule_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0], min_length=1
    )
    # One webhook request: connecting, sending, and the answer's headers and excerpt.
    webhook_timeout_s: float = Field(10.0, gt=0)
    # An endpoint failing without a single success this long is disabled (and its owner
    # mailed), as is one whose delivery exhausted its schedule. 0: only the latter.
    webhook_disable_after_s: float = Field(5 * 24 * 3600.0, ge=0)

    # --- xAPI (statements to a Learning Record Store, a destination kind of the deliveries) --
    # The LRS's xAPI base (statements go to {XAPI_LRS_URL}/statements). Empty: no statements
    # are made and video-sessions is not consumed.
    xapi_lrs_url: str = ""
    # HTTP Basic credentials, or the whole Authorization header value (e.g. "Basic ..." as an
    # LRS hands it out, or "Bearer ..."); not both.
    xapi_lrs_username: str = ""
    xapi_lrs_password: SecretStr = SecretStr("")
    xapi_lrs_authorization: SecretStr = SecretStr("")
    # One statement PUT: connecting, sending, the answer.
    xapi_timeout_s: float = Field(10.0, gt=0)

    @field_validator("delivery_retry_schedule_s", mode="before")
    @classmethod
    def _schedule_from_env(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                text = text[1:-1]
            return [float(part) for part in text.split(",") if part.strip()]
        return value

    @field_validator("delivery_retry_schedule_s")
    @classmethod
    def _schedule_not_negative(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("delays must not be negative")
        return value

    @field_validator("xapi_lrs_url")
    @classmethod
    def _lrs_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("XAPI_LRS_URL must be an http(s) URL")
        return value

    @property
    def xapi_enabled(self) -> bool:
        return bool(self.xapi_lrs_url)

    @property
    def request_timeout_s(self) -> float:
        """The longest one delivery attempt of any destination kind may take."""
        return max(self.webhook_timeout_s, self.xapi_timeout_s)

    @property
    def site_url(self) -> str:
        return (self.mail_site_url or self.public_base_url).rstrip("/")

    @model_validator(mode="after")
    def _refuse_cleartext_credentials(self) -> Self:
        if self.env == "production" and self.smtp_username and self.smtp_tls == "none":
            raise ValueError("unsafe production settings: SMTP_USERNAME is set but SMTP_TLS is none")
        return self

    @model_validator(mode="after")
    def _lease_beyond_a_request(self) -> Self:
        if self.delivery_lease_s <= self.request_timeout_s:
            raise ValueError(
                "DELIVERY_LEASE_S must exceed WEBHOOK_TIMEOUT_S and XAPI_TIMEOUT_S: a slow request would be sent twice"
            )
        return self

    @model_validator(mode="after")
    def _one_lrs_authentication(self) -> Self:
        basic = bool(self.xapi_lrs_username or self.xapi_lrs_password.get_secret_value())
        if basic and self.xapi_lrs_authorization.get_secret_value():
            raise ValueError("set XAPI_LRS_USERNAME/XAPI_LRS_PASSWORD or XAPI_LRS_AUTHORIZATION, not both")
        if self.xapi_lrs_password.get_secret_value() and not self.xapi_lrs_username:
            raise ValueError("XAPI_LRS_PASSWORD is set without XAPI_LRS_USERNAME")
        if self.env == "production" and self.xapi_lrs_url.startswith("http://") and (
            basic or self.xapi_lrs_authorization.get_secret_value()
        ):
            raise ValueError("unsafe production settings: LRS credentials would travel over http (XAPI_LRS_URL)")
        return self
