"""Every service's OpenAPI, fuzzed with schemathesis: no input gives a 5xx.

Each service runs in this process under uvicorn with its lifespan (migrations, relay,
subscribers) on the test run's PostgreSQL and broker, with stand-ins for the internal
APIs of the services it asks (so that a 503 "peer unavailable" cannot hide a bug).
Schemathesis generates cases from the app's own OpenAPI document, valid ones and ones
that break the schema, and sends them over HTTP from a worker thread, once as an admin
and once as a learner. Hypothesis runs derandomized with bounded examples, so the module
takes about a minute and fails the same way every time. The document is the service's own
public one (``shared.openapi``, the same the gateway's merged document is made of), so the
bare ``POST /api/progress`` route is fuzzed too; tests/e2e/test_api_contract.py checks every
answer against it through the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import requests
import schemathesis
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from services.certificates.app import build_app as build_certificates
from services.certificates.settings import CertificatesSettings
from services.enrollment.app import build_app as build_enrollment
from services.enrollment.settings import EnrollmentSettings
from services.notifications.app import build_app as build_notifications
from services.notifications.settings import NotificationsSettings
from services.progress.app import build_app as build_progress
from services.progress.settings import ProgressSettings
from shared.auth import issue_token
from shared.settings import ServiceSettings
from tests.fuzzing import MODES, Response, send_cases
from tests.helpers import TestEnv, served
from tests.progress.conftest import EnrollmentStandIn, course, enrollment

log = logging.getLogger(__name__)
# Schemathesis's own strategies draw from `random`; Hypothesis warns about it on every run.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

# Per operation, per token, per mode: about 950 requests in all (the merged contract is
# also fuzzed through the gateway, tests/e2e/test_api_contract.py). A deeper run, by hand:
# LESSONSTREAM_FUZZ_EXAMPLES=100 pytest tests/test_api_fuzz.py
EXAMPLES = int(os.environ.get("LESSONSTREAM_FUZZ_EXAMPLES", "5"))


def progress_stand_in() -> FastAPI:
    """Progress's internal completion API as certificates asks it: nobody is enrolled."""
    app = FastAPI()

    @app.get("/internal/courses/{course_id}/learners/{user_id}/completion")
    async def completion(course_id: int, user_id: str) -> JSONResponse:
        return JSONResponse({"code": "not_enrolled"}, status_code=404)

    return app


@asynccontextmanager
async def progress(env: TestEnv) -> AsyncIterator[tuple[FastAPI, ServiceSettings]]:
    stand_in = EnrollmentStandIn()
    stand_in.courses[1] = course(1, [(1, True), (2, False)], instructors=["learner-1"])
    stand_in.enrollments[("learner-1", 1)] = enrollment("learner-1", 1)
    async with served(stand_in.app()) as url:
        settings = env.settings(ProgressSettings, database="progress", enrollment_internal_url=url)
        yield build_progress(settings), settings


def erasing_peer_stand_in() -> FastAPI:
    """What enrollment asks progress, certificates and notifications about a learner's
    erasure and export: nobody erased yet, nothing held."""
    app = FastAPI()

    @app.get("/internal/erasures/{event_id}")
    async def erasure(event_id: str) -> JSONResponse:
        return JSONResponse({"code": "erasure_not_found"}, status_code=404)

    @app.get("/internal/learners/{user_id}/export")
    async def export(user_id: str) -> JSONResponse:
        return JSONResponse({})

    return app


@asynccontextmanager
async def enrollment_service(env: TestEnv) -> AsyncIterator[tuple[FastAPI, ServiceSettings]]:
    async with served(erasing_peer_stand_in()) as url:
        settings = env.settings(EnrollmentSettings, database="enrollment", progress_internal_url=url,
                                certificates_internal_url=url, notifications_internal_url=url)
        yield build_enrollment(settings), settings


@asynccontextmanager
async def certificates(env: TestEnv) -> AsyncIterator[tuple[FastAPI, ServiceSettings]]:
    async with served(progress_stand_in()) as url:
        settings = env.settings(CertificatesSettings, database="certificates", progress_internal_url=url)
        yield build_certificates(settings), settings


@asynccontextmanager
async def notifications(env: TestEnv) -> AsyncIterator[tuple[FastAPI, ServiceSettings]]:
    settings = env.settings(NotificationsSettings, database="notifications")
    yield build_notifications(settings), settings


SERVICES: dict[str, Callable[[TestEnv], Any]] = {
    "progress": progress,
    "enrollment": enrollment_service,
    "certificates": certificates,
    "notifications": notifications,
}


def fuzz(schema: Any, base_url: str, tokens: dict[str, str]) -> tuple[list[str], int]:
    """Every operation in both modes with each token; returns the 5xx seen and the count sent."""
    failures: list[str] = []
    sent = 0
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            for who, token in tokens.items():
                headers = {"Authorization": f"Bearer {token}"}
                for mode in MODES:

                    def server_error(case: schemathesis.Case[Any], response: Response,
                                     who: str = who, mode: schemathesis.GenerationMode = mode,
                                     headers: dict[str, str] = headers) -> None:
                        status, text = response.status_code, response.text
                        if status == 503:
                            # The stand-ins share the test's event loop: on a loaded machine a
                            # peer call may time out (a correct 503). Asked again, a bug stays 5xx.
                            again = session.send(response.request, timeout=30)
                            status, text = again.status_code, again.text
                        if status >= 500:
                            failures.append(
                                f"{who} {mode.value}: {case.method} {response.request.url} -> "
                                f"{status} {text[:300]}\n  {case.as_curl_command(headers)}"
                            )

                    sent += send_cases(operation, mode, EXAMPLES, base_url, session, headers, server_error)
    return failures, sent


@pytest.mark.parametrize("service", list(SERVICES))
async def test_no_input_gives_a_server_error(test_env: TestEnv, service: str) -> None:
    async with AsyncExitStack() as stack:
        app, settings = await stack.enter_async_context(SERVICES[service](test_env))
        url = await stack.enter_async_context(served(app))
        schema = schemathesis.openapi.from_dict(app.openapi())
        tokens = {
            "admin": issue_token(settings, user_id="admin-1", name="Ada Admin", email="ada@example.com",
                                 roles=["admin"]),
            "learner": issue_token(settings, user_id="learner-1", name="Lee Learner", email="lee@example.com"),
        }
        started = time.monotonic()
        failures, sent = await asyncio.to_thread(fuzz, schema, url, tokens)
        log.info("%s: %d requests in %.1fs", service, sent, time.monotonic() - started)
        assert sent > 0
        assert not failures, f"{len(failures)} server errors:\n" + "\n".join(failures[:20])
