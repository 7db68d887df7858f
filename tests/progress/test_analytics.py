"""Progress analytics on a small hand-built course whose every figure is known in advance:
JSON and CSV, the enrolment range, the inactivity threshold, an empty course, errors and
authorization. Records are written with the service's own write statements (the heartbeat
flush, completion, reopening), so the analytics triggers maintain the aggregates as in
production; timestamps are chosen by the test.
"""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bench import analytics_reference as reference
from services.progress import store
from services.progress.analytics import domain as analytics
from services.progress.analytics import store as analytics_store
from services.progress.analytics import usecases
from services.progress.analytics.domain import LessonFigures
from services.progress.analytics.store import FOLD_LOCK
from shared.events import CatalogLesson, CourseCatalogEntry, CourseCompleted, EnrollmentChanged
from tests.helpers import eventually
from tests.progress.conftest import Stack

COURSE = 70
L1, L2, L3 = 701, 702, 703


def at(day: str, hour: int = 10) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


def catalog(course_id: int = COURSE, lessons: list[CatalogLesson] | None = None) -> CourseCatalogEntry:
    return CourseCatalogEntry(
        course_id=course_id, revision=1, title="Data, Analysed", slug=f"c{course_id}", status="published",
        instructor_ids=["teach"],
        lessons=lessons if lessons is not None else [
            CatalogLesson(id=L1, title="Intro", order=1, duration_seconds=600),
            CatalogLesson(id=L2, title="=Formulas", order=2, duration_seconds=300),
            CatalogLesson(id=L3, title="Extras", order=3, is_required=False, duration_seconds=None),
        ],
    )


