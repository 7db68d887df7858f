"""Progress rules, free of I/O: states, heartbeat merging, credited time, percentages, locking,
who may see what, and the refusals they state (``api.ERRORS`` answers them)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol
from uuid import UUID

from shared.domain import DomainError
from shared.events import CatalogLesson, CourseCatalogEntry, VideoSessionEnded

# A playback position beyond a week is not a position but a client bug.
MAX_POSITION_SECONDS = 7 * 24 * 3600.0

ProgressState = Literal["not_started", "in_progress", "completed"]


def progress_state(exists: bool, completed: bool, video_progress: float, last_position: float) -> ProgressState:
    """The seed's Progress States table; a record with no playback yet counts as not started."""
    if not exists:
        return "not_started"
    if completed:
        return "completed"
    if video_progress > 0 or last_position > 0:
        return "in_progress"
    return "not_started"


# Heartbeats reach the server a little late or early (network, a busy process): one that
# arrives late makes its gap look longer and the next one's shorter than the playback
# between them, and the seconds of the late gap would be lost. So a pair that follows a
# credited pair may reach back before the previous arrival by up to this much, and never
# past the start of the previous pair's interval: the next heartbeat makes up what the
# late one could not, inside seconds already credited as watching, which the union of
# intervals does not count twice.
ARRIVAL_JITTER_S = 0.5
MAX_PLAYBACK_RATE = 2.0  # the fastest playback accepted as watching (see watched_step)
# Media seconds a fresh learner-lesson entry may cover before wall-clock time accrues any:
# the arrival jitter allowance of its first pair of heartbeats.
FIRST_WATCH_BUDGET = MAX_PLAYBACK_RATE * ARRIVAL_JITTER_S


def time_increment(
    prev_position: float, prev_seen_at: float | None, position: float, seen_at: float, reach_back: float = 0.0
) -> float:
    """Seconds of watching between two accepted heartbeats of one process.

    Playback actually covered (forward movement of the position), never more than the
    wall-clock time that passed plus ``reach_back`` (into the previous pair's credited
    interval): a tab left open, or a jump forward, adds nothing extra.
    """
    if prev_seen_at is None:
        return 0.0
    covered = position - prev_position
    wall = seen_at - prev_seen_at
    if covered <= 0 or wall <= 0:
        return 0.0
    return min(covered, wall + reach_back)


def position_newer(
    client_at: float | None, seen_at: float | None, held_client_at: float | None, held_seen_at: float | None
) -> bool:
    """Whether a position read at (client timestamp, server receive time) may replace the one
    held. Client timestamps decide when both have one; otherwise server receive times do
    (arrival order, on any replica). The SQL of the flush applies the same rule."""
    if client_at is not None and held_client_at is not None:
        return client_at >= held_client_at
    return held_seen_at is None or (seen_at is not None and seen_at >= held_seen_at)


@dataclass(slots=True)
class Playback:
    """The position part of one learner-lesson record, as the heartbeat merge sees it."""

    video_progress: float = 0.0
    last_position: float = 0.0
    position_at: float | None = None  # latest client timestamp (epoch s) behind the position, if any
    seen_at: float | None = None  # server time (epoch s) of the heartbeat that set the position
    last_credit: float = 0.0  # seconds the last accepted pair credited (ending at seen_at)
    watch_budget: float = FIRST_WATCH_BUDGET  # media seconds the next movement may cover as watching (watched_step)


def merge_heartbeat(
    state: Playback,
    video_progress: float | None,
    last_position: float | None,
    client_at: float | None,
    now: float,
) -> float | None:
    """Apply one heartbeat to ``state`` in place.

    Returns None when the heartbeat is not taken (it carries no position, or it is older
    than the position held: see ``position_newer``), else the seconds of watching it
    credits: ``credited_interval`` places them on the server's clock.
    """
    step = play(state, video_progress, last_position, client_at, now)
    return step.added if step is not None else None


@dataclass(frozen=True, slots=True)
class Step:
    """What one accepted heartbeat adds: wall-clock seconds of time spent, and the media
    range its movement covered as watching (None: no movement, or a seek)."""

    added: float
    watched: Interval | None


