"""A course that changes after learners started, through the gateway across every real
process (``lessonstream dev`` with two progress replicas and recalculation batches of two):
a required lesson added revokes no completion and no certificate and lowers everyone's
percentage; a required lesson archived completes the learner who now has everything, once,
with a certificate and the emails."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.devstack import DevStack
from tests.e2e.test_end_to_end import auth, mails_to, wait_for

pytestmark = pytest.mark.xdist_group("e2e")


@pytest.fixture
def stack(e2e_stack: DevStack) -> DevStack:
    return e2e_stack


def test_a_course_changing_under_its_learners(stack: DevStack) -> None:
    admin = auth("admin-1", "Admin", "admin@example.com", ["admin"])
    learners = {u: auth(u, f"Learner {u}", f"{u}@example.com") for u in ("ch1", "ch2", "ch3")}
    with httpx.Client(base_url=stack.gateway, timeout=15) as client:
        course_id = client.post("/api/admin/courses", headers=admin,
                                json={"title": "Changing Course"}).json()["data"]["id"]

        def add(title: str) -> int:
            added = client.post(f"/api/admin/courses/{course_id}/lessons", headers=admin, json={"title": title})
            assert added.status_code == 201, added.text
            lesson_id: int = added.json()["data"]["lesson"]["id"]
            return lesson_id

        a, b = add("A"), add("B")
        assert client.post(f"/api/admin/courses/{course_id}/publish", headers=admin).status_code == 200
        for headers in learners.values():
            assert client.post(f"/api/courses/{course_id}/enroll", headers=headers).status_code == 200

        def complete(user: str, lesson: int) -> None:
            done = client.post(f"/api/courses/{course_id}/lessons/{lesson}/complete", headers=learners[user])
            assert done.status_code == 200, done.text

        complete("ch1", a)
        complete("ch1", b)
        complete("ch2", a)

        def mine(user: str) -> dict[str, Any]:
            rows = client.get("/api/courses/my-courses", headers=learners[user]).json()["data"]
            row: dict[str, Any] = next(r for r in rows if r["course_id"] == course_id)
            return row

        def certified(user: str) -> dict[str, Any] | None:
            row = mine(user)
            return row if row["status"] == "completed" and row["certificate_url"] else None

        first = wait_for(lambda: certified("ch1"), what="ch1 completed with a certificate")

        def students_at(wanted: dict[str, int]) -> dict[str, Any] | None:
            rows = client.get(f"/api/courses/{course_id}/students", headers=admin).json()["data"]
            got = {r["user_id"]: r["progress_percentage"] for r in rows}
            return {r["user_id"]: r for r in rows} if got == wanted else None

        # A required lesson added: the admin call answers at once; percentages drop for
        # everyone; ch1 keeps the completion, its time and the certificate.
        c = add("C")
        students = wait_for(lambda: students_at({"ch1": 66, "ch2": 33, "ch3": 0}), what="percentages recalculated")
        assert students["ch1"]["status"] == "completed"
        assert students["ch1"]["completed_at"] == first["completed_at"]
        assert students["ch1"]["certificate_url"] == first["certificate_url"]
        now = mine("ch1")
        assert (now["status"], now["progress_percentage"], now["certificate_url"]) == (
            "completed", 66, first["certificate_url"])
        def progress_of(user: str, percentage: int) -> dict[str, Any] | None:
            # Each progress replica keeps the course in memory for a few seconds: a replica
            # that did not consume the change itself answers with it within that time.
            got = client.get(f"/api/courses/{course_id}/progress", headers=learners[user]).json()["data"]
            return got if got["progress_percentage"] == percentage else None

        progress = wait_for(lambda: progress_of("ch1", 66), what="ch1's course progress at 66 %")
        assert progress["completed_at"] is not None
        assert isinstance(progress["completed_revision"], int)
        assert progress["new_required_lessons"] == [{"id": c, "title": "C", "order": 3}]
        certificate = client.get(f"/api/courses/{course_id}/certificate", headers=learners["ch1"])
        assert certificate.status_code == 200, certificate.text

        # ch2 does C, then B is archived: ch2 has everything still required and completes.
        complete("ch2", c)
        archived = client.delete(f"/api/admin/courses/{course_id}/lessons/{b}", headers=admin)
        assert archived.status_code == 200, archived.text
        assert [lesson["id"] for lesson in archived.json()["data"]["lessons"]] == [a, c]
        wait_for(lambda: certified("ch2"), what="ch2 completed by the change, with a certificate")
        wait_for(lambda: students_at({"ch1": 50, "ch2": 100, "ch3": 0}), what="percentages after the archive")
        progress = wait_for(lambda: progress_of("ch2", 100), what="ch2's course progress at 100 %")
        assert progress["completed_at"] is not None and progress["new_required_lessons"] == []
        assert mine("ch1")["status"] == "completed"

    # One completion mail and one certificate mail each, the change notwithstanding.
    mail_dir = stack.var_dir / "mail"

    def both_have_two_mails() -> bool:
        return all(len(mails_to(mail_dir, f"{user}@example.com")) >= 2 for user in ("ch1", "ch2"))

    wait_for(both_have_two_mails, what="ch1's and ch2's mails")
    for user in ("ch1", "ch2"):
        subjects = sorted(str(m["Subject"]) for m in mails_to(mail_dir, f"{user}@example.com"))
        assert subjects == [
            "Congratulations, you completed Changing Course",
            "Your certificate for Changing Course is ready",
        ]
    assert mails_to(mail_dir, "ch3@example.com") == []