class Builder:
    def __init__(self, stack: Stack) -> None:
        self.pool = stack.runtime.pool
        self.enrollment_ids: dict[str, int] = {}
        self.clock = time.time()

    async def enroll(self, user: str, day: str, status: str = "active", revision: int = 1) -> None:
        eid = self.enrollment_ids.setdefault(user, len(self.enrollment_ids) + 5000)
        await store.save_enrollment(self.pool, EnrollmentChanged(
            user_id=user, course_id=COURSE, enrollment_id=eid, status=status, revision=revision, enrolled_at=at(day),
        ))

    async def watch(
        self, user: str, lesson: int, seconds: float, when: datetime, position: float | None = None
    ) -> None:
        """A flushed heartbeat batch: the position and `seconds` of time spent, written at `when`."""
        pos = seconds if position is None else position
        # Credited wall-clock intervals that never overlap: each watch adds all its seconds.
        start = self.clock
        self.clock += seconds + 1
        await store.flush_heartbeats(self.pool, [
            store.FlushRow(user, COURSE, lesson, pos, pos, when, when, ((start, start + seconds),), when)
        ])

    async def complete(self, user: str, lesson: int, seconds: float, when: datetime) -> None:
        await self.watch(user, lesson, seconds, when - timedelta(minutes=5))
        async with self.pool.acquire() as conn, conn.transaction():
            await store.mark_complete(conn, user, COURSE, lesson, when, None)

    async def finish_course(self, user: str, enrolled_day: str, days: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await store.add_completion(conn, self.enrollment_ids[user], CourseCompleted(
                user_id=user, course_id=COURSE, completed_at=at(enrolled_day) + timedelta(days=days),
                user_name=user, user_email="", course_title="Data, Analysed", certificate_enabled=True,
                enrolled_at=at(enrolled_day), instructor_ids=["teach"],
            ))


async def build_course(stack: Stack) -> None:
    """Seven learners in the population (and one unenrolled):

    a  enrolled 2025-01-10, both required lessons (600 s, 300 s), course done after 2 days
    b  enrolled 2025-01-20, both (500 s, 100 s) and 50 s of the optional one, done after 10 days
    c  enrolled 2025-02-05, lesson 1 done (420 s), lesson 2 at 60 s on 2025-02-07, then nothing
    d  enrolled 2025-02-15, lesson 1 at 90 s two days ago (still active)
    e  enrolled 2025-03-01, no record at all
    f  enrolled 2025-03-03, opened lesson 1 on 2025-03-04 without playing it
    h  enrolled 2025-03-10, both (700 s, 200 s), done after 30 days
    g  enrolled 2025-01-15, lesson 1 done (1000 s), then unenrolled: in no figure
    """
    b = Builder(stack)
    await store.save_course(b.pool, catalog())
    await b.enroll("a", "2025-01-10")
    await b.complete("a", L1, 600, at("2025-01-11"))
    await b.complete("a", L2, 300, at("2025-01-12"))
    await b.finish_course("a", "2025-01-10", 2)
    await b.enroll("b", "2025-01-20")
    await b.complete("b", L1, 500, at("2025-01-22"))
    await b.complete("b", L2, 100, at("2025-01-25"))
    await b.watch("b", L3, 50, at("2025-01-29"))
    await b.finish_course("b", "2025-01-20", 10)
    await b.enroll("c", "2025-02-05")
    await b.complete("c", L1, 420, at("2025-02-06"))
    await b.watch("c", L2, 60, at("2025-02-07"))
    await b.enroll("d", "2025-02-15")
    await b.watch("d", L1, 90, datetime.now(UTC) - timedelta(days=2))
    await b.enroll("e", "2025-03-01")
    await b.enroll("f", "2025-03-03")
    await b.watch("f", L1, 0, at("2025-03-04"))
    await b.enroll("h", "2025-03-10")
    await b.complete("h", L1, 700, at("2025-03-11"))
    await b.complete("h", L2, 200, at("2025-03-12"))
    await b.finish_course("h", "2025-03-10", 30)
    await b.enroll("g", "2025-01-15")
    await b.complete("g", L1, 1000, at("2025-01-16"))
    await b.enroll("g", "2025-01-15", status="unenrolled", revision=2)
    # Reopened and completed again: the histogram moves the record out and back in.
    async with b.pool.acquire() as conn, conn.transaction():
        await store.mark_incomplete(conn, "h", L2, at("2025-03-12", 11))
    async with b.pool.acquire() as conn, conn.transaction():
        await store.mark_complete(conn, "h", COURSE, L2, at("2025-03-12", 12), None)


def lesson(lesson_id: int, title: str, order: int, **figures: Any) -> dict[str, Any]:
    return {"lesson_id": lesson_id, "title": title, "order": order, **figures}


async def get(stack: Stack, user: str = "teach", *roles: str, **params: Any) -> Any:
    return await stack.client.get(
        f"/api/admin/courses/{COURSE}/analytics", params=params, headers=stack.token(user, *(roles or ("instructor",)))
    )


async def test_every_figure_of_a_hand_built_course(stack: Stack) -> None:
    await build_course(stack)
    response = await get(stack)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["course_id"], data["title"], data["enrolled_from"], data["enrolled_to"]) == \
        (COURSE, "Data, Analysed", None, None)
    assert data["completion"] == {"enrolled": 7, "completed": 3, "completion_rate": 42.86}
    assert data["lesson_difficulty"] == [
        lesson(L3, "Extras", 3, is_required=False, started=1, completed=0, completion_rate=0.0),
        lesson(L2, "=Formulas", 2, is_required=True, started=4, completed=3, completion_rate=75.0),
        lesson(L1, "Intro", 1, is_required=True, started=5, completed=4, completion_rate=80.0),
    ]
    drop = data["drop_off"]
    assert (drop["inactive_days"], drop["learners"], drop["without_activity"], drop["in_removed_lessons"]) == \
        (14, 3, 1, 0)
    assert drop["lessons"] == [lesson(L1, "Intro", 1, learners=1), lesson(L2, "=Formulas", 2, learners=1),
                               lesson(L3, "Extras", 3, learners=0)]
    assert data["engagement"] == [
        # 90, 420, 500, 600, 700 s of a 600 s video; fractions .15 .7 .8333 1 1
        lesson(L1, "Intro", 1, duration_seconds=600, learners=5, average_watch_seconds=462.0,
               median_watch_seconds=500.0, average_fraction_watched=0.7367, average_watched_ratio=0.0),
        # 60, 100, 200, 300 s of a 300 s video
        lesson(L2, "=Formulas", 2, duration_seconds=300, learners=4, average_watch_seconds=165.0,
               median_watch_seconds=150.0, average_fraction_watched=0.55, average_watched_ratio=0.0),
        lesson(L3, "Extras", 3, duration_seconds=None, learners=1, average_watch_seconds=50.0,
               median_watch_seconds=50.0, average_fraction_watched=None, average_watched_ratio=None),
    ]
    # 2, 10 and 30 days: median 10, p90 10 + 0.8 * 20
    assert data["time_to_completion"] == {"completed": 3, "median_days": 10.0, "p90_days": 26.0}

    # The inactivity threshold is a parameter: with one day, d (two days idle) has dropped off too.
    one_day = (await get(stack, inactive_days=1)).json()["data"]["drop_off"]
    assert [f["learners"] for f in one_day["lessons"]] == [2, 1, 0] and one_day["learners"] == 4
    assert (await get(stack, inactive_days=3650)).json()["data"]["drop_off"]["learners"] == 0


