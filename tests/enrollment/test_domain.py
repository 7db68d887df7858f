"""The enrollment service's pure rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from services.enrollment import domain
from services.enrollment.domain import Enrollment
from shared.auth import User

T0 = datetime(2025, 10, 1, tzinfo=UTC)


def enrollment(**overrides: Any) -> Enrollment:
    values: dict[str, Any] = {
        "id": 1, "user_id": "u1", "course_id": 1, "status": "active", "revision": 1, "enrolled_at": T0,
        "unenrolled_at": None, "username": "u", "display_name": "U", "email": "", "avatar": None,
        "progress_percentage": 0, "completed_lessons": 0, "total_lessons": 4, "progress_at": None,
        "progress_seq": None, "last_accessed": None, "completed_at": None, "certificate_id": None,
        "certificate_url": None, "certificate_issued_at": None, "last_event_id": uuid4(), "last_event_at": T0,
    }
    values.update(overrides)
    return Enrollment(**values)


@pytest.mark.parametrize(
    ("order", "position", "expected"),
    [
        ([1, 2, 3], None, [1, 2, 3, 9]),
        ([1, 2, 3], 1, [9, 1, 2, 3]),
        ([1, 2, 3], 2, [1, 9, 2, 3]),
        ([1, 2, 3], 50, [1, 2, 3, 9]),
        ([], 3, [9]),
    ],
)
def test_a_new_lesson_goes_where_asked(order: list[int], position: int | None, expected: list[int]) -> None:
    assert domain.place_lesson(order, 9, position) == expected


def test_moving_a_lesson_keeps_the_others_in_order() -> None:
    assert domain.place_lesson([1, 2, 3, 4], 4, 1) == [4, 1, 2, 3]
    assert domain.place_lesson([1, 2, 3, 4], 1, 3) == [2, 3, 1, 4]
    assert domain.place_lesson([1, 2, 3, 4], 2, 99) == [1, 3, 4, 2]


def test_reorder_must_be_a_permutation() -> None:
    domain.check_reorder([1, 2, 3], [3, 1, 2])
    for wanted in ([1, 2], [1, 2, 3, 4], [1, 1, 2, 3], [1, 2, 5]):
        with pytest.raises(domain.InvalidLessonOrder) as err:
            domain.check_reorder([1, 2, 3], wanted)
        assert "lesson_ids" in err.value.data["params"]


def test_course_status_transitions() -> None:
    assert domain.check_transition("draft", "published", 1) is True
    assert domain.check_transition("published", "archived", 1) is True
    assert domain.check_transition("archived", "published", 1) is True
    assert domain.check_transition("published", "published", 1) is False
    with pytest.raises(domain.NoReturnToDraft, match="back to draft") as back:
        domain.check_transition("published", "draft", 1)
    assert back.value.data == {"status_from": "published"}
    with pytest.raises(domain.CourseHasNoLessons):
        domain.check_transition("draft", "published", 0)


def test_who_manages_a_course() -> None:
    course = domain.Course(
        id=1, title="t", slug="t", description="", status="draft", requires_sequential_progress=False,
        certificate_enabled=True, instructor_ids=["t1"], revision=1, created_at=T0, updated_at=T0,
        last_event_id=uuid4(), last_event_at=T0,
    )
    assert domain.can_manage(User(id="a", roles=["admin"]), course)
    assert domain.can_manage(User(id="t1", roles=["instructor"]), course)
    assert not domain.can_manage(User(id="t2", roles=["instructor"]), course)
    assert not domain.can_manage(User(id="u1", roles=["learner"]), course)
    domain.ensure_can_manage(User(id="t1", roles=["instructor"]), course)
    with pytest.raises(domain.NotCourseManager):
        domain.ensure_can_manage(User(id="t2", roles=["instructor"]), course)
    domain.ensure_can_set_instructors(User(id="a", roles=["admin"]))
    with pytest.raises(domain.InstructorsByAdminsOnly):
        domain.ensure_can_set_instructors(User(id="t1", roles=["instructor"]))


def test_profile_falls_back_sensibly() -> None:
    full = domain.profile_of(User(id="1", name="Ada Lovelace", email="ada@x.org", username="ada", avatar="a.png"))
    assert full == domain.Profile("ada", "Ada Lovelace", "ada@x.org", "a.png")
    bare = domain.profile_of(User(id="42", email="grace@x.org"))
    assert bare == domain.Profile("grace", "grace", "grace@x.org", None)
    assert domain.profile_of(User(id="42")).display_name == "42"


def test_slugs() -> None:
    assert domain.slugify("Introduction to Web Development!") == "introduction-to-web-development"
    assert domain.slugify("Café & Crème") == "cafe-creme"
    assert domain.slugify("!!!") == "course"


def test_newer_progress_wins_and_ties_break_on_occurred_at() -> None:
    e = enrollment(progress_at=T0, progress_seq=T0 + timedelta(seconds=5))
    assert domain.is_newer_progress(enrollment(), T0, T0)
    assert domain.is_newer_progress(e, T0 + timedelta(seconds=1), T0)
    assert not domain.is_newer_progress(e, T0 - timedelta(seconds=1), T0 + timedelta(days=1))
    assert domain.is_newer_progress(e, T0, T0 + timedelta(seconds=6))
    assert not domain.is_newer_progress(e, T0, T0 + timedelta(seconds=5)), "the same fact again changes nothing"


def test_completion_is_sticky_and_keeps_the_first_time() -> None:
    first = domain.apply_completion(enrollment(), T0, T0)
    assert first.status == "completed" and first.status_changed and first.completed_at == T0 and first.progress_to_full

    done = enrollment(status="completed", completed_at=T0, progress_at=T0 + timedelta(days=1), progress_seq=T0)
    later = domain.apply_completion(done, T0 + timedelta(hours=1), T0 + timedelta(hours=1))
    assert later.completed_at == T0 and not later.status_changed
    assert not later.progress_to_full, "a newer reopened lesson is not overwritten"

    left = domain.apply_completion(enrollment(status="unenrolled"), T0, T0)
    assert left.status == "unenrolled" and not left.status_changed and left.completed_at == T0
    assert domain.resumed_status(enrollment(status="unenrolled", completed_at=T0)) == "completed"
    assert domain.resumed_status(enrollment(status="unenrolled")) == "active"


def test_per_page_is_capped() -> None:
    assert domain.page_size(20) == 20
    assert domain.page_size(100) == 100
    assert domain.page_size(101) == 100


def test_a_reset_needs_a_current_enrollment_and_past_attempts_change_nothing() -> None:
    for refused in (None, enrollment(status="unenrolled")):
        with pytest.raises(domain.NoCurrentEnrollment):
            domain.ensure_resettable(refused)
    assert domain.ensure_resettable(enrollment(status="completed")).status == "completed"
    second = enrollment(attempt=2)
    assert domain.is_past_attempt(second, 1)
    assert not domain.is_past_attempt(second, 2)
    assert domain.enrollment_event(second).attempt == 2


def test_the_reset_comes_when_due_but_never_sooner_than_the_notice_allows() -> None:
    done = T0
    # Noticed on time (16 days after completion, 30-day period, 14 days' notice): reset when due.
    assert domain.reset_time(done, 30, done + timedelta(days=16), 14) == done + timedelta(days=30)
    # Noticed late (the job was down, or the course only now recertifies): 14 days from the notice.
    late = done + timedelta(days=100)
    assert domain.reset_time(done, 30, late, 14) == late + timedelta(days=14)
    due = domain.DueCompletion(
        enrollment_id=5, user_id="u1", course_id=9, attempt=3, completed_at=done, display_name="Ada",
        email="ada@example.com", course_title="Fire safety", recertify_after_days=30,
    )
    notice = domain.recertification_notice(due, late, 14)
    reset_at = late + timedelta(days=14)
    assert (notice.enrollment_id, notice.attempt, notice.reset_at, notice.occurred_at) == (5, 3, reset_at, late)
    assert (notice.user_name, notice.user_email, notice.course_title, notice.key()) == (
        "Ada", "ada@example.com", "Fire safety", "u1:9"
    )
