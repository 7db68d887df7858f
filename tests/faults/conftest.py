"""The fault suite's stack: ``lessonstream dev`` as operators run it, with two progress
replicas and two certificate workers, on an embedded PostgreSQL of its own (so that a
test can stop the database) and the runner's own broker and SMTP sink (so that a test
can pause or kill them). One stack serves the module; every case uses its own course
and learners and counts only what is theirs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lessonstream import infra
from tests.devstack import DevStack, running_dev_stack
from tests.faults.support import FIGURES_FILE, Figures, Lms

FIGURES = Figures()

STACK_ENV = {
    "CERTIFICATE_RENDER_PROCESSES": "1",  # two workers on two cores
}


@dataclass
class FaultEnv:
    postgres: infra.Postgres
    var_dir: Path
    stack: DevStack
    lms: Lms
    figures: Figures
    _exits: contextlib.ExitStack = field(repr=False)

    def start_runner_again(self) -> None:
        """A new runner on the killed one's addresses, data and var directory."""
        old = self.stack
        ports = (int(old.gateway.rsplit(":", 1)[1]), old.kafka_port, old.smtp_port, min(old.ports.values()))
        self.lms.close()
        self.stack = self._exits.enter_context(running_dev_stack(
            self.postgres.url, self.var_dir, STACK_ENV, progress_replicas=2, certificate_workers=2, ports=ports,
        ))
        self.lms = Lms(self.stack, self.postgres.url)


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultEnv]:
    FIGURES.path = tmp_path_factory.getbasetemp() / FIGURES_FILE
    root = tmp_path_factory.mktemp("faults")
    postgres = infra.start_embedded_postgres(root / "postgres" / "data", keep=False)
    var_dir = root / "var"
    var_dir.mkdir()
    with contextlib.ExitStack() as exits:
        exits.callback(postgres.stop)
        stack = exits.enter_context(
            running_dev_stack(postgres.url, var_dir, STACK_ENV, progress_replicas=2, certificate_workers=2)
        )
        env = FaultEnv(postgres, var_dir, stack, Lms(stack, postgres.url), FIGURES, exits)
        try:
            yield env
        finally:
            env.lms.close()
