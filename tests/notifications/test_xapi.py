"""The xAPI statement builder, against hand-checked expectations from the ADL xAPI Video
Profile (required fields of initialized, played, paused and completed) and xAPI 1.0.3."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

from services.notifications import xapi
from shared.events import CourseCompleted, LessonCompleted, VideoSessionEnded

BASE = "https://learn.example.org"
SESSION = UUID("0b8e0c46-2a5c-4c8f-9d0a-1a2b3c4d5e6f")
STARTED = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)
ENDED = datetime(2026, 3, 1, 10, 5, 30, tzinfo=UTC)


def session(**overrides: object) -> VideoSessionEnded:
    values: dict[str, object] = {
        "user_id": "u-42", "course_id": 7, "lesson_id": 3, "attempt": 1, "session_id": SESSION,
        "started_at": STARTED, "ended_at": ENDED, "start_position": 0.0, "end_position": 45.0,
        "played_segments": [(0.0, 12.5), (30.0, 45.0)], "video_length": 120.0, "progress": 0.229,
    }
    values.update(overrides)
    return VideoSessionEnded.model_validate(values)


def test_a_session_is_initialized_played_and_paused_per_the_video_profile() -> None:
    event = session()
    initialized, played, paused = xapi.video_session(event, BASE)
    actor = {"objectType": "Agent", "account": {"homePage": BASE, "name": "u-42"}}
    video = {"objectType": "Activity", "id": f"{BASE}/courses/7/lessons/3",
             "definition": {"type": "https://w3id.org/xapi/video/activity-type/video"}}
    context = {
        "contextActivities": {
            "category": [{"objectType": "Activity", "id": "https://w3id.org/xapi/video",
                          "definition": {"type": "http://adlnet.gov/expapi/activities/profile"}}],
            "parent": [{"objectType": "Activity", "id": f"{BASE}/courses/7",
                        "definition": {"type": "http://adlnet.gov/expapi/activities/course"}}],
        },
        "extensions": {"https://w3id.org/xapi/video/extensions/session-id": str(SESSION),
                       "https://w3id.org/xapi/video/extensions/length": 120.0},
    }
    assert initialized == {
        "id": str(xapi.statement_id(event.event_id, xapi.INITIALIZED)),
        "actor": actor,
        "verb": {"id": "http://adlnet.gov/expapi/verbs/initialized", "display": {"en-US": "initialized"}},
        "object": video, "context": context, "timestamp": "2026-03-01T10:00:00Z", "version": "1.0.3",
    }
    assert played["verb"]["id"] == "https://w3id.org/xapi/video/verbs/played"
    assert played["result"] == {"extensions": {"https://w3id.org/xapi/video/extensions/time": 0.0}}
    assert played["timestamp"] == "2026-03-01T10:00:00Z"
    assert played["object"] == video and played["context"] == context and played["actor"] == actor
    assert paused["verb"]["id"] == "https://w3id.org/xapi/video/verbs/paused"
    assert paused["result"] == {"extensions": {
        "https://w3id.org/xapi/video/extensions/time": 45.0,
        "https://w3id.org/xapi/video/extensions/progress": 0.229,
        "https://w3id.org/xapi/video/extensions/played-segments": "0[.]12.5[,]30[.]45",
    }}
    assert paused["timestamp"] == "2026-03-01T10:05:30Z"
    # No e-mail, no name: the learner is an account of ours.
    assert "mbox" not in str([initialized, played, paused]) and "name" not in initialized["actor"]
    assert len({s["id"] for s in (initialized, played, paused)}) == 3


def test_statement_ids_are_the_same_for_a_redelivered_event_and_differ_between_events() -> None:
    event = session()
    again = VideoSessionEnded.model_validate_json(event.model_dump_json())
    assert xapi.video_session(event, BASE) == xapi.video_session(again, BASE)
    other = session(event_id=uuid4())
    assert {s["id"] for s in xapi.video_session(event, BASE)}.isdisjoint(
        s["id"] for s in xapi.video_session(other, BASE))
    # UUIDv5 (name-based, SHA-1).
    assert UUID(xapi.video_session(event, BASE)[0]["id"]).version == 5


def test_played_segments_format() -> None:
    assert xapi.played_segments([(0.0, 12.5), (30.0, 45.0)]) == "0[.]12.5[,]30[.]45"
    assert xapi.played_segments([(1.23456, 2.0)]) == "1.235[.]2"
    assert xapi.played_segments([]) == ""


def test_unknown_length_and_no_segments_are_left_out_rather_than_invented() -> None:
    _, _, paused = xapi.video_session(session(video_length=None, played_segments=[]), BASE)
    assert paused["context"]["extensions"] == {"https://w3id.org/xapi/video/extensions/session-id": str(SESSION)}
    assert "https://w3id.org/xapi/video/extensions/played-segments" not in paused["result"]["extensions"]


def test_a_session_that_completed_the_video_adds_one_completed_shared_with_the_lesson_completion() -> None:
    statements = xapi.video_session(session(completed=True, progress=0.95, end_position=118.0), BASE)
    assert [s["verb"]["id"] for s in statements] == [
        xapi.INITIALIZED, xapi.PLAYED, xapi.PAUSED, "http://adlnet.gov/expapi/verbs/completed"]
    completed = statements[-1]
    assert completed["result"]["completion"] is True
    assert completed["result"]["extensions"]["https://w3id.org/xapi/video/extensions/progress"] == 0.95
    assert completed["result"]["extensions"]["https://w3id.org/xapi/video/extensions/time"] == 118.0
    assert completed["context"]["extensions"]["https://w3id.org/xapi/video/extensions/length"] == 120.0
    lesson = LessonCompleted(user_id="u-42", course_id=7, lesson_id=3, attempt=1, progress_percentage=50,
                             completed_lessons=1, total_lessons=2, completed_at=ENDED)
    from_lesson = xapi.video_completed(lesson, BASE, video_length=120.0)
    # Either event states the same completion: one id, so the LRS keeps one statement.
    assert from_lesson["id"] == completed["id"]
    assert from_lesson["object"]["id"] == f"{BASE}/courses/7/lessons/3"
    assert from_lesson["result"] == {"completion": True, "extensions": {
        "https://w3id.org/xapi/video/extensions/time": 120.0, "https://w3id.org/xapi/video/extensions/progress": 1.0}}
    second_attempt = xapi.video_completed(lesson.model_copy(update={"attempt": 2}), BASE)
    assert second_attempt["id"] != from_lesson["id"] and "extensions" not in second_attempt["result"]


def test_course_completed_is_the_adl_completed_on_the_course_activity() -> None:
    event = CourseCompleted(user_id="u-42", course_id=7, completed_at=ENDED, user_name="Ada Lovelace",
                            user_email="ada@example.org", course_title="Engines", certificate_enabled=True)
    statement = xapi.course_completed(event, BASE + "/")
    assert statement == {
        "id": str(xapi.statement_id(event.event_id, xapi.COMPLETED)),
        "actor": {"objectType": "Agent", "account": {"homePage": BASE, "name": "u-42"}},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed", "display": {"en-US": "completed"}},
        "object": {"objectType": "Activity", "id": f"{BASE}/courses/7",
                   "definition": {"type": "http://adlnet.gov/expapi/activities/course", "name": {"en-US": "Engines"}}},
        "result": {"completion": True},
        "timestamp": "2026-03-01T10:05:30Z",
        "version": "1.0.3",
    }
    assert "ada@example.org" not in str(statement) and "Ada" not in str(statement)
