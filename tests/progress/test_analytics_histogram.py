"""Property tests of the cohort histograms' arithmetic: the blocks a report sums cover its
range exactly, and the lesson figures from buckets plus opened buckets equal the figures
computed from the watch times themselves."""

from __future__ import annotations

import statistics
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from services.progress.analytics.domain import (
    ALL,
    BUCKET_S,
    LEVEL_BITS,
    Bucket,
    blocks_tiling,
    buckets_to_open,
    by_lesson,
    lesson_figures,
    plan,
)

days = st.integers(min_value=-2000, max_value=40000)


def covers(level: int, block: int, day: int) -> bool:
    return level == ALL or day >> (LEVEL_BITS * level) == block


@given(days, st.integers(0, 1500), st.data())
def test_the_planned_blocks_count_every_day_of_the_range_once(start: int, length: int, data: st.DataObject) -> None:
    span = (start, start + length)
    first = data.draw(st.none() | st.integers(span[0] - 50, span[1] + 50))
    last = data.draw(st.none() | st.integers(span[0] - 50, span[1] + 50))
    blocks = plan(span, first, last)
    for day in range(span[0], span[1] + 1):
        inside = (first is None or day >= first) and (last is None or day <= last)
        assert sum(sign for level, block, sign in blocks if covers(level, block, day)) == int(inside)
    # A handful of blocks whatever the range: at most seven of a size on each side.
    assert len(blocks) <= 1 + 2 * 7 * ALL


@given(days, st.integers(0, 5000))
def test_a_tiling_is_disjoint_and_exact(first: int, length: int) -> None:
    tiles = blocks_tiling(first, first + length)
    counted = Counter(day for level, block in tiles
                      for day in range(block << (LEVEL_BITS * level), (block + 1) << (LEVEL_BITS * level)))
    assert counted == Counter(range(first, first + length + 1))


def test_no_learners_or_a_range_outside_them_sums_nothing() -> None:
    assert plan(None, None, None) == []
    assert plan((100, 200), 201, None) == [] and plan((100, 200), None, 99) == []
    assert plan((100, 200), None, None) == plan((100, 200), 50, 300) == [(ALL, 0, 1)]


def histogram(records: list[tuple[int, int, bool]]) -> list[Bucket]:
    totals: dict[tuple[int, int], list[int]] = {}
    for lesson, watch, completed in records:
        t = totals.setdefault((lesson, watch // BUCKET_S), [0, 0, 0])
        t[0] += 1
        t[1] += completed
        t[2] += watch
    return [Bucket(lesson, bucket, n, c, w) for (lesson, bucket), (n, c, w) in totals.items()]


records = st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.integers(0, 2000), st.booleans()), max_size=200)
durations = st.dictionaries(st.sampled_from([1, 2, 3]), st.none() | st.integers(1, 1800) | st.floats(0.5, 1800.0))


@given(records, durations)
def test_figures_from_buckets_equal_figures_from_the_watch_times(
    recs: list[tuple[int, int, bool]], lesson_durations: dict[int, float | None]
) -> None:
    lessons = by_lesson(histogram(recs))
    wanted = buckets_to_open(lessons, lesson_durations)
    # What the store returns for the opened buckets: their whole seconds, in order.
    opened = {(lesson, bucket): sorted(Counter(w for l_, w, _ in recs if l_ == lesson and w // BUCKET_S == bucket)
                                       .items())
              for lesson, bucket in wanted}
    figures = lesson_figures(lessons, opened, lesson_durations)
    assert set(figures) == {lesson for lesson, _, _ in recs}
    for lesson, f in figures.items():
        watched = [w for l_, w, _ in recs if l_ == lesson]
        assert f.started == len(watched)
        assert f.completed == sum(1 for l_, _, c in recs if l_ == lesson and c)
        assert f.watch_sum_s == sum(watched)
        assert f.median_watch_s == statistics.median(watched)
        duration = lesson_durations.get(lesson)
        if duration:
            assert f.fraction_sum is not None
            assert abs(f.fraction_sum - sum(min(1.0, w / duration) for w in watched)) < 1e-6
        else:
            assert f.fraction_sum is None
    # Only a few buckets are opened: the median's (one or two) and the duration's.
    assert len(wanted) <= 3 * len(lessons)
