"""The enrollment's refusals as HTTP answers: every one is mapped, each to the status,
code, message and data the service has always answered."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.enrollment import api, domain
from shared.domain import DomainError
from shared.errors import install_error_handlers

REFUSALS = [
    cls for _, cls in inspect.getmembers(domain, inspect.isclass)
    if issubclass(cls, DomainError) and cls is not DomainError and cls.__module__ == domain.__name__
]


def test_every_refusal_of_the_domain_is_answered() -> None:
    assert REFUSALS, "the domain states its refusals"
    missing = [cls.__name__ for cls in REFUSALS if cls not in api.ERRORS]
    assert not missing, f"not in api.ERRORS: {missing}"


CASES: list[tuple[DomainError, dict[str, Any]]] = [
    (domain.CourseNotFound(), {"code": "course_not_found", "message": "Course not found", "data": {"status": 404}}),
    (domain.LessonNotFound(), {
        "code": "lesson_not_found", "message": "Lesson not found in this course", "data": {"status": 404},
    }),
    (domain.NotCourseManager(), {
        "code": "forbidden", "message": "Only this course's instructors and administrators may do this",
        "data": {"status": 403},
    }),
    (domain.InstructorsByAdminsOnly(), {
        "code": "forbidden", "message": "Only administrators may change a course's instructors",
        "data": {"status": 403},
    }),
    (domain.NoReturnToDraft("archived"), {
        "code": "invalid_status", "message": "A archived course cannot go back to draft",
        "data": {"status": 400, "status_from": "archived"},
    }),
    (domain.CourseHasNoLessons(), {
        "code": "course_has_no_lessons", "message": "A course needs at least one lesson to be published",
        "data": {"status": 400},
    }),
    (domain.LastLessonOfPublishedCourse(), {
        "code": "course_needs_a_lesson",
        "message": "A published course needs a lesson: this is its last one (add another, or archive the course)",
        "data": {"status": 400},
    }),
    (domain.InvalidLessonOrder("lesson_ids lists a lesson twice", params={"lesson_ids": "duplicate"}), {
        "code": "invalid_request", "message": "lesson_ids lists a lesson twice",
        "data": {"status": 400, "params": {"lesson_ids": "duplicate"}},
    }),
    (domain.SlugTaken("intro"), {
        "code": "slug_taken", "message": "Another course already uses this slug",
        "data": {"status": 409, "params": {"slug": "intro"}},
    }),
    (domain.AlreadyEnrolled(), {
        "code": "already_enrolled", "message": "You are already enrolled in this course", "data": {"status": 400},
    }),
    (domain.NotEnrolled(), {
        "code": "not_enrolled", "message": "You must be enrolled in this course", "data": {"status": 403},
    }),
    (domain.NoCurrentEnrollment(), {
        "code": "not_enrolled", "message": "No current enrollment of this learner in this course",
        "data": {"status": 404},
    }),
    (domain.ErasureNotFound(), {
        "code": "erasure_not_found", "message": "No erasure was requested for this learner",
        "data": {"status": 404},
    }),
    (domain.RecertificationNotFound(), {
        "code": "recertification_not_found", "message": "No such recertification notice",
        "data": {"status": 404},
    }),
    (domain.EnrollmentEventNotFound(), {
        "code": "enrollment_event_not_found", "message": "No such enrollment event", "data": {"status": 404},
    }),
    (domain.AppPasswordNotFound(), {
        "code": "app_password_not_found", "message": "No such application password", "data": {"status": 404},
    }),
    (domain.InvalidAppPasswordUser(), {
        "code": "invalid_request", "message": "A user id with a colon cannot sign in with HTTP Basic",
        "data": {"status": 400, "params": {"user_id": "contains ':'"}},
    }),
    (domain.InvalidCredentials(), {
        "code": "unauthorized", "message": "Invalid username or application password", "data": {"status": 401},
    }),
    (domain.TooManyAttempts(42), {
        "code": "too_many_attempts", "message": "Too many failed sign-in attempts; try again in 42 seconds",
        "data": {"status": 429, "retry_after": 42},
    }),
    (domain.BasicOverPlainHttp(), {
        "code": "https_required", "message": "HTTP Basic credentials are accepted over HTTPS only",
        "data": {"status": 403},
    }),
    (domain.DevTokensDisabled(), {
        "code": "dev_tokens_disabled",
        "message": "Development tokens are not issued here: sign in through the platform's identity provider",
        "data": {"status": 403},
    }),
]


def test_every_refusal_has_a_case() -> None:
    assert {type(refusal) for refusal, _ in CASES} == set(REFUSALS)


@pytest.mark.parametrize(("refusal", "body"), CASES, ids=[type(refusal).__name__ for refusal, _ in CASES])
async def test_a_refusal_is_answered_as_before(refusal: DomainError, body: dict[str, Any]) -> None:
    app = FastAPI()
    install_error_handlers(app, api.ERRORS)

    @app.get("/refuse")
    async def refuse() -> None:
        raise refusal

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/refuse")
    assert response.status_code == body["data"]["status"]
    assert response.json() == body


def test_the_domain_knows_no_http_and_does_no_io() -> None:
    tree = ast.parse(Path(domain.__file__).read_text())
    imported = {
        name
        for node in ast.walk(tree)
        for name in (
            [alias.name for alias in node.names] if isinstance(node, ast.Import)
            else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        )
    }
    forbidden = ("fastapi", "starlette", "asyncpg", "httpx", "shared.errors", "shared.auth", "shared.db")
    assert not {name for name in imported if name.startswith(forbidden)}
