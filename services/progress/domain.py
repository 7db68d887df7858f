"""Progress rules, free of I/O: states, heartbeat merging, time spent, percentages, locking."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from shared.events import CatalogLesson, CourseCatalogEntry

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


def time_increment(prev_position: float, prev_seen_at: float | None, position: float, seen_at: float) -> float:
    """Seconds to add between two accepted heartbeats.

    Playback actually covered (forward movement of the position), never more than the
    wall-clock time that passed: a tab left open, or a jump forward, adds nothing extra.
    """
    if prev_seen_at is None:
        return 0.0
    covered = position - prev_position
    wall = seen_at - prev_seen_at
    if covered <= 0 or wall <= 0:
        return 0.0
    return min(covered, wall)


@dataclass(slots=True)
class Playback:
    """The position part of one learner-lesson record, as the heartbeat merge sees it."""

    video_progress: float = 0.0
    last_position: float = 0.0
    position_at: float | None = None  # client timestamp (epoch s) behind the position, if any
    seen_at: float | None = None  # server time (epoch s) of the last accepted heartbeat
    time_spent: float = 0.0


def merge_heartbeat(
    state: Playback,
    video_progress: float | None,
    last_position: float | None,
    client_at: float | None,
    now: float,
) -> float:
    """Apply one heartbeat to ``state`` in place; returns the seconds of time spent it added.

    A heartbeat stamped earlier than the position we hold arrived late: it changes
    nothing. Without a client timestamp, arrival order decides (a learner may seek back).
    """
    if client_at is not None and state.position_at is not None and client_at < state.position_at:
        return 0.0
    if video_progress is None and last_position is None:
        return 0.0
    new_video = state.video_progress if video_progress is None else video_progress
    new_last = state.last_position if last_position is None else last_position
    # Time spent follows the playback position (video_progress when sent, else last_position).
    before = state.video_progress if video_progress is not None else state.last_position
    after = new_video if video_progress is not None else new_last
    added = time_increment(before, state.seen_at, after, now)
    state.video_progress = new_video
    state.last_position = new_last
    if client_at is not None:
        state.position_at = client_at if state.position_at is None else max(state.position_at, client_at)
    state.seen_at = now
    state.time_spent += added
    return added


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
