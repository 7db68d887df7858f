"""The course report use case: the course and the viewer's right to see it, then the
store's three independent reads, put together by the domain."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Any, Protocol

import asyncpg

from services.progress.analytics import domain, store
from services.progress.analytics.domain import LearnerFigures, LessonFigures, ReportQuery
from shared.db import Connection
from shared.events import CourseCatalogEntry


class Courses(Protocol):
    """Finds a course by id, refusing an unknown one (the service's tracker)."""

    async def course(self, course_id: int) -> CourseCatalogEntry: ...


async def course_report(
    pool: asyncpg.Pool, courses: Courses, *, viewer_id: str, is_admin: bool, course_id: int,
    enrolled_from: date | None, enrolled_to: date | None, inactive_days: int,
) -> dict[str, Any]:
    """A course's report for a viewer who is an administrator or an instructor (the route
    checked the role). The range is refused before the course is looked up."""
    domain.check_range(enrolled_from, enrolled_to)
    course = await courses.course(course_id)
    domain.check_may_see(is_admin, viewer_id, course)
    query = ReportQuery(course_id, enrolled_from, enrolled_to, inactive_days, datetime.now(UTC))
    return await compute(pool, course, query)


async def lesson_figures(conn: Connection, course: CourseCatalogEntry, query: ReportQuery) -> dict[int, LessonFigures]:
    """Three reads on one snapshot (``conn`` in a repeatable-read transaction): the course's
    cohort span, the buckets of the blocks that tile the range, then the whole seconds of
    the few buckets the figures must open."""
    first, last = query.enrolled_from, query.enrolled_to
    span = await store.cohort_span(conn, course.course_id)
    blocks = domain.plan_dates(span, first, last)
    lessons = domain.by_lesson(await store.buckets(conn, course.course_id, blocks, first, last))
    durations = dict(domain.durations(course))
    wanted = domain.buckets_to_open(lessons, durations)
    opened = await store.seconds(conn, course.course_id, blocks, first, last, wanted) if wanted else {}
    return domain.lesson_figures(lessons, opened, durations)


async def compute(pool: asyncpg.Pool, course: CourseCatalogEntry, query: ReportQuery) -> dict[str, Any]:
    """The three independent parts run at once, each on its own connection."""
    start, end = query.start, query.end

    async def learners() -> LearnerFigures:
        async with store.session(pool) as conn:
            return await store.learner_figures(conn, course.course_id, start, end)

    async def lessons() -> dict[int, LessonFigures]:
        async with store.session(pool, one_snapshot=True) as conn:
            return await lesson_figures(conn, course, query)

    async def drop_off() -> dict[int | None, int]:
        async with store.session(pool) as conn:
            return await store.drop_off(conn, course.course_id, start, end, query.inactive_before)

    per_learner, per_lesson, stopped = await asyncio.gather(learners(), lessons(), drop_off())
    return domain.build_report(course, query, per_learner, per_lesson, stopped)
