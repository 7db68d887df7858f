"""Application passwords: the admin API, the hashes kept, and the exchange of HTTP Basic
credentials for a bearer token (what the gateway's forward_auth asks), with its failure
limits per user and per address and its refusal of plain HTTP in production."""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.enrollment import passwords
from services.enrollment.app import build_app
from services.enrollment.settings import EnrollmentSettings
from shared.auth import TokenVerifier
from tests.enrollment.conftest import Service, bearer
from tests.helpers import TestEnv, app_client, eventually

EXCHANGE = "/internal/auth/basic"
# The failure window of the limits' tests: long enough for a few slow requests on a busy
# machine, short enough to wait for its end.
WINDOW_S = 6.0


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def gateway_headers(settings: EnrollmentSettings, authorization: str, address: str = "203.0.113.7",
                    scheme: str = "http") -> dict[str, str]:
    """What the gateway's forward_auth sends."""
    return {"Authorization": authorization, "X-Internal-Token": settings.internal_token,
            "X-Forwarded-For": address, "X-Forwarded-Proto": scheme}


async def create(client: httpx.AsyncClient, admin: dict[str, str], user_id: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/api/admin/app-passwords", headers=admin, json={"user_id": user_id, **fields})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


@pytest.fixture
async def limited(test_env: TestEnv) -> AsyncIterator[Service]:
    """The service with small failure limits, a short window and a short memory, so the tests are short."""
    settings = test_env.settings(
        EnrollmentSettings, database="enrollment", app_password_max_failures_per_user=3,
        app_password_max_failures_per_address=5, app_password_failure_window_s=WINDOW_S, app_password_cache_s=0.5,
    )
    app = build_app(settings)
    async with app_client(app) as client:
        yield Service(app, client, settings, test_env)


async def test_create_list_and_revoke_keep_only_a_hash(service: Service) -> None:
    client, admin = service.client, service.admin
    created = await create(client, admin, "1", name="John Doe", email="john_doe@example.com",
                           roles=["learner", "instructor"], label="Fluent app")
    password = created["password"]
    assert re.fullmatch(r"[A-Za-z0-9]{24}", password)
    assert created["credentials"] == f"1:{password}"
    assert (created["user_id"], created["name"], created["label"], created["roles"]) == (
        "1", "John Doe", "Fluent app", ["learner", "instructor"])
    other = await create(client, admin, "2")
    assert other["roles"] == ["learner"] and other["password"] != password

    # Only an argon2id hash of the password is stored, nowhere the password itself.
    rows = await service.runtime.pool.fetch("SELECT * FROM app_passwords ORDER BY id")
    assert rows[0]["password_hash"].startswith("$argon2id$")
    assert not any(password in str(value) for row in rows for value in row.values())

    listed = (await client.get("/api/admin/app-passwords", headers=admin)).json()["data"]
    assert [p["id"] for p in listed] == [created["id"], other["id"]]
    assert not any({"password", "credentials", "password_hash"} & set(p) for p in listed)
    mine = (await client.get("/api/admin/app-passwords?user_id=1", headers=admin)).json()["data"]
    assert [(p["id"], p["revoked_at"]) for p in mine] == [(created["id"], None)]

    assert (await client.delete(f"/api/admin/app-passwords/{created['id']}", headers=admin)).status_code == 204
    mine = (await client.get("/api/admin/app-passwords?user_id=1", headers=admin)).json()["data"]
    assert mine[0]["revoked_at"] is not None
    unknown = await client.delete("/api/admin/app-passwords/999999", headers=admin)
    assert unknown.status_code == 404
    assert unknown.json() == {"code": "app_password_not_found", "message": "No such application password",
                              "data": {"status": 404}}


async def test_the_admin_api_is_for_admins_and_refuses_bad_input(service: Service) -> None:
    client, admin = service.client, service.admin
    for headers in ({}, service.learner("1"), service.instructor("2")):
        for response in (
            await client.post("/api/admin/app-passwords", headers=headers, json={"user_id": "1"}),
            await client.get("/api/admin/app-passwords", headers=headers),
            await client.delete("/api/admin/app-passwords/1", headers=headers),
        ):
            assert response.status_code in (401, 403), response.text
    colon = await client.post("/api/admin/app-passwords", headers=admin, json={"user_id": "a:b"})
    assert colon.status_code == 400 and colon.json()["code"] == "invalid_request"
    role = await client.post("/api/admin/app-passwords", headers=admin, json={"user_id": "1", "roles": ["root"]})
    assert role.status_code == 400 and "roles.0" in role.json()["data"]["params"]
    assert await service.runtime.pool.fetchval("SELECT count(*) FROM app_passwords") == 0


async def test_basic_credentials_are_exchanged_for_a_bearer_token(service: Service) -> None:
    client, settings = service.client, service.settings
    created = await create(client, service.admin, "1", name="John Doe", email="john_doe@example.com",
                           roles=["learner"])
    right = basic("1", created["password"])
    answer = await client.get(EXCHANGE, headers=gateway_headers(settings, right))
    assert answer.status_code == 200, answer.text
    scheme, _, token = answer.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    user = await TokenVerifier(settings).verify(token)
    assert (user.id, user.name, user.email, user.roles) == ("1", "John Doe", "john_doe@example.com", ["learner"])
    # The services take it as any bearer token.
    my_courses = await client.get("/api/courses/my-courses", headers={"Authorization": f"Bearer {token}"})
    assert my_courses.status_code == 200

    # The same token again (a learner's requests stay on one progress replica), also for the
    # WordPress form of the password (groups of four: spaces are ignored).
    grouped = " ".join(re.findall("....", created["password"]))
    for authorization in (right, basic("1", grouped)):
        again = await client.get(EXCHANGE, headers=gateway_headers(settings, authorization))
        assert again.headers["authorization"] == f"Bearer {token}"
    used = await service.runtime.pool.fetchval("SELECT last_used_at FROM app_passwords WHERE id = $1", created["id"])
    assert used is not None

    # Wrong, unknown and malformed credentials: 401 in the error shape, asking for Basic.
    wrong = created["password"][:-1] + ("A" if created["password"][-1] != "A" else "B")
    for authorization in (basic("1", wrong), basic("2", created["password"]), basic("1", ""), "Basic !!!",
                          basic("1", "x" * 1000)):
        refused = await client.get(EXCHANGE, headers=gateway_headers(settings, authorization))
        assert refused.status_code == 401, authorization
        assert refused.json() == {"code": "unauthorized", "message": "Invalid username or application password",
                                  "data": {"status": 401}}
        assert refused.headers["www-authenticate"].startswith('Basic realm="Lessonstream"')
    # Only the gateway may ask.
    no_token = await client.get(EXCHANGE, headers={"Authorization": right})
    assert no_token.status_code == 403

    # Revoked here: refused at once.
    assert (await client.delete(f"/api/admin/app-passwords/{created['id']}", headers=service.admin)).status_code == 204
    assert (await client.get(EXCHANGE, headers=gateway_headers(settings, right))).status_code == 401


async def test_a_revocation_elsewhere_takes_effect_within_the_cache_time(limited: Service) -> None:
    """Revoked by another process (the CLI, another enrollment): this one stops honouring the
    credential it remembers once APP_PASSWORD_CACHE_S (0.5 s here) has passed."""
    from services.enrollment import usecases

    client, settings = limited.client, limited.settings
    created = await create(client, limited.admin, "7")
    right = gateway_headers(settings, basic("7", created["password"]))
    assert (await client.get(EXCHANGE, headers=right)).status_code == 200
    await usecases.revoke_app_password(limited.runtime.pool, created["id"])  # no memory of this process
    revoked_at = time.monotonic()

    async def refused() -> bool:
        return (await client.get(EXCHANGE, headers=right)).status_code == 401

    await eventually(refused, timeout=5, interval=0.05, what="the revocation to take effect")
    assert time.monotonic() - revoked_at < settings.app_password_cache_s + 1.0


async def test_failures_are_limited_per_user(limited: Service) -> None:
    client, settings = limited.client, limited.settings
    created = await create(client, limited.admin, "u1")
    right, wrong = basic("u1", created["password"]), basic("u1", "A" * 24)
    for address in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):  # 3 failures, from 3 addresses
        assert (await client.get(EXCHANGE, headers=gateway_headers(settings, wrong, address))).status_code == 401
    # Locked out: the right password is refused too, from any address, until the window ends.
    for address in ("198.51.100.1", "198.51.100.9"):
        locked = await client.get(EXCHANGE, headers=gateway_headers(settings, right, address))
        assert locked.status_code == 429, locked.text
        body = locked.json()
        assert body["code"] == "too_many_attempts" and body["data"]["status"] == 429
        assert 1 <= int(locked.headers["retry-after"]) <= WINDOW_S and body["data"]["retry_after"] == int(
            locked.headers["retry-after"])
    # Another user is not locked out.
    other = await create(client, limited.admin, "u2")
    assert (await client.get(EXCHANGE, headers=gateway_headers(
        settings, basic("u2", other["password"]), "198.51.100.1"))).status_code == 200

    async def works_again() -> bool:
        return (await client.get(EXCHANGE, headers=gateway_headers(settings, right))).status_code == 200

    await eventually(works_again, timeout=WINDOW_S + 10, interval=0.2, what="the window to end")


