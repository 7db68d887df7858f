"""Tests through the gateway across every real process (``lessonstream dev``).

They run on one xdist worker (each module is marked ``xdist_group("e2e")``), one module after
another, so that never more than one whole stack of theirs runs beside the rest of the
suite; the modules that need no stack of their own share one, kept for this package only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lessonstream import infra
from tests.devstack import DevStack, running_dev_stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``test_local_runtime`` (a stack of its own, stopped by its last test) runs before any
    module takes the shared stack: two stacks of this group at once, beside the fault
    suite's, ran PostgreSQL out of connections. ``test_api_contract`` runs last: it writes
    random data into the shared stack. A stable sort keeps every other order."""
    items.sort(key=lambda item: (item.path.name != "test_local_runtime.py", item.path.name == "test_api_contract.py"))


@pytest.fixture(scope="package")
def e2e_stack(postgres_server: infra.Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """Two progress replicas and recalculation batches of two; each module keeps to its own
    learners and courses."""
    with running_dev_stack(postgres_server.url, tmp_path_factory.mktemp("e2e"),
                           {"RECALCULATION_BATCH_SIZE": "2"}, progress_replicas=2) as running:
        yield running
