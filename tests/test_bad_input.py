"""Bad input is a 4xx in the error shape, never a 500: NUL characters in bodies, integers
beyond 64 bits in paths and queries, oversized request headers (in-process, under uvicorn and
through the Caddy gateway)."""

from __future__ import annotations

import asyncio
import os

import httpx

from lessonstream import infra
from services.certificates.app import build_app as build_certificates
from services.certificates.settings import CertificatesSettings
from services.enrollment.app import build_app as build_enrollment
from services.enrollment.settings import EnrollmentSettings
from services.notifications.app import build_app as build_notifications
from services.notifications.settings import NotificationsSettings
from services.progress.app import build_app as build_progress
from services.progress.settings import ProgressSettings
from shared.auth import issue_token
from shared.errors import MAX_HEADER_BYTES
from tests.helpers import TestEnv, app_client, served

TOO_BIG = "99999999999999999999"  # beyond 64 bits


def assert_invalid(response: httpx.Response, field: str | None = None) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_request" and body["data"]["status"] == 400, body
    if field is not None:
        assert field in body["data"]["params"], body


async def test_nul_in_json_body_strings_is_400(test_env: TestEnv) -> None:
    settings = test_env.settings(EnrollmentSettings, database="enrollment")
    app = build_enrollment(settings)
    admin = issue_token(settings, user_id="admin-1", roles=["admin"])
    async with app_client(app, admin) as client:
        for body, field in (
            ({"title": "Intro\u0000"}, "title"),
            ({"title": "Intro", "description": "a\u0000b"}, "description"),
            ({"title": "Intro", "instructor_ids": ["t\u00001"]}, "instructor_ids.0"),
            ({"title": "Intro", "slug": "a\u0000"}, "slug"),
        ):
            assert_invalid(await client.post("/api/admin/courses", json=body), field)
        # A lone surrogate, escaped in the JSON text: valid JSON, but no UTF-8 for it.
        surrogate = await client.post("/api/admin/courses", content=b'{"title": "Intro \\ud800"}',
                                      headers={"Content-Type": "application/json"})
        assert_invalid(surrogate, "title")
        created = await client.post("/api/admin/courses", json={"title": "Intro"})
        assert created.status_code == 201
        course_id = created.json()["data"]["id"]
        assert_invalid(await client.patch(f"/api/admin/courses/{course_id}", json={"title": "\u0000"}), "title")
        assert_invalid(
            await client.post(f"/api/admin/courses/{course_id}/lessons", json={"title": "L\u00001"}), "title"
        )
        assert_invalid(
            await client.put(f"/api/admin/courses/{course_id}/lessons/order", json={"lesson_ids": [2**64]}),
            "lesson_ids.0",
        )
        assert_invalid(
            await client.post(f"/api/admin/courses/{course_id}/lessons", json={"title": "L", "order": 2**63}),
            "order",
        )
        listed = await client.get(f"/api/admin/courses/{course_id}")
        assert listed.json()["data"]["title"] == "Intro" and listed.json()["data"]["lessons"] == []


async def test_certificate_template_with_nul_is_400(test_env: TestEnv) -> None:
    settings = test_env.settings(CertificatesSettings, database="certificates")
    app = build_certificates(settings)
    admin = issue_token(settings, user_id="admin-1", roles=["admin"])
    async with app_client(app, admin) as client:
        response = await client.put("/api/admin/courses/1/certificates/template", json={"template": "<p>\u0000</p>"})
        assert_invalid(response, "template")
        assert_invalid(await client.get(f"/api/courses/{TOO_BIG}/certificate"), "course_id")
        assert_invalid(await client.get(f"/api/admin/courses/1/certificates/regenerations/{TOO_BIG}"),
                       "regeneration_id")
        assert_invalid(await client.get("/api/admin/courses/1/certificates?page=" + TOO_BIG), "page")


