"""Progress analytics, free of I/O: the arithmetic of the cohort histograms, the report's
figures from what the store aggregated, and its CSV form. Definitions are in
docs/progress.md, "Analytics"."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from services.progress.domain import ordered
from shared.domain import DomainError
from shared.events import CatalogLesson, CourseCatalogEntry


class InvalidRange(DomainError):
    """A report's enrolment range whose first day is after its last."""

    def __init__(self) -> None:
        super().__init__("Invalid or missing fields: from", params={"from": "must not be after to"})


class NotCourseInstructor(DomainError):
    """An instructor asking for the analytics of a course they do not teach."""

    default_message = "You do not teach this course"


# ---------------------------------------------------------------- cohort histograms

# The arithmetic of the cohort histograms (migration 003).
#
# Each started record counts once in its lesson's watch-time histogram, in every block of
# cohort days that holds its learner's enrolment day: level L < ALL is the aligned run of
# 8**L days numbered ``day >> 3L`` (days since 1970-01-01), level ALL the whole course. A
# report over a range of enrolment days sums the few blocks that tile the range. The
# histograms come at two resolutions: 32-second buckets with learners, completed and the
# watch-time sum, and whole seconds with learners. Every lesson figure follows from the
# buckets except where a bucket must be opened: the one holding a median rank, and the one
# straddling the lesson's duration (the watched fraction caps at 1 there). Those are read
# at whole-second resolution, so every figure is exact.

BUCKET_S = 32  # the SQL function analytics_bucket divides by the same
LEVEL_BITS = 3  # a block of level L spans 8**L days
ALL = 4  # the whole course, block 0; levels 0..3 are blocks of 1, 8, 64 and 512 days
EPOCH = date(1970, 1, 1)

Block = tuple[int, int, int]  # (level, block number, +1 to add it or -1 to take it away)


def day_number(day: date) -> int:
    return (day - EPOCH).days


def blocks_tiling(first: int, last: int) -> list[tuple[int, int]]:
    """The fewest aligned blocks (level, number) of levels below ALL that exactly tile the
    days first..last (inclusive): at most seven of each size on either side."""
    tiles: list[tuple[int, int]] = []
    day = first
    while day <= last:
        level = ALL - 1
        while level > 0 and (day % (1 << (LEVEL_BITS * level)) or day + (1 << (LEVEL_BITS * level)) - 1 > last):
            level -= 1
        tiles.append((level, day >> (LEVEL_BITS * level)))
        day += 1 << (LEVEL_BITS * level)
    return tiles


def plan(span: tuple[int, int] | None, first: int | None, last: int | None) -> list[Block]:
    """The blocks to sum for a report over enrolment days first..last (None: unbounded), given
    ``span``, the first and last cohort day of the course's learners (None: no learners).

    Days outside the span hold nothing, so the range is clipped to it; a range that covers
    the span is the ALL block. Otherwise the range's own tiling, or ALL minus the tiling of
    what the range leaves out, whichever has fewer blocks."""
    if span is None:
        return []
    lo = span[0] if first is None else max(first, span[0])
    hi = span[1] if last is None else min(last, span[1])
    if lo > hi:
        return []
    if (lo, hi) == span:
        return [(ALL, 0, 1)]
    direct = [(level, block, 1) for level, block in blocks_tiling(lo, hi)]
    outside = blocks_tiling(span[0], lo - 1) + blocks_tiling(hi + 1, span[1])
    if 1 + len(outside) < len(direct):
        return [(ALL, 0, 1)] + [(level, block, -1) for level, block in outside]
    return direct


def plan_dates(span: tuple[date, date] | None, first: date | None, last: date | None) -> list[Block]:
    """``plan`` for a span and a range given as days."""
    return plan(
        (day_number(span[0]), day_number(span[1])) if span else None,
        day_number(first) if first else None,
        day_number(last) if last else None,
    )


@dataclass(frozen=True, slots=True)
class Bucket:
    """A 32-second bucket of one lesson's histogram, summed over a report's blocks."""

    lesson_id: int
    bucket: int
    learners: int
    completed: int
    watch_sum: int  # whole seconds, summed over its learners
    watched_sum: int = 0  # watched seconds (coverage, whole seconds per record), summed over its learners


@dataclass(frozen=True, slots=True)
class LessonFigures:
    lesson_id: int
    started: int
    completed: int
    watch_sum_s: int
    fraction_sum: float | None  # None when the lesson has no duration
    median_watch_s: float
    watched_sum_s: int = 0  # watched seconds (coverage), summed over the learners who started


def by_lesson(buckets: Iterable[Bucket]) -> dict[int, list[Bucket]]:
    """Each lesson's non-empty buckets in watch-time order."""
    lessons: dict[int, list[Bucket]] = {}
    for b in sorted(buckets, key=lambda b: (b.lesson_id, b.bucket)):
        if b.learners > 0:
            lessons.setdefault(b.lesson_id, []).append(b)
    return lessons


def median_ranks(started: int) -> tuple[int, int]:
    """0-based ranks whose values' mean is the median (percentile_cont(0.5))."""
    return (started - 1) // 2, started // 2


