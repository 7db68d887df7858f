"""One error shape everywhere: ``{"code", "message", "data": {"status", ...}}``.

Validation failures are 400 (not FastAPI's 422) and name every bad field; a value the
database cannot store (NUL characters, numbers or dates out of its range) is a 400 too;
a database that cannot be reached or answered is a 503 with ``Retry-After``; anything
unexpected is a 500 in the same shape, with no stack trace or SQL in the body.

``RequestGuard`` answers, before any route runs, what no route could: request headers
over the limit (431) and NUL characters in the path or query string (400).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
# Total size of the request headers a service accepts (names, values and separators).
# Well below the gateway's own limit (max_header_size in gateway/Caddyfile, whose 431 is
# plain text), so that a client gets the error shape from us; uvicorn (httptools or h11)
# passes larger headers through to the app.
MAX_HEADER_BYTES = 12 * 1024


class ApiError(Exception):
    """An error a client is meant to see, with a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.data = data


@dataclass(frozen=True)
class HttpError:
    """How one kind of error is answered: its status, its code, and (if set) a message
    replacing the exception's own."""

    status: int
    code: str
    message: str | None = None
    headers: Mapping[str, str] | None = None  # added to (or replacing) the status's own


ErrorMap = Mapping[type[Exception], HttpError]


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


# The server's own refusals of a connection or session: shutting down, starting up,
# too many clients, the connection gone (class 08, 57P0x, 53xxx).
_UNAVAILABLE_SERVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)

# Errors PostgreSQL raises for a value it cannot store or compute with, which can only
# come from what a client sent: NUL characters, numbers and dates out of range, strings
# too long for a column or an index. Not the whole class 22 (division by zero is a bug).
UNSTORABLE_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.CharacterNotInRepertoireError,
    asyncpg.exceptions.UntranslatableCharacterError,
    asyncpg.exceptions.NumericValueOutOfRangeError,
    asyncpg.exceptions.DatetimeFieldOverflowError,
    asyncpg.exceptions.InvalidDatetimeFormatError,
    asyncpg.exceptions.StringDataRightTruncationError,
    asyncpg.exceptions.InvalidTextRepresentationError,
    asyncpg.exceptions.ProgramLimitExceededError,
    asyncpg_base.DataError,
)


def _raised_in_asyncpg(exc: BaseException) -> bool:
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("asyncpg."):
            return True
        tb = tb.tb_next
    return False