async def test_pages_and_ids_beyond_64_bits_are_400(test_env: TestEnv) -> None:
    settings = test_env.settings(NotificationsSettings, database="notifications")
    app = build_notifications(settings)
    admin = issue_token(settings, user_id="admin-1", roles=["admin"])
    async with app_client(app, admin) as client:
        assert_invalid(await client.get("/api/admin/notifications?page=" + TOO_BIG), "page")
        assert_invalid(await client.get("/api/admin/notifications?page=1000001&per_page=200"), "page")
        assert_invalid(await client.get("/api/admin/notifications?course_id=2147483648"), "course_id")
        assert_invalid(await client.get("/api/admin/notifications/" + TOO_BIG), "mail_id")
        assert_invalid(await client.get("/api/admin/notifications?user_id=%00"))
        largest = await client.get("/api/admin/notifications?page=1000000&per_page=200&course_id=2147483647")
        assert largest.status_code == 200 and largest.json()["data"] == []

    settings_e = test_env.settings(EnrollmentSettings, database="enrollment")
    app_e = build_enrollment(settings_e)
    async with app_client(app_e, issue_token(settings_e, user_id="learner-1")) as client:
        assert_invalid(await client.get(f"/api/courses/{TOO_BIG}"), "course_id")
        assert_invalid(await client.post(f"/api/courses/{TOO_BIG}/enroll"), "course_id")
        assert_invalid(await client.get("/api/courses/my-courses?page=" + TOO_BIG), "page")
        missing = await client.get(f"/api/courses/{2**63 - 1}")
        assert missing.status_code == 404


async def test_request_headers_over_the_limit_are_431_in_the_error_shape(test_env: TestEnv) -> None:
    settings = test_env.settings(ProgressSettings, database="progress")
    app = build_progress(settings)
    token = issue_token(settings, user_id="u1")
    expected = {
        "code": "request_header_fields_too_large",
        "message": f"Request headers are larger than {MAX_HEADER_BYTES} bytes",
        "data": {"status": 431},
    }
    big = {"X-Padding": "a" * MAX_HEADER_BYTES}
    async with app_client(app, token) as client:
        response = await client.get("/api/progress", headers=big)
        assert response.status_code == 431 and response.json() == expected
        assert response.headers["x-lessonstream-service"] == "progress"  # answered by the service itself
        assert (await client.get("/api/progress", headers={"X-Padding": "a" * 4000})).status_code == 200
    # Under uvicorn (as deployed): its HTTP parser lets these through, and the service answers.
    async with served(build_progress(settings)) as url, httpx.AsyncClient(base_url=url) as client:
        for size in (MAX_HEADER_BYTES, 20_000, 200_000):
            response = await client.get("/api/progress", headers={"X-Padding": "a" * size})
            assert response.status_code == 431 and response.json() == expected, size


async def test_header_limits_through_the_gateway(test_env: TestEnv) -> None:
    """Caddy lets headers the services refuse through to them (431 in the error shape);
    only far larger ones get Caddy's own plain-text 431. An unreachable upstream is a 503
    with Retry-After in the error shape."""
    settings = test_env.settings(ProgressSettings, database="progress")
    token = issue_token(settings, user_id="u1")
    async with served(build_progress(settings)) as url:
        upstream = url.removeprefix("http://")
        port = infra.free_port()
        env = {**os.environ, "GATEWAY_PORT": str(port), "PROGRESS_UPSTREAM": upstream,
               "ENROLLMENT_UPSTREAM": upstream, "CERTIFICATES_UPSTREAM": upstream,
               "NOTIFICATIONS_UPSTREAM": f"127.0.0.1:{infra.free_port()}"}  # nothing listens there
        caddy = infra.start_caddy(env)
        try:
            for _ in range(200):
                if infra.port_open("127.0.0.1", port) or not caddy.alive:
                    break
                await asyncio.sleep(0.05)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                         headers={"Authorization": f"Bearer {token}"}) as client:
                assert (await client.get("/api/progress")).status_code == 200
                for size in (MAX_HEADER_BYTES, 30_000, 60_000):
                    response = await client.get("/api/progress", headers={"X-Padding": "a" * size})
                    assert response.status_code == 431, size
                    assert response.json()["code"] == "request_header_fields_too_large", size
                    assert response.headers["x-lessonstream-service"] == "progress"
                huge = await client.get("/api/progress", headers={"X-Padding": "a" * 200_000})
                assert huge.status_code == 431  # Caddy's own, plain text: documented
                away = await client.get("/api/admin/notifications")
                assert away.status_code == 503 and away.json()["code"] == "service_unavailable"
                assert away.headers["retry-after"] == "1"
        finally:
            caddy.stop()
