"""Bad input to the progress service is a 4xx and leaves nothing behind: the bare ASGI
heartbeat route (not in the OpenAPI document, so not fuzzed) and analytics date bounds."""

from __future__ import annotations

import time
from typing import Any

import jwt

from tests.progress.conftest import Stack, course, enrollment


async def setup_course(stack: Stack, user: str = "u1") -> None:
    await stack.catalog(course(42, [(101, True), (102, True)]))
    await stack.enroll(enrollment(user, 42))


def signed(stack: Stack, **claims: Any) -> dict[str, str]:
    now = int(time.time())
    payload = {"iss": stack.settings.jwt_issuer, "aud": stack.settings.jwt_audience, "iat": now, "exp": now + 600}
    payload.update(claims)
    return {"Authorization": "Bearer " + jwt.encode(payload, stack.settings.jwt_secret, algorithm="HS256")}


async def nothing_written(stack: Stack) -> None:
    assert not stack.buffer.entries, stack.buffer.entries
    assert await stack.runtime.pool.fetchval("SELECT count(*) FROM lesson_progress") == 0


async def test_heartbeat_with_bad_token_claims_is_401_and_buffers_nothing(stack: Stack) -> None:
    await setup_course(stack)
    body = {"course_id": 42, "lesson_id": 101, "video_progress": 5}
    bad_claims: list[dict[str, Any]] = [
        {"sub": "u\x001"},
        {"sub": "u1", "name": "Ada\x00"},
        {"sub": "u1", "email": "ada@example.com\x00"},
        {"sub": "u1", "preferred_username": "\x00"},
        {"sub": "u1", "name": 42},
        {"sub": "u1", "roles": 7},
        {"sub": "u1", "roles": ["learner", 1]},
        {"sub": "u1", "roles": {"admin": True}},
        {"sub": "x" * 256},
        {"sub": "u\ud8001"},
    ]
    for claims in bad_claims:
        response = await stack.client.post("/api/progress", headers=signed(stack, **claims), json=body)
        assert response.status_code == 401, (claims, response.text)
        assert response.json()["code"] == "unauthorized" and response.json()["data"]["status"] == 401
        assert (await stack.client.get("/api/progress", headers=signed(stack, **claims))).status_code == 401
    await nothing_written(stack)
    # Roles as one string, and unknown role names, are still accepted.
    ok = await stack.client.get("/api/progress", headers=signed(stack, sub="u1", roles="learner"))
    assert ok.status_code == 200, ok.text


async def test_heartbeat_bad_body_is_400_and_buffers_nothing(stack: Stack) -> None:
    await setup_course(stack)
    me = stack.token("u1")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"course_id": 2**64, "lesson_id": 101}, "course_id"),
        ({"course_id": 42, "lesson_id": 99999999999999999999}, "lesson_id"),
        ({"course_id": 42, "lesson_id": 101, "last_position": 5, "client_timestamp": "9999-12-31T23:59:59-23:59"},
         "client_timestamp"),
        ({"course_id": 42, "lesson_id": 101, "last_position": 5, "client_timestamp": "0001-01-01T00:00:00+23:59"},
         "client_timestamp"),
        ({"course_id": 42, "lesson_id": 101, "client_timestamp": "2025-01-01T00:00:00\u0000"}, "client_timestamp"),
        ({"course_id": "4\u00002", "lesson_id": 101}, "course_id"),
    ]
    for body, field in cases:
        response = await stack.client.post("/api/progress", headers=me, json=body)
        assert response.status_code == 400, (body, response.text)
        assert field in response.json()["data"]["params"], (body, response.json())
    raw = await stack.client.post("/api/progress", headers={**me, "content-type": "application/json"},
                                  content=b'{"course_id": 42, "lesson_id": 101, "video_\x00progress": 1}\x00')
    assert raw.status_code == 400 and raw.json()["code"] == "invalid_request"
    nul_query = await stack.client.post("/api/progress?x=%00", headers=me, json={"course_id": 42, "lesson_id": 101})
    assert nul_query.status_code == 400 and nul_query.json()["code"] == "invalid_request"
    await nothing_written(stack)


async def test_nul_in_path_and_query_is_400(stack: Stack) -> None:
    await setup_course(stack)
    admin = stack.token("admin-1", "admin")
    for url in ("/api/admin/learners/u%001/progress", "/api/courses/42/progress?user_id=u%001",
                "/api/progress?courseId=%00", "/internal/courses/42/learners/u%001/completion"):
        response = await stack.client.get(url, headers=admin)
        assert response.status_code == 400, (url, response.text)
        assert response.json() == {
            "code": "invalid_request", "message": "NUL characters are not allowed in the path or query string",
            "data": {"status": 400},
        }


async def test_analytics_dates_at_the_ends_of_the_calendar(stack: Stack) -> None:
    """``to=9999-12-31`` has no day after it: it means "no upper bound" (it used to overflow)."""
    await setup_course(stack)
    admin = stack.token("admin-1", "admin")
    beat = await stack.client.post("/api/progress", headers=stack.token("u1"),
                                   json={"course_id": 42, "lesson_id": 101, "video_progress": 30})
    assert beat.status_code == 200
    await stack.buffer.flush()  # reports read what is stored: both below see the same
    everything = await stack.client.get("/api/admin/courses/42/analytics", headers=admin)
    assert everything.status_code == 200
    for query in ("from=0001-01-01&to=9999-12-31", "to=9999-12-31", "from=0001-01-01", "from=9999-12-31",
                  "to=0001-01-01"):
        response = await stack.client.get(f"/api/admin/courses/42/analytics?{query}", headers=admin)
        assert response.status_code == 200, (query, response.text)
    whole = await stack.client.get("/api/admin/courses/42/analytics?from=0001-01-01&to=9999-12-31", headers=admin)
    for part in ("completion", "lesson_difficulty", "engagement"):
        assert whole.json()["data"][part] == everything.json()["data"][part]
    for query in ("from=10000-01-01", "to=0000-12-31", "from=2025-13-01", "to=9999-12-31%00"):
        response = await stack.client.get(f"/api/admin/courses/42/analytics?{query}", headers=admin)
        assert response.status_code == 400, (query, response.text)