async def test_failures_are_limited_per_address(limited: Service) -> None:
    client, settings = limited.client, limited.settings
    created = await create(client, limited.admin, "v1")
    attacker, elsewhere = "192.0.2.66", "192.0.2.77"
    for n in range(5):  # 5 failures from one address, each for another user (below their own limit)
        wrong = basic(f"someone-{n}", "B" * 24)
        assert (await client.get(EXCHANGE, headers=gateway_headers(settings, wrong, attacker))).status_code == 401
    right = basic("v1", created["password"])
    locked = await client.get(EXCHANGE, headers=gateway_headers(settings, right, attacker))
    assert locked.status_code == 429 and locked.json()["code"] == "too_many_attempts"
    assert "retry-after" in locked.headers
    assert (await client.get(EXCHANGE, headers=gateway_headers(settings, right, elsewhere))).status_code == 200
    # Remembered from the other address, the credential is still refused from the locked one.
    assert (await client.get(EXCHANGE, headers=gateway_headers(settings, right, attacker))).status_code == 429

    async def works_again() -> bool:
        answer = await client.get(EXCHANGE, headers=gateway_headers(settings, right, attacker))
        return answer.status_code == 200

    await eventually(works_again, timeout=WINDOW_S + 10, interval=0.2, what="the window to end")


