"""What a credential's verifier is told, when it expires, and where each certificate's
revocation entry goes: the pure rules, and the allocation against the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.certificates import domain, store
from services.certificates.domain import CredentialState
from services.certificates.settings import CertificatesSettings, WorkerSettings
from shared import db

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "certificates" / "migrations"


def state(**changes: object) -> CredentialState:
    facts: dict[str, object] = {
        "proof_valid": True, "revoked": False, "valid_until": None, "version": 1, "current_version": 1, "now": NOW,
    }
    facts.update(changes)
    return domain.credential_state(**facts)  # type: ignore[arg-type]


def test_a_verifier_hears_the_most_serious_fact_first() -> None:
    assert state() is CredentialState.VALID
    assert state(version=1, current_version=2) is CredentialState.SUPERSEDED
    assert state(valid_until=NOW) is CredentialState.EXPIRED  # expires at that instant
    assert state(valid_until=NOW + timedelta(seconds=1)) is CredentialState.VALID
    assert state(valid_until=NOW, version=1, current_version=2) is CredentialState.EXPIRED
    assert state(revoked=True, valid_until=NOW, current_version=2) is CredentialState.REVOKED
    assert state(proof_valid=False, revoked=True) is CredentialState.INVALID


def test_validity_is_counted_from_issue_and_none_means_never() -> None:
    assert domain.valid_until(NOW, None) is None
    assert domain.valid_until(NOW, 365) == NOW + timedelta(days=365)


def test_a_status_list_takes_entries_until_half_full_then_the_next_one_does() -> None:
    assert domain.status_list_for(0, 1) == 1
    assert domain.status_list_for(domain.STATUS_LIST_FILL - 1, 1) == 1
    assert domain.status_list_for(domain.STATUS_LIST_FILL, 1) == 2
    assert 0 <= domain.new_status_index() < domain.STATUS_LIST_SIZE


async def test_each_reserved_identity_gets_its_own_random_entry(db_url: str) -> None:
    await db.migrate_service(db_url, "certificates", MIGRATIONS)
    pool = await db.create_pool(db_url, min_size=1, max_size=4)
    try:
        drawn = iter([7, 7, 7, 3, 11, *range(100, 150)])  # a taken index is drawn again
        entries = []
        for n in range(40):
            identity = await store.reserve_identity(
                pool, f"learner-{n}", 1, NOW, domain.new_verification_code, lambda: next(drawn),
                holder="test", lease_s=5,
            )
            entries.append((identity.status_list, identity.status_index))
        assert entries[:3] == [(1, 7), (1, 3), (1, 11)]
        assert len(set(entries)) == 40
        # Reserving again (a takeover) keeps the entry.
        again = await store.reserve_identity(
            pool, "learner-0", 1, NOW, domain.new_verification_code, lambda: next(drawn), holder="other", lease_s=5,
        )
        assert (again.status_list, again.status_index) == (1, 7)
    finally:
        await pool.close()


def test_production_refuses_to_sign_without_configured_keys() -> None:
    production: dict[str, Any] = {"env": "production", "jwt_secret": "s" * 40, "internal_token": "t" * 40,
                                  "public_base_url": "https://learn.example", "app_password_token_secret": "a" * 40}
    with pytest.raises(ValidationError, match="CERTIFICATE_SIGNING_KEYS must be set"):
        CertificatesSettings(**production)
    with pytest.raises(ValidationError, match="CERTIFICATE_SIGNING_KEYS must be set"):
        WorkerSettings(**production)
    with pytest.raises(ValidationError, match="holds a development key"):
        CertificatesSettings(**production, signing_keys="2026-a:c2VlZA, dev-1:c2VlZA")
    assert CertificatesSettings(**production, signing_keys="k1:configured").signing_keys.get_secret_value()
