"""``shared.internal.confirm_revocation`` against the certificates service's internal answer
(served by a stand-in transport): which claims are confirmed, superseded or rejected."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import pytest

from shared.events import CertificateRevoked
from shared.inbox import RejectedEvent, TransientError
from shared.internal import confirm_revocation

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
RECORD: dict[str, Any] = {
    "certificate_id": "CERT-1", "verification_code": "V1", "certificate_url": "https://c.example/1.pdf",
    "verification_url": "https://c.example/verify/V1", "issued_at": "2026-01-01T00:00:00Z",
    "course_title": "Kafka", "student_name": "Ada", "student_email": "ada@example.com",
    "user_id": "u1", "course_id": 7,
}


def claim(status: Literal["revoked", "reinstated"], at: datetime, **overrides: Any) -> CertificateRevoked:
    values: dict[str, Any] = {
        "user_id": "u1", "course_id": 7, "certificate_id": "CERT-1", "verification_code": "V1",
        "status": status, "reason": "claimed reason", "changed_at": at, "course_title": "Kafka",
        "student_name": "Ada", "student_email": "ada@example.com", "verification_url": "https://evil.example/v",
    }
    values.update(overrides)
    return CertificateRevoked(**values)


async def confirm(answer: dict[str, Any] | None, claimed: CertificateRevoked, status: int = 200) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/internal/certificates/CERT-1"
        return httpx.Response(404 if answer is None else status, json=answer or {})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://certificates") as client:
        return await confirm_revocation(client, claimed)


def revoked_at(at: datetime, reason: str = "owner's reason", **more: Any) -> dict[str, Any]:
    return {**RECORD, "status": "revoked", "revoked_at": at.isoformat(), "revocation_reason": reason, **more}


async def test_a_current_revocation_is_confirmed_with_the_owners_reason_and_link() -> None:
    owned = await confirm(revoked_at(T0, status_changed_at=T0.isoformat()), claim("revoked", T0))
    assert owned.reason == "owner's reason" and owned.verification_url == RECORD["verification_url"]
    # Without status_changed_at, revoked_at is the owner's latest change.
    assert (await confirm(revoked_at(T0), claim("revoked", T0))).status == "revoked"


async def test_a_current_reinstatement_is_confirmed() -> None:
    answer = {**RECORD, "status": "valid", "status_changed_at": (T0 + timedelta(days=1)).isoformat()}
    owned = await confirm(answer, claim("reinstated", T0 + timedelta(days=1)))
    assert owned.status == "reinstated" and owned.verification_url == RECORD["verification_url"]
    # An owner that keeps no time of the reinstatement: the status alone decides.
    assert (await confirm({**RECORD, "status": "valid"}, claim("reinstated", T0))).status == "reinstated"


async def test_a_claim_older_than_the_owners_latest_change_is_superseded() -> None:
    # Reinstated at T0, revoked again at T0 + 1 day: the reinstatement arrives late.
    assert await confirm(revoked_at(T0 + timedelta(days=1)), claim("reinstated", T0)) is None
    # Revoked at T0, reinstated at T0 + 1 day: the revocation arrives late.
    later = {**RECORD, "status": "valid", "status_changed_at": (T0 + timedelta(days=1)).isoformat()}
    assert await confirm(later, claim("revoked", T0)) is None


@pytest.mark.parametrize(("answer", "claimed", "why"), [
    (None, claim("revoked", T0), "issued no certificate"),
    ({**RECORD, "status": "valid"}, claim("revoked", T0), "says revoked but the certificates service says valid"),
    (revoked_at(T0), claim("reinstated", T0 + timedelta(days=1)), "says reinstated but"),
    (revoked_at(T0), claim("revoked", T0 + timedelta(seconds=1)), "claims a change at"),
    (revoked_at(T0), claim("revoked", T0, user_id="u2"), "in user_id"),
    (revoked_at(T0), claim("revoked", T0, student_email="mallory@evil.example"), "in student_email"),
])
async def test_claims_the_owner_contradicts_are_rejected(
    answer: dict[str, Any] | None, claimed: CertificateRevoked, why: str
) -> None:
    with pytest.raises(RejectedEvent, match=why):
        await confirm(answer, claimed)


async def test_an_owner_that_cannot_answer_is_transient() -> None:
    with pytest.raises(TransientError):
        await confirm(RECORD, claim("revoked", T0), status=503)
