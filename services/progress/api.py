"""Routes of the progress service: validate, call the tracker, shape the response; and
``ERRORS``, where the service's refusals become HTTP answers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.types import Receive, Scope, Send

from services.progress import domain, usecases
from services.progress.domain import MAX_PLAYED_SEGMENTS, MAX_POSITION_SECONDS
from services.progress.usecases import ProgressState, Tracker
from shared import dead_letters_api
from shared.auth import CurrentUser, InternalCaller, current_user, user_of_token
from shared.erasure import ReceiptNotFound, require_receipt
from shared.errors import ErrorMap, HttpError, unauthorized
from shared.http import BareRoute
from shared.internal import PeerUnavailable
from shared.openapi import errors
from shared.service import DbPool, state_of
from shared.validation import MAX_BIGINT

# Every refusal of the service (domain.py) and the owner out of reach, as the API answers them.
ERRORS: ErrorMap = {
    domain.CourseNotFound: HttpError(404, "course_not_found"),
    domain.CourseNotPublished: HttpError(404, "course_not_found"),
    domain.LessonNotFound: HttpError(404, "lesson_not_found"),
    # As a validation failure of the field: the body names it in data.params.
    domain.LessonNotInCourse: HttpError(400, "invalid_request", "Invalid or missing fields: lesson_id"),
    domain.NotEnrolled: HttpError(403, "not_enrolled"),
    domain.LessonLocked: HttpError(403, "lesson_locked"),
    domain.LessonNotWatched: HttpError(403, "lesson_not_watched"),
    domain.NotAllowed: HttpError(403, "forbidden"),
    domain.CompletionNotFound: HttpError(404, "completion_not_found"),
    ReceiptNotFound: HttpError(404, "erasure_not_found"),
    domain.VideoSessionNotFound: HttpError(404, "video_session_not_found"),
    PeerUnavailable: HttpError(503, "service_unavailable", "Enrollment data is unavailable, try again"),
}

MAX_ACCESS_TOKEN_CHARS = 8192  # a token in the body (sendBeacon); header tokens are bounded by the header limit
Position = Annotated[float, Field(ge=0, le=MAX_POSITION_SECONDS, allow_inf_nan=False)]


def _representable(value: datetime) -> datetime:
    # The buffer keeps the reading as a POSIX timestamp and turns it back into a UTC datetime
    # when it flushes: refuse here what would fail there (years 0 or 10000 once in UTC).
    try:
        datetime.fromtimestamp(value.timestamp(), UTC)
    except (OverflowError, ValueError, OSError) as exc:
        raise ValueError("out of range") from exc
    return value


Timestamp = Annotated[datetime, AfterValidator(_representable)]


def _ordered(segment: tuple[float, float]) -> tuple[float, float]:
    if segment[0] > segment[1]:
        raise ValueError("start after end")
    return segment


# A [start, end] range of the media the player played (HTMLMediaElement.played).
Segment = Annotated[tuple[Position, Position], AfterValidator(_ordered)]
Id = Annotated[int, Field(gt=0, le=MAX_BIGINT)]
MAX_INT = 2**31 - 1  # attempts are integer columns


class ProgressIn(BaseModel):
    """One heartbeat (or completion) of the progress API."""

    model_config = ConfigDict(extra="ignore")

    course_id: Id
    lesson_id: Id
    completed: bool = False
    video_progress: Position | None = None
    last_position: Position | None = None
    # When the client took this reading: an older reading never overwrites a newer position.
    client_timestamp: Timestamp | None = None
    # The media ranges played since the last heartbeat: the coverage this heartbeat adds
    # (without them, coverage is inferred from the positions).
    played_segments: Annotated[list[Segment], Field(max_length=MAX_PLAYED_SEGMENTS)] | None = None
    # navigator.sendBeacon (the last heartbeat as a page closes) cannot set headers: its
    # bearer token travels here instead, read only when there is no Authorization header.
    access_token: Annotated[str, Field(max_length=MAX_ACCESS_TOKEN_CHARS)] | None = Field(
        None, description="The bearer token, for a request without an Authorization header (navigator.sendBeacon)"
    )


class ProgressRecord(BaseModel):
    """One learner-lesson record (``domain.progress_record``), as every progress route shows it."""

    id: int
    user_id: str
    course_id: int
    lesson_id: int
    completed: bool
    completed_at: datetime | None
    video_progress: float
    last_position: float
    time_spent_seconds: int
    state: str
    watched_seconds: float
    watched_ratio: float | None
    created_at: datetime
    updated_at: datetime


# What a learner's act on a lesson can be refused with, besides the derived statuses.
LESSON_REFUSALS = errors(
    (400, "invalid_request"), (403, "not_enrolled"), (403, "lesson_locked"), (404, "course_not_found"),
    (404, "lesson_not_found"), (503, "service_unavailable"),
)


async def _tracker(request: Request) -> Tracker:
    return state_of(request, ProgressState).tracker


Tracked = Annotated[Tracker, Depends(_tracker)]
CourseFilter = Annotated[Id | None, Query(alias="courseId")]
CourseFilterSnake = Annotated[Id | None, Query(alias="course_id")]


def json(content: Any, status: int = 200) -> Response:
    # orjson straight to bytes: no response-model pass on the hot path.
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


router = APIRouter(prefix="/api")


@router.get("/progress", responses={200: {"model": list[ProgressRecord]}, **errors((404, "course_not_found"))})
async def get_progress(
    user: CurrentUser, tracker: Tracked, course_id: CourseFilter = None, course_id_snake: CourseFilterSnake = None
) -> Response:
    return json(await tracker.my_records(user, course_id or course_id_snake))


class HeartbeatEndpoint:
    """``POST /api/progress`` as a bare ASGI endpoint: the busiest call skips FastAPI's
    dependency solving and response handling, which cost more than the work itself.

    Same checks, same error shapes: ``current_user`` is the shared dependency function,
    and what it raises (``ApiError``, ``RequestValidationError``, the refusals of ``ERRORS``)
    propagates to the app's exception middleware, which answers it with the handlers of
    any route. Request ids, metrics and logs still apply.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        beacon = "authorization" not in request.headers
        # Without the header, the token is in the body (sendBeacon): the body is read first,
        # and anything unreadable there is a 401, as a request without credentials is.
        user = None if beacon else await current_user(request)
        body = await request.body()
        try:
            heartbeat = ProgressIn.model_validate_json(body)
        except ValidationError as exc:
            if beacon:
                raise unauthorized() from exc
            raise RequestValidationError(exc.errors(include_url=False), body=body) from exc
        if user is None:
            if not heartbeat.access_token:
                raise unauthorized()
            user = await user_of_token(request, heartbeat.access_token)
        tracker = state_of(request, ProgressState).tracker
        at = heartbeat.client_timestamp
        record = await tracker.record(
            user, heartbeat.course_id, heartbeat.lesson_id, heartbeat.completed, heartbeat.video_progress,
            heartbeat.last_position, at.timestamp() if at is not None else None,
            tuple(heartbeat.played_segments) if heartbeat.played_segments is not None else None,
        )
        await json(record)(scope, receive, send)


