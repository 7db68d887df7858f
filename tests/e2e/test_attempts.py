"""Recertification through the gateway, across every real service process: a learner
completes a course and gets a certificate, an admin resets the learner's course, the
learner starts attempt 2 at 0 % (attempt 1 kept for staff), completes it again and gets a
second certificate and a second completion email; the first certificate stays valid.

Nothing is stubbed: ``lessonstream dev`` runs Tansu, the services, the certificate worker,
the SMTP sink and Caddy.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.devstack import DevStack, issued_certificate, published_course
from tests.e2e.test_end_to_end import SETTINGS, auth, mails_to, wait_for

pytestmark = pytest.mark.xdist_group("e2e")


@pytest.fixture
def stack(e2e_stack: DevStack) -> DevStack:
    return e2e_stack


def test_a_reset_learner_completes_again_and_gets_a_second_certificate(stack: DevStack) -> None:
    admin = auth("admin-1", "Admin", "admin@example.com", ["admin"])
    learner_email = "ines@example.com"
    learner = auth("learner-9", "Inès Okafor", learner_email)
    title = "Annual Safety Training"
    with httpx.Client(base_url=stack.gateway, timeout=15) as client:
        course_id, lessons = published_course(client, admin, title, [("Hazards", True), ("Procedures", True)])
        assert client.post(f"/api/courses/{course_id}/enroll", headers=learner).status_code == 200

        def progress() -> dict[str, Any]:
            response = client.get(f"/api/courses/{course_id}/progress", headers=learner)
            assert response.status_code == 200, response.text
            data: dict[str, Any] = response.json()["data"]
            return data

        def complete_the_course() -> None:
            watched = client.post("/api/progress", headers=learner, json={
                "course_id": course_id, "lesson_id": lessons[0], "video_progress": 120, "last_position": 120})
            assert watched.status_code == 200, watched.text
            for lesson in lessons:
                done = client.post(f"/api/courses/{course_id}/lessons/{lesson}/complete", headers=learner)
                assert done.status_code == 200, done.text
                assert done.json()["message"] == "Lesson marked as complete"
            assert done.json()["data"]["progress_percentage"] == 100

        # Attempt 1: completed, certified.
        complete_the_course()
        assert (progress()["attempt"], progress()["progress_percentage"]) == (1, 100)
        first = issued_certificate(client, course_id, learner, what="the first certificate")
        assert first["attempt"] == 1

        # The admin resets the learner: attempt 2 at 0 %, attempt 1 kept for staff only.
        reset = client.post(f"/api/admin/courses/{course_id}/learners/learner-9/reset", headers=admin)
        assert reset.status_code == 200, reset.text
        assert reset.json()["data"]["attempt"] == 2

        def started_again() -> dict[str, Any] | None:
            data = progress()
            return data if data["attempt"] == 2 else None

        now = wait_for(started_again, what="attempt 2 in progress")
        assert (now["progress_percentage"], now["completed_lessons"], now["completed_at"]) == (0, 0, None)
        assert now["time_spent_seconds"] == 0 and now["certificate_url"] is None
        history = client.get(f"/api/admin/learners/learner-9/progress?course_id={course_id}&attempt=1", headers=admin)
        assert history.status_code == 200, history.text
        assert [(r["lesson_id"], r["completed"]) for r in history.json()] == [(lessons[0], True), (lessons[1], True)]
        assert client.get(f"/api/admin/learners/learner-9/progress?course_id={course_id}", headers=admin).json() == []
        denied = client.get(f"/api/admin/learners/learner-9/progress?course_id={course_id}&attempt=1", headers=learner)
        assert denied.status_code == 403

        # Attempt 2: completed again, a second certificate; the first one still verifies.
        complete_the_course()
        assert (progress()["attempt"], progress()["progress_percentage"]) == (2, 100)
        second = issued_certificate(client, course_id, learner, what="the second certificate",
                                    other_than=first["certificate_id"])
        assert second["attempt"] == 2 and second["verification_code"] != first["verification_code"]
        for issued in (first, second):
            verified = client.get(issued["verification_url"].replace(SETTINGS.public_base_url, stack.gateway),
                                  headers={"Accept": "application/json"})
            assert verified.status_code == 200
            assert verified.json()["data"]["valid"] is True, verified.json()

        def certificate_url_in_progress() -> str | None:
            return progress()["certificate_url"] or None

        assert wait_for(certificate_url_in_progress, what="the second certificate in progress") == \
            second["certificate_url"]

    # Two completion emails and two certificate emails, one per attempt.
    mail_dir = stack.var_dir / "mail"

    def four_mails() -> list[str] | None:
        subjects = sorted(str(m["Subject"]) for m in mails_to(mail_dir, learner_email))
        return subjects if len(subjects) >= 4 else None

    assert wait_for(four_mails, what="two completion and two certificate emails") == [
        f"Congratulations, you completed {title}",
        f"Congratulations, you completed {title}",
        f"Your certificate for {title} is ready",
        f"Your certificate for {title} is ready",
    ]
