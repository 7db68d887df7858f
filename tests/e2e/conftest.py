"""Tests through the gateway across every real process (``lessonstream dev``).

They run on one xdist worker (each module is marked ``xdist_group("e2e")``), one module after
another, so that never more than one whole stack of theirs runs beside the rest of the
suite; the modules that need no stack of their own share one, kept for this package only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lessonstream import infra
from tests.browser import browser, page  # noqa: F401  (fixtures of the browser tests)
from tests.devstack import DevStack, running_dev_stack

# Modules that must run first, in this order; a stable sort keeps every other order.
FIRST = [
    # A stack of its own, stopped by its last test, before any module takes the shared
    # stack: two stacks of this group at once, beside the fault suite's, ran PostgreSQL
    # out of connections.
    "test_local_runtime.py",
    # The seed documents' examples name course 10 and lessons 101-112: the first module on
    # the shared stack, it makes them before any other module has created a course.
    "test_fluent_basic_auth.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules of FIRST run first, in its order; ``test_api_contract`` runs last: it
    writes random data into the shared stack. A stable sort keeps every other order."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        if name in FIRST:
            return FIRST.index(name)
        return len(FIRST) + 1 if name == "test_api_contract.py" else len(FIRST)

    items.sort(key=rank)


@pytest.fixture(scope="package")
def e2e_stack(postgres_server: infra.Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """Two progress replicas and recalculation batches of two; each module keeps to its own
    learners and courses. Application passwords: a revocation takes effect within 2 s, and
    failed sign-ins are limited per user only (every test signs in from 127.0.0.1)."""
    env = {"RECALCULATION_BATCH_SIZE": "2", "APP_PASSWORD_CACHE_S": "2",
           "APP_PASSWORD_MAX_FAILURES_PER_ADDRESS": "1000"}
    with running_dev_stack(postgres_server.url, tmp_path_factory.mktemp("e2e"), env, progress_replicas=2) as running:
        yield running