async def test_csv_has_the_same_figures_in_sections(stack: Stack) -> None:
    await build_course(stack)
    by_param = await get(stack, format="csv")
    by_accept = await stack.client.get(f"/api/admin/courses/{COURSE}/analytics",
                                       headers={**stack.token("admin", "admin"), "Accept": "text/csv"})
    for response in (by_param, by_accept):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert response.headers["content-disposition"] == f'attachment; filename="course-{COURSE}-analytics.csv"'
    assert by_param.content.endswith(b"\r\n")
    rows = list(csv.reader(io.StringIO(by_param.text)))
    assert {len(r) for r in rows} == {analytics.CSV_WIDTH}
    names = ["course", "completion", "lesson_difficulty", "drop_off", "engagement", "time_to_completion"]
    sections: dict[str, list[list[str]]] = {}
    current: list[list[str]] = []
    for r in rows:
        cells = list(r)
        while cells and cells[-1] == "":  # the padding
            cells.pop()
        if len(cells) == 1 and cells[0] in names:
            current = sections.setdefault(cells[0], [])
        elif cells:
            current.append(cells)
    assert list(sections) == names
    assert sections["course"][0] == ["course_id", "title", "enrolled_from", "enrolled_to", "inactive_days",
                                     "generated_at"]
    assert sections["course"][1][:5] == [str(COURSE), "Data, Analysed", "", "", "14"]
    assert sections["completion"] == [["enrolled", "completed", "completion_rate"], ["7", "3", "42.86"]]
    assert sections["lesson_difficulty"] == [
        ["lesson_id", "title", "order", "is_required", "started", "completed", "completion_rate"],
        ["703", "Extras", "3", "false", "1", "0", "0.0"],
        ["702", "'=Formulas", "2", "true", "4", "3", "75.0"],  # a formula-like title is quoted for spreadsheets
        ["701", "Intro", "1", "true", "5", "4", "80.0"],
    ]
    assert sections["drop_off"] == [
        ["lesson_id", "title", "order", "learners"],
        ["", "(no activity)", "", "1"],
        ["701", "Intro", "1", "1"],
        ["702", "'=Formulas", "2", "1"],
        ["703", "Extras", "3", "0"],
    ]
    assert sections["engagement"] == [
        ["lesson_id", "title", "order", "duration_seconds", "learners", "average_watch_seconds",
         "median_watch_seconds", "average_fraction_watched", "average_watched_ratio"],
        ["701", "Intro", "1", "600", "5", "462.0", "500.0", "0.7367", "0.0"],
        ["702", "'=Formulas", "2", "300", "4", "165.0", "150.0", "0.55", "0.0"],
        ["703", "Extras", "3", "", "1", "50.0", "50.0"],
    ]
    assert sections["time_to_completion"] == [["completed", "median_days", "p90_days"], ["3", "10.0", "26.0"]]


