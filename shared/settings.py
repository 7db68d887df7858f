"""Settings every service shares, read from environment variables.

Development defaults work out of the box; the ones that are unsafe in production
(the development JWT and application-password token secrets, a missing public URL) are refused when
``LESSONSTREAM_ENV=production``.
"""

from __future__ import annotations

import ssl
from typing import Any, ClassVar, Literal, Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "lessonstream-development-secret-do-not-use-in-production"
DEV_APP_PASSWORD_TOKEN_SECRET = "lessonstream-app-password-development-secret-do-not-use"
# The issuer of the tokens enrollment signs for callers with an application password
# (HTTP Basic, exchanged at the gateway); every service accepts it besides JWT_ISSUER.
APP_PASSWORD_ISSUER = "lessonstream-app-passwords"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    env: Literal["development", "test", "production"] = Field(
        "development", validation_alias=AliasChoices("LESSONSTREAM_ENV", "env")
    )
    service_name: str = "lessonstream"

    # The service's own database; created on start if the server lacks it. Unset, it is
    # DEFAULT_DATABASE on the local server.
    DEFAULT_DATABASE: ClassVar[str] = "lessonstream"
    database_url: str = ""
    db_pool_min: int = 2
    db_pool_max: int = 10

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # Prepended to every topic name and consumer group: lets several stacks (or
    # test runs) share one broker without seeing each other's messages.
    topic_prefix: str = Field("", validation_alias=AliasChoices("KAFKA_TOPIC_PREFIX", "topic_prefix"))
    # Kafka's (and aiokafka's) defaults: a member that stops heartbeating leaves its group
    # after 10 s, and its partitions go to the others. Each idle consumer's heartbeats and
    # empty fetches are most of an idle stack's cost (docs/operations.md, "Idle cost").
    kafka_session_timeout_ms: int = Field(10000, ge=1000)
    kafka_heartbeat_interval_ms: int = Field(3000, ge=100)
    kafka_request_timeout_ms: int = Field(5000, ge=100)
    # How long the broker may hold a consumer's fetch when there is nothing to read: data
    # still returns at once (measured on the embedded broker: about 2 ms with a 10 s wait, as
    # with 1 s), except the first record of a partition on Tansu, which waits out the fetch
    # (docs/operations.md, "Idle cost").
    kafka_fetch_max_wait_ms: int = Field(10000, ge=10, le=30000)
    # Who this service is to the broker. In compose each service has its own SASL user, and
    # Kafka ACLs let it write only the topics it owns (docs/architecture.md, "Who may
    # produce what"); PLAINTEXT without a user is the development and test default.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    consumer_max_attempts: int = Field(5, ge=1)
    consumer_retry_base_s: float = 0.2

    # Applied-event markers older than this are pruned: far beyond any redelivery window.
    inbox_retention_days: int = Field(30, ge=1)
    # Dead letters already replayed (or found applied) are deleted this long after they were
    # dead-lettered; pending ones stay until replayed (docs/operations.md, "Dead letters").
    dead_letter_retention_days: int = Field(90, ge=1)
    # Published outbox rows are kept this long, to be sent again to a broker that lost
    # them. Never longer than the inbox retention: consumers must still recognise them.
    outbox_retention_hours: float = Field(168, gt=0)
    # Background loops woken by a notification or by their own process when work is queued
    # (progress's re-checks and recalculations) back off to polling this rarely while they
    # find nothing: the bound on how late a missed wake-up leaves work (docs/operations.md).
    idle_poll_s: float = Field(60.0, gt=0)

    jwt_secret: str = DEV_JWT_SECRET
    jwt_jwks_url: str | None = None
    jwt_issuer: str = "lessonstream"
    jwt_audience: str = "lessonstream"
    # Signs (enrollment) and verifies (every service) the short-lived HS256 tokens that
    # application passwords are exchanged for: these never come from the identity
    # provider, so they need a key of their own even when JWT_JWKS_URL is set.
    app_password_token_secret: SecretStr = SecretStr(DEV_APP_PASSWORD_TOKEN_SECRET)

    # Where users reach the gateway; used to build links (certificates, emails).
    public_base_url: str = "http://127.0.0.1:8080"
    # Internal (not gateway-routed) base URLs for read-your-writes fallbacks.
    enrollment_internal_url: str = "http://127.0.0.1:8102"
    progress_internal_url: str = "http://127.0.0.1:8101"
    certificates_internal_url: str = "http://127.0.0.1:8103"
    notifications_internal_url: str = "http://127.0.0.1:8105"
    # Shared secret for service-to-service calls on the internal API.
    internal_token: str = "lessonstream-internal-development-token"

    log_level: str = "INFO"

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
    def _issuers_differ(self) -> Self:
        if self.jwt_issuer == APP_PASSWORD_ISSUER:
            raise ValueError(f"JWT_ISSUER must not be {APP_PASSWORD_ISSUER!r}: that issuer is application passwords'")
        return self

    @model_validator(mode="after")
    def _heartbeats_within_session(self) -> Self:
        # Kafka's rule: a member that heartbeats less than three times a session timeout is
        # taken for dead by the first late heartbeat.
        if self.kafka_heartbeat_interval_ms * 3 > self.kafka_session_timeout_ms:
            raise ValueError("KAFKA_HEARTBEAT_INTERVAL_MS must be at most a third of KAFKA_SESSION_TIMEOUT_MS")
        return self

    @property
    def kafka_consumer_request_timeout_ms(self) -> int:
        """A consumer's requests may be held by the broker on purpose: a fetch for up to
        ``kafka_fetch_max_wait_ms``, a JoinGroup until the group's members have joined (up to
        the rebalance timeout, which aiokafka sets to the session timeout). Its timeout must
        outlast both, or a wait the broker was asked for reads as a dead broker (seen: with a
        session timeout above the request timeout, groups never finished joining)."""
        return max(self.kafka_session_timeout_ms, self.kafka_fetch_max_wait_ms) + self.kafka_request_timeout_ms

    @model_validator(mode="after")
    def _refuse_unsafe_production_defaults(self) -> Self:
        if self.env != "production":
            return self
        problems = []
        if self.jwt_jwks_url is None and (self.jwt_secret == DEV_JWT_SECRET or len(self.jwt_secret) < 32):
            problems.append("JWT_SECRET must be set to a secret of at least 32 characters (or JWT_JWKS_URL)")
        if self.internal_token == "lessonstream-internal-development-token":
            problems.append("INTERNAL_TOKEN must be set")
        app_secret = self.app_password_token_secret.get_secret_value()
        if app_secret == DEV_APP_PASSWORD_TOKEN_SECRET or len(app_secret) < 32:
            problems.append("APP_PASSWORD_TOKEN_SECRET must be set to a secret of at least 32 characters")
        if "public_base_url" not in self.model_fields_set:
            # Certificate links and emails would point at the development address.
            problems.append("PUBLIC_BASE_URL must be set")
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
