"""``lessonstream seed-demo`` against the whole stack: what the demo people see afterwards,
through the gateway (the instructor's dashboard, the learners' progress, a certificate)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from lessonstream import cli
from shared.demo import DEMO_INSTRUCTOR, DEMO_LEARNERS, DemoPerson
from tests.devstack import DevStack, issued_certificate
from tests.e2e.test_end_to_end import auth, wait_for

pytestmark = pytest.mark.xdist_group("e2e")

# The command signs its tokens with ServiceSettings() of this process's environment, as the
# stack (started with the same environment) verifies them: the development secret.
EXPECTED_PERCENTAGES = {
    "demo-learner-1": 100,  # five required lessons of six: all of them
    "demo-learner-2": 80,
    "demo-learner-3": 20,  # the optional welcome and the first video
    "demo-learner-4": 0,  # the optional welcome, half of the first video
    "demo-learner-5": 0,
    "demo-learner-6": 0,
}


def headers(person: DemoPerson) -> dict[str, str]:
    return auth(person.user_id, person.name, person.email, [person.role])


def test_seed_demo_gives_the_dashboard_and_every_demo_learner_something_to_see(e2e_stack: DevStack) -> None:
    result = CliRunner().invoke(cli.app, ["seed-demo", "--gateway", e2e_stack.gateway, "--instructor", "t1"])
    assert result.exit_code == 0, result.output
    course_id = int(result.stdout.strip().splitlines()[-1])
    assert "Ada Lovelace (demo-learner-1): completed the course (100%)" in result.stderr
    instructor = headers(DEMO_INSTRUCTOR)
    ada, grace, alan, katherine, edsger, barbara = (headers(person) for person in DEMO_LEARNERS)
    with httpx.Client(base_url=e2e_stack.gateway, timeout=15) as client:
        course = client.get(f"/api/courses/{course_id}", headers=barbara).json()["data"]
        assert course["status"] == "published" and course["requires_sequential_progress"] is True
        assert course["certificate_enabled"] is True
        assert course["instructor_ids"] == ["demo-instructor", "t1"]
        assert [(lesson["title"], lesson["kind"], lesson["is_required"]) for lesson in course["lessons"]] == [
            (lesson["title"], lesson["kind"], lesson.get("is_required", True)) for lesson in cli.DEMO_LESSONS
        ]
        videos = [lesson for lesson in course["lessons"] if lesson["kind"] == "video"]
        assert len(videos) == 4
        assert {lesson["duration_seconds"] for lesson in videos} == {cli.SAMPLE_VIDEO_SECONDS}
        first_video = videos[0]["id"]

        # The instructor's list of students: every demo learner, each at their own point
        # (the percentages, and later the course's completion, reach enrollment through events).
        def students() -> list[dict[str, Any]] | None:
            response = client.get(f"/api/courses/{course_id}/students", headers=instructor)
            assert response.status_code == 200, response.text
            rows: list[dict[str, Any]] = response.json()["data"]
            seen = {row["user_id"]: row["progress_percentage"] for row in rows}
            completed = [row["user_id"] for row in rows if row["completed_at"]]
            return rows if seen == EXPECTED_PERCENTAGES and completed else None

        rows = wait_for(students, what="the six demo learners at their percentages, one completed")
        assert {row["display_name"] for row in rows} == {person.name for person in DEMO_LEARNERS}
        assert [row["user_id"] for row in rows if row["completed_at"]] == ["demo-learner-1"]

        # The dashboard's figures: enrolled, completed, and per lesson who started, finished
        # and how long they watched.
        def analytics() -> dict[str, Any] | None:
            response = client.get(f"/api/admin/courses/{course_id}/analytics", headers=instructor)
            assert response.status_code == 200, response.text
            report: dict[str, Any] = response.json()["data"]
            done = report["completion"]["enrolled"] == 6 and report["completion"]["completed"] == 1
            return report if done else None

        report = wait_for(analytics, what="the analytics of six learners, one of them done")
        assert report["completion"]["completion_rate"] > 0
        difficulty = {row["lesson_id"]: row for row in report["lesson_difficulty"]}
        assert difficulty[first_video]["completed"] == 3  # Ada, Grace and Alan
        assert difficulty[first_video]["started"] == 5  # and Katherine and Edsger, who watched some
        engagement = {row["lesson_id"]: row for row in report["engagement"]}
        for video in videos:
            figures = engagement[video["id"]]
            assert figures["learners"] >= 2, figures
            assert figures["average_watch_seconds"] > 0, figures
            assert 0 < figures["average_watched_ratio"] <= 1, figures

        # Each learner's own view.
        progress = client.get(f"/api/courses/{course_id}/progress", headers=grace).json()["data"]
        assert progress["progress_percentage"] == 80 and progress["next_lesson"]["title"] == "Putting it together"
        progress = client.get(f"/api/courses/{course_id}/progress", headers=alan).json()["data"]
        assert [lesson["title"] for lesson in progress["locked_lessons"]][:1] == ["JavaScript basics"]
        watching = client.get(f"/api/progress?courseId={course_id}", headers=katherine).json()
        [video_record] = [r for r in watching if r["lesson_id"] == first_video]
        assert (video_record["state"], video_record["last_position"]) == ("in_progress", 6)
        assert video_record["watched_ratio"] == 0.5
        opened = client.get(f"/api/progress?courseId={course_id}", headers=edsger).json()
        assert [(r["lesson_id"], r["last_position"], r["completed"]) for r in opened] == [(first_video, 4, False)]
        progress = client.get(f"/api/courses/{course_id}/progress", headers=barbara).json()["data"]
        assert progress["progress_percentage"] == 0 and progress["next_lesson"]["title"] == "Welcome to the course"

        # Ada finished: her certificate is issued.
        issued = issued_certificate(client, course_id, ada, what="Ada's certificate")
        assert issued["student_name"] == "Ada Lovelace"