def _bucket_of_rank(buckets: Sequence[Bucket], rank: int) -> tuple[Bucket, int]:
    """The bucket holding the value of 0-based ``rank``, and the rank inside it."""
    for b in buckets:
        if rank < b.learners:
            return b, rank
        rank -= b.learners
    raise ValueError("rank beyond the histogram")


def straddles(bucket: int, duration: float) -> bool:
    """Whether the bucket holds watch times on both sides of the duration, so that
    min(1, watch / duration) cannot be summed from the bucket's totals."""
    return bucket * BUCKET_S < duration < bucket * BUCKET_S + BUCKET_S - 1


def buckets_to_open(
    lessons: Mapping[int, Sequence[Bucket]], durations: Mapping[int, float | None]
) -> set[tuple[int, int]]:
    """(lesson, bucket) pairs to read at whole-second resolution: the median's buckets,
    and the one straddling the duration."""
    wanted: set[tuple[int, int]] = set()
    for lesson_id, buckets in lessons.items():
        started = sum(b.learners for b in buckets)
        for rank in median_ranks(started):
            wanted.add((lesson_id, _bucket_of_rank(buckets, rank)[0].bucket))
        duration = durations.get(lesson_id)
        if duration:
            wanted.update((lesson_id, b.bucket) for b in buckets if straddles(b.bucket, duration))
    return wanted


def _value_at(seconds: Sequence[tuple[int, int]], rank: int) -> int:
    """The watch time of 0-based ``rank`` among (watch_s, learners) in watch-time order."""
    for watch_s, learners in seconds:
        if rank < learners:
            return watch_s
        rank -= learners
    raise ValueError("rank beyond the bucket")


def lesson_figures(
    lessons: Mapping[int, Sequence[Bucket]],
    opened: Mapping[tuple[int, int], Sequence[tuple[int, int]]],
    durations: Mapping[int, float | None],
) -> dict[int, LessonFigures]:
    """Every lesson's figures from its buckets and the opened buckets' (watch_s, learners)
    rows in watch-time order."""
    figures: dict[int, LessonFigures] = {}
    for lesson_id, buckets in lessons.items():
        started = sum(b.learners for b in buckets)
        values = []
        for rank in median_ranks(started):
            bucket, inner = _bucket_of_rank(buckets, rank)
            values.append(_value_at(opened[(lesson_id, bucket.bucket)], inner))
        duration = durations.get(lesson_id)
        fraction: float | None = None
        if duration:
            fraction = 0.0
            for b in buckets:
                if straddles(b.bucket, duration):
                    fraction += sum(min(1.0, w / duration) * n for w, n in opened[(lesson_id, b.bucket)])
                elif b.bucket * BUCKET_S >= duration:
                    fraction += b.learners
                else:
                    fraction += b.watch_sum / duration
        figures[lesson_id] = LessonFigures(
            lesson_id, started, sum(b.completed for b in buckets), sum(b.watch_sum for b in buckets), fraction,
            (values[0] + values[1]) / 2.0, sum(b.watched_sum for b in buckets),
        )
    return figures


# ---------------------------------------------------------------- the report

DEFAULT_INACTIVE_DAYS = 14
DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class LearnerFigures:
    """Per-learner figures of the population."""

    enrolled: int
    completed: int
    median_completion_s: float | None
    p90_completion_s: float | None


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


def check_range(enrolled_from: date | None, enrolled_to: date | None) -> None:
    if enrolled_from is not None and enrolled_to is not None and enrolled_from > enrolled_to:
        raise InvalidRange()


def check_may_see(is_admin: bool, user_id: str, course: CourseCatalogEntry) -> None:
    """Administrators see every course's analytics, instructors those of the courses they
    teach (the role itself is checked before the course is looked up)."""
    if not is_admin and user_id not in course.instructor_ids:
        raise NotCourseInstructor()


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


def average_watched_ratio(figures: LessonFigures, duration: float | None) -> float | None:
    """The mean of the records' watched_ratio over the learners who started the lesson
    (four decimals): coverage is clipped to the duration, so the sum of watched seconds
    over started x duration is that mean (capped at 1 should the duration have shrunk)."""
    if not figures.started or not duration:
        return None
    return round(min(1.0, figures.watched_sum_s / (figures.started * duration)), 4)


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
            "average_watched_ratio": average_watched_ratio(f, lesson.duration_seconds),
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

CSV_WIDTH = 9  # the widest section (engagement); every row is padded to it


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
                           "median_watch_seconds", "average_fraction_watched", "average_watched_ratio"],
            [[e["lesson_id"], e["title"], e["order"], e["duration_seconds"], e["learners"],
              e["average_watch_seconds"], e["median_watch_seconds"], e["average_fraction_watched"],
              e["average_watched_ratio"]]
             for e in report["engagement"]])
    section("time_to_completion", ["completed", "median_days", "p90_days"],
            [[ttc["completed"], ttc["median_days"], ttc["p90_days"]]])
    return out.getvalue()