async def test_enrolment_range_is_inclusive_and_nobody_finished_gives_nulls(stack: Stack) -> None:
    await build_course(stack)
    # c (enrolled 2025-02-05 10:00) to f (2025-03-03 10:00): both ends are whole days, included.
    response = await get(stack, "admin", "admin", **{"from": "2025-02-05", "to": "2025-03-03"})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["enrolled_from"], data["enrolled_to"]) == ("2025-02-05", "2025-03-03")
    assert data["completion"] == {"enrolled": 4, "completed": 0, "completion_rate": 0.0}
    assert data["time_to_completion"] == {"completed": 0, "median_days": None, "p90_days": None}
    assert data["lesson_difficulty"] == [
        lesson(L2, "=Formulas", 2, is_required=True, started=1, completed=0, completion_rate=0.0),
        lesson(L1, "Intro", 1, is_required=True, started=2, completed=1, completion_rate=50.0),
        lesson(L3, "Extras", 3, is_required=False, started=0, completed=0, completion_rate=None),
    ]
    assert data["engagement"] == [
        lesson(L1, "Intro", 1, duration_seconds=600, learners=2, average_watch_seconds=255.0,
               median_watch_seconds=255.0, average_fraction_watched=0.425, average_watched_ratio=0.0),
        lesson(L2, "=Formulas", 2, duration_seconds=300, learners=1, average_watch_seconds=60.0,
               median_watch_seconds=60.0, average_fraction_watched=0.2, average_watched_ratio=0.0),
        lesson(L3, "Extras", 3, duration_seconds=None, learners=0, average_watch_seconds=None,
               median_watch_seconds=None, average_fraction_watched=None, average_watched_ratio=None),
    ]
    assert [f["learners"] for f in data["drop_off"]["lessons"]] == [1, 1, 0]
    assert data["drop_off"]["without_activity"] == 1

    one_day = (await get(stack, **{"from": "2025-03-03", "to": "2025-03-03"})).json()["data"]
    assert one_day["completion"]["enrolled"] == 1  # f alone
    assert (await get(stack, **{"from": "2025-03-11"})).json()["data"]["completion"]["enrolled"] == 0
    assert (await get(stack, to="2025-01-10")).json()["data"]["completion"] == \
        {"enrolled": 1, "completed": 1, "completion_rate": 100.0}


@pytest.mark.parametrize("bounds", [(None, None), ("2025-02-05", "2025-03-03"), ("2025-01-01", "2025-03-05"),
                                    ("2025-01-20", None), (None, "2025-01-31"), ("2025-01-11", "2025-03-09")])
async def test_lesson_figures_equal_the_records_pending_and_folded(
    stack: Stack, bounds: tuple[str | None, str | None]
) -> None:
    """The histograms' figures (the deltas still pending, then folded into the cohort
    blocks) equal the figures summed straight from the population's records."""
    start, end = (datetime.fromisoformat(b).date() if b else None for b in bounds)
    query = analytics.ReportQuery(COURSE, start, end, 14, datetime.now(UTC))
    pool = stack.runtime.pool

    async def from_histograms() -> dict[int, LessonFigures]:
        async with analytics_store.session(pool, one_snapshot=True) as conn:
            return await usecases.lesson_figures(conn, catalog(), query)

    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", FOLD_LOCK)  # the service's folder skips its turns
        try:
            await build_course(stack)
            scratch = await reference.lesson_figures_from_scratch(
                pool, COURSE, query.start, query.end, analytics.durations(catalog()))
            assert scratch  # every range above has started lessons
            assert await analytics_store.pending_deltas(conn) > 0
            assert await from_histograms() == scratch
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", FOLD_LOCK)
    folder = stack.runtime.state.analytics_folder

    async def folded() -> bool:
        # The service's own folder may hold the fold lock at this moment (then this fold
        # returns at once and that one finishes the work): fold until nothing is pending.
        await folder.fold()
        async with pool.acquire() as conn:
            return await analytics_store.pending_deltas(conn) == 0

    await eventually(folded, what="every delta folded")
    assert await from_histograms() == scratch


