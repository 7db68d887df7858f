"""xAPI 1.0.3 statements built from our events (pure: no I/O).

Video sessions follow the ADL xAPI Video Profile (``https://w3id.org/xapi/video``): a closed
viewing session becomes ``initialized``, ``played`` (at the start position) and ``paused``
(at the end position, with the progress and the played segments); a video watched to its
completion threshold becomes the video ``completed``; a course completion becomes the ADL
``completed`` on the course activity.

The learner is an ``account`` (home page: our public base URL, name: the user id): no
e-mail address or name leaves the system. Activities are identified under the public base
URL (``/courses/{id}``, ``/courses/{id}/lessons/{id}``). Statement ids are UUIDv5 of what
they state, so a redelivered event or a retried delivery yields the same id (and the LRS
answers 409 or 204 to the second PUT instead of storing a duplicate).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from shared.events import CourseCompleted, LessonCompleted, VideoSessionEnded

Statement = dict[str, Any]

XAPI_VERSION = "1.0.3"
# The namespace of our statement ids (fixed forever: changing it changes every id).
STATEMENT_NAMESPACE = UUID("6f1f3c57-3a9e-5c8e-9a41-4c2b1d0e7a15")

VIDEO_PROFILE = "https://w3id.org/xapi/video"
VIDEO_TYPE = "https://w3id.org/xapi/video/activity-type/video"
COURSE_TYPE = "http://adlnet.gov/expapi/activities/course"
PROFILE_TYPE = "http://adlnet.gov/expapi/activities/profile"

INITIALIZED = "http://adlnet.gov/expapi/verbs/initialized"
PLAYED = "https://w3id.org/xapi/video/verbs/played"
PAUSED = "https://w3id.org/xapi/video/verbs/paused"
SEEKED = "https://w3id.org/xapi/video/verbs/seeked"
COMPLETED = "http://adlnet.gov/expapi/verbs/completed"

EXT_TIME = "https://w3id.org/xapi/video/extensions/time"
EXT_PROGRESS = "https://w3id.org/xapi/video/extensions/progress"
EXT_PLAYED_SEGMENTS = "https://w3id.org/xapi/video/extensions/played-segments"
EXT_SESSION_ID = "https://w3id.org/xapi/video/extensions/session-id"
EXT_LENGTH = "https://w3id.org/xapi/video/extensions/length"

_DISPLAY = {INITIALIZED: "initialized", PLAYED: "played", PAUSED: "paused", SEEKED: "seeked", COMPLETED: "completed"}


def statement_id(event_id: UUID, verb: str) -> UUID:
    """The same event and verb give the same id, on every delivery and every retry."""
    return uuid5(STATEMENT_NAMESPACE, f"{event_id}:{verb}")


def video_completion_id(user_id: str, course_id: int, lesson_id: int, attempt: int) -> UUID:
    """One video ``completed`` per learner, lesson and attempt, whichever event states it
    (the lesson-completed or the session that reached the threshold): the LRS keeps the first."""
    return uuid5(STATEMENT_NAMESPACE, f"video-completed:{user_id}:{course_id}:{lesson_id}:{attempt}")


def played_segments(segments: Sequence[tuple[float, float]]) -> str:
    """The profile's format: ``start[.]end`` pairs joined by ``[,]`` (``"0[.]12.5[,]30[.]45"``)."""
    return "[,]".join(f"{_num(start)}[.]{_num(end)}" for start, end in segments)


def _num(value: float) -> str:
    """Seconds with at most three decimals, without trailing zeros (12.5, not 12.500)."""
    text = f"{round(value, 3):.3f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _seconds(value: float) -> float:
    return round(max(value, 0.0), 3)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def course_iri(base_url: str, course_id: int) -> str:
    return f"{base_url.rstrip('/')}/courses/{course_id}"


def lesson_iri(base_url: str, course_id: int, lesson_id: int) -> str:
    return f"{course_iri(base_url, course_id)}/lessons/{lesson_id}"


def _actor(base_url: str, user_id: str) -> dict[str, Any]:
    return {"objectType": "Agent", "account": {"homePage": base_url.rstrip("/"), "name": user_id}}


def _verb(verb: str) -> dict[str, Any]:
    return {"id": verb, "display": {"en-US": _DISPLAY[verb]}}


def _video(base_url: str, course_id: int, lesson_id: int) -> dict[str, Any]:
    return {
        "objectType": "Activity",
        "id": lesson_iri(base_url, course_id, lesson_id),
        "definition": {"type": VIDEO_TYPE},
    }


def _course(base_url: str, course_id: int) -> dict[str, Any]:
    return {"objectType": "Activity", "id": course_iri(base_url, course_id), "definition": {"type": COURSE_TYPE}}


