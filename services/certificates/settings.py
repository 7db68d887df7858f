"""Settings of the certificates processes: the API's, and the workers' (the API's plus the render pool)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from pydantic import AliasChoices, Field, SecretStr, model_validator

from shared.settings import ServiceSettings

# The key id prefix of the keys generated for development and tests (never for production).
DEVELOPMENT_KEY_PREFIX = "dev-"


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
    # The Ed25519 keys that sign the credentials (``credentials.parse_keys``: the last one
    # signs, every one stays published so that earlier credentials keep verifying). Unset in
    # development and tests: a key is generated once and kept in ``signing_key_file``;
    # production refuses to start without it.
    signing_keys: SecretStr = Field(
        SecretStr(""), validation_alias=AliasChoices("CERTIFICATE_SIGNING_KEYS", "signing_keys")
    )
    signing_key_file: Path = Field(
        Path("var/certificates/signing-keys"),
        validation_alias=AliasChoices("CERTIFICATE_SIGNING_KEY_FILE", "signing_key_file"),
    )
    # How long verifiers and caches may keep the revocation status list (it changes when a
    # certificate is revoked or reinstated).
    status_list_max_age_s: int = Field(
        60, ge=0, validation_alias=AliasChoices("CERTIFICATE_STATUS_LIST_MAX_AGE_S", "status_list_max_age_s")
    )

    @model_validator(mode="after")
    def _signing_keys_in_production(self) -> Self:
        if self.env != "production":
            return self
        keys = self.signing_keys.get_secret_value()
        if not keys:
            # A generated development key would sign credentials nobody can trust or rotate.
            raise ValueError("unsafe production settings: CERTIFICATE_SIGNING_KEYS must be set")
        if any(entry.strip().startswith(DEVELOPMENT_KEY_PREFIX) for entry in keys.split(",")):
            raise ValueError("unsafe production settings: CERTIFICATE_SIGNING_KEYS holds a development key")
        return self


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not every platform has affinity
        return os.cpu_count() or 1


class WorkerSettings(CertificatesSettings):
    service_name: str = "certificates-worker"
    # Processes that render PDFs; 0 means one per core this process may use.
    render_processes: int = Field(
        0, ge=0, validation_alias=AliasChoices("CERTIFICATE_RENDER_PROCESSES", "render_processes")
    )
    # Consumer-group members per topic in this process; 0 means one more than the render
    # processes, so the pool renders the next certificate while one is being stored.
    consumers: int = Field(0, ge=0, validation_alias=AliasChoices("CERTIFICATE_WORKER_CONSUMERS", "consumers"))

    def render_pool_size(self) -> int:
        return self.render_processes or _usable_cores()

    def consumer_count(self) -> int:
        return self.consumers or self.render_pool_size() + 1
