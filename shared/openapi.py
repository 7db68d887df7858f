"""A service's public OpenAPI document, generated from its routes and accurate on errors.

FastAPI derives the operations, parameters, bodies and success answers; this module makes
the rest true to what the service answers (``shared.errors``):

- no 422: validation failures are 400 (``invalid_request``, the fields in ``data.params``);
- one ``Error`` schema (``code``, ``message``, ``data.status`` and extras) for every error;
- derived per operation from its route: 400 where it takes parameters or a body, 404 where
  a path parameter names something, 401 and the security schemes where it depends on
  ``CurrentUser`` (bearer JWT, or HTTP Basic with an application password exchanged at the
  gateway), 403 where on ``AdminUser``, 503 everywhere (the database or a peer away);
- declared per route with ``errors(...)``: the refusals only the use case knows (409, 403
  ``lesson_not_watched``, ...);
- a ``BareRoute`` with ``documented_by`` (``POST /api/progress``) is documented as if it
  were that function's FastAPI route;
- nothing under ``/internal`` and no health, readiness or metrics route.

A route added later is documented by the same rules with no change here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from shared.auth import current_user, require_admin
from shared.http import BareRoute

ERROR_SCHEMA = "Error"
ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}
INTERNAL_PREFIX = "/internal"
RETRY_AFTER = {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}

# Both ways a caller is identified; ``security`` lists them as alternatives.
SECURITY_SCHEMES: dict[str, Any] = {
    "bearerAuth": {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "A JWT from the identity provider (`lessonstream token` in development).",
    },
    "basicAuth": {
        "type": "http", "scheme": "basic",
        "description": "An application password (`username:password`), as Fluent Community clients send it; "
                       "the gateway exchanges it for a short-lived token.",
    },
}
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"basicAuth": []}]

DEFAULT_DESCRIPTIONS = {
    400: "Invalid request: `invalid_request` names the fields at fault in `data.params`",
    401: "Missing, invalid or expired credentials (`unauthorized`)",
    403: "Not allowed (`forbidden`)",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Request body too large (`payload_too_large`)",
    429: "Too many failed attempts (`too_many_attempts`): wait `Retry-After` seconds",
    503: "Temporarily unavailable (`service_unavailable`): retry after `Retry-After` seconds",
}

SHORT_DESCRIPTIONS = {400: "Invalid request", 401: "Not authenticated", 403: "Not allowed", 404: "Not found",
                      409: "Conflict", 503: "Temporarily unavailable"}


class ErrorData(BaseModel):
    """The status again, and what the error adds (``params`` of a 400, ...)."""

    model_config = ConfigDict(extra="allow")
    status: int = Field(description="The HTTP status of the answer")


class Error(BaseModel):
    """Every error answer of the API, whoever gives it (a service or the gateway)."""

    model_config = ConfigDict(title=ERROR_SCHEMA)
    code: str = Field(description="Stable machine-readable code, e.g. `course_not_found`")
    message: str = Field(description="For people; may change")
    data: ErrorData


def errors(*answers: int | tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: the statuses (and codes) its use case can refuse with, besides
    those derived from the route, e.g. ``errors(409, (403, "lesson_not_watched"))``."""
    codes: dict[int, list[str]] = {}
    for answer in answers:
        status, code = answer if isinstance(answer, tuple) else (answer, "")
        codes.setdefault(status, [])
        if code:
            codes[status].append(code)
    found: dict[int | str, dict[str, Any]] = {}
    for status, names in codes.items():
        description = DEFAULT_DESCRIPTIONS.get(status, "Refused")
        if names:
            description = f"{SHORT_DESCRIPTIONS.get(status, 'Refused')}: " + ", ".join(f"`{n}`" for n in names)
        found[status] = {"description": description, "model": Error}
    return found


