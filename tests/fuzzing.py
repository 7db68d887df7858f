"""Sending schemathesis cases, for the fuzz tests of the services (tests/test_api_fuzz.py) and
of the gateway's merged contract (tests/e2e/test_api_contract.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis.errors import Unsatisfiable
from schemathesis.core.transport import Response as Response  # re-exported for the callbacks

log = logging.getLogger(__name__)

MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
Answer = Callable[["schemathesis.Case[Any]", Response], None]


def send_cases(
    operation: Any, mode: schemathesis.GenerationMode, examples: int, base_url: str, session: requests.Session,
    headers: dict[str, str], on_answer: Answer,
) -> int:
    """Send ``examples`` generated cases of one operation over HTTP and hand each answer to
    ``on_answer``; returns how many were sent. Derandomized, without an example database: the
    same cases every run, so a failure repeats."""
    sent = 0

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=examples, derandomize=True, deadline=None, database=None,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case[Any]) -> None:
        nonlocal sent
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        sent += 1
        on_answer(case, response)

    try:
        check()
    except Unsatisfiable:  # nothing of this mode to generate for this operation
        log.info("no %s cases for %s", mode.value, operation.label)
    return sent
