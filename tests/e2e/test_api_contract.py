"""The contract the gateway serves, checked against the real stack through the gateway.

The documents and the docs page answer at the gateway; then schemathesis drives every
operation of the gateway's own ``/api/openapi.json`` (a sample of the Fluent aliases, which
the gateway rewrites to the same operations) with an admin token and a learner token, valid
cases and invalid ones: no answer may have an undocumented status, media type or headers, or
break its schema, and none may be a 5xx. Derandomized with a few examples per operation, so
it runs in about a minute and fails the same way every time. It writes random data into the
shared stack, so it runs last in this package (conftest.py). A deeper run, by hand:
LESSONSTREAM_CONTRACT_EXAMPLES=50 pytest tests/e2e/test_api_contract.py
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import Failure, FailureGroup

from lessonstream.contract import FLUENT_PREFIX
from shared.auth import issue_token
from shared.settings import ServiceSettings
from tests.devstack import DevStack
from tests.fuzzing import MODES, Response, send_cases

pytestmark = [
    pytest.mark.xdist_group("e2e"),
    pytest.mark.timeout(420),  # about 50 s alone; several minutes beside the fault suite
    # Schemathesis's own strategies draw from `random`; Hypothesis warns about it on every run.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]
log = logging.getLogger(__name__)

SETTINGS = ServiceSettings()  # the dev stack runs on the development secret
EXAMPLES = int(os.environ.get("LESSONSTREAM_CONTRACT_EXAMPLES", "3"))
# Each alias is its /api operation behind the gateway's rewrite: one in ALIAS_SAMPLE is driven.
ALIAS_SAMPLE = 4
CHECKS = [
    not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture
def stack(e2e_stack: DevStack) -> DevStack:
    return e2e_stack


def test_the_gateway_serves_the_contract_and_its_docs_page(stack: DevStack) -> None:
    with httpx.Client(base_url=stack.gateway, timeout=15) as client:
        root = client.get("/", headers={"Accept": "application/json"})
        assert root.status_code == 200 and root.headers["content-type"].startswith("application/json")
        index = root.json()
        assert client.get("/").json() == index  # JSON by default too
        browser = client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert browser.status_code == 302 and browser.headers["location"].endswith("/api/docs/")
        for service, paths in index["health"].items():
            assert client.get(paths["ready"]).json()["service"] == service

        page = client.get(index["docs"])
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "swagger-ui-bundle.js" in page.text
        bundle = client.get(index["docs"] + "swagger-ui-bundle.js")
        assert bundle.status_code == 200 and "SwaggerUIBundle" in bundle.text
        assert client.get("/api/docs").headers.get("location", "").endswith("/api/docs/")

        openapi = client.get(index["openapi"])
        assert openapi.status_code == 200 and openapi.headers["content-type"].startswith("application/json")
        assert "/api/progress" in openapi.json()["paths"]
        events = client.get(index["asyncapi"])
        assert events.status_code == 200 and "course-completed" in events.json()["channels"]
        # Nothing else of the site is reachable by a path of its own.
        assert client.get("/index.json").status_code == 404


def test_every_answer_through_the_gateway_is_the_documented_one(stack: DevStack) -> None:
    document = httpx.get(f"{stack.gateway}/api/openapi.json", timeout=15).json()
    schema: Any = schemathesis.openapi.from_dict(document)
    tokens = {
        "admin": issue_token(SETTINGS, user_id="contract-admin", name="Ada Admin", email="ada@example.com",
                             roles=["admin"]),
        "learner": issue_token(SETTINGS, user_id="contract-learner", name="Lee Learner", email="lee@example.com"),
    }
    failures: dict[str, list[str]] = {who: [] for who in tokens}
    sent = 0
    started = time.monotonic()
    aliases = 0
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path.startswith(FLUENT_PREFIX):
                aliases += 1
                if aliases % ALIAS_SAMPLE:
                    continue
            for who, token in tokens.items():
                # On admin operations the admin's invalid cases cover validation; the learner's
                # valid ones check the refusals (403, or 404 first where a course is looked up).
                modes = MODES[:1] if who == "learner" and "/admin/" in operation.path else MODES
                headers = {"Authorization": f"Bearer {token}"}
                for mode in modes:

                    def documented(case: schemathesis.Case[Any], response: Response,
                                   mode: schemathesis.GenerationMode = mode, headers: dict[str, str] = headers,
                                   failed: list[str] = failures[who]) -> None:
                        try:
                            case.validate_response(response, checks=CHECKS, headers=headers)
                        except (Failure, FailureGroup) as exc:  # keep it, go on with the others
                            failed.append(
                                f"{mode.value}: {case.method} {response.request.url} -> {response.status_code} "
                                f"{response.text[:200]}\n  {str(exc)[:600]}"
                            )

                    sent += send_cases(operation, mode, EXAMPLES, stack.gateway, session, headers, documented)
    log.info("%d requests in %.1fs", sent, time.monotonic() - started)
    assert sent > 0
    found = [f"{who} {failure}" for who, listed in failures.items() for failure in listed]
    assert not found, f"{len(found)} answers not as documented:\n" + "\n".join(found[:15])
