"""Settings every service shares, read from environment variables.

Development defaults work out of the box; the ones that are unsafe in production
(the development JWT secret, a missing public URL) are refused when
``LESSONSTREAM_ENV=production``.
"""

from __future__ import annotations

import ssl
from typing import Any, ClassVar, Literal, Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "lessonstream-development-secret-do-not-use-in-production"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    env: Literal["development", "test", "production"] = Field(
        "development", validation_alias=AliasChoices("LESSONSTREAM_ENV", "env")
    )
    service_name: str = Field("lessonstream", validation_alias=AliasChoices("SERVICE_NAME", "service_name"))

    # The service's own database; created on start if the server lacks it. Unset, it is
    # DEFAULT_DATABASE on the local server.
    DEFAULT_DATABASE: ClassVar[str] = "lessonstream"
    database_url: str = Field("", validation_alias=AliasChoices("DATABASE_URL", "database_url"))
    db_pool_min: int = Field(2, validation_alias=AliasChoices("DB_POOL_MIN", "db_pool_min"))
    db_pool_max: int = Field(10, validation_alias=AliasChoices("DB_POOL_MAX", "db_pool_max"))

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
    )
    # Prepended to every topic name and consumer group: lets several stacks (or
    # test runs) share one broker without seeing each other's messages.
    topic_prefix: str = Field("", validation_alias=AliasChoices("KAFKA_TOPIC_PREFIX", "topic_prefix"))
    kafka_session_timeout_ms: int = Field(
        6000, validation_alias=AliasChoices("KAFKA_SESSION_TIMEOUT_MS", "kafka_session_timeout_ms")
    )
    kafka_heartbeat_interval_ms: int = Field(
        1000,
        validation_alias=AliasChoices("KAFKA_HEARTBEAT_INTERVAL_MS", "kafka_heartbeat_interval_ms"),
    )
    kafka_request_timeout_ms: int = Field(
        5000, validation_alias=AliasChoices("KAFKA_REQUEST_TIMEOUT_MS", "kafka_request_timeout_ms")
    )
    # Who this service is to the broker. In compose each service has its own SASL user, and
    # Kafka ACLs let it write only the topics it owns (docs/architecture.md, "Who may
    # produce what"); PLAINTEXT without a user is the development and test default.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL", "kafka_security_protocol")
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", validation_alias=AliasChoices("KAFKA_SASL_MECHANISM", "kafka_sasl_mechanism")
    )
    kafka_sasl_username: str = Field("", validation_alias=AliasChoices("KAFKA_SASL_USERNAME", "kafka_sasl_username"))
    kafka_sasl_password: SecretStr = Field(
        SecretStr(""), validation_alias=AliasChoices("KAFKA_SASL_PASSWORD", "kafka_sasl_password")
    )
    consumer_max_attempts: int = Field(
        5, ge=1, validation_alias=AliasChoices("CONSUMER_MAX_ATTEMPTS", "consumer_max_attempts")
    )
    consumer_retry_base_s: float = Field(
        0.2, validation_alias=AliasChoices("CONSUMER_RETRY_BASE_S", "consumer_retry_base_s")
    )

    # Applied-event markers older than this are pruned: far beyond any redelivery window.
    inbox_retention_days: int = Field(
        30, ge=1, validation_alias=AliasChoices("INBOX_RETENTION_DAYS", "inbox_retention_days")
    )
    # Published outbox rows are kept this long, to be sent again to a broker that lost
    # them. Never longer than the inbox retention: consumers must still recognise them.
    outbox_retention_hours: float = Field(
        168, gt=0, validation_alias=AliasChoices("OUTBOX_RETENTION_HOURS", "outbox_retention_hours")
    )

    jwt_secret: str = Field(DEV_JWT_SECRET, validation_alias=AliasChoices("JWT_SECRET", "jwt_secret"))
    jwt_jwks_url: str | None = Field(None, validation_alias=AliasChoices("JWT_JWKS_URL", "jwt_jwks_url"))
    jwt_issuer: str = Field("lessonstream", validation_alias=AliasChoices("JWT_ISSUER", "jwt_issuer"))
    jwt_audience: str = Field("lessonstream", validation_alias=AliasChoices("JWT_AUDIENCE", "jwt_audience"))

    # Where users reach the gateway; used to build links (certificates, emails).
    public_base_url: str = Field(
        "http://127.0.0.1:8080", validation_alias=AliasChoices("PUBLIC_BASE_URL", "public_base_url")
    )
    # Internal (not gateway-routed) base URLs for read-your-writes fallbacks.
    enrollment_internal_url: str = Field(
        "http://127.0.0.1:8102",
        validation_alias=AliasChoices("ENROLLMENT_INTERNAL_URL", "enrollment_internal_url"),
    )
    progress_internal_url: str = Field(
        "http://127.0.0.1:8101",
        validation_alias=AliasChoices("PROGRESS_INTERNAL_URL", "progress_internal_url"),
    )
    certificates_internal_url: str = Field(
        "http://127.0.0.1:8103",
        validation_alias=AliasChoices("CERTIFICATES_INTERNAL_URL", "certificates_internal_url"),
    )
    # Shared secret for service-to-service calls on the internal API.
    internal_token: str = Field(
        "lessonstream-internal-development-token",
        validation_alias=AliasChoices("INTERNAL_TOKEN", "internal_token"),
    )

    log_level: str = Field("INFO", validation_alias=AliasChoices("LOG_LEVEL", "log_level"))

    @model_validator(mode="after")
    def _default_database(self) -> Self:
        if not self.database_url:
            self.database_url = f"postgresql://postgres@127.0.0.1:5432/{self.DEFAULT_DATABASE}"
        return self

    @model_validator(mode="after")
    def _outbox_within_inbox_retention(self) -> Self:
        if self.outbox_retention_hours > self.inbox_retention_days * 24:
            raise ValueError(
                "OUTBOX_RETENTION_HOURS must not exceed INBOX_RETENTION_DAYS: a re-published event "
                "must still find its consumers' markers"
            )
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_production_defaults(self) -> Self:
        if self.env != "production":
            return self
        problems = []
        if self.jwt_jwks_url is None and (self.jwt_secret == DEV_JWT_SECRET or len(self.jwt_secret) < 32):
            problems.append("JWT_SECRET must be set to a secret of at least 32 characters (or JWT_JWKS_URL)")
        if self.internal_token == "lessonstream-internal-development-token":
            problems.append("INTERNAL_TOKEN must be set")
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_username:
            problems.append("KAFKA_SASL_USERNAME must be set with a SASL security protocol")
        if problems:
            raise ValueError("unsafe production settings: " + "; ".join(problems))
        return self

    def kafka_client_options(self) -> dict[str, Any]:
        """Connection security for every aiokafka client (consumers, producers, admin)."""
        options: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.endswith("SSL"):
            options["ssl_context"] = ssl.create_default_context()
        if self.kafka_security_protocol.startswith("SASL"):
            options.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.kafka_sasl_password.get_secret_value(),
            )
        return options

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def group(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"