async def test_empty_course_gives_zeros_and_nulls(stack: Stack) -> None:
    await store.save_course(stack.runtime.pool, catalog())
    for params in ({}, {"format": "csv"}):
        response = await get(stack, **params)
        assert response.status_code == 200
    data = (await get(stack)).json()["data"]
    assert data["completion"] == {"enrolled": 0, "completed": 0, "completion_rate": None}
    assert [d["started"] for d in data["lesson_difficulty"]] == [0, 0, 0]
    assert [d["completion_rate"] for d in data["lesson_difficulty"]] == [None, None, None]
    assert [d["lesson_id"] for d in data["lesson_difficulty"]] == [L1, L2, L3]  # course order among equals
    assert data["drop_off"]["learners"] == 0 and [f["learners"] for f in data["drop_off"]["lessons"]] == [0, 0, 0]
    assert {(e["learners"], e["average_watch_seconds"], e["median_watch_seconds"], e["average_fraction_watched"],
             e["average_watched_ratio"]) for e in data["engagement"]} == {(0, None, None, None, None)}
    assert data["time_to_completion"] == {"completed": 0, "median_days": None, "p90_days": None}

    await store.save_course(stack.runtime.pool, catalog(71, lessons=[]))
    bare = await stack.client.get("/api/admin/courses/71/analytics", headers=stack.token("x", "admin"))
    assert bare.status_code == 200
    body = bare.json()["data"]
    assert body["lesson_difficulty"] == [] and body["engagement"] == [] and body["drop_off"]["lessons"] == []


async def test_who_may_see_analytics(stack: Stack) -> None:
    await build_course(stack)
    url = f"/api/admin/courses/{COURSE}/analytics"
    assert (await stack.client.get(url)).status_code == 401
    learner = await stack.client.get(url, headers=stack.token("a"))  # enrolled, but a learner
    assert learner.status_code == 403 and learner.json()["code"] == "forbidden"
    other = await stack.client.get(url, headers=stack.token("someone", "instructor"))
    assert other.status_code == 403 and other.json()["message"] == "You do not teach this course"
    assert (await stack.client.get(url, headers=stack.token("teach", "instructor"))).status_code == 200
    assert (await stack.client.get(url, headers=stack.token("root", "admin"))).status_code == 200
    # A learner learns nothing about courses that do not exist either.
    assert (await stack.client.get("/api/admin/courses/99/analytics", headers=stack.token("a"))).status_code == 403
    unknown = await stack.client.get("/api/admin/courses/99/analytics", headers=stack.token("root", "admin"))
    assert unknown.status_code == 404 and unknown.json()["code"] == "course_not_found"


@pytest.mark.parametrize(("params", "field"), [
    ({"from": "2025-13-01"}, "from"),
    ({"to": "yesterday"}, "to"),
    ({"from": "2025-03-02", "to": "2025-03-01"}, "from"),
    ({"inactive_days": "0"}, "inactive_days"),
    ({"inactive_days": "many"}, "inactive_days"),
    ({"format": "xml"}, "format"),
])
async def test_bad_parameters_are_400_naming_the_parameter(
    stack: Stack, params: dict[str, str], field: str
) -> None:
    await store.save_course(stack.runtime.pool, catalog())
    response = await get(stack, "root", "admin", **params)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_request" and body["data"]["status"] == 400
    assert list(body["data"]["params"]) == [field]