def play(
    state: Playback,
    video_progress: float | None,
    last_position: float | None,
    client_at: float | None,
    now: float,
) -> Step | None:
    """``merge_heartbeat``, also inferring the media range watched (``watched_step``)."""
    if video_progress is None and last_position is None:
        return None
    if not position_newer(client_at, now, state.position_at, state.seen_at):
        return None
    new_video = state.video_progress if video_progress is None else video_progress
    new_last = state.last_position if last_position is None else last_position
    # Time spent follows the playback position (video_progress when sent, else last_position).
    before = state.video_progress if video_progress is not None else state.last_position
    after = new_video if video_progress is not None else new_last
    added = time_increment(before, state.seen_at, after, now, min(ARRIVAL_JITTER_S, state.last_credit))
    watched, state.watch_budget = watched_step(state.watch_budget, before, state.seen_at, after, now)
    state.last_credit = added
    state.video_progress = new_video
    state.last_position = new_last
    if client_at is not None:
        state.position_at = client_at if state.position_at is None else max(state.position_at, client_at)
    state.seen_at = now
    return Step(added, watched)


# ---------------------------------------------------------------- watched coverage
#
# What a learner watched is a union of media ranges (seconds of the video), kept per
# record: the player's own report (``played_segments``) when it sends one, else inferred
# from consecutive positions. Coverage is that union's length; under a threshold rule a
# video lesson completes when coverage / duration reaches it. The SQL function
# ``progress_watch`` (migration 007) is ``watched_union`` step for step.

WATCHED_MAX_RANGES = 50  # at most this many stored (and pending) watched ranges per record
MAX_PLAYED_SEGMENTS = 200  # per request


def watched_step(
    budget: float, prev_position: float, prev_seen_at: float | None, position: float, seen_at: float
) -> tuple[Interval | None, float]:
    """Whether the movement between two accepted heartbeats of one process was watching,
    and the budget afterwards.

    Forward movement is watching when it is no larger than the budget: media seconds
    accrue at ``MAX_PLAYBACK_RATE`` per second of wall-clock time between heartbeats, and
    carry over only up to that rate times ``ARRIVAL_JITTER_S`` beyond the current gap (a
    heartbeat that arrived late, or early), so a run of heartbeats never covers more than
    the rate times the wall-clock time it spans plus that allowance once (the budget an
    entry starts with, ``FIRST_WATCH_BUDGET``). A larger jump is a seek: it covers nothing (the
    budget stays for the next movement). Moving back or standing still covers nothing.
    """
    if prev_seen_at is None:
        return None, budget
    wall = max(0.0, seen_at - prev_seen_at)
    budget = min(budget + MAX_PLAYBACK_RATE * wall, MAX_PLAYBACK_RATE * (wall + ARRIVAL_JITTER_S))
    covered = position - prev_position
    if covered <= 0 or covered > budget:
        return None, budget
    return (prev_position, position), budget - covered


def keep_longest(ranges: Intervals, max_count: int) -> Intervals:
    """At most ``max_count`` of normalized ``ranges``, in order: the shortest are dropped
    (of equal lengths, the earlier first). Dropping only ever under-counts."""
    if len(ranges) <= max_count:
        return ranges
    by_length = sorted(range(len(ranges)), key=lambda i: (ranges[i][1] - ranges[i][0], i))
    keep = sorted(by_length[len(ranges) - max(1, max_count):])
    return tuple(ranges[i] for i in keep)


def watched_union(a: Intervals, b: Intervals, max_count: int = WATCHED_MAX_RANGES) -> Intervals:
    """The watched ranges of both, merged (sorted, overlapping and touching ranges joined),
    and bounded (``keep_longest``). Idempotent and commutative; associative whenever the
    merged ranges fit the bound, and beyond it never more than the exact union."""
    return keep_longest(union(a, b), max_count)


def clip_media(ranges: Iterable[Interval], duration: float | None) -> Intervals:
    """Normalized, inside [0, duration] when the duration is known."""
    if not duration or duration <= 0:
        return normalize(ranges)
    return normalize((max(0.0, start), min(end, duration)) for start, end in ranges)


