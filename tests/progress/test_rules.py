"""Property tests of the pure rules: course percentage, time spent, heartbeat merging."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.progress import domain
from shared.events import CatalogLesson, CourseCatalogEntry


def make_course(required: list[bool], sequential: bool = False) -> CourseCatalogEntry:
    return CourseCatalogEntry(
        course_id=1, revision=1, title="c", slug="c", status="published", requires_sequential_progress=sequential,
        lessons=[
            CatalogLesson(id=i + 1, title=f"L{i + 1}", order=i + 1, is_required=r) for i, r in enumerate(required)
        ],
    )


courses = st.lists(st.booleans(), min_size=0, max_size=30)


@given(courses, st.data())
def test_percentage_counts_required_lessons_only(required: list[bool], data: st.DataObject) -> None:
    course = make_course(required)
    ids = [lesson.id for lesson in course.lessons]
    done = set(data.draw(st.lists(st.sampled_from(ids), unique=True)) if ids else [])
    standing = domain.standing(course, done)
    total = sum(required)
    completed = sum(1 for lesson in course.lessons if lesson.is_required and lesson.id in done)
    assert (standing.completed_required, standing.total_required) == (completed, total)
    assert 0 <= standing.progress_percentage <= 100
    # 100 exactly when every required lesson is done (and there is at least one).
    assert (standing.progress_percentage == 100) == (total > 0 and completed == total) == standing.all_required_done
    # Optional lessons never change it.
    optional = {lesson.id for lesson in course.lessons if not lesson.is_required}
    assert domain.standing(course, done - optional).progress_percentage == standing.progress_percentage
    assert domain.standing(course, done | optional).progress_percentage == standing.progress_percentage
    # Missing required lessons are exactly the required ones not done.
    assert {lesson.id for lesson in standing.missing_required} == {
        lesson.id for lesson in course.lessons if lesson.is_required and lesson.id not in done
    }


@given(courses, st.data())
def test_completing_a_lesson_never_lowers_the_percentage(required: list[bool], data: st.DataObject) -> None:
    course = make_course(required)
    ids = [lesson.id for lesson in course.lessons]
    if not ids:
        return
    done = set(data.draw(st.lists(st.sampled_from(ids), unique=True)))
    extra = data.draw(st.sampled_from(ids))
    before = domain.standing(course, done).progress_percentage
    assert domain.standing(course, done | {extra}).progress_percentage >= before


@given(courses, st.data())
def test_sequential_locking_matches_the_first_missing_required_lesson(
    required: list[bool], data: st.DataObject
) -> None:
    course = make_course(required, sequential=True)
    ids = [lesson.id for lesson in course.lessons]
    if not ids:
        return
    done = set(data.draw(st.lists(st.sampled_from(ids), unique=True)))
    target = data.draw(st.sampled_from(ids))
    blocker = domain.lock_blocker(course, target, done)
    earlier_missing = [lid for lid in ids if lid < target and required[lid - 1] and lid not in done]
    assert (blocker.id if blocker else None) == (earlier_missing[0] if earlier_missing else None)
    standing = domain.standing(course, done)
    locked = {lesson.id for lesson in standing.locked}
    assert (target in locked) == (blocker is not None and target not in done)


# A heartbeat: (seconds since the previous one, position reported, client timestamp or None).
heartbeats = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=120, allow_nan=False),
        st.floats(min_value=0, max_value=domain.MAX_POSITION_SECONDS, allow_nan=False),
        st.one_of(st.none(), st.floats(min_value=0, max_value=10_000, allow_nan=False)),
    ),
    max_size=40,
)


@given(heartbeats)
def test_time_spent_never_exceeds_wall_clock_nor_playback_covered(
    beats: list[tuple[float, float, float | None]]
) -> None:
    state = domain.Playback(seen_at=0.0)
    now = 0.0
    covered = 0.0
    pending: domain.Intervals = ()
    credited = 0.0
    for gap, position, client_at in beats:
        now += gap
        before, last_accepted = state.video_progress, state.seen_at
        added = domain.merge_heartbeat(state, position, position, client_at, now)
        assert last_accepted is not None
        if added is None:
            continue
        # Capped by the wall-clock time since the last heartbeat that was taken into account
        # (and the arrival jitter allowed for).
        assert 0 <= added <= now - last_accepted + domain.ARRIVAL_JITTER_S + 1e-9
        if added:
            covered += position - before
            credited += added
            start, end = domain.credited_interval(added, now)
            # Inside the gap it credits, or reaching back by at most the jitter allowed for.
            assert last_accepted - domain.ARRIVAL_JITTER_S - 1e-9 <= start <= end == now
            pending = domain.add_pending(pending, (start, end), max_count=40)
    union = domain.length(pending)
    # What is credited is the union: never more than the wall-clock time that passed, never
    # more than the playback moved forward.
    assert union <= now + 1e-6
    assert union <= credited + 1e-6 and credited <= covered + 1e-6
    assert all(0 - 1e-9 <= start < end <= now + 1e-9 for start, end in pending)


@given(heartbeats)
def test_an_older_client_timestamp_never_moves_the_position(beats: list[tuple[float, float, float | None]]) -> None:
    state = domain.Playback()
    now = 0.0
    for gap, position, client_at in beats:
        now += gap
        held_at, held = state.position_at, state.video_progress
        domain.merge_heartbeat(state, position, None, client_at, now)
        if client_at is not None and held_at is not None and client_at < held_at:
            assert state.video_progress == held and state.position_at == held_at
        if held_at is not None:
            assert state.position_at is not None and state.position_at >= held_at


@given(st.floats(min_value=0, max_value=10**7, allow_nan=False))
def test_time_spent_words(seconds: float) -> None:
    words = domain.time_spent_words(seconds)
    total = int(seconds)
    hours, minutes = total // 3600, (total % 3600) // 60
    if hours:
        assert words.startswith(f"{hours} hour")
        assert (f"{minutes} minute" in words) == (minutes > 0)
    elif minutes:
        assert words == (f"{minutes} minute" + ("s" if minutes != 1 else ""))
    assert domain.time_spent_words(3 * 3600 + 25 * 60) == "3 hours 25 minutes"
    assert domain.time_spent_words(3600) == "1 hour"
    assert domain.time_spent_words(0) == "0 minutes"
