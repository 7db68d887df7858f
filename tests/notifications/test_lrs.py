"""The real LRS the xAPI tests deliver to (Ralph), with a statement our builder makes:
stored once under its id, a repeated PUT of the same statement accepted without a second
copy, a different statement under that id refused, and the stored one read back."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import httpx
import pytest

from services.notifications import xapi
from shared.events import CourseCompleted, VideoSessionEnded
from tests.lrs import Lrs

# Every test of the real LRS on one worker: one Ralph per run, not one per worker.
pytestmark = pytest.mark.xdist_group("lrs")
HEADERS = {"X-Experience-API-Version": "1.0.3"}


def test_a_built_statement_is_stored_once_by_the_lrs(lrs: Lrs) -> None:
    event = VideoSessionEnded(
        user_id="u-7", course_id=3, lesson_id=9, session_id=UUID(int=7),
        started_at=datetime(2026, 3, 1, 10, tzinfo=UTC), ended_at=datetime(2026, 3, 1, 10, 2, tzinfo=UTC),
        start_position=0.0, end_position=42.0, played_segments=[(0.0, 12.5), (30.0, 42.0)],
        video_length=120.0, progress=0.2083,
    )
    paused = xapi.video_session(event, "https://learn.example.org")[2]
    url = f"{lrs.url}/statements"
    with httpx.Client(auth=lrs.auth, headers=HEADERS, timeout=10.0) as client:
        first = client.put(url, params={"statementId": paused["id"]}, json=paused)
        assert first.status_code == 204, first.text
        # The same statement again (a retried delivery): Ralph answers 204 and keeps one copy.
        again = client.put(url, params={"statementId": paused["id"]}, json=paused)
        assert again.status_code == 204, again.text
        # Another statement under the same id: 409 Conflict.
        altered = {**paused, "result": {"extensions": {xapi.EXT_TIME: 1.0}}}
        conflict = client.put(url, params={"statementId": paused["id"]}, json=altered)
        assert conflict.status_code == 409, conflict.text
        found = client.get(url, params={"statementId": paused["id"]})
        assert found.status_code == 200, found.text
        # Ralph answers a statementId query with a list (the spec says one statement).
        stored = found.json()["statements"]
        assert len(stored) == 1
        assert stored[0]["id"] == paused["id"]
        assert stored[0]["verb"]["id"] == "https://w3id.org/xapi/video/verbs/paused"
        assert stored[0]["result"]["extensions"][xapi.EXT_PLAYED_SEGMENTS] == "0[.]12.5[,]30[.]42"
        assert stored[0]["actor"]["account"] == {"homePage": "https://learn.example.org", "name": "u-7"}
        course = xapi.course_completed(CourseCompleted(
            user_id="u-7", course_id=3, completed_at=event.ended_at, user_name="A", user_email="a@example.org",
            course_title="T", certificate_enabled=False), "https://learn.example.org")
        stored_course = client.put(url, params={"statementId": course["id"]}, json=course)
        assert stored_course.status_code == 204, stored_course.text
        wrong = client.get(url, params={"statementId": paused["id"]}, auth=(lrs.username, "wrong"))
        assert wrong.status_code == 401


def test_ralphs_xapi_models_accept_every_statement_we_build(lrs: Lrs) -> None:
    """Ralph's own models of the Video Profile's statements accept every video statement we
    build (each must match one of its models). Ralph has no model of a plain course
    completion, so that one is only stored (above), not validated here."""
    import json
    import subprocess

    from shared.events import LessonCompleted
    from tests.lrs import ralph

    event = VideoSessionEnded(
        user_id="u-7", course_id=3, lesson_id=9, session_id=UUID(int=8),
        started_at=datetime(2026, 3, 1, 10, tzinfo=UTC), ended_at=datetime(2026, 3, 1, 10, 2, tzinfo=UTC),
        start_position=5.0, end_position=118.0, played_segments=[(5.0, 118.0)], video_length=120.0,
        progress=0.94, completed=True,
    )
    base = "https://learn.example.org"
    statements = [
        *xapi.video_session(event, base),
        xapi.video_completed(LessonCompleted(user_id="u-7", course_id=3, lesson_id=9, progress_percentage=100,
                                             completed_lessons=1, total_lessons=1, completed_at=event.ended_at),
                             base, video_length=120.0),
    ]
    result = subprocess.run(
        [str(ralph()), "validate", "-f", "xapi", "--fail-on-unknown"],
        input="\n".join(json.dumps(s) for s in statements),
        capture_output=True, text=True, timeout=60, env={"RALPH_RUNSERVER_BACKEND": "fs", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert f"Total events: {len(statements)}, Invalid events: 0" in result.stderr, result.stderr