async def test_a_reset_learner_counts_as_completed_by_the_current_attempt_only(stack: Stack) -> None:
    pool = stack.runtime.pool
    await store.save_course(pool, catalog())
    enrolled = EnrollmentChanged(user_id="again", course_id=COURSE, enrollment_id=7001, status="active", revision=1,
                                 enrolled_at=at("2025-03-01"))
    await store.save_enrollment(pool, enrolled)

    async def finish(attempt: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await store.add_completion(conn, 7001, CourseCompleted(
                user_id="again", course_id=COURSE, completed_at=at("2025-03-05"), user_name="A",
                user_email="a@example.com", course_title="Data, Analysed", certificate_enabled=True,
                attempt=attempt))

    async def completed() -> int:
        data = (await get(stack)).json()["data"]
        assert data["completion"]["enrolled"] == 1
        return int(data["completion"]["completed"])

    await finish(1)
    assert await completed() == 1
    await store.save_enrollment(pool, enrolled.model_copy(update={"revision": 2, "attempt": 2}))
    assert await completed() == 0  # reset: attempt 2 is not complete
    await finish(2)
    assert await completed() == 1  # counted once, by the current attempt


async def test_engagement_gives_the_average_coverage_folded_or_not(stack: Stack) -> None:
    """The average watched ratio per lesson, from the records' watched ranges: pending,
    folded, after a learner's cohort moves (unenrolled) and after a record changes again."""
    b = Builder(stack)
    pool = b.pool
    await store.save_course(pool, catalog())
    now = at("2025-04-02")
    for user, day in (("p", "2025-04-01"), ("q", "2025-04-01"), ("r", "2025-04-03"), ("s", "2025-04-05")):
        await b.enroll(user, day)
    # Lesson 1 (600 s): p watched 0-300 and 400-500 (400 s), q the whole (600 s), r 60 s,
    # s seeked to the end only (nothing watched). Lesson 2 (300 s): p 150 s.
    # Lesson 3 has no duration: no ratio.
    for user, lesson, ranges in (
        ("p", L1, ((0.0, 300.0), (400.0, 500.0))), ("q", L1, ((0.0, 600.0),)), ("r", L1, ((0.0, 60.0),)),
        ("s", L1, ()), ("p", L2, ((0.0, 150.0),)), ("q", L3, ((0.0, 50.0),)),
    ):
        end = ranges[-1][1] if ranges else 600.0
        await store.flush_heartbeats(pool, [
            store.FlushRow(user, COURSE, lesson, end, end, now, now, (), now, ranges)])

    async def engagement(**params: Any) -> dict[int, Any]:
        data = (await get(stack, **params)).json()["data"]
        return {e["lesson_id"]: e["average_watched_ratio"] for e in data["engagement"]}

    whole = {L1: round((400 + 600 + 60 + 0) / 4 / 600, 4), L2: 0.5, L3: None}
    assert await engagement() == whole
    await stack.runtime.state.analytics_folder.fold()
    assert await engagement() == whole
    assert await engagement(**{"from": "2025-04-02"}) == {L1: round(60 / 2 / 600, 4), L2: None, L3: None}
    # More of p's lesson 1 (overlapping what is stored): 0-550 now.
    await store.flush_heartbeats(pool, [
        store.FlushRow("p", COURSE, L1, 550.0, 550.0, now, now, (), now, ((250.0, 550.0),))])
    await b.enroll("q", "2025-04-01", status="unenrolled", revision=2)  # q leaves every figure
    expected = {L1: round((550 + 60 + 0) / 3 / 600, 4), L2: 0.5, L3: None}
    assert await engagement() == expected
    await stack.runtime.state.analytics_folder.fold()
    assert await engagement() == expected
    csv_rows = list(csv.reader(io.StringIO((await get(stack, format="csv")).text)))
    header = next(r for r in csv_rows if r[:2] == ["lesson_id", "title"] and "average_watched_ratio" in r)
    column = header.index("average_watched_ratio")
    assert [r[column] for r in csv_rows if r[:1] == [str(L1)] and len(r) > column and r[3] == "600"] == \
        [str(expected[L1])]
    scratch = await reference.lesson_figures_from_scratch(pool, COURSE, None, None, analytics.durations(catalog()))
    assert scratch[L1].watched_sum_s == 550 + 60 and scratch[L1].started == 3
