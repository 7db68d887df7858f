"""The development sign-in of the reference web app (``/api/dev/people``, ``/api/dev/token``),
refused in production and wherever an identity provider issues tokens; and the list of
courses a user manages (``GET /api/admin/courses``), where an instructor's dashboard starts."""

from __future__ import annotations

import jwt

from services.enrollment.app import build_app
from shared.demo import DEMO_INSTRUCTOR, DEMO_PEOPLE
from tests.enrollment.conftest import Service
from tests.helpers import app_client


async def test_a_demo_person_signs_in_with_a_token_every_service_accepts(service: Service) -> None:
    people = await service.client.get("/api/dev/people")
    assert people.status_code == 200
    assert [p["user_id"] for p in people.json()["data"]] == [p.user_id for p in DEMO_PEOPLE]

    issued = await service.client.post("/api/dev/token", json={
        "user_id": DEMO_INSTRUCTOR.user_id, "name": DEMO_INSTRUCTOR.name, "email": DEMO_INSTRUCTOR.email,
        "role": "instructor"})
    assert issued.status_code == 200, issued.text
    token = issued.json()["data"]["token"]
    claims = jwt.decode(token, service.settings.jwt_secret, algorithms=["HS256"],
                        audience=service.settings.jwt_audience, issuer=service.settings.jwt_issuer)
    assert claims["sub"] == DEMO_INSTRUCTOR.user_id and claims["roles"] == ["instructor"]
    assert claims["exp"] == issued.json()["data"]["expires_at"]

    mine = await service.create_course("Taught by the demo instructor", instructor_ids=[DEMO_INSTRUCTOR.user_id])
    await service.create_course("Someone else's")
    await service.enroll(mine["id"], "learner-dev-1")
    listed = await service.client.get("/api/admin/courses", headers={"Authorization": f"Bearer {token}"})
    assert listed.status_code == 200
    rows = listed.json()["data"]
    assert [r["id"] for r in rows] == [mine["id"]]
    assert rows[0]["learners"] == 1 and rows[0]["completed"] == 0 and rows[0]["total_lessons"] == 3
    assert listed.json()["meta"]["total"] == 1


async def test_an_admin_manages_every_course_and_a_learner_none(service: Service) -> None:
    first = await service.create_course("First")
    second = await service.create_course("Second", publish=False)
    everything = (await service.client.get("/api/admin/courses?per_page=100", headers=service.admin)).json()
    ids = [row["id"] for row in everything["data"]]
    assert ids.index(second["id"]) < ids.index(first["id"])  # newest first, drafts too
    learner = await service.client.get("/api/admin/courses", headers=service.learner("learner-dev-2"))
    assert learner.status_code == 200 and learner.json()["data"] == []
    assert (await service.client.get("/api/admin/courses")).status_code == 401


async def test_bad_sign_in_input_is_a_400_naming_the_field(service: Service) -> None:
    for body, field in (({"user_id": "x", "role": "superuser"}, "role"), ({"role": "admin"}, "user_id"),
                        ({"user_id": "   "}, "user_id")):
        answer = await service.client.post("/api/dev/token", json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["code"] == "invalid_request" and field in answer.json()["message"]


async def test_production_and_identity_provider_stacks_refuse_development_tokens(service: Service) -> None:
    for changes in ({"env": "production"}, {"jwt_jwks_url": "https://idp.example.com/.well-known/jwks.json"}):
        # Unvalidated copies: only the settings under test differ from the running service's.
        settings = service.settings.model_copy(update=changes)
        app = build_app(settings)
        async with app_client(app) as client:
            for method, path, body in (("GET", "/api/dev/people", None),
                                       ("POST", "/api/dev/token", {"user_id": "anyone", "role": "admin"})):
                answer = await client.request(method, path, json=body)
                assert answer.status_code == 403, (changes, path, answer.text)
                assert answer.json()["code"] == "dev_tokens_disabled"
                assert "identity provider" in answer.json()["message"]
