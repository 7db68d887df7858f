"""Routes of the progress service: validate, call the tracker, shape the response."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.types import Receive, Scope, Send

from services.progress import store
from services.progress.domain import MAX_POSITION_SECONDS
from services.progress.tracking import ProgressState, Tracker
from shared.auth import CurrentUser, InternalCaller, current_user
from shared.errors import not_found
from shared.http import BareRoute
from shared.service import state_of
from shared.validation import MAX_BIGINT

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
Id = Annotated[int, Field(gt=0, le=MAX_BIGINT)]


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


async def _tracker(request: Request) -> Tracker:
    return state_of(request, ProgressState).tracker


Tracked = Annotated[Tracker, Depends(_tracker)]
CourseFilter = Annotated[Id | None, Query(alias="courseId")]
CourseFilterSnake = Annotated[Id | None, Query(alias="course_id")]


def json(content: Any, status: int = 200) -> Response:
    # orjson straight to bytes: no response-model pass on the hot path.
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


router = APIRouter(prefix="/api")


@router.get("/progress")
async def get_progress(
    user: CurrentUser, tracker: Tracked, course_id: CourseFilter = None, course_id_snake: CourseFilterSnake = None
) -> Response:
    return json(await tracker.my_records(user, course_id or course_id_snake))


class HeartbeatEndpoint:
    """``POST /api/progress`` as a bare ASGI endpoint: the busiest call skips FastAPI's
    dependency solving and response handling, which cost more than the work itself.

    Same checks, same error shapes: ``current_user`` is the shared dependency function,
    and raised ``ApiError`` / ``RequestValidationError`` reach the app's exception
    handlers like those of any route. Request ids, metrics and logs still apply.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        user = await current_user(request)
        body = await request.body()
        try:
            heartbeat = ProgressIn.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False), body=body) from exc
        tracker = state_of(request, ProgressState).tracker
        at = heartbeat.client_timestamp
        record = await tracker.record(
            user, heartbeat.course_id, heartbeat.lesson_id, heartbeat.completed, heartbeat.video_progress,
            heartbeat.last_position, at.timestamp() if at is not None else None,
        )
        await json(record)(scope, receive, send)


heartbeat_route = BareRoute("/api/progress", HeartbeatEndpoint(), methods=["POST"], name="post_progress")


@router.get("/courses/{course_id}/progress")
async def course_progress(
    course_id: Id, user: CurrentUser, tracker: Tracked, user_id: Annotated[str | None, Query(min_length=1)] = None
) -> Response:
    return json({"data": await tracker.course_progress(user, course_id, user_id)})


@router.post("/courses/{course_id}/lessons/{lesson_id}/complete")
async def complete_lesson(course_id: Id, lesson_id: Id, user: CurrentUser, tracker: Tracked) -> Response:
    message, data = await tracker.complete(user, course_id, lesson_id)
    return json({"message": message, "data": data})


@router.post("/courses/{course_id}/lessons/{lesson_id}/incomplete")
async def incomplete_lesson(course_id: Id, lesson_id: Id, user: CurrentUser, tracker: Tracked) -> Response:
    message, data = await tracker.incomplete(user, course_id, lesson_id)
    return json({"message": message, "data": data})


@router.get("/admin/learners/{learner_id}/progress")
async def learner_progress(
    learner_id: str,
    user: CurrentUser,
    tracker: Tracked,
    course_id: CourseFilter = None,
    course_id_snake: CourseFilterSnake = None,
) -> Response:
    return json(await tracker.learner_records(user, learner_id, course_id or course_id_snake))


internal_router = APIRouter(prefix="/internal")


@internal_router.get("/courses/{course_id}/learners/{user_id}/completion")
async def completion(course_id: Id, user_id: str, _: InternalCaller, tracker: Tracked) -> Response:
    return json(await tracker.completion_status(user_id, course_id))


@internal_router.get("/completions/{event_id}")
async def completion_event(event_id: UUID, _: InternalCaller, tracker: Tracked) -> Response:
    """The stored course-completed event: consumers confirm an event with it before they act."""
    event = await store.completion_by_event_id(tracker.pool, event_id)
    if event is None:
        raise not_found("completion_not_found", "Progress published no course completion with this id")
    return json(event.model_dump(mode="json"))