def completion_threshold(course: CourseCatalogEntry, lesson: CatalogLesson) -> float | None:
    """The coverage a lesson needs to complete: the lesson's own threshold, else the
    course's; None (manual completion) for lessons other than videos with a duration."""
    if lesson.kind != "video" or not lesson.duration_seconds:
        return None
    if lesson.video_completion_threshold is not None:
        return lesson.video_completion_threshold
    return course.video_completion_threshold


def watched_ratio(watched_seconds: float, duration: float | None) -> float | None:
    """Coverage of the duration, at most 1; None without a duration."""
    if not duration or duration <= 0:
        return None
    return min(1.0, watched_seconds / duration)


def watched_enough(course: CourseCatalogEntry, lesson: CatalogLesson, watched_seconds: float) -> bool:
    """Whether the lesson may complete: no threshold rule, or coverage at the threshold."""
    threshold = completion_threshold(course, lesson)
    if threshold is None:
        return True
    ratio = watched_ratio(watched_seconds, lesson.duration_seconds)
    return ratio is not None and ratio >= threshold


# ---------------------------------------------------------------- credited wall-clock time
#
# Time spent is the length of a union of wall-clock intervals (epoch seconds on the
# servers' clocks): the moments some replica saw the learner watching. Each replica
# credits, per pair of its own heartbeats, the interval that ends at the later one and is
# as long as ``time_increment``; the database keeps, per record, the union of the recent
# intervals and adds only what a flush brings that is not in it yet. Two replicas that
# saw the same seconds therefore credit them once. Intervals older than a horizon fold
# into a watermark (``credited_until``) before which nothing is credited any more.
# The SQL function ``progress_credit`` (migration 006) is the same algorithm as ``credit``.

Interval = tuple[float, float]
Intervals = tuple[Interval, ...]

CREDIT_HORIZON_S = 300.0  # stored intervals ending this long before the latest one fold into the watermark
CREDIT_MAX_INTERVALS = 16  # at most this many stored (and pending) intervals per record


def credited_interval(added: float, now: float) -> Interval:
    """Where ``added`` seconds of watching credited at ``now`` lie: just before it (the
    playback that moved the position happened before the heartbeat that reports it)."""
    return (now - added, now)


def normalize(intervals: Iterable[Interval]) -> Intervals:
    """Sorted, disjoint, non-empty: overlapping and touching intervals merged."""
    merged: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return tuple(merged)


def union(a: Intervals, b: Intervals) -> Intervals:
    return normalize((*a, *b))


def length(intervals: Intervals) -> float:
    return sum(end - start for start, end in intervals)


def clip(intervals: Intervals, since: float | None) -> Intervals:
    """The parts at or after ``since`` (all of them when None)."""
    if since is None:
        return intervals
    return tuple((max(start, since), end) for start, end in intervals if end > since)


def difference(a: Intervals, b: Intervals) -> Intervals:
    """The parts of ``a`` (normalized) outside ``b`` (normalized)."""
    out: list[Interval] = []
    j = 0
    for start, end in a:
        while j < len(b) and b[j][1] <= start:
            j += 1
        k = j
        cursor = start
        while k < len(b) and b[k][0] < end:
            if b[k][0] > cursor:
                out.append((cursor, b[k][0]))
            cursor = max(cursor, b[k][1])
            k += 1
        if cursor < end:
            out.append((cursor, end))
    return tuple(out)


def add_pending(pending: Intervals, interval: Interval, max_count: int = CREDIT_MAX_INTERVALS) -> Intervals:
    """One replica's intervals since its last flush, with one more. Beyond ``max_count``
    (only when flushes keep failing while a learner pauses and plays) the shortest are
    dropped: time spent may then miss a few seconds, it never gains any."""
    return keep_longest(union(pending, (interval,)), max_count)


@dataclass(frozen=True, slots=True)
class Credit:
    added: float  # seconds of time spent the fresh intervals add
    intervals: Intervals  # the stored intervals afterwards
    until: float | None  # the watermark afterwards


