"""The API's contract, generated from the code (shared/openapi.py, lessonstream/contract.py):
one valid OpenAPI 3.1 document of what the gateway routes, accurate on errors and auth, and
one AsyncAPI document of every topic. Nothing runs: the apps are built, not started."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi import Path as PathParam
from openapi_spec_validator import validate
from pydantic import BaseModel

from lessonstream import contract
from lessonstream.stack import SERVICES
from shared.auth import AdminUser, CurrentUser
from shared.events import EVENT_TYPES, TOPIC_PARTITIONS, Topic
from shared.http import BareRoute
from shared.openapi import errors
from shared.service import ServiceSpec, create_app
from shared.settings import ServiceSettings

ERROR = {"$ref": "#/components/schemas/Error"}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def apps() -> dict[str, FastAPI]:
    return contract.service_apps()


@pytest.fixture(scope="module")
def openapi(apps: dict[str, FastAPI]) -> dict[str, Any]:
    return contract.openapi_document(apps)


@pytest.fixture(scope="module")
def asyncapi(apps: dict[str, FastAPI]) -> dict[str, Any]:
    return contract.asyncapi_document(apps)


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method, path, operation


def resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_the_merged_document_is_valid_openapi_3_1_with_every_reference_resolved(openapi: dict[str, Any]) -> None:
    assert openapi["openapi"] == "3.1.0"
    validate(openapi)
    for ref in set(refs(openapi)):
        resolve(openapi, ref)
    ids = [op["operationId"] for _, _, op in operations(openapi)]
    assert len(ids) == len(set(ids))


def test_no_422_and_nothing_internal_health_or_metrics(openapi: dict[str, Any]) -> None:
    text = json.dumps(openapi)
    assert '"422"' not in text and "HTTPValidationError" not in text
    for path in openapi["paths"]:
        assert not re.match(r"^/(internal|health|ready|metrics|openapi\.json|asyncapi\.json|docs|redoc)\b", path), path


def test_every_error_answer_is_the_error_schema(openapi: dict[str, Any]) -> None:
    error = openapi["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"code", "message", "data"}
    assert "status" in resolve(openapi, error["properties"]["data"]["$ref"])["required"]
    for method, path, operation in operations(openapi):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == ERROR, (method, path, status)
        # Every operation may meet the gateway's 503 (an upstream down), and says when to retry.
        assert "Retry-After" in operation["responses"]["503"]["headers"], (method, path)
        if "requestBody" in operation:
            assert "413" in operation["responses"], (method, path)
        if operation.get("parameters") or "requestBody" in operation:
            assert "400" in operation["responses"], (method, path)
        if any(p["in"] == "path" for p in operation.get("parameters", [])):
            assert "404" in operation["responses"], (method, path)


def test_every_api_operation_needs_a_user_by_bearer_or_basic_and_says_so(openapi: dict[str, Any]) -> None:
    schemes = openapi["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["basicAuth"] == {**schemes["basicAuth"], "type": "http", "scheme": "basic"}
    for method, path, operation in operations(openapi):
        api = path.startswith(("/api/", contract.FLUENT_PREFIX + "/"))
        if not api:  # certificates' public documents and the issuer's keys
            assert "security" not in operation and "401" not in operation["responses"], (method, path)
            continue
        if path.removeprefix(contract.FLUENT_PREFIX).startswith(("/api/dev/", "/dev/")):
            # The development sign-in mints tokens: no user yet, and refused (403) in production.
            assert "security" not in operation and "403" in operation["responses"], (method, path)
            continue
        assert operation["security"] == [{"bearerAuth": []}, {"basicAuth": []}], (method, path)
        assert {"401", "429"} <= set(operation["responses"]), (method, path)
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
        if "/admin/" in path:  # learners are refused every admin operation
            assert "403" in operation["responses"], (method, path)


def test_the_heartbeat_route_is_documented_with_its_body_and_answers(openapi: dict[str, Any]) -> None:
    post = openapi["paths"]["/api/progress"]["post"]
    body = resolve(openapi, post["requestBody"]["content"]["application/json"]["schema"]["$ref"])
    assert {"course_id", "lesson_id"} <= set(body["required"])
    assert {"completed", "video_progress", "last_position", "client_timestamp", "played_segments"} <= set(
        body["properties"])
    record = resolve(openapi, post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"])
    assert {"id", "lesson_id", "completed", "video_progress", "time_spent_seconds"} <= set(record["required"])
    assert {"400", "401", "403", "404", "413", "429", "503"} <= set(post["responses"])
    assert "lesson_locked" in post["responses"]["403"]["description"]


def test_declared_refusals_are_there(openapi: dict[str, Any]) -> None:
    complete = openapi["paths"]["/api/courses/{course_id}/lessons/{lesson_id}/complete"]["post"]
    assert "lesson_not_watched" in complete["responses"]["403"]["description"]
    assert "409" in openapi["paths"]["/api/admin/courses"]["post"]["responses"]
    pending = openapi["paths"]["/api/courses/{course_id}/certificate"]["get"]["responses"]["202"]
    assert "Retry-After" in pending["headers"]
    pdf = openapi["paths"]["/certificates/{code}.pdf"]["get"]["responses"]
    assert set(pdf["200"]["content"]) == {"application/pdf"}


def test_every_api_path_has_its_fluent_alias(openapi: dict[str, Any]) -> None:
    paths = openapi["paths"]
    api = [p for p in paths if p.startswith("/api/")]
    assert api
    for path in api:
        alias = paths[contract.FLUENT_PREFIX + path.removeprefix("/api")]
        assert set(alias) == set(paths[path])
        for method, operation in alias.items():
            assert operation["tags"] == [contract.FLUENT_TAG]
            assert operation["operationId"] != paths[path][method]["operationId"]
            assert operation["responses"] == paths[path][method]["responses"]


async def test_each_service_serves_its_own_public_document(apps: dict[str, FastAPI]) -> None:
    for name in SERVICES:
        transport = httpx.ASGITransport(app=apps[name])
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            response = await client.get("/openapi.json")
        assert response.status_code == 200
        document = response.json()
        assert document["openapi"] == "3.1.0" and document["paths"], name
        assert not [p for p in document["paths"] if p.startswith("/internal")]
        assert '"422"' not in response.text


class Thing(BaseModel):
    name: str


def test_a_route_added_later_is_documented_by_the_same_rules() -> None:
    """The mechanism, not a list: a new admin route with a path parameter and a body gets
    400, 401, 403, 404 and 503 in the error shape and the security schemes; a declared
    refusal is added; a bare route without documentation stays out."""
    router = APIRouter(prefix="/api/admin/things")

    @router.put("/{thing_id}", responses=errors((409, "thing_taken")))
    async def put_thing(thing_id: Annotated[int, PathParam(ge=1)], body: Thing, admin: AdminUser) -> Thing:
        return body

    @router.get("")
    async def list_things(user: CurrentUser) -> list[Thing]:
        return []

    app = create_app(ServiceSpec(name="things", settings=ServiceSettings(), migrations=Path("."), routers=[router]))

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("never called")

    app.router.routes.insert(0, BareRoute("/api/raw", bare, methods=["POST"], name="raw"))
    document = app.openapi()
    put = document["paths"]["/api/admin/things/{thing_id}"]["put"]
    assert set(put["responses"]) == {"200", "400", "401", "403", "404", "409", "503"}
    assert "thing_taken" in put["responses"]["409"]["description"]
    assert put["security"] == [{"bearerAuth": []}, {"basicAuth": []}]
    listed = document["paths"]["/api/admin/things"]["get"]
    assert set(listed["responses"]) == {"200", "401", "503"}  # no input, no path, not admin-only
    assert "/api/raw" not in document["paths"]
    assert not [p for p in document["paths"] if p in ("/health", "/ready", "/metrics", "/asyncapi.json")]


def test_the_asyncapi_document_has_every_topic_its_key_partitions_payload_and_processes(
    asyncapi: dict[str, Any], apps: dict[str, FastAPI]
) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    for ref in set(refs(asyncapi)):
        resolve(asyncapi, ref)
    channels = asyncapi["channels"]
    assert set(channels) == {t.value for t in Topic}
    for topic in Topic:
        channel = channels[topic.value]
        assert channel["bindings"]["kafka"]["partitions"] == TOPIC_PARTITIONS[topic]
        assert channel["x-key"] == EVENT_TYPES[topic].key_format != ""
        (message,) = channel["messages"].values()
        payload = resolve(asyncapi, resolve(asyncapi, message["$ref"])["payload"]["$ref"])
        assert set(EVENT_TYPES[topic].model_fields) <= set(payload["properties"])
        assert channel["x-publishers"], f"nobody publishes {topic}"
    # Every subscription of every process is there as a consumer with its group.
    for name, app in apps.items():
        for sub in app.state.runtime.spec.subscriptions:
            assert {"process": name, "group": sub.consumer} in channels[sub.topic.value]["x-consumers"]
            assert f"{name}-consumes-{sub.topic.value}" in asyncapi["operations"]
    assert channels["course-completed"]["x-publishers"] == ["progress"]
    assert channels["certificate-issued"]["x-publishers"] == ["certificates-worker"]
    assert channels["course-catalog"]["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"] == ["compact"]


def test_the_site_is_written_with_its_docs_page_served_locally(tmp_path: Path, apps: dict[str, FastAPI]) -> None:
    contract.write_site(tmp_path, apps)
    assert json.loads((tmp_path / "openapi.json").read_text()) == contract.openapi_document(apps)
    assert json.loads((tmp_path / "asyncapi.json").read_text())["channels"]
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["openapi"] == "/api/openapi.json" and index["docs"] == "/api/docs/"
    assert index["health"]["progress"] == {"health": "/health/progress", "ready": "/ready/progress"}
    page = (tmp_path / "docs" / "index.html").read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # no CDN
    for asset in re.findall(r"(?:src|href)=\"([^\"/]+\.(?:js|css|png))\"", page):
        assert (tmp_path / "docs" / asset).stat().st_size > 0
    assert "SwaggerUIBundle" in (tmp_path / "docs" / "swagger-ui-bundle.js").read_text()
    assert not list(tmp_path.rglob("*.tmp"))
