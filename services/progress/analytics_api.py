"""``GET /api/admin/courses/{id}/analytics``: a course's progress analytics, JSON or CSV."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Query, Request, Response

from services.progress import analytics, analytics_histogram, analytics_store
from services.progress.analytics_histogram import LessonFigures
from services.progress.analytics_store import LearnerFigures
from services.progress.api import Id, Tracked, json
from shared.auth import CurrentUser
from shared.db import Connection
from shared.errors import bad_request, forbidden
from shared.events import CourseCatalogEntry
from shared.service import DbPool

router = APIRouter(prefix="/api/admin")


@router.get("/courses/{course_id}/analytics")
async def course_analytics(
    course_id: Id,
    request: Request,
    user: CurrentUser,
    tracker: Tracked,
    pool: DbPool,
    enrolled_from: Annotated[date | None, Query(alias="from")] = None,
    enrolled_to: Annotated[date | None, Query(alias="to")] = None,
    inactive_days: Annotated[int, Query(ge=1, le=3650)] = analytics.DEFAULT_INACTIVE_DAYS,
    format: Annotated[Literal["json", "csv"] | None, Query()] = None,
) -> Response:
    # Role first, so a learner learns nothing (not even whether the course exists).
    if not (user.is_admin or user.is_instructor):
        raise forbidden("Administrators and the course's instructors only")
    if enrolled_from is not None and enrolled_to is not None and enrolled_from > enrolled_to:
        raise bad_request(
            "invalid_request", "Invalid or missing fields: from",
            params={"from": "must not be after to"},
        )
    course = await tracker.course(course_id)
    if not user.is_admin and user.id not in course.instructor_ids:
        raise forbidden("You do not teach this course")

    query = analytics.ReportQuery(course_id, enrolled_from, enrolled_to, inactive_days, datetime.now(UTC))
    report = await compute(pool, course, query)
    wants_csv = format == "csv" or (format is None and "text/csv" in request.headers.get("accept", ""))
    if wants_csv:
        return Response(
            analytics.to_csv(report).encode(), media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="course-{course_id}-analytics.csv"'},
        )
    return json({"data": report})


async def lesson_figures(
    conn: Connection, course: CourseCatalogEntry, query: analytics.ReportQuery
) -> dict[int, LessonFigures]:
    """Three reads on one snapshot (``conn`` in a repeatable-read transaction): the course's
    cohort span, the buckets of the blocks that tile the range, then the whole seconds of
    the few buckets the figures must open."""
    first, last = query.enrolled_from, query.enrolled_to
    span = await analytics_store.cohort_span(conn, course.course_id)
    blocks = analytics_histogram.plan_dates(span, first, last)
    lessons = analytics_histogram.by_lesson(
        await analytics_store.buckets(conn, course.course_id, blocks, first, last)
    )
    durations = dict(analytics.durations(course))
    wanted = analytics_histogram.buckets_to_open(lessons, durations)
    opened = await analytics_store.seconds(conn, course.course_id, blocks, first, last, wanted) if wanted else {}
    return analytics_histogram.lesson_figures(lessons, opened, durations)


async def compute(pool: asyncpg.Pool, course: CourseCatalogEntry, query: analytics.ReportQuery) -> dict[str, object]:
    """The three independent parts run at once, each on its own connection."""
    start, end = query.start, query.end

    async def learners() -> LearnerFigures:
        async with analytics_store.session(pool) as conn:
            return await analytics_store.learner_figures(conn, course.course_id, start, end)

    async def lessons() -> dict[int, LessonFigures]:
        async with analytics_store.session(pool, one_snapshot=True) as conn:
            return await lesson_figures(conn, course, query)

    async def drop_off() -> dict[int | None, int]:
        async with analytics_store.session(pool) as conn:
            return await analytics_store.drop_off(conn, course.course_id, start, end, query.inactive_before)

    per_learner, per_lesson, stopped = await asyncio.gather(learners(), lessons(), drop_off())
    return analytics.build_report(course, query, per_learner, per_lesson, stopped)