async def post_progress(heartbeat: ProgressIn, user: CurrentUser) -> ProgressRecord:
    """A heartbeat of the learner's lesson (its position, played ranges, or its completion):
    the created or updated record."""
    raise NotImplementedError("documentation only: HeartbeatEndpoint answers this route")


heartbeat_route = BareRoute(
    "/api/progress", HeartbeatEndpoint(), methods=["POST"], name="post_progress",
    documented_by=post_progress, responses=LESSON_REFUSALS, summary="Record a heartbeat",
)


@router.get("/courses/{course_id}/progress", responses=errors(
    (403, "not_enrolled"), (403, "forbidden"), (404, "course_not_found")))
async def course_progress(
    course_id: Id, user: CurrentUser, tracker: Tracked, user_id: Annotated[str | None, Query(min_length=1)] = None
) -> Response:
    return json({"data": await tracker.course_progress(user, course_id, user_id)})


def _lesson_answer(
    message: str, lesson_id: int, completed_at: datetime | None, standing: domain.CourseStanding
) -> dict[str, Any]:
    return {
        "message": message,
        "data": {
            "lesson_id": lesson_id,
            "completed_at": completed_at,
            "progress_percentage": standing.progress_percentage,
            "completed_lessons": standing.completed_required,
            "total_lessons": standing.total_required,
            "next_lesson": domain.lesson_ref(standing.next_lesson),
        },
    }


