"""Progress analytics, free of I/O: the report's figures from what the store aggregated,
and its CSV form. Definitions are in docs/progress.md, "Analytics"."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from services.progress.analytics_histogram import LessonFigures
from services.progress.analytics_store import LearnerFigures
from services.progress.domain import ordered
from shared.events import CatalogLesson, CourseCatalogEntry

DEFAULT_INACTIVE_DAYS = 14
DAY_S = 86400.0


@dataclass(frozen=True)
class ReportQuery:
    course_id: int
    enrolled_from: date | None
    enrolled_to: date | None  # inclusive
    inactive_days: int
    now: datetime

    @property
    def start(self) -> datetime | None:
        """Lower bound of enrolled_at (inclusive): the start of the first day, UTC."""
        return datetime.combine(self.enrolled_from, time(), UTC) if self.enrolled_from else None

    @property
    def end(self) -> datetime | None:
        """Upper bound of enrolled_at (exclusive): the start of the day after the last, UTC.
        None (no bound) for no ``to`` and for the last day a date can name (9999-12-31,
        a common "open-ended"), which has no day after it and nothing enrolled later."""
        if self.enrolled_to is None or self.enrolled_to == date.max:
            return None
        return datetime.combine(self.enrolled_to + timedelta(days=1), time(), UTC)

    @property
    def inactive_before(self) -> datetime:
        return self.now - timedelta(days=self.inactive_days)


def rate(part: int, whole: int) -> float | None:
    """A percentage with two decimals; None when there is nothing to divide by."""
    return round(part * 100 / whole, 2) if whole else None


def _days(seconds: float | None) -> float | None:
    return round(seconds / DAY_S, 2) if seconds is not None else None


def _lesson(lesson: CatalogLesson) -> dict[str, Any]:
    return {"lesson_id": lesson.id, "title": lesson.title, "order": lesson.order}


def durations(course: CourseCatalogEntry) -> list[tuple[int, float | None]]:
    return [
        (lesson.id, float(lesson.duration_seconds) if lesson.duration_seconds else None) for lesson in course.lessons
    ]


def build_report(
    course: CourseCatalogEntry,
    query: ReportQuery,
    learners: LearnerFigures,
    lessons: dict[int, LessonFigures],
    stopped: dict[int | None, int],
) -> dict[str, Any]:
    catalog = ordered(course.lessons)
    empty = LessonFigures(0, 0, 0, 0, None, 0.0)

    difficulty = []
    engagement = []
    for lesson in catalog:
        f = lessons.get(lesson.id, empty)
        difficulty.append({
            **_lesson(lesson), "is_required": lesson.is_required,
            "started": f.started, "completed": f.completed, "completion_rate": rate(f.completed, f.started),
        })
        has_duration = bool(lesson.duration_seconds)
        engagement.append({
            **_lesson(lesson),
            "duration_seconds": lesson.duration_seconds,
            "learners": f.started,
            "average_watch_seconds": round(f.watch_sum_s / f.started, 2) if f.started else None,
            "median_watch_seconds": f.median_watch_s if f.started else None,
            "average_fraction_watched": (
                round(f.fraction_sum / f.started, 4) if f.started and has_duration and f.fraction_sum is not None
                else None
            ),
        })
    # Lowest completion rate first; lessons nobody started (no rate) last; then course order.
    positions = {lesson.id: i for i, lesson in enumerate(catalog)}
    difficulty.sort(key=lambda d: (d["completion_rate"] is None, d["completion_rate"] or 0.0,
                                   positions[d["lesson_id"]]))

    in_catalog = set(positions)
    funnel = [{**_lesson(lesson), "learners": stopped.get(lesson.id, 0)} for lesson in catalog]
    return {
        "course_id": course.course_id,
        "title": course.title,
        "generated_at": query.now,
        "enrolled_from": query.enrolled_from,
        "enrolled_to": query.enrolled_to,
        "completion": {
            "enrolled": learners.enrolled,
            "completed": learners.completed,
            "completion_rate": rate(learners.completed, learners.enrolled),
        },
        "lesson_difficulty": difficulty,
        "drop_off": {
            "inactive_days": query.inactive_days,
            "inactive_since": query.inactive_before,
            "learners": sum(stopped.values()),
            "without_activity": stopped.get(None, 0),
            "in_removed_lessons": sum(n for lesson_id, n in stopped.items()
                                      if lesson_id is not None and lesson_id not in in_catalog),
            "lessons": funnel,
        },
        "engagement": engagement,
        "time_to_completion": {
            "completed": learners.completed,
            "median_days": _days(learners.median_completion_s),
            "p90_days": _days(learners.p90_completion_s),
        },
    }


# ---------------------------------------------------------------- CSV

CSV_WIDTH = 8  # the widest section (engagement); every row is padded to it


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str):
        # A spreadsheet would run a text cell starting like a formula (CSV injection).
        return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
    return str(value)


def to_csv(report: dict[str, Any]) -> str:
    """Sections, each: a row with the section's name, a header row, its rows, an empty row.
    Every row has CSV_WIDTH fields (empty ones pad), so any CSV reader sees one rectangle."""
    out = io.StringIO()
    writer = csv.writer(out)  # RFC 4180: CRLF line ends, quotes where needed

    def row(values: list[Any]) -> None:
        cells = [_cell(v) for v in values]
        writer.writerow(cells + [""] * (CSV_WIDTH - len(cells)))

    def section(name: str, header: list[str], rows: list[list[Any]]) -> None:
        row([name])
        row(list(header))
        for r in rows:
            row(r)
        row([])

    drop = report["drop_off"]
    completion = report["completion"]
    ttc = report["time_to_completion"]
    section("course", ["course_id", "title", "enrolled_from", "enrolled_to", "inactive_days", "generated_at"],
            [[report["course_id"], report["title"], report["enrolled_from"], report["enrolled_to"],
              drop["inactive_days"], report["generated_at"]]])
    section("completion", ["enrolled", "completed", "completion_rate"],
            [[completion["enrolled"], completion["completed"], completion["completion_rate"]]])
    section("lesson_difficulty", ["lesson_id", "title", "order", "is_required", "started", "completed",
                                  "completion_rate"],
            [[d["lesson_id"], d["title"], d["order"], d["is_required"], d["started"], d["completed"],
              d["completion_rate"]] for d in report["lesson_difficulty"]])
    section("drop_off", ["lesson_id", "title", "order", "learners"],
            [["", "(no activity)", "", drop["without_activity"]]]
            + [[f["lesson_id"], f["title"], f["order"], f["learners"]] for f in drop["lessons"]]
            + ([["", "(removed lessons)", "", drop["in_removed_lessons"]]] if drop["in_removed_lessons"] else []))
    section("engagement", ["lesson_id", "title", "order", "duration_seconds", "learners", "average_watch_seconds",
                           "median_watch_seconds", "average_fraction_watched"],
            [[e["lesson_id"], e["title"], e["order"], e["duration_seconds"], e["learners"],
              e["average_watch_seconds"], e["median_watch_seconds"], e["average_fraction_watched"]]
             for e in report["engagement"]])
    section("time_to_completion", ["completed", "median_days", "p90_days"],
            [[ttc["completed"], ttc["median_days"], ttc["p90_days"]]])
    return out.getvalue()