def _session_ended_between_steps(exc: BaseException) -> bool:
    """A session the server ended (``pg_terminate_backend``, a restart) between two steps
    of one query: the FATAL error arrives while asyncpg's protocol is idle after the
    prepare, leaves it waiting for a sync that never comes, and the execute step then
    fails with "cannot switch to state N; another operation (2) is in progress" instead of
    ``ConnectionDoesNotExistError`` (asyncpg issue 1069). The connection is gone: the pool
    terminates it on release, and the next request gets a new one."""
    return str(exc).startswith("cannot switch to state")


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means "the database cannot be reached or used right now".

    Every way a connection fails: refused, reset, no Unix socket (``FileNotFoundError``),
    the server shutting down or starting up, a connection that no longer exists, a pool
    acquire or command timeout. ``OSError`` and ``TimeoutError`` count only when raised
    inside asyncpg, so that the same classes raised by our own code stay bugs (500).
    """
    if isinstance(exc, BaseExceptionGroup):
        return all(is_database_unavailable(e) for e in exc.exceptions)
    if isinstance(exc, _UNAVAILABLE_SERVER_ERRORS):
        return True
    if type(exc) is asyncpg.InterfaceError:
        # Plain InterfaceError is also "another operation is in progress" (a bug); only
        # "connection is closed" / "pool is closing" mean the database went away.
        return "clos" in str(exc)
    if type(exc) is asyncpg_base.InternalClientError:
        return _session_ended_between_steps(exc)
    if isinstance(exc, OSError | TimeoutError):  # TimeoutError is asyncio's too
        return _raised_in_asyncpg(exc)
    return False


def is_unstorable_input(exc: BaseException) -> bool:
    """Whether the database refused a value of the request (a 400, not a 500)."""
    if isinstance(exc, BaseExceptionGroup):
        return any(is_unstorable_input(e) for e in exc.exceptions)
    if isinstance(exc, UNSTORABLE_INPUT_ERRORS):
        return True
    # Plain DataError (no subclass): asyncpg refused to encode an argument, "invalid input
    # for query argument $1: ... (value out of int64 range)".
    if type(exc) is asyncpg.exceptions.DataError:
        return True
    # A value PostgreSQL computed from the request that Python cannot hold (a date after
    # 9999-12-31): asyncpg fails to decode it.
    return isinstance(exc, ValueError | OverflowError) and _raised_in_asyncpg(exc)


def unavailable_response() -> JSONResponse:
    return error_response(
        503, "service_unavailable", "Temporarily unavailable, try again",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def classify(exc: BaseException, where: str) -> JSONResponse:
    """The response for an exception no route turned into an ``ApiError``."""
    if is_database_unavailable(exc) or isinstance(exc, ConnectionError):
        # The database (or another peer) restarting or unreachable: the transaction did
        # not commit, so nothing was written and the client may retry.
        log.warning("database (or peer) unavailable on %s: %r", where, exc)
        return unavailable_response()
    if is_unstorable_input(exc):
        log.info("value refused by the database on %s: %r", where, exc)
        return error_response(400, "invalid_request", "A value in the request cannot be stored or is out of range")
    log.error("unhandled error on %s", where, exc_info=exc)
    return error_response(500, "internal_error", "Internal server error")


def _has_nul(scope: Scope) -> bool:
    # The path arrives percent-decoded; the query string raw, so look for its encoding.
    qs: bytes = scope.get("query_string", b"")
    return "\x00" in scope.get("path", "") or b"%00" in qs or b"\x00" in qs


class RequestGuard:
    """Refuses, in the error shape, requests no route should see: headers over
    ``MAX_HEADER_BYTES`` (431) and NUL characters in the path or query string (400), which
    PostgreSQL cannot store and no identifier contains. Pure ASGI: on the heartbeat path."""

    def __init__(self, app: ASGIApp, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.max_header_bytes:
                response = error_response(
                    431, "request_header_fields_too_large",
                    f"Request headers are larger than {self.max_header_bytes} bytes",
                )
                await response(scope, receive, send)
                return
            if _has_nul(scope):
                response = error_response(
                    400, "invalid_request", "NUL characters are not allowed in the path or query string"
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _mapped_handler(mapped: HttpError) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        message = mapped.message or getattr(exc, "message", None) or str(exc)
        data: dict[str, Any] = getattr(exc, "data", None) or {}
        headers = {**(_headers(mapped.status, data) or {}), **(mapped.headers or {})}
        return error_response(mapped.status, mapped.code, message, headers=headers or None, **data)

    return handle


def _headers(status: int, data: Mapping[str, Any] | None = None) -> dict[str, str] | None:
    if status == 401:
        return {"WWW-Authenticate": "Bearer"}
    if status == 503:  # a peer service away: every 503 says when to try again
        return {"Retry-After": str(RETRY_AFTER_S)}
    if status == 429 and data and "retry_after" in data:  # the refusal says when, in seconds
        return {"Retry-After": str(data["retry_after"])}
    return None


def install_error_handlers(app: FastAPI, errors: ErrorMap | None = None) -> None:
    """The exception handlers of the error shape, the service's own ``errors`` (each kind
    and its subclasses), and the ``RequestGuard`` in front of the routes."""
    app.add_middleware(RequestGuard)
    for kind, mapped in (errors or {}).items():
        app.add_exception_handler(kind, _mapped_handler(mapped))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, headers=_headers(exc.status, exc.data), **exc.data)

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

    # Database errors, OS-level and timeout errors and exception groups are classified
    # here (503, 400 or 500) rather than by the catch-all below, which Starlette runs in
    # its outermost middleware and then re-raises to the server as a crash.
    @app.exception_handler(asyncpg.PostgresError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(asyncpg_base.InternalClientError)
    @app.exception_handler(OSError)
    @app.exception_handler(ValueError)
    @app.exception_handler(OverflowError)
    @app.exception_handler(ExceptionGroup)
    async def _classified(request: Request, exc: Exception) -> JSONResponse:
        return classify(exc, f"{request.method} {request.url.path}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "Internal server error")
