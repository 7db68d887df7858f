"""Property tests of credited wall-clock time (domain.credit and friends): the arithmetic
that lets several replicas credit one learner's watching once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.progress import domain

EPS = 1e-6

# Raw intervals, possibly overlapping, unsorted, empty: (start, length) on a 0..2000 s clock.
raw = st.lists(
    st.tuples(st.floats(min_value=0, max_value=2000, allow_nan=False),
              st.floats(min_value=0, max_value=200, allow_nan=False)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=12,
)
sets = raw.map(domain.normalize)
watermarks = st.one_of(st.none(), st.floats(min_value=0, max_value=2000, allow_nan=False))


def stored_state(intervals: domain.Intervals, until: float | None) -> tuple[domain.Intervals, float | None]:
    """A record as the database can hold it: normalized, nothing before the watermark."""
    return domain.clip(intervals, until), until


@given(raw)
def test_normalize_is_sorted_disjoint_and_keeps_the_covered_time(intervals: list[domain.Interval]) -> None:
    n = domain.normalize(intervals)
    assert all(start < end for start, end in n)
    assert all(n[i][1] < n[i + 1][0] for i in range(len(n) - 1))
    assert domain.normalize(n) == n
    # Every point of an input interval is covered by the output, and nothing outside them.
    for start, end in intervals:
        if end > start:
            assert any(s <= start and end <= e for s, e in n)
    assert domain.length(n) <= sum(max(0.0, e - s) for s, e in intervals) + EPS


@given(sets, sets, sets)
def test_union_is_idempotent_commutative_and_associative(a: domain.Intervals, b: domain.Intervals,
                                                          c: domain.Intervals) -> None:
    assert domain.union(a, a) == a
    assert domain.union(a, b) == domain.union(b, a)
    assert domain.union(domain.union(a, b), c) == domain.union(a, domain.union(b, c))
    assert max(domain.length(a), domain.length(b)) - EPS <= domain.length(domain.union(a, b))
    assert domain.length(domain.union(a, b)) <= domain.length(a) + domain.length(b) + EPS


@given(sets, sets)
def test_difference_is_what_the_union_adds(a: domain.Intervals, b: domain.Intervals) -> None:
    d = domain.difference(a, b)
    assert d == domain.normalize(d) or domain.length(d) == 0
    assert domain.union(domain.union(d, b), ()) == domain.union(a, b) or \
        abs(domain.length(domain.union(d, b)) - domain.length(domain.union(a, b))) <= EPS
    assert abs(domain.length(d) - (domain.length(domain.union(a, b)) - domain.length(b))) <= EPS
    assert domain.difference(a, a) == ()
    assert domain.difference(a, ()) == a


@given(sets, watermarks, sets)
def test_credit_adds_only_the_uncovered_part_after_the_watermark(
    stored: domain.Intervals, until: float | None, fresh: domain.Intervals
) -> None:
    stored, until = stored_state(stored, until)
    c = domain.credit(stored, until, fresh)
    expected = domain.length(domain.union(stored, domain.clip(fresh, until))) - domain.length(stored)
    assert abs(c.added - expected) <= EPS
    assert 0 <= c.added <= domain.length(fresh) + EPS
    assert abs(domain.uncovered(stored, until, fresh) - c.added) <= EPS  # what answers show before a flush
    # Idempotent: the same intervals again add nothing.
    again = domain.credit(c.intervals, c.until, fresh)
    assert again.added <= EPS


@given(sets, watermarks, sets, st.floats(min_value=0, max_value=500), st.integers(min_value=1, max_value=5))
def test_trimming_is_bounded(
    stored: domain.Intervals, until: float | None, fresh: domain.Intervals, horizon: float, max_count: int
) -> None:
    stored, until = stored_state(stored, until)
    c = domain.credit(stored, until, fresh, horizon=horizon, max_count=max_count)
    assert len(c.intervals) <= max_count
    assert c.intervals == domain.normalize(c.intervals)
    if until is not None:
        assert c.until is not None and c.until >= until  # the watermark never goes back
    if c.intervals:
        assert c.until is not None
        assert c.intervals[0][0] >= c.until
        assert c.intervals[0][0] >= c.intervals[-1][1] - horizon - EPS  # spans at most the horizon
    # Only the past is forgotten: whatever was credited after the watermark is still there.
    merged = domain.union(stored, domain.clip(fresh, until))
    assert domain.clip(merged, c.until) == c.intervals or \
        abs(domain.length(domain.clip(merged, c.until)) - domain.length(c.intervals)) <= EPS


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=3), sets), max_size=12), watermarks)
def test_replicas_credit_each_second_once_in_any_order(
    flushes: list[tuple[int, domain.Intervals]], until: float | None
) -> None:
    """Flushes of several replicas in any order: the total never exceeds the time covered by
    all their intervals after the watermark, and equals it while nothing is trimmed."""
    stored: domain.Intervals = ()
    watermark = until
    total = 0.0
    for _replica, fresh in flushes:
        c = domain.credit(stored, watermark, fresh, horizon=10_000, max_count=10_000)
        stored, watermark, total = c.intervals, c.until, total + c.added
    everything = domain.clip(domain.normalize(i for _, f in flushes for i in f), until)
    assert abs(total - domain.length(everything)) <= EPS * (1 + len(flushes))
    # With a short horizon the total can only be smaller.
    stored, watermark, short_total = (), until, 0.0
    for _replica, fresh in flushes:
        c = domain.credit(stored, watermark, fresh, horizon=50, max_count=2)
        stored, watermark, short_total = c.intervals, c.until, short_total + c.added
    assert short_total <= domain.length(everything) + EPS * (1 + len(flushes))


@given(raw, st.integers(min_value=1, max_value=4))
def test_pending_intervals_are_bounded_and_never_exceed_their_union(
    intervals: list[domain.Interval], max_count: int
) -> None:
    pending: domain.Intervals = ()
    for interval in intervals:
        pending = domain.add_pending(pending, interval, max_count=max_count)
    exact = domain.normalize(intervals)
    assert len(pending) <= max_count
    assert pending == domain.normalize(pending)
    assert domain.length(pending) <= domain.length(exact) + EPS * (1 + len(intervals))
    assert domain.difference(pending, exact) == ()  # a part of what was credited


# One replica's heartbeat pairs: each credits an interval after the previous ones.
chronological = st.lists(
    st.tuples(st.floats(min_value=0, max_value=30, allow_nan=False),
              st.floats(min_value=0, max_value=30, allow_nan=False)),
    max_size=30,
)


@given(chronological, st.integers(min_value=1, max_value=4))
def test_pending_intervals_of_one_replica_keep_their_total_within_the_bound(
    steps: list[tuple[float, float]], max_count: int
) -> None:
    pending: domain.Intervals = ()
    now = 0.0
    total = 0.0
    exact = True
    for gap, watched in steps:
        added = min(gap, watched)
        now += gap
        total += added
        exact = exact and len(domain.union(pending, (domain.credited_interval(added, now),))) <= max_count
        pending = domain.add_pending(pending, domain.credited_interval(added, now), max_count=max_count)
    assert len(pending) <= max_count
    assert domain.length(pending) <= total + EPS * (1 + len(steps))
    if exact:
        assert abs(domain.length(pending) - total) <= EPS * (1 + len(steps))


def test_position_ordering() -> None:
    newer = domain.position_newer
    assert newer(10.0, 1.0, 5.0, 100.0)  # client timestamps decide when both have one
    assert not newer(4.0, 200.0, 5.0, 100.0)
    assert newer(None, 101.0, 5.0, 100.0)  # else server receive times
    assert not newer(None, 99.0, 5.0, 100.0)
    assert not newer(6.0, 99.0, None, 100.0)
    assert newer(None, 0.0, None, None)