def content(media_type: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A response's ``content`` in a media type other than JSON (PDF, CSV, HTML, ...)."""
    return {"content": {media_type: {"schema": schema if schema is not None else {"type": "string"}}}}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def _takes_input(dependant: Dependant) -> bool:
    if dependant.path_params or dependant.query_params or dependant.header_params or dependant.cookie_params:
        return True
    return bool(dependant.body_params) or any(_takes_input(sub) for sub in dependant.dependencies)


def _routes(app: FastAPI) -> Iterator[Any]:
    """Every route of the app with its routers' prefixes applied: FastAPI's route contexts
    where it has them (routers included lazily), else the routes themselves."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if contexts is None:
        yield from app.routes
        return
    for context in contexts(app.routes):
        yield context.original_route if isinstance(context.original_route, BareRoute) else context


def _documented_routes(app: FastAPI) -> list[Any]:
    """The public API routes (``APIRoute`` or a route context of one), in the app's order."""
    found: list[Any] = []
    for route in _routes(app):
        if isinstance(route, BareRoute):
            if route.documented_by is None:
                continue
            route = APIRoute(
                route.path, route.documented_by, methods=sorted(route.methods or ()), name=route.name,
                responses=route.responses, summary=route.summary,
            )
        original = getattr(route, "original_route", route)
        if not isinstance(original, APIRoute) or not route.include_in_schema:
            continue
        if route.path_format.startswith(INTERNAL_PREFIX):
            continue
        found.append(route)
    return found


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": copy.deepcopy(ERROR_REF)}}}


def _complete(operation: dict[str, Any], route: Any) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.pop("422", None)
    calls = set(_calls(route.dependant))
    derived: list[int] = [503]
    if _takes_input(route.dependant):
        derived.append(400)
    if route.dependant.path_params:
        derived.append(404)
    if current_user in calls:
        derived.append(401)
        operation["security"] = copy.deepcopy(SECURITY)
    if require_admin in calls:
        derived.append(403)
    for code in derived:
        responses.setdefault(str(code), {"description": DEFAULT_DESCRIPTIONS[code]})
    for status, response in responses.items():
        if not status.isdigit() or int(status) < 400:
            continue
        # Every error is the one shape; other media types (an HTML page for people) stay beside it.
        media = response.setdefault("content", {})
        media["application/json"] = {"schema": copy.deepcopy(ERROR_REF)}
        if status == "401":
            response.setdefault("headers", {})["WWW-Authenticate"] = {
                "description": "`Bearer`", "schema": {"type": "string"}}
        if status in ("429", "503"):
            response.setdefault("headers", {})["Retry-After"] = copy.deepcopy(RETRY_AFTER)
    operation["responses"] = dict(sorted(responses.items()))


def _referenced(document: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(document, dict):
        ref = document.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in document.values():
            found |= _referenced(value)
    elif isinstance(document, list):
        for value in document:
            found |= _referenced(value)
    return found


def public_document(app: FastAPI) -> dict[str, Any]:
    """The service's public OpenAPI 3.1 document (see the module's docstring)."""
    routes = _documented_routes(app)
    document = get_openapi(title=app.title, version=app.version, openapi_version="3.1.0", routes=routes)
    for route in routes:
        for method in route.methods:
            operation = document["paths"].get(route.path_format, {}).get(method.lower())
            if operation is not None:
                _complete(operation, route)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas[ERROR_SCHEMA] = Error.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, schema in Error.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {}).items():
        schemas[name] = schema
    schemas[ERROR_SCHEMA].pop("$defs", None)
    # FastAPI's 422 schemas are referenced by nothing any more.
    for name in ("HTTPValidationError", "ValidationError"):
        others = {key: value for key, value in schemas.items() if key != name}
        if name not in _referenced({"paths": document["paths"], "schemas": others}):
            schemas.pop(name, None)
    components["schemas"] = dict(sorted(schemas.items()))
    components["securitySchemes"] = copy.deepcopy(SECURITY_SCHEMES)
    return document


def install(app: FastAPI) -> None:
    """Serve ``public_document`` as the app's ``/openapi.json`` (built once, on first use)."""
    built: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not built:
            built.update(public_document(app))
        return built

    app.openapi = openapi  # type: ignore[method-assign]
