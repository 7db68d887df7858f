"""The arithmetic of the cohort histograms (migration 003), free of I/O.

Each started record counts once in its lesson's watch-time histogram, in every block of
cohort days that holds its learner's enrolment day: level L < ALL is the aligned run of
8**L days numbered ``day >> 3L`` (days since 1970-01-01), level ALL the whole course. A
report over a range of enrolment days sums the few blocks that tile the range. The
histograms come at two resolutions: 32-second buckets with learners, completed and the
watch-time sum, and whole seconds with learners. Every lesson figure follows from the
buckets except where a bucket must be opened: the one holding a median rank, and the one
straddling the lesson's duration (the watched fraction caps at 1 there). Those are read
at whole-second resolution, so every figure is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

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


@dataclass(frozen=True, slots=True)
class LessonFigures:
    lesson_id: int
    started: int
    completed: int
    watch_sum_s: int
    fraction_sum: float | None  # None when the lesson has no duration
    median_watch_s: float


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
            (values[0] + values[1]) / 2.0,
        )
    return figures
