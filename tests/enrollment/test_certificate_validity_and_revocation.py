"""A course's certificate validity (API, storage, course-catalog) and a certificate's
revocation and reinstatement as certificate-revoked reports it to the enrollment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from shared.events import CertificateRevoked, CourseCatalogEntry, Topic
from tests.enrollment.conftest import Service
from tests.enrollment.test_progress_events import my_course, ts, wait_applied
from tests.helpers import TopicReader, eventually

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


async def test_validity_is_set_changed_cleared_and_echoed(service: Service) -> None:
    c = service.client
    created = await c.post(
        "/api/admin/courses", json={"title": "Expiring", "certificate_validity_days": 365}, headers=service.admin
    )
    assert created.status_code == 201, created.text
    course = created.json()["data"]
    cid = course["id"]
    assert course["certificate_validity_days"] == 365
    plain = await c.post("/api/admin/courses", json={"title": "Forever"}, headers=service.admin)
    assert plain.json()["data"]["certificate_validity_days"] is None

    changed = await c.patch(f"/api/admin/courses/{cid}", json={"certificate_validity_days": 30}, headers=service.admin)
    assert changed.status_code == 200 and changed.json()["data"]["certificate_validity_days"] == 30
    assert changed.json()["data"]["revision"] == 2
    # Absent: stays as it is.
    other = await c.patch(f"/api/admin/courses/{cid}", json={"title": "Expiring soon"}, headers=service.admin)
    assert other.json()["data"]["certificate_validity_days"] == 30
    # The bounds themselves are fine.
    for days in (1, 36500):
        edge = await c.patch(f"/api/admin/courses/{cid}", json={"certificate_validity_days": days},
                             headers=service.admin)
        assert edge.status_code == 200 and edge.json()["data"]["certificate_validity_days"] == days
    cleared = await c.patch(f"/api/admin/courses/{cid}", json={"certificate_validity_days": None},
                            headers=service.admin)
    assert cleared.status_code == 200 and cleared.json()["data"]["certificate_validity_days"] is None
    stored = await service.runtime.pool.fetchval("SELECT certificate_validity_days FROM courses WHERE id = $1", cid)
    assert stored is None
    got = await c.get(f"/api/admin/courses/{cid}", headers=service.admin)
    assert got.json()["data"]["certificate_validity_days"] is None


async def test_a_bad_validity_is_a_400_naming_the_field_and_changes_nothing(service: Service) -> None:
    c = service.client
    course = await service.create_course("Validity", lessons=1, publish=False, certificate_validity_days=90)
    cid = course["id"]
    for bad in (0, -1, 36501, "30", "a year", 30.5, True, [30]):
        for method, url, body in (
            ("post", "/api/admin/courses", {"title": "x", "certificate_validity_days": bad}),
            ("patch", f"/api/admin/courses/{cid}", {"certificate_validity_days": bad}),
        ):
            response = await c.request(method, url, json=body, headers=service.admin)
            assert response.status_code == 400, (method, bad, response.text)
            error = response.json()
            assert error["code"] == "invalid_request" and error["data"]["status"] == 400
            assert "certificate_validity_days" in error["message"]
            assert "certificate_validity_days" in str(error["data"]["params"])
    after = await c.get(f"/api/admin/courses/{cid}", headers=service.admin)
    assert after.json()["data"] == course
    assert await service.runtime.pool.fetchval("SELECT count(*) FROM courses") == 1


async def test_the_catalog_event_and_the_internal_copy_carry_the_validity(service: Service) -> None:
    c = service.client
    course = await service.create_course("Carried", lessons=1, certificate_validity_days=730)
    cid = course["id"]
    await c.patch(f"/api/admin/courses/{cid}", json={"certificate_validity_days": None}, headers=service.admin)
    async with TopicReader(service.env.kafka_bootstrap, service.topic(Topic.COURSE_CATALOG)) as reader:

        async def all_revisions() -> list[CourseCatalogEntry] | None:
            entries = [CourseCatalogEntry.model_validate_json(m.value) for m in reader.messages]
            return entries if len(entries) >= course["revision"] + 1 else None

        entries = await eventually(all_revisions, what="every revision on course-catalog")
    by_revision = {e.revision: e for e in entries}
    assert by_revision[course["revision"]].certificate_validity_days == 730
    assert by_revision[course["revision"] + 1].certificate_validity_days is None
    assert all(e.certificate_validity_days == 730 for e in entries if e.revision <= course["revision"])
    internal = await c.get(f"/internal/courses/{cid}", headers=service.internal)
    assert internal.json()["certificate_validity_days"] is None
    assert internal.json() == by_revision[course["revision"] + 1].model_dump(mode="json")


def test_catalog_events_from_before_the_field_still_parse() -> None:
    old = {"type": "course-catalog", "course_id": 1, "revision": 3, "title": "t", "slug": "t", "status": "published"}
    assert CourseCatalogEntry.model_validate(old).certificate_validity_days is None


def status_change(
    user: str, course: dict[str, Any], status: Literal["revoked", "reinstated"], at: datetime, reason: str = ""
) -> CertificateRevoked:
    return CertificateRevoked(
        user_id=user, course_id=course["id"], certificate_id="CERT-R1", verification_code="R1",
        status=status, reason=reason, changed_at=at, course_title=course["title"],
        student_name="Ada Lovelace", student_email="ada@example.com",
        verification_url="https://example.com/certificates/verify/R1",
    )


async def students_row(service: Service, course_id: int, user: str) -> dict[str, Any]:
    r = await service.client.get(f"/api/courses/{course_id}/students", headers=service.admin)
    assert r.status_code == 200
    row: dict[str, Any] = next(row for row in r.json()["data"] if row["user_id"] == user)
    return row


async def test_revoked_then_reinstated_and_an_older_change_arriving_late_is_ignored(consuming: Service) -> None:
    service = consuming
    course = await service.create_course("Revocable", lessons=1)
    cid = course["id"]
    await service.enroll(cid, "u1")
    row = await my_course(service, "u1", cid)
    assert row is not None and row["certificate_revoked_at"] is None and row["certificate_revocation_reason"] is None

    revoked = status_change("u1", course, "revoked", T0, "Plagiarised final project")
    await service.publish([revoked])
    await wait_applied(service, revoked)
    for seen in (await my_course(service, "u1", cid), await students_row(service, cid, "u1")):
        assert seen is not None
        assert ts(seen["certificate_revoked_at"]) == T0
        assert seen["certificate_revocation_reason"] == "Plagiarised final project"

    reinstated = status_change("u1", course, "reinstated", T0 + timedelta(days=2), "Appeal upheld")
    await service.publish([reinstated])
    await wait_applied(service, reinstated)
    for seen in (await my_course(service, "u1", cid), await students_row(service, cid, "u1")):
        assert seen is not None
        assert seen["certificate_revoked_at"] is None and seen["certificate_revocation_reason"] is None

    # A revocation made before the reinstatement, delivered only now, changes nothing; a
    # redelivery of the first one neither.
    late = status_change("u1", course, "revoked", T0 + timedelta(days=1), "Second thoughts")
    await service.publish([late, revoked])
    await wait_applied(service, late)
    stored = await service.enrollment_row("u1", cid)
    assert stored["certificate_revoked_at"] is None and stored["certificate_revocation_reason"] is None
    assert stored["certificate_status_changed_at"] == T0 + timedelta(days=2)

    # A newer revocation applies again.
    again = status_change("u1", course, "revoked", T0 + timedelta(days=3), "Exam retracted")
    await service.publish([again])
    await wait_applied(service, again)
    row = await my_course(service, "u1", cid)
    assert row is not None
    assert ts(row["certificate_revoked_at"]) == T0 + timedelta(days=3)
    assert row["certificate_revocation_reason"] == "Exam retracted"
    inbox = await service.runtime.pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", revoked.event_id)
    assert inbox == 1
