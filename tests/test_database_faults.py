"""Database faults are 503 with Retry-After, never 500, and a service recovers without a restart.

Real failures only: a proxy in front of PostgreSQL that is cut (connections reset, then
refused, or the Unix socket gone) and restored, a proxy that answers as a server starting
up, backends terminated by an administrator, asyncpg's own command and acquire timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from asyncpg.exceptions import _base as asyncpg_base
from fastapi import FastAPI, Request

from services.enrollment.app import build_app
from services.enrollment.settings import EnrollmentSettings
from services.progress.heartbeats import HeartbeatBuffer
from shared.auth import issue_token
from shared.errors import is_database_unavailable, is_unstorable_input
from shared.inbox import is_transient
from shared.service import runtime_of
from tests.helpers import TestEnv, app_client, eventually, served
from tests.pgproxy import PgProxy
from tests.progress.conftest import EnrollmentStandIn, course, enrollment, start_stack

UNAVAILABLE = {"code": "service_unavailable", "message": "Temporarily unavailable, try again", "data": {"status": 503}}


def add_probe_routes(app: FastAPI) -> None:
    """Routes that exercise the pool the way store code does, plus two of our own errors."""

    async def sleep(request: Request, seconds: float = 5.0) -> dict[str, Any]:
        await runtime_of(request).pool.fetchval("SELECT pg_sleep($1)", seconds)
        return {"slept": seconds}

    async def command_timeout(request: Request) -> dict[str, Any]:
        await runtime_of(request).pool.fetchval("SELECT pg_sleep(2)", timeout=0.2)
        return {}

    async def acquire_timeout(request: Request) -> dict[str, Any]:
        async with runtime_of(request).pool.acquire(timeout=0.2):
            return {}

    async def own_file_missing() -> None:
        open("/nonexistent/lessonstream/settings.toml").close()  # noqa: ASYNC230

    async def own_timeout() -> None:
        await asyncio.wait_for(asyncio.sleep(1), 0.01)

    app.add_api_route("/probe/sleep", sleep)
    app.add_api_route("/probe/command-timeout", command_timeout)
    app.add_api_route("/probe/acquire-timeout", acquire_timeout)
    app.add_api_route("/probe/own-file-missing", own_file_missing)
    app.add_api_route("/probe/own-timeout", own_timeout)


@contextlib.contextmanager
def logged(logger: str) -> Iterator[list[logging.LogRecord]]:
    """The records of one logger (the services' JSON logging does not propagate to caplog)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    logging.getLogger(logger).addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger(logger).removeHandler(handler)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == UNAVAILABLE
    assert int(response.headers["retry-after"]) >= 1


@pytest.fixture
async def proxied(
    test_env: TestEnv, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[PgProxy, EnrollmentSettings]]:
    """An enrollment service whose database is reached through a proxy (TCP or Unix socket)."""
    unix = bool(getattr(request, "param", False))
    with tempfile.TemporaryDirectory(prefix="pgsock", dir="/tmp") as folder:
        proxy = PgProxy(test_env.postgres_url, unix_dir=folder if unix else None)
        await proxy.start()
        settings = test_env.settings(EnrollmentSettings, database="enrollment")
        settings.database_url = proxy.url(settings.database_url)
        try:
            yield proxy, settings
        finally:
            await proxy.close()


async def my_courses(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/api/courses/my-courses")


@pytest.mark.parametrize("proxied", [False, True], ids=["tcp", "unix-socket"], indirect=True)
async def test_cut_database_is_503_and_the_service_recovers(proxied: tuple[PgProxy, EnrollmentSettings]) -> None:
    proxy, settings = proxied
    app = build_app(settings)
    token = issue_token(settings, user_id="learner-1")
    async with app_client(app, token) as client:
        assert (await my_courses(client)).status_code == 200

        with logged("shared.errors") as records:
            await proxy.cut()  # open connections reset, new ones refused / no socket file
            for _ in range(3):
                assert_unavailable(await my_courses(client))
        seen = " ".join(r.getMessage() for r in records)
        # The reconnect failed the way the transport fails, and that was a 503 too.
        assert ("FileNotFoundError" if proxy.unix_dir else "ConnectionRefusedError") in seen

        await proxy.restore()
        assert (await my_courses(client)).status_code == 200  # same app, no restart


@pytest.mark.parametrize("proxied", [False], ids=["tcp"], indirect=True)
async def test_database_starting_up_is_503(proxied: tuple[PgProxy, EnrollmentSettings]) -> None:
    proxy, settings = proxied
    app = build_app(settings)
    async with app_client(app, issue_token(settings, user_id="learner-1")) as client:
        await proxy.starting()  # CannotConnectNowError on every new connection
        assert_unavailable(await my_courses(client))
        await proxy.restore()
        assert (await my_courses(client)).status_code == 200


async def test_admin_shutdown_and_timeouts_are_503(test_env: TestEnv) -> None:
    settings = test_env.settings(EnrollmentSettings, database="enrollment", db_pool_max=2)
    app = build_app(settings)
    add_probe_routes(app)
    async with app_client(app, issue_token(settings, user_id="learner-1")) as client:
        sleeping = asyncio.create_task(client.get("/probe/sleep"))
        admin = await asyncpg.connect(test_env.postgres_url)
        try:
            async def terminated() -> bool:
                return bool(await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = $1 AND query LIKE 'SELECT pg_sleep%'", f"{test_env.prefix}enrollment",
                ))

            await eventually(terminated, what="the sleeping backend terminated")
        finally:
            await admin.close()
        assert_unavailable(await sleeping)  # AdminShutdownError (57P01) mid-query
        assert (await my_courses(client)).status_code == 200  # the pool replaced the connection

        assert_unavailable(await client.get("/probe/command-timeout"))

        pool = app.state.runtime.pool
        held = [await pool.acquire() for _ in range(2)]  # the whole pool is busy
        try:
            assert_unavailable(await client.get("/probe/acquire-timeout"))
        finally:
            for conn in held:
                await pool.release(conn)
        assert (await client.get("/probe/acquire-timeout")).status_code == 200


@pytest.mark.parametrize("proxied", [False], ids=["tcp"], indirect=True)
async def test_a_session_ended_between_prepare_and_execute_is_503(
    proxied: tuple[PgProxy, EnrollmentSettings],
) -> None:
    """asyncpg reports this one as InternalClientError, not as a lost connection."""
    proxy, settings = proxied
    app = build_app(settings)
    add_probe_routes(app)
    async with app_client(app, issue_token(settings, user_id="learner-1")) as client:
        assert (await my_courses(client)).status_code == 200  # the pool's connections are set up

        with logged("shared.errors") as records:
            proxy.end_session_after_prepare("SELECT pg_sleep($1)")
            assert_unavailable(await client.get("/probe/sleep", params={"seconds": 0}))
        assert proxy.sessions_ended == 1
        assert "InternalClientError('cannot switch to state" in " ".join(r.getMessage() for r in records)

        # The pool dropped the broken connection: the same statement runs on a new one.
        assert (await client.get("/probe/sleep", params={"seconds": 0})).status_code == 200


@pytest.mark.parametrize("proxied", [False], ids=["tcp"], indirect=True)
async def test_an_event_handler_meeting_a_session_ended_between_steps_is_redelivered(
    test_env: TestEnv, proxied: tuple[PgProxy, EnrollmentSettings],
) -> None:
    """The consumers treat it as the database going away (nacked, redelivered), not as a
    failing handler that ends in the dead-letter topic."""
    proxy, _ = proxied
    conn = await asyncpg.connect(proxy.url(test_env.postgres_url))
    try:
        proxy.end_session_after_prepare("SELECT 1 + $1::int")
        with pytest.raises(asyncpg_base.InternalClientError) as caught:
            await conn.fetchval("SELECT 1 + $1::int", 1)
    finally:
        conn.terminate()
    assert is_transient(caught.value)
    assert not is_transient(asyncpg_base.InternalClientError("got result for unknown protocol state 0"))


async def test_our_own_os_and_timeout_errors_stay_500(test_env: TestEnv) -> None:
    """Only what asyncpg raises is a database fault: a bug of ours must not hide as a 503."""
    settings = test_env.settings(EnrollmentSettings, database="enrollment")
    app = build_app(settings)
    add_probe_routes(app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for path in ("/probe/own-file-missing", "/probe/own-timeout"):
                response = await client.get(path)
                assert response.status_code == 500, (path, response.text)
                assert response.json()["code"] == "internal_error"


async def test_the_classifier_on_real_connection_failures(test_env: TestEnv) -> None:
    failures: list[BaseException] = []
    for url in (
        "postgresql://postgres@/postgres?host=/tmp/nonexistent-lessonstream",  # no socket directory
        "postgresql://postgres@127.0.0.1:1/postgres",  # nothing listens
    ):
        with pytest.raises((OSError, asyncpg.PostgresError)) as caught:
            await asyncpg.connect(url, timeout=5)
        failures.append(caught.value)
    assert isinstance(failures[0], FileNotFoundError)
    assert all(is_database_unavailable(exc) for exc in failures)
    assert not is_database_unavailable(FileNotFoundError("not from asyncpg"))
    assert not is_database_unavailable(TimeoutError())

    conn = await asyncpg.connect(test_env.postgres_url)
    try:
        for sql, args in (("SELECT $1::text", ("a\x00b",)), ("SELECT $1::int8", (2**64,)),
                          ("SELECT $1::int4", (2**40,)), ("SELECT '9999-12-31'::date + 1", ()),
                          ("SELECT $1::int + 1", (2**31 - 1,)),
                          ("SELECT now() + interval '1000000 years'", ())):
            with pytest.raises((asyncpg.PostgresError, ValueError)) as refused:
                await conn.fetchval(sql, *args)
            assert is_unstorable_input(refused.value), refused.value
            assert not is_database_unavailable(refused.value)
        with pytest.raises(asyncpg.DivisionByZeroError) as bug:
            await conn.fetchval("SELECT 1 / 0")
        assert not is_unstorable_input(bug.value)  # a bug in our SQL stays a 500
    finally:
        await conn.close()


async def test_heartbeat_while_the_database_is_away_is_503_and_buffers_nothing(test_env: TestEnv) -> None:
    """The bare ASGI heartbeat route answers database faults like every other route."""
    stand_in = EnrollmentStandIn()
    proxy = PgProxy(test_env.postgres_url)
    await proxy.start()
    try:
        async with served(stand_in.app()) as url:
            settings, app = await start_stack(
                test_env, stand_in, url, database_url=proxy.url(test_env.database_url("progress"))
            )
            token = issue_token(settings, user_id="learner-1")
            async with app_client(app, token) as client:
                stand_in.courses[7] = course(7, [(71, True), (72, True)])
                stand_in.enrollments[("learner-1", 7)] = enrollment("learner-1", 7)
                beat = {"course_id": 7, "lesson_id": 71, "video_progress": 10, "last_position": 10}
                buffer: HeartbeatBuffer = app.state.runtime.state.heartbeats

                await proxy.cut()
                response = await client.post("/api/progress", json=beat)
                assert_unavailable(response)
                assert not buffer.entries

                await proxy.restore()

                async def recorded() -> httpx.Response | None:
                    response = await client.post("/api/progress", json=beat)
                    return response if response.status_code == 200 else None

                await eventually(recorded, what="a heartbeat accepted after the database came back")
    finally:
        await proxy.close()