def credit(
    stored: Intervals,
    until: float | None,
    fresh: Intervals,
    horizon: float = CREDIT_HORIZON_S,
    max_count: int = CREDIT_MAX_INTERVALS,
) -> Credit:
    """Merge ``fresh`` intervals into a record's ``stored`` ones (normalized, none before
    ``until``): what they add is their part after the watermark not covered yet. Then the
    union is trimmed: the watermark rises to ``horizon`` before the latest end, and further
    while more than ``max_count`` intervals remain; intervals before it are dropped."""
    merged = union(stored, clip(normalize(fresh), until))
    added = max(0.0, length(merged) - length(stored))
    if not merged:
        return Credit(added, merged, until)
    watermark = merged[-1][1] - horizon
    if until is not None:
        watermark = max(watermark, until)
    kept = [i for i in merged if i[1] > watermark]
    if len(kept) > max_count:
        watermark = max(watermark, kept[len(kept) - max_count - 1][1])
        kept = kept[len(kept) - max_count:]
    return Credit(added, clip(tuple(kept), watermark), watermark)


def uncovered(stored: Intervals, until: float | None, fresh: Intervals) -> float:
    """``credit(stored, until, fresh).added`` for normalized ``fresh``, without building the
    union: what a heartbeat answer adds to the stored time spent (a linear sweep)."""
    return length(difference(clip(fresh, until), stored))


def flat(intervals: Intervals) -> list[float]:
    """As stored: [start, end, start, end, ...]."""
    return [bound for interval in intervals for bound in interval]


def pairs(values: Sequence[float] | None) -> Intervals:
    if not values:
        return ()
    return tuple((values[i], values[i + 1]) for i in range(0, len(values) - 1, 2))


def valid_position(value: float) -> bool:
    return math.isfinite(value) and 0 <= value <= MAX_POSITION_SECONDS