def _video_context(base_url: str, course_id: int, extensions: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = {
        "contextActivities": {
            "category": [{"objectType": "Activity", "id": VIDEO_PROFILE, "definition": {"type": PROFILE_TYPE}}],
            "parent": [_course(base_url, course_id)],
        },
    }
    if extensions:
        context["extensions"] = extensions
    return context


def _statement(
    sid: UUID, base_url: str, user_id: str, verb: str, obj: dict[str, Any], timestamp: datetime,
    context: dict[str, Any], result: dict[str, Any] | None = None,
) -> Statement:
    statement: Statement = {
        "id": str(sid),
        "actor": _actor(base_url, user_id),
        "verb": _verb(verb),
        "object": obj,
        "timestamp": _iso(timestamp),
        "version": XAPI_VERSION,
    }
    if context:
        statement["context"] = context
    if result is not None:
        statement["result"] = result
    return statement


def _session_extensions(event: VideoSessionEnded) -> dict[str, Any]:
    extensions: dict[str, Any] = {EXT_SESSION_ID: str(event.session_id)}
    if event.video_length is not None:
        extensions[EXT_LENGTH] = _seconds(event.video_length)
    return extensions


def video_session(event: VideoSessionEnded, base_url: str) -> list[Statement]:
    """A closed viewing session: ``initialized`` and ``played`` when it started, ``paused``
    when it ended (with progress and played segments), and the video ``completed`` when the
    lesson was completed by watching in it. In the order they happened."""
    video = _video(base_url, event.course_id, event.lesson_id)
    context = _video_context(base_url, event.course_id, _session_extensions(event))
    segments = played_segments(event.played_segments)
    paused_result: dict[str, Any] = {
        EXT_TIME: _seconds(event.end_position),
        EXT_PROGRESS: round(min(max(event.progress, 0.0), 1.0), 4),
    }
    if segments:
        paused_result[EXT_PLAYED_SEGMENTS] = segments
    statements = [
        _statement(statement_id(event.event_id, INITIALIZED), base_url, event.user_id, INITIALIZED, video,
                   event.started_at, context),
        _statement(statement_id(event.event_id, PLAYED), base_url, event.user_id, PLAYED, video, event.started_at,
                   context, {"extensions": {EXT_TIME: _seconds(event.start_position)}}),
        _statement(statement_id(event.event_id, PAUSED), base_url, event.user_id, PAUSED, video, event.ended_at,
                   context, {"extensions": paused_result}),
    ]
    if event.completed:
        statements.append(video_completed_from_session(event, base_url))
    return statements


def video_completed_from_session(event: VideoSessionEnded, base_url: str) -> Statement:
    """The video ``completed`` with what the session knew (position, progress, segments)."""
    extensions: dict[str, Any] = {
        EXT_TIME: _seconds(event.end_position),
        EXT_PROGRESS: round(min(max(event.progress, 0.0), 1.0), 4),
    }
    if event.played_segments:
        extensions[EXT_PLAYED_SEGMENTS] = played_segments(event.played_segments)
    return _statement(
        video_completion_id(event.user_id, event.course_id, event.lesson_id, event.attempt),
        base_url, event.user_id, COMPLETED, _video(base_url, event.course_id, event.lesson_id), event.ended_at,
        _video_context(base_url, event.course_id, _session_extensions(event)),
        {"completion": True, "extensions": extensions},
    )


def video_completed(event: LessonCompleted, base_url: str, *, video_length: float | None = None) -> Statement:
    """A video lesson completed (``lesson-completed``): the video ``completed``. The event
    carries no position, so ``time`` is the video's end and progress 1 when the length is
    known (a completion is the video watched to its threshold, or marked done). The profile
    requires a session id: without a viewing session, the completion's own id stands in."""
    sid = video_completion_id(event.user_id, event.course_id, event.lesson_id, event.attempt)
    extensions: dict[str, Any] = {}
    context_extensions: dict[str, Any] = {EXT_SESSION_ID: str(sid)}
    if video_length is not None:
        extensions[EXT_TIME] = _seconds(video_length)
        extensions[EXT_PROGRESS] = 1.0
        context_extensions[EXT_LENGTH] = _seconds(video_length)
    result: dict[str, Any] = {"completion": True}
    if extensions:
        result["extensions"] = extensions
    return _statement(
        sid, base_url, event.user_id, COMPLETED, _video(base_url, event.course_id, event.lesson_id), event.completed_at,
        _video_context(base_url, event.course_id, context_extensions), result,
    )


def course_completed(event: CourseCompleted, base_url: str) -> Statement:
    """A course completed: the ADL ``completed`` on the course activity."""
    course = _course(base_url, event.course_id)
    course["definition"]["name"] = {"en-US": event.course_title}
    return _statement(
        statement_id(event.event_id, COMPLETED), base_url, event.user_id, COMPLETED, course, event.completed_at,
        {}, {"completion": True},
    )
