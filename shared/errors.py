"""One error shape everywhere: ``{"code", "message", "data": {"status", ...}}``.

Validation failures are 400 (not FastAPI's 422) and name every bad field; anything
unexpected is a 500 in the same shape, with no stack trace or SQL in the body.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a client is meant to see, with a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.data = data


def error_body(status: int, code: str, message: str, **data: Any) -> dict[str, Any]:
    return {"code": code, "message": message, "data": {"status": status, **data}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **data: Any
) -> JSONResponse:
    return JSONResponse(error_body(status, code, message, **data), status_code=status, headers=headers)


def unauthorized(message: str = "Authentication required") -> ApiError:
    return ApiError(401, "unauthorized", message)


def forbidden(message: str = "You are not allowed to do this", code: str = "forbidden") -> ApiError:
    return ApiError(403, code, message)


def not_found(code: str = "not_found", message: str = "Not found", **data: Any) -> ApiError:
    return ApiError(404, code, message, **data)


def bad_request(code: str, message: str, **data: Any) -> ApiError:
    return ApiError(400, code, message, **data)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    # ("body", "video_progress") -> "video_progress"; ("query", "courseId") -> "courseId"
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    return ".".join(parts) or str(loc[0] if loc else "request")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.code, exc.message, headers=headers, **exc.data)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields: dict[str, str] = {}
        for err in exc.errors():
            name = _field_name(err.get("loc", ()))
            fields.setdefault(name, str(err.get("msg", "invalid value")))
        names = ", ".join(fields) or "request"
        return error_response(
            400, "invalid_request", f"Invalid or missing fields: {names}", params=fields
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(asyncpg.exceptions.OperatorInterventionError)
    @app.exception_handler(asyncpg.exceptions.InsufficientResourcesError)
    @app.exception_handler(ConnectionError)
    async def _database_away(request: Request, exc: Exception) -> JSONResponse:
        # The database restarting or unreachable: nothing was written; the client may retry.
        log.warning("database unavailable on %s %s: %r", request.method, request.url.path, exc)
        return error_response(
            503, "service_unavailable", "Temporarily unavailable, try again", headers={"Retry-After": "1"}
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "Internal server error")
