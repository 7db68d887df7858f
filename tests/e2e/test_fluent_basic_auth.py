"""A Fluent Community client, unchanged: every ``curl -u`` example of the course-progress
seed document, run verbatim with the real ``curl`` through the gateway, with only the host
replaced by the gateway's and ``username:password`` by an application password, gives the
document's response (status, JSON shape, and the values the document's world determines).

The world is the document's: course 10, "Introduction to Web Development", lessons 101 to
112 (102 "Next Lesson", 106 "JavaScript Basics" at order 6), learner 1 John Doe, built
through the admin API. The document's figures are not all of one world (5 of 12 lessons
is not 45 %, and lesson 101 alone is not 50 % of the course whose lesson 106 is 6th), so
percentages and totals are checked against this world, not copied.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from lessonstream import infra
from shared.auth import issue_token
from shared.db import with_database
from shared.settings import ServiceSettings
from tests.devstack import DevStack

pytestmark = pytest.mark.xdist_group("e2e")

SETTINGS = ServiceSettings()  # the dev stack runs on the development secrets
SEED_HOST = "https://your-site.com"
COURSE_ID, FIRST_LESSON_ID = 10, 101

# The seed's examples, verbatim (course-progress-api.txt), and the responses it shows.
ENROLL = '''curl "https://your-site.com/wp-json/fluent-community/v2/courses/10/enroll" \\
  -X POST \\
  -u "username:password"'''
ENROLL_RESPONSE = {"message": "Successfully enrolled in course", "data": {
    "enrollment_id": 456, "course_id": 10, "user_id": 1, "enrolled_at": "2025-10-27T12:00:00"}}
UNENROLL = '''curl "https://your-site.com/wp-json/fluent-community/v2/courses/10/unenroll" \\
  -X POST \\
  -u "username:password"'''
UNENROLL_RESPONSE = {"message": "Successfully unenrolled from course"}
PROGRESS = '''curl "https://your-site.com/wp-json/fluent-community/v2/courses/10/progress" \\
  -u "username:password"'''
PROGRESS_RESPONSE = {"data": {
    "course_id": 10, "user_id": 1, "progress_percentage": 45, "completed_lessons": 5, "total_lessons": 12,
    "time_spent": "3 hours 25 minutes", "last_accessed": "2025-10-27T11:30:00", "started_at": "2025-10-15T10:00:00",
    "completed_at": None, "next_lesson": {"id": 106, "title": "JavaScript Basics", "order": 6}}}
COMPLETE = '''curl "https://your-site.com/wp-json/fluent-community/v2/courses/10/lessons/101/complete" \\
  -X POST \\
  -u "username:password"'''
COMPLETE_RESPONSE = {"message": "Lesson marked as complete", "data": {
    "lesson_id": 101, "completed_at": "2025-10-27T12:00:00", "progress_percentage": 50,
    "next_lesson": {"id": 102, "title": "Next Lesson"}}}
INCOMPLETE = '''curl "https://your-site.com/wp-json/fluent-community/v2/courses/10/lessons/101/incomplete" \\
  -X POST \\
  -u "username:password"'''
STUDENTS = '''curl "https://your-site.com/wp-json/fluent-community/v2/courses/10/students?per_page=20" \\
  -u "username:password"'''
STUDENTS_RESPONSE = {"data": [{
    "user_id": 1, "username": "john_doe", "display_name": "John Doe", "avatar": "https://example.com/avatar.jpg",
    "progress_percentage": 45, "enrolled_at": "2025-10-15T10:00:00", "last_accessed": "2025-10-27T11:30:00"}],
    "meta": {"total": 145, "per_page": 20, "current_page": 1}}
CERTIFICATE = '''curl "https://your-site.com/wp-json/fluent-community/v2/courses/10/certificate" \\
  -u "username:password"'''
CERTIFICATE_RESPONSE = {"data": {
    "certificate_url": "https://example.com/certificates/abc123.pdf", "certificate_id": "CERT-2025-001",
    "issued_at": "2025-10-27T12:00:00", "course_title": "Introduction to Web Development",
    "student_name": "John Doe"}}
# The document's error examples, answered exactly.
NOT_ENROLLED = {"code": "not_enrolled", "message": "You must be enrolled in this course", "data": {"status": 403}}
ALREADY_ENROLLED = {"code": "already_enrolled", "message": "You are already enrolled in this course",
                    "data": {"status": 400}}

LESSON_TITLES = {101: "Welcome", 102: "Next Lesson", 103: "HTML Basics", 104: "Styling with CSS", 105: "Layouts",
                 106: "JavaScript Basics", 107: "The DOM", 108: "Events", 109: "Fetching data", 110: "Forms",
                 111: "Accessibility", 112: "Final project"}


@dataclass
class Answer:
    status: int
    body: Any


@dataclass
class World:
    stack: DevStack
    curl_home: Path
    learner: str  # "1:<application password>"
    instructor: str

    def curl(self, example: str, credentials: str) -> Answer:
        """The example as the document prints it, with the gateway for the host and these
        credentials for ``username:password``; run by bash (its line continuations) and the
        real curl. Only curl's own configuration (``$CURL_HOME/.curlrc``: quiet, and the
        status after the body) is added, so that the command itself stays verbatim."""
        command = example.replace(SEED_HOST, self.stack.gateway).replace("username:password", credentials)
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "CURL_HOME": str(self.curl_home)})
        assert done.returncode == 0, done.stderr
        body, _, status = done.stdout.rpartition("\n")
        return Answer(int(status), json.loads(body) if body else None)

    def until(
        self, example: str, credentials: str, done: Callable[[Answer], bool], what: str, timeout: float = 60
    ) -> Answer:
        """The example run again until ``done`` (replicas catch up; certificates render)."""
        last: list[Answer] = []

        def probe() -> Answer | None:
            last[:] = [self.curl(example, credentials)]
            return last[0] if done(last[0]) else None

        try:
            return infra.wait_until(probe, timeout, interval=0.3, what=what)
        except Exception as exc:
            raise AssertionError(f"{what}; last answer: {last}") from exc


def assert_shape(seed: Any, ours: Any, path: str = "") -> None:
    """Every field the document shows is there with a value of the same JSON kind (we may
    add fields). Ids of users are strings here (a token's ``sub``); null matches anything."""
    if seed is None:
        return
    if isinstance(seed, dict):
        assert isinstance(ours, dict), f"{path}: {ours!r}"
        for key, value in seed.items():
            assert key in ours, f"{path}.{key} missing from {ours!r}"
            assert_shape(value, ours[key], f"{path}.{key}")
    elif isinstance(seed, list):
        assert isinstance(ours, list) and ours, f"{path}: {ours!r}"
        for item in ours:
            assert_shape(seed[0], item, f"{path}[]")
    elif path.endswith("user_id"):
        assert isinstance(ours, str), f"{path}: {ours!r}"
    elif isinstance(seed, bool | int | float):
        assert isinstance(ours, type(seed)) and not isinstance(ours, bool), f"{path}: {ours!r}"
    else:
        assert isinstance(ours, str) or (ours is None and "avatar" in path), f"{path}: {ours!r}"


def subset(expected: dict[str, Any], ours: dict[str, Any]) -> bool:
    return all(ours.get(key) == value for key, value in expected.items())


def bearer(user_id: str, roles: list[str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(SETTINGS, user_id=user_id, roles=roles)}"}


async def _seed_ids(database_url: str) -> None:
    """The next course is 10 and the next lesson 101 (the document's), on a stack where no
    module has made either yet: this module runs first on it (tests/e2e/conftest.py)."""
    conn = await asyncpg.connect(database_url)
    try:
        courses = await conn.fetchval("SELECT coalesce(max(id), 0) FROM courses")
        lessons = await conn.fetchval("SELECT coalesce(max(id), 0) FROM lessons")
        assert courses < COURSE_ID and lessons < FIRST_LESSON_ID, (
            f"another module made courses up to {courses} and lessons up to {lessons} before this one: "
            "it must run first on the shared stack"
        )
        await conn.execute("SELECT setval(pg_get_serial_sequence('courses', 'id'), $1)", COURSE_ID - 1)
        await conn.execute("SELECT setval(pg_get_serial_sequence('lessons', 'id'), $1)", FIRST_LESSON_ID - 1)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def world(e2e_stack: DevStack, postgres_server: infra.Postgres, tmp_path_factory: pytest.TempPathFactory) -> World:
    if shutil.which("curl") is None:
        pytest.fail("the real curl binary is needed")
    asyncio.run(_seed_ids(with_database(postgres_server.url, f"{e2e_stack.db_prefix}enrollment")))
    admin = bearer("admin-1", ["admin"])
    with httpx.Client(base_url=e2e_stack.gateway, headers=admin, timeout=15) as client:
        created = client.post("/api/admin/courses", json={
            "title": "Introduction to Web Development", "certificate_enabled": True, "instructor_ids": ["2"],
        })
        assert created.status_code == 201, created.text
        assert created.json()["data"]["id"] == COURSE_ID
        for lesson_id, title in LESSON_TITLES.items():
            added = client.post(f"/api/admin/courses/{COURSE_ID}/lessons", json={"title": title, "kind": "text"})
            assert added.status_code == 201 and added.json()["data"]["lesson"]["id"] == lesson_id, added.text
        assert client.post(f"/api/admin/courses/{COURSE_ID}/publish").status_code == 200
        passwords = []
        for body in ({"user_id": "1", "name": "John Doe", "email": "john_doe@example.com", "label": "Fluent app"},
                     {"user_id": "2", "name": "Jane Teacher", "email": "jane@example.com", "roles": ["instructor"]}):
            made = client.post("/api/admin/app-passwords", json=body)  # routed to enrollment by the gateway
            assert made.status_code == 201, made.text
            passwords.append(made.json()["data"]["credentials"])
    curl_home = tmp_path_factory.mktemp("curl")
    (curl_home / ".curlrc").write_text('silent\nshow-error\nwrite-out = "\\n%{http_code}"\n')
    return World(e2e_stack, curl_home, passwords[0], passwords[1])


def test_every_curl_example_of_the_seed_gives_its_response(world: World) -> None:
    learner, instructor = world.learner, world.instructor
    basic = httpx.BasicAuth(*learner.split(":", 1))

    enrolled = world.curl(ENROLL, learner)
    assert enrolled.status == 200, enrolled.body
    assert_shape(ENROLL_RESPONSE, enrolled.body)
    assert enrolled.body["message"] == ENROLL_RESPONSE["message"]
    assert subset({"course_id": 10, "user_id": "1"}, enrolled.body["data"])
    again = world.curl(ENROLL, learner)
    assert (again.status, again.body) == (400, ALREADY_ENROLLED)

    # A heartbeat with Basic credentials: its body reaches progress whole (the gateway's
    # check of the credentials sends no body), and the learner's token is stable.
    with httpx.Client(base_url=world.stack.gateway, auth=basic, timeout=15) as client:
        for position in (30, 60):
            beat = client.post("/wp-json/fluent-community/v2/progress", json={
                "course_id": 10, "lesson_id": 101, "completed": False, "video_progress": position,
                "last_position": position,
            })
            assert beat.status_code == 200, beat.text
            assert beat.json()["last_position"] == position

    completed = world.curl(COMPLETE, learner)
    assert completed.status == 200, completed.body
    assert_shape(COMPLETE_RESPONSE, completed.body)
    assert completed.body["message"] == COMPLETE_RESPONSE["message"]
    assert completed.body["data"]["lesson_id"] == 101
    assert completed.body["data"]["progress_percentage"] == 8  # 1 of 12 required lessons
    assert subset({"id": 102, "title": "Next Lesson"}, completed.body["data"]["next_lesson"])

    # Four more lessons (Basic credentials from another client), then the progress example.
    with httpx.Client(base_url=world.stack.gateway, auth=basic, timeout=15) as client:
        for lesson_id in range(102, 106):
            done = client.post(f"/wp-json/fluent-community/v2/courses/10/lessons/{lesson_id}/complete")
            assert done.status_code == 200, done.text
    progress = world.until(PROGRESS, learner, lambda a: a.status == 200 and a.body["data"]["completed_lessons"] == 5,
                           "the progress of 5 lessons")
    assert_shape(PROGRESS_RESPONSE, progress.body)
    assert subset({"course_id": 10, "user_id": "1", "completed_lessons": 5, "total_lessons": 12,
                   "progress_percentage": 41, "completed_at": None}, progress.body["data"])
    assert subset({"id": 106, "title": "JavaScript Basics", "order": 6}, progress.body["data"]["next_lesson"])

    reopened = world.curl(INCOMPLETE, learner)  # the document shows no response
    assert reopened.status == 200, reopened.body
    assert reopened.body["message"] == "Lesson marked as incomplete"
    assert subset({"lesson_id": 101, "completed_at": None, "progress_percentage": 33}, reopened.body["data"])
    assert subset({"id": 101, "title": "Welcome"}, reopened.body["data"]["next_lesson"])

    # Every lesson done: the course is complete, and the certificate example answers.
    with httpx.Client(base_url=world.stack.gateway, auth=basic, timeout=15) as client:
        for lesson_id in [101, *range(106, 113)]:
            done = client.post(f"/wp-json/fluent-community/v2/courses/10/lessons/{lesson_id}/complete")
            assert done.status_code == 200, done.text
        assert done.json()["data"]["progress_percentage"] == 100
    # A render takes seconds, and over a minute on a busy machine: a generous deadline.
    certificate = world.until(CERTIFICATE, learner, lambda a: a.status == 200, "the certificate", timeout=180)
    assert_shape(CERTIFICATE_RESPONSE, certificate.body)
    data = certificate.body["data"]
    assert subset({"course_title": "Introduction to Web Development", "student_name": "John Doe"}, data)
    assert data["certificate_id"].startswith("CERT-") and data["certificate_url"].endswith(".pdf")

    # The course's instructor lists its students with their own application password.
    students = world.until(STUDENTS, instructor, lambda a: a.status == 200 and a.body["data"][0][
        "progress_percentage"] == 100, "the learner's progress in the students list")
    assert_shape(STUDENTS_RESPONSE, students.body)
    assert subset({"user_id": "1", "username": "john_doe", "display_name": "John Doe"}, students.body["data"][0])
    assert subset({"total": 1, "per_page": 20, "current_page": 1}, students.body["meta"])
    forbidden = world.curl(STUDENTS, learner)  # a learner may not
    assert forbidden.status == 403 and forbidden.body["code"] == "forbidden"

    unenrolled = world.curl(UNENROLL, learner)
    assert unenrolled.status == 200, unenrolled.body
    assert_shape(UNENROLL_RESPONSE, unenrolled.body)
    assert unenrolled.body["message"] == UNENROLL_RESPONSE["message"]
    gone = world.until(PROGRESS, learner, lambda a: a.status == 403, "progress to see the unenrollment")
    assert gone.body == NOT_ENROLLED


def test_wrong_or_missing_credentials_are_refused_through_the_gateway(world: World) -> None:
    user, password = world.learner.split(":", 1)
    wrong = f"{user}:{password[::-1]}"
    refused = world.curl(PROGRESS, wrong)
    assert refused.status == 401
    assert refused.body == {"code": "unauthorized", "message": "Invalid username or application password",
                            "data": {"status": 401}}
    with httpx.Client(base_url=world.stack.gateway, timeout=15) as client:
        anonymous = client.get("/wp-json/fluent-community/v2/courses/10/progress")
        assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"
        challenged = client.get("/api/courses/my-courses", auth=("1", password[::-1]))
        assert challenged.headers["www-authenticate"].startswith("Basic")
        # Ten failures lock the user out: 429 in the error shape with Retry-After, the
        # right password too, as the gateway hands on enrollment's answer.
        made = client.post("/api/admin/app-passwords", headers=bearer("admin-1", ["admin"]),
                           json={"user_id": "locked-out"})
        right = made.json()["data"]["password"]
        for _ in range(10):
            assert client.get("/api/courses/my-courses", auth=("locked-out", "A" * 24)).status_code == 401
        locked = client.get("/api/courses/my-courses", auth=("locked-out", right))
        assert locked.status_code == 429
        assert locked.json()["code"] == "too_many_attempts" and locked.json()["data"]["status"] == 429
        assert int(locked.headers["retry-after"]) > 0


def test_a_password_made_by_the_cli_works_with_curl_and_its_revocation_too(
    world: World, postgres_server: infra.Postgres
) -> None:
    database = ["--database-url", postgres_server.url, "--db-prefix", world.stack.db_prefix]
    made = subprocess.run(
        [sys.executable, "-m", "lessonstream.cli", "app-password", "create", "--user", "cli-learner",
         "--name", "Cli Learner", "--email", "cli@example.com", "--role", "learner", "--label", "curl", *database],
        capture_output=True, text=True, timeout=60, cwd=infra.ROOT,
    )
    assert made.returncode == 0, made.stderr
    [line] = made.stdout.splitlines()
    assert line.startswith("cli-learner:")

    def my_courses() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-u", line,
             f"{world.stack.gateway}/wp-json/fluent-community/v2/courses/my-courses"],
            capture_output=True, text=True, timeout=30,
        )

    assert my_courses().stdout == "200"
    said = re.search(r"application password (\d+)", made.stderr)
    assert said is not None, made.stderr
    password_id = said.group(1)
    revoked = subprocess.run([sys.executable, "-m", "lessonstream.cli", "app-password", "revoke", password_id,
                              *database], capture_output=True, text=True, timeout=60, cwd=infra.ROOT)
    assert revoked.returncode == 0, revoked.stderr
    # Within APP_PASSWORD_CACHE_S (2 s on this stack), enrollment stops honouring it.
    infra.wait_until(lambda: my_courses().stdout == "401", 15, interval=0.3, what="the revocation to take effect")
