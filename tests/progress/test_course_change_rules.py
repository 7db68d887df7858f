"""What a change of a course is compared by, and what a completed learner is shown as new."""

from __future__ import annotations

from services.progress import domain
from tests.progress.conftest import course


def test_required_ids_are_the_required_lessons_sorted() -> None:
    assert domain.required_ids(course(1, [(30, True), (10, False), (20, True)])) == [20, 30]
    assert domain.required_ids(course(1, [(10, False)])) == []


def test_newly_required_lists_what_became_required_since_the_completion_in_course_order() -> None:
    now = course(1, [(3, True), (1, True), (2, True), (4, False)])
    assert [lesson.id for lesson in domain.newly_required(now, [1])] == [3, 2]
    assert domain.newly_required(now, [1, 2, 3]) == []
    assert domain.newly_required(now, [1, 2, 3, 9]) == [], "a lesson archived since is not new"
    assert domain.newly_required(now, None) == [], "unknown for completions recorded before it was kept"
