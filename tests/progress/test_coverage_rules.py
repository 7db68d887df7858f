"""Property tests of watched coverage: the merge of watched ranges (domain.watched_union)
that replicas and redeliveries apply in any order, and the inference of watching from
consecutive positions (domain.watched_step)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.progress import domain

EPS = 1e-6

# Raw media ranges, possibly overlapping, unsorted, empty: (start, length) in a 0..3600 s video.
raw = st.lists(
    st.tuples(st.floats(min_value=0, max_value=3600, allow_nan=False),
              st.floats(min_value=0, max_value=300, allow_nan=False)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=30,
)
# Three of these merge to at most 48 ranges: within the bound.
small = st.lists(
    st.tuples(st.floats(min_value=0, max_value=3600, allow_nan=False),
              st.floats(min_value=0, max_value=300, allow_nan=False)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=16,
)
caps = st.integers(min_value=1, max_value=8)


def stored(ranges: list[domain.Interval], cap: int = domain.WATCHED_MAX_RANGES) -> domain.Intervals:
    """Ranges as a record or an entry holds them: merged and bounded."""
    return domain.watched_union((), domain.normalize(ranges), cap)


def inside(a: domain.Intervals, b: domain.Intervals) -> bool:
    """Every second of ``a`` is in ``b``."""
    return domain.length(domain.difference(a, b)) < EPS


@given(raw, raw)
def test_the_union_is_idempotent_and_commutative(x: list[domain.Interval], y: list[domain.Interval]) -> None:
    a, b = stored(x), stored(y)
    ab = domain.watched_union(a, b)
    assert domain.watched_union(a, a) == a
    assert ab == domain.watched_union(b, a)
    # The same flush applied again (a redelivery, a retried statement) changes nothing.
    assert domain.watched_union(ab, b) == ab
    assert domain.watched_union(ab, ab) == ab


@given(small, small, small)
def test_the_union_is_associative_within_the_bound(
    x: list[domain.Interval], y: list[domain.Interval], z: list[domain.Interval]
) -> None:
    a, b, c = stored(x), stored(y), stored(z)
    left = domain.watched_union(domain.watched_union(a, b), c)
    right = domain.watched_union(a, domain.watched_union(b, c))
    exact = domain.union(domain.union(a, b), c)
    assert len(exact) <= domain.WATCHED_MAX_RANGES
    assert left == right == exact


@given(raw, raw, raw, caps)
def test_beyond_the_bound_it_stays_bounded_and_never_over_counts(
    x: list[domain.Interval], y: list[domain.Interval], z: list[domain.Interval], cap: int
) -> None:
    a, b, c = stored(x, cap), stored(y, cap), stored(z, cap)
    exact = domain.union(domain.union(domain.normalize(x), domain.normalize(y)), domain.normalize(z))
    for merged in (
        domain.watched_union(domain.watched_union(a, b, cap), c, cap),
        domain.watched_union(a, domain.watched_union(b, c, cap), cap),
        domain.watched_union(domain.watched_union(c, a, cap), b, cap),
    ):
        assert len(merged) <= cap
        assert domain.normalize(merged) == merged
        assert inside(merged, exact)  # coverage may under-count, never over-count
        assert domain.length(merged) <= domain.length(exact) + EPS
    # The bound keeps the longest ranges: nothing dropped is longer than anything kept.
    both = domain.union(a, b)
    kept = domain.watched_union(a, b, cap)
    dropped = [r for r in both if r not in kept]
    if dropped and kept:
        assert max(e - s for s, e in dropped) <= min(e - s for s, e in kept)


@given(raw, st.floats(min_value=1, max_value=3600, allow_nan=False))
def test_clipping_to_the_duration(x: list[domain.Interval], duration: float) -> None:
    clipped = domain.clip_media(x, duration)
    assert all(0 <= s < e <= duration for s, e in clipped)
    assert inside(clipped, domain.normalize(x))
    assert domain.clip_media(x, None) == domain.normalize(x)


# A heartbeat sequence: (seconds of wall-clock time since the previous one, new position).
heartbeats = st.lists(
    st.tuples(st.floats(min_value=0, max_value=30, allow_nan=False),
              st.floats(min_value=0, max_value=3600, allow_nan=False)),
    min_size=1, max_size=60,
)


def infer(start: float, beats: list[tuple[float, float]]) -> tuple[list[domain.Interval], float]:
    """Run the inference over a sequence from position ``start`` at time 0; the ranges it
    counted and the wall-clock time the sequence spans."""
    budget, position, at = domain.FIRST_WATCH_BUDGET, start, 0.0
    counted: list[domain.Interval] = []
    for gap, new in beats:
        watched, budget = domain.watched_step(budget, position, at, new, at + gap)
        if watched is not None:
            counted.append(watched)
        position, at = new, at + gap
    return counted, at


@given(st.floats(min_value=0, max_value=3600, allow_nan=False), heartbeats)
def test_no_movement_faster_than_the_fastest_rate_counts(start: float, beats: list[tuple[float, float]]) -> None:
    counted, span = infer(start, beats)
    # Whatever the client sends, what counts as watched is at most 2x the time it took (with
    # the arrival jitter allowance once).
    most = domain.MAX_PLAYBACK_RATE * (span + domain.ARRIVAL_JITTER_S)
    assert sum(e - s for s, e in counted) <= most + EPS
    assert domain.length(domain.normalize(counted)) <= most + EPS


@given(st.floats(min_value=0, max_value=1000, allow_nan=False), st.floats(min_value=0, max_value=30),
       st.floats(min_value=0, max_value=10_000))
def test_a_jump_beyond_the_rate_is_a_seek(prev: float, wall: float, extra: float) -> None:
    budget = domain.MAX_PLAYBACK_RATE * (wall + domain.ARRIVAL_JITTER_S)  # the most any budget holds
    jump = domain.MAX_PLAYBACK_RATE * (wall + domain.ARRIVAL_JITTER_S) + 0.001 + extra
    watched, after = domain.watched_step(budget, prev, 100.0, prev + jump, 100.0 + wall)
    assert watched is None
    assert after <= budget + EPS


@given(
    st.floats(min_value=0, max_value=600, allow_nan=False),
    st.floats(min_value=1, max_value=15),
    st.floats(min_value=0.5, max_value=1.25),
    st.lists(st.floats(min_value=-0.4, max_value=0.4), min_size=2, max_size=40),
)
def test_normal_playback_counts_whole(start: float, every: float, rate: float, jitter: list[float]) -> None:
    """Playback at up to 1.25x, reported every second or more, heartbeats arriving up to
    0.4 s early or late: every second between the first and the last position counts."""
    times = [i * every + j for i, j in enumerate(jitter)]
    times[0] = 0.0
    beats = []
    previous = 0.0
    for i, at in enumerate(times[1:], start=1):
        beats.append((at - previous, start + i * every * rate))
        previous = at
    counted, _ = infer(start, beats)
    merged = domain.normalize(counted)
    assert merged == ((start, start + (len(times) - 1) * every * rate),)


@given(st.floats(min_value=0, max_value=600, allow_nan=False), st.floats(min_value=2, max_value=15),
       st.integers(min_value=2, max_value=40))
def test_playback_at_twice_the_speed_on_time_counts_whole(start: float, every: float, n: int) -> None:
    beats = [(every, start + i * every * domain.MAX_PLAYBACK_RATE) for i in range(1, n)]
    counted, _ = infer(start, beats)
    assert domain.normalize(counted) == ((start, start + (n - 1) * every * domain.MAX_PLAYBACK_RATE),)


def test_seeking_to_the_end_counts_nothing() -> None:
    counted, _ = infer(0.0, [(5, 10), (5, 20), (1, 600)])
    assert domain.normalize(counted) == ((0.0, 20.0),)


def test_the_threshold_rule() -> None:
    from shared.events import CatalogLesson, CourseCatalogEntry

    def entry(threshold: float | None, *lessons: CatalogLesson) -> CourseCatalogEntry:
        return CourseCatalogEntry(course_id=1, revision=1, title="t", slug="t", status="published",
                                  video_completion_threshold=threshold, lessons=list(lessons))

    video = CatalogLesson(id=1, title="v", order=1, duration_seconds=600)
    own = CatalogLesson(id=2, title="o", order=2, duration_seconds=600, video_completion_threshold=0.5)
    text = CatalogLesson(id=3, title="t", order=3, duration_seconds=600, kind="text")
    no_length = CatalogLesson(id=4, title="n", order=4)
    manual = entry(None, video, own, text, no_length)
    watched = entry(0.9, video, own, text, no_length)
    assert domain.completion_threshold(manual, video) is None
    assert domain.completion_threshold(manual, own) == 0.5
    assert domain.completion_threshold(watched, video) == 0.9
    assert domain.completion_threshold(watched, own) == 0.5
    assert domain.completion_threshold(watched, text) is None
    assert domain.completion_threshold(watched, no_length) is None
    assert not domain.watched_enough(watched, video, 539.9)
    assert domain.watched_enough(watched, video, 540.0)
    assert domain.watched_enough(manual, video, 0.0)
    assert domain.watched_ratio(700, 600) == 1.0 and domain.watched_ratio(1, None) is None