async def test_concurrent_failures_cannot_overrun_the_limit(limited: Service) -> None:
    """Each attempt is counted under the row lock before its password is checked: twenty
    guesses at once get at most the three failures allowed, the rest 429."""
    client, settings = limited.client, limited.settings
    await create(client, limited.admin, "w1")
    answers = await asyncio.gather(*(
        client.get(EXCHANGE, headers=gateway_headers(settings, basic("w1", f"{n:024d}"), f"192.0.2.{n}"))
        for n in range(20)
    ))
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(401) <= 3 and statuses.count(401) + statuses.count(429) == 20, statuses


async def test_plain_http_is_refused_in_production_unless_allowed(test_env: TestEnv) -> None:
    production = {"env": "production", "jwt_secret": "s" * 40, "internal_token": "t" * 40,
                  "public_base_url": "https://learn.example", "app_password_token_secret": "a" * 40}
    settings = test_env.settings(EnrollmentSettings, database="enrollment", **production)
    app = build_app(settings)
    async with app_client(app) as client:
        admin = bearer(settings, "admin-1", ["admin"])
        created = await create(client, admin, "p1")
        right = basic("p1", created["password"])
        plain = await client.get(EXCHANGE, headers=gateway_headers(settings, right, scheme="http"))
        assert plain.status_code == 403
        assert plain.json() == {"code": "https_required",
                                "message": "HTTP Basic credentials are accepted over HTTPS only",
                                "data": {"status": 403}}
        assert (await client.get(EXCHANGE, headers=gateway_headers(settings, right, scheme="https"))).status_code == 200
    allowed = test_env.settings(EnrollmentSettings, database="enrollment", allow_basic_over_http=True, **production)
    app = build_app(allowed)
    async with app_client(app) as client:
        answer = await client.get(EXCHANGE, headers=gateway_headers(allowed, right, scheme="http"))
        assert answer.status_code == 200, answer.text


async def test_concurrent_checks_do_not_block_the_event_loop(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id runs in worker threads, never on the event loop's: while eight passwords are
    checked at once the loop keeps running (timing alone would be flaky on a busy machine,
    so the test looks at where each check ran, and that the loop went on meanwhile)."""
    client, settings = service.client, service.settings
    created = [await create(client, service.admin, f"c{n}") for n in range(8)]
    loop_thread = threading.get_ident()
    checked_in: list[int] = []
    verify = passwords._verify

    def spy(password_hash: str, password: str) -> bool:
        checked_in.append(threading.get_ident())
        return verify(password_hash, password)

    monkeypatch.setattr(passwords, "_verify", spy)
    checking = asyncio.gather(*(
        client.get(EXCHANGE, headers=gateway_headers(settings, basic(p["user_id"], p["password"]), f"10.0.0.{n}"))
        for n, p in enumerate(created)
    ))
    ticks_while_checking = 0
    while not checking.done():
        await asyncio.sleep(0.001)
        ticks_while_checking += 1 if checked_in and len(checked_in) < 8 else 0
    answers = await checking
    assert [a.status_code for a in answers] == [200] * 8
    assert len(checked_in) == 8 and loop_thread not in checked_in
    assert ticks_while_checking >= 8  # the loop ran between the checks' starts and ends