@router.post("/courses/{course_id}/lessons/{lesson_id}/complete", responses={
    **LESSON_REFUSALS, **errors((403, "not_enrolled"), (403, "lesson_locked"), (403, "lesson_not_watched"))})
async def complete_lesson(course_id: Id, lesson_id: Id, user: CurrentUser, tracker: Tracked) -> Response:
    done = await tracker.complete(user, course_id, lesson_id)
    message = "Lesson marked as complete" if done.newly else "Lesson already marked as complete"
    answer = _lesson_answer(message, lesson_id, done.row.completed_at, done.standing)
    if not done.confirmed:
        answer["data"]["confirmation_pending"] = True
    return json(answer)


@router.post("/courses/{course_id}/lessons/{lesson_id}/incomplete", responses={
    **LESSON_REFUSALS, **errors((404, "course_not_found"), (404, "lesson_not_found"), (404, "completion_not_found"))})
async def incomplete_lesson(course_id: Id, lesson_id: Id, user: CurrentUser, tracker: Tracked) -> Response:
    row, standing = await tracker.incomplete(user, course_id, lesson_id)
    message = "Lesson marked as incomplete" if row is not None else "Lesson is not marked as complete"
    return json(_lesson_answer(message, lesson_id, None, standing))


@router.get("/admin/learners/{learner_id}/progress", responses={
    200: {"model": list[ProgressRecord]}, **errors((403, "forbidden"))})
async def learner_progress(
    learner_id: str,
    user: CurrentUser,
    tracker: Tracked,
    course_id: CourseFilter = None,
    course_id_snake: CourseFilterSnake = None,
    attempt: Annotated[int | None, Query(gt=0, le=MAX_INT)] = None,
) -> Response:
    """The learner's records for staff; ``attempt``: that attempt's (1 for the first), an
    earlier one's kept as history."""
    return json(await tracker.learner_records(user, learner_id, course_id or course_id_snake, attempt))


internal_router = APIRouter(prefix="/internal", include_in_schema=False)


@internal_router.get("/courses/{course_id}/learners/{user_id}/completion")
async def completion(course_id: Id, user_id: str, _: InternalCaller, tracker: Tracked) -> Response:
    return json(await tracker.completion_status(user_id, course_id))


@internal_router.get("/completions/{event_id}")
async def completion_event(event_id: UUID, _: InternalCaller, tracker: Tracked) -> Response:
    """The stored course-completed event: consumers confirm an event with it before they act."""
    event = await tracker.completion_event(event_id)
    return json(event.model_dump(mode="json"))


@internal_router.get("/video-sessions/{event_id}")
async def video_session_event(event_id: UUID, _: InternalCaller, tracker: Tracked) -> Response:
    """The stored video-session-ended event: consumers confirm an event with it before they act."""
    event = await tracker.video_session_event(event_id)
    return json(event.model_dump(mode="json"))


@internal_router.get("/erasures/{event_id}")
async def erasure(event_id: UUID, _: InternalCaller, pool: DbPool) -> Response:
    """This service's receipt of a learner's erasure (404 while it has not erased them)."""
    return json((await require_receipt(pool, event_id)).model_dump(mode="json"))


@internal_router.get("/learners/{user_id}/export")
async def learner_export(user_id: str, _: InternalCaller, pool: DbPool) -> Response:
    """Everything this service holds on the learner (its part of an export)."""
    return json(await usecases.export_learner(pool, user_id))


# The service's dead letters: the admin routes every service has (shared.dead_letters_api).
ROUTERS = [router, internal_router, dead_letters_api.router("progress")]
