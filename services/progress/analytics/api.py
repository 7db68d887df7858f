"""``GET /api/admin/courses/{id}/analytics``: a course's progress analytics, JSON or CSV."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response
from pydantic import Field

from services.progress.analytics import domain, usecases
from services.progress.usecases import ProgressState
from shared.auth import CurrentUser
from shared.errors import ErrorMap, HttpError, forbidden
from shared.openapi import content, errors
from shared.service import DbPool, state_of
from shared.validation import MAX_BIGINT

# The same as services.progress.api.Id; not imported from there, so that the service's
# api.py may import this module (its ERRORS and router).
Id = Annotated[int, Field(gt=0, le=MAX_BIGINT)]

# The analytics' refusals as HTTP, to be merged into the service's ERRORS.
ERRORS: ErrorMap = {
    domain.InvalidRange: HttpError(400, "invalid_request", "Invalid or missing fields: from"),
    domain.NotCourseInstructor: HttpError(403, "forbidden", "You do not teach this course"),
}

router = APIRouter(prefix="/api/admin")


@router.get("/courses/{course_id}/analytics", responses={
    200: {"description": "The report: `{\"data\": {...}}`, or CSV (`format=csv` or `Accept: text/csv`)",
          **content("text/csv")},
    **errors((400, "invalid_request"), (403, "forbidden"), (404, "course_not_found")),
})
async def course_analytics(
    course_id: Id,
    request: Request,
    user: CurrentUser,
    pool: DbPool,
    enrolled_from: Annotated[date | None, Query(alias="from")] = None,
    enrolled_to: Annotated[date | None, Query(alias="to")] = None,
    inactive_days: Annotated[int, Query(ge=1, le=3650)] = domain.DEFAULT_INACTIVE_DAYS,
    format: Annotated[Literal["json", "csv"] | None, Query()] = None,
) -> Response:
    # Role first, so a learner learns nothing (not even whether the course exists).
    if not (user.is_admin or user.is_instructor):
        raise forbidden("Administrators and the course's instructors only")
    report = await usecases.course_report(
        pool, state_of(request, ProgressState).tracker, viewer_id=user.id, is_admin=user.is_admin,
        course_id=course_id, enrolled_from=enrolled_from, enrolled_to=enrolled_to, inactive_days=inactive_days,
    )
    wants_csv = format == "csv" or (format is None and "text/csv" in request.headers.get("accept", ""))
    if wants_csv:
        return Response(
            domain.to_csv(report).encode(), media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="course-{course_id}-analytics.csv"'},
        )
    # orjson straight to bytes, as the service's other routes answer.
    return Response(orjson.dumps({"data": report}), media_type="application/json")
