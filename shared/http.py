"""HTTP plumbing every service shares: the request middleware (request ids, metrics, access
log) and ``BareRoute`` for hot paths that skip FastAPI's request handling."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Collection
from typing import Any

from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import metrics
from shared.logs import request_id_var


class BareRoute(Route):
    """A route to a bare ASGI endpoint (a hot path skipping FastAPI's request handling) that
    still names its template in the scope, as FastAPI's routes do, for metrics and logs.

    ``documented_by``: a function with the signature the route would have as a FastAPI route
    (its body model, ``CurrentUser``, its answer's model), never called: the OpenAPI document
    describes the route from it (``shared.openapi``), with ``responses`` as a FastAPI route's."""

    def __init__(
        self, path: str, endpoint: Callable[..., Any], *, methods: Collection[str], name: str,
        documented_by: Callable[..., Any] | None = None, responses: dict[int | str, dict[str, Any]] | None = None,
        summary: str | None = None,
    ) -> None:
        super().__init__(path, endpoint, methods=list(methods), name=name)
        self.documented_by = documented_by
        self.responses = responses or {}
        self.summary = summary

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match != Match.NONE:
            child["route"] = self
        return match, child


class RequestContextMiddleware:
    """Request id in and out, per-route latency metrics, one JSON access-log line.

    Pure ASGI (not BaseHTTPMiddleware): it sits on the heartbeat hot path.
    """

    def __init__(
        self, app: ASGIApp, service: str, quiet_routes: frozenset[tuple[str, str]] = frozenset()
    ) -> None:
        self.app = app
        self.service = service
        self.quiet = quiet_routes | {("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics")}
        self.log = logging.getLogger(f"{service}.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
                break
        request_id = request_id or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        extra_headers = [
            (b"x-request-id", request_id.encode("latin-1")),
            (b"x-lessonstream-service", self.service.encode()),
        ]

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = list(message.get("headers", [])) + extra_headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(self.service, scope["method"], template, str(status)).observe(elapsed)
            if status >= 400 or (scope["method"], template) not in self.quiet:
                self.log.info(
                    "%s %s %d", scope["method"], scope["path"], status,
                    extra={"fields": {"status": status, "ms": round(elapsed * 1000, 2), "route": template}},
                )
            request_id_var.reset(token)