def percentage(completed_required: int, total_required: int) -> int:
    """Seed formula over required lessons only; floored, so 100 means every one is done."""
    if total_required <= 0:
        return 0
    return min(100, (completed_required * 100) // total_required)


def time_spent_words(seconds: float) -> str:
    """ "3 hours 25 minutes", "1 hour", "12 minutes", "40 seconds"."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)

    def unit(n: int, word: str) -> str:
        return f"{n} {word}" if n == 1 else f"{n} {word}s"

    if hours:
        return unit(hours, "hour") + (" " + unit(minutes, "minute") if minutes else "")
    if minutes:
        return unit(minutes, "minute")
    return unit(secs, "second") if secs else "0 minutes"


def ordered(lessons: Iterable[CatalogLesson]) -> list[CatalogLesson]:
    return sorted(lessons, key=lambda lesson: (lesson.order, lesson.id))


@dataclass(frozen=True)
class CourseStanding:
    """Where a learner stands in a course, from the catalog and their completed lessons."""

    progress_percentage: int
    completed_required: int
    total_required: int
    next_lesson: CatalogLesson | None
    missing_required: list[CatalogLesson] = field(default_factory=list)
    locked: list[CatalogLesson] = field(default_factory=list)

    @property
    def all_required_done(self) -> bool:
        return self.total_required > 0 and self.completed_required == self.total_required


def standing(course: CourseCatalogEntry, completed_ids: set[int]) -> CourseStanding:
    lessons = ordered(course.lessons)
    required = [lesson for lesson in lessons if lesson.is_required]
    done = sum(1 for lesson in required if lesson.id in completed_ids)
    missing = [lesson for lesson in required if lesson.id not in completed_ids]
    next_lesson = next((lesson for lesson in lessons if lesson.id not in completed_ids), None)
    locked: list[CatalogLesson] = []
    if course.requires_sequential_progress and missing:
        blocker = missing[0]
        # Everything ordered after the first missing required lesson waits for it.
        locked = [lesson for lesson in lessons if _after(lesson, blocker) and lesson.id not in completed_ids]
    return CourseStanding(percentage(done, len(required)), done, len(required), next_lesson, missing, locked)


def _after(lesson: CatalogLesson, other: CatalogLesson) -> bool:
    return (lesson.order, lesson.id) > (other.order, other.id)


def required_ids(course: CourseCatalogEntry) -> list[int]:
    """The ids of the lessons that count, sorted: what a change of the course is compared by."""
    return sorted(lesson.id for lesson in course.lessons if lesson.is_required)


def newly_required(course: CourseCatalogEntry, required_then: Sequence[int] | None) -> list[CatalogLesson]:
    """Lessons required now that were not when the learner completed the course (in order);
    none when what counted then is unknown (a completion recorded before it was kept)."""
    if required_then is None:
        return []
    then = set(required_then)
    return [lesson for lesson in ordered(course.lessons) if lesson.is_required and lesson.id not in then]


def lock_blocker(course: CourseCatalogEntry, lesson_id: int, completed_ids: set[int]) -> CatalogLesson | None:
    """For a sequential course: the lesson the learner must finish before ``lesson_id``, if any."""
    if not course.requires_sequential_progress:
        return None
    lessons = ordered(course.lessons)
    target = next((lesson for lesson in lessons if lesson.id == lesson_id), None)
    if target is None:
        return None
    for lesson in lessons:
        if not _after(target, lesson):
            return None
        if lesson.is_required and lesson.id not in completed_ids:
            return lesson
    return None


def find_lesson(course: CourseCatalogEntry, lesson_id: int) -> CatalogLesson | None:
    return next((lesson for lesson in course.lessons if lesson.id == lesson_id), None)


def lesson_ref(lesson: CatalogLesson | None, *, with_order: bool = True) -> dict[str, object] | None:
    if lesson is None:
        return None
    ref: dict[str, object] = {"id": lesson.id, "title": lesson.title}
    if with_order:
        ref["order"] = lesson.order
    return ref


def lesson_refs(lessons: Sequence[CatalogLesson]) -> list[dict[str, object]]:
    return [{"id": lesson.id, "title": lesson.title, "order": lesson.order} for lesson in lessons]


# ---------------------------------------------------------------- refusals


class CourseNotFound(DomainError):
    def __init__(self, course_id: int) -> None:
        super().__init__("Course not found", course_id=course_id)


class CourseNotPublished(DomainError):
    def __init__(self, course_id: int) -> None:
        super().__init__("This course is not published", course_id=course_id)


class LessonNotFound(DomainError):
    def __init__(self, lesson_id: int) -> None:
        super().__init__("Lesson not found in this course", lesson_id=lesson_id)


class LessonNotInCourse(DomainError):
    """A heartbeat names a lesson the course does not have: a bad field of the request."""

    def __init__(self, lesson_id: int, course_id: int) -> None:
        reason = f"lesson {lesson_id} is not in course {course_id}"
        super().__init__(reason, params={"lesson_id": reason})


class NotEnrolled(DomainError):
    def __init__(self, own: bool = True) -> None:
        super().__init__(
            "You must be enrolled in this course" if own else "This learner is not enrolled in this course"
        )


class LessonLocked(DomainError):
    """A sequential course: ``blocker`` is the required lesson to complete first."""

    def __init__(self, blocker: CatalogLesson) -> None:
        super().__init__(
            f'Complete "{blocker.title}" first: this course requires lessons in order',
            next_lesson=lesson_ref(blocker),
        )


class LessonNotWatched(DomainError):
    """A completion asked for below the lesson's coverage threshold; ``watched_ratio``: now."""

    def __init__(self, watched_ratio: float | None, threshold: float) -> None:
        super().__init__(
            f"Watch at least {threshold:.0%} of this video to complete it",
            watched_ratio=round(watched_ratio, 4) if watched_ratio is not None else None,
            video_completion_threshold=threshold,
        )


class NotAllowed(DomainError):
    """Someone else's data, without being an admin or the course's instructor."""


class CompletionNotFound(DomainError):
    default_message = "Progress published no course completion with this id"


class VideoSessionNotFound(DomainError):
    default_message = "Progress published no video session with this id"


# ---------------------------------------------------------------- who may see what


class Viewer(Protocol):
    """Who asks: the authenticated user (``shared.auth.User``)."""

    @property
    def id(self) -> str: ...

    @property
    def is_admin(self) -> bool: ...

    @property
    def is_instructor(self) -> bool: ...


def teaches(viewer: Viewer, course: CourseCatalogEntry) -> bool:
    return viewer.is_instructor and viewer.id in course.instructor_ids


def check_may_view(viewer: Viewer, course: CourseCatalogEntry, user_id: str) -> None:
    """One's own progress; anyone's for admins and the course's instructors."""
    if not (viewer.id == user_id or viewer.is_admin or teaches(viewer, course)):
        raise NotAllowed("You may only see your own progress")


def check_sees_learners(viewer: Viewer) -> None:
    """Other learners' records: administrators and instructors (of their courses) only."""
    if not (viewer.is_admin or viewer.is_instructor):
        raise NotAllowed("Administrators and the course's instructors only")


def check_teaches(viewer: Viewer, course: CourseCatalogEntry) -> None:
    """A course's learners: administrators, and the instructors of that course."""
    if not viewer.is_admin and viewer.id not in course.instructor_ids:
        raise NotAllowed("You do not teach this course")


# ---------------------------------------------------------------- attempts

def begins_attempt(held: int | None, stored: int) -> bool:
    """Whether storing an enrollment at attempt ``stored`` over the replica's ``held`` one
    (None: no row yet) begins a later attempt, whose learner starts again at 0 %."""
    return stored > (held if held is not None else 1)


# ---------------------------------------------------------------- what the API shows


def progress_record(
    id: int,
    user_id: str,
    course_id: int,
    lesson_id: int,
    completed: bool,
    completed_at: datetime | None,
    video_progress: float,
    last_position: float,
    time_spent_seconds: float,
    created_at: datetime,
    updated_at: datetime,
    watched_seconds: float = 0.0,
    duration: float | None = None,
) -> dict[str, Any]:
    """One learner-lesson record as the API shows it (the heartbeat answer among others):
    one plain dict, serialised as it is. ``duration``: the lesson's, for the watched ratio."""
    ratio = watched_ratio(watched_seconds, duration)
    return {
        "id": id,
        "user_id": user_id,
        "course_id": course_id,
        "lesson_id": lesson_id,
        "completed": completed,
        "completed_at": completed_at,
        "video_progress": video_progress,
        "last_position": last_position,
        "time_spent_seconds": round(time_spent_seconds),
        "state": progress_state(True, completed, video_progress, last_position),
        "watched_seconds": round(watched_seconds, 2),
        "watched_ratio": round(ratio, 4) if ratio is not None else None,
        "created_at": created_at,
        "updated_at": updated_at,
    }


# ---------------------------------------------------------------- viewing sessions

@dataclass(frozen=True, slots=True)
class EndedSession:
    """A viewing session that ended (store.claim_ended_sessions), with what its event
    needs besides: the record's watched seconds (None: the record left with its attempt),
    the video's length from the catalog (None: unknown), and whether the lesson was
    completed in the session."""

    session_id: UUID
    user_id: str
    course_id: int
    lesson_id: int
    attempt: int
    started_at: datetime
    last_seen_at: datetime
    start_position: float
    end_position: float
    played: Intervals
    watched_seconds: float | None
    video_length: float | None
    completed: bool


def video_session_ended(session: EndedSession) -> VideoSessionEnded:
    """The session's event: it ended with its last heartbeat. ``progress`` is the share of
    the video watched over all sessions (the record's watched ranges; this session's own
    when the record is gone), 0 while the length is unknown."""
    watched = session.watched_seconds if session.watched_seconds is not None else length(session.played)
    share = min(watched / session.video_length, 1.0) if session.video_length else 0.0
    return VideoSessionEnded(
        user_id=session.user_id, course_id=session.course_id, lesson_id=session.lesson_id, attempt=session.attempt,
        session_id=session.session_id, started_at=session.started_at, ended_at=session.last_seen_at,
        start_position=session.start_position, end_position=session.end_position,
        played_segments=list(session.played), video_length=session.video_length, progress=round(share, 4),
        completed=session.completed,
    )
