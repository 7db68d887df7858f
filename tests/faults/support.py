"""What the fault tests do as users and operators would: HTTP through the gateway, signals
to the runner's processes, and counting what came out (certificates in the certificates
database, mail the SMTP sink kept on disk)."""

from __future__ import annotations

import asyncio
import contextlib
import email
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.policy import default as default_policy
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx

from lessonstream import infra
from shared.auth import issue_token
from shared.db import with_database
from shared.settings import ServiceSettings
from tests.conftest import RUN_ID
from tests.devstack import DevStack

T = TypeVar("T")
SETTINGS = ServiceSettings()  # the dev stack runs on the development secret


def bearer(user_id: str, name: str = "", email_address: str = "", roles: list[str] | None = None) -> dict[str, str]:
    token = issue_token(SETTINGS, user_id=user_id, name=name, email=email_address, roles=roles or ["learner"])
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer("fault-admin", "Admin", "admin@example.com", ["admin"])


@dataclass
class Learner:
    id: str
    email: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.id, f"Learner {self.id}", self.email)


@dataclass
class Course:
    id: int
    lessons: list[int]
    title: str


FIGURES_FILE = "fault-figures.txt"


@dataclass
class Figures:
    """What a case measured, for the run's summary: N, lost, duplicated, time to converge.

    Kept in a file as well: under pytest-xdist the cases run in a worker process, and the
    summary is printed by the controller."""

    rows: list[str] = field(default_factory=list)
    path: Path | None = None

    def add(self, case: str, **values: Any) -> None:
        row = f"{case}: " + ", ".join(f"{k}={v}" for k, v in values.items())
        self.rows.append(row)
        if self.path is not None:
            with open(self.path, "a") as out:
                out.write(row + "\n")


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    return infra.wait_until(probe, timeout, interval=interval, what=what)


def until(moment: float) -> None:
    """Pace a client by the clock (a player sends heartbeats on a timer)."""
    wait_for(lambda: time.monotonic() >= moment, max(1.0, moment - time.monotonic() + 1), "the next tick",
             interval=0.005)


class Lms:
    """The stack as its users see it."""

    def __init__(self, stack: DevStack, postgres_url: str) -> None:
        self.stack = stack
        self.postgres_url = postgres_url
        self.http = httpx.Client(base_url=stack.gateway, timeout=30)

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------ catalog and learners
    def course(self, tag: str, lessons: int = 1, certificate: bool = True) -> Course:
        title = f"Fault course {tag} {RUN_ID}"
        created = self.http.post("/api/admin/courses", headers=ADMIN,
                                 json={"title": title, "certificate_enabled": certificate})
        assert created.status_code == 201, created.text
        course_id = created.json()["data"]["id"]
        ids = [self.add_lesson(course_id, f"Lesson {i}") for i in range(lessons)]
        published = self.http.post(f"/api/admin/courses/{course_id}/publish", headers=ADMIN)
        assert published.status_code == 200, published.text
        return Course(course_id, ids, title)

    def add_lesson(self, course_id: int, title: str) -> int:
        added = self.http.post(f"/api/admin/courses/{course_id}/lessons", headers=ADMIN, json={
            "title": title, "is_required": True, "duration_seconds": 600, "kind": "video",
        })
        assert added.status_code == 201, added.text
        lesson_id: int = added.json()["data"]["lesson"]["id"]
        return lesson_id

    def cohort(self, tag: str, n: int, lessons: int = 1) -> tuple[Course, list[Learner]]:
        """A published course of its own and ``n`` learners enrolled in it: each case's world."""
        course = self.course(tag, lessons)
        learners = self.learners(tag, n)
        self.enroll(learners, course)
        return course, learners

    def learners(self, tag: str, n: int) -> list[Learner]:
        return [Learner(f"{tag}-{RUN_ID}-{i}", f"{tag}-{i}-{RUN_ID}@example.com") for i in range(n)]

    def enroll(self, learners: Iterable[Learner], course: Course) -> None:
        def one(learner: Learner) -> None:
            response = self.http.post(f"/api/courses/{course.id}/enroll", headers=learner.headers)
            assert response.status_code == 200, response.text

        self.each(one, learners)

    def complete(self, learner: Learner, course: Course, lesson_id: int) -> httpx.Response:
        return self.http.post(f"/api/courses/{course.id}/lessons/{lesson_id}/complete", headers=learner.headers)

    def complete_course(self, learners: Iterable[Learner], course: Course) -> list[Learner]:
        """Every lesson of every learner, concurrently; returns the learners whose every
        completion was acknowledged (200)."""

        def one(learner: Learner) -> Learner | None:
            for lesson_id in course.lessons:
                if self.complete(learner, course, lesson_id).status_code != 200:
                    return None
            return learner

        return [learner for learner in self.each(one, learners) if learner is not None]

    @staticmethod
    def each(work: Callable[[Learner], T], learners: Iterable[Learner], threads: int = 8) -> list[T]:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(work, learners))

    # ------------------------------------------------------------ what came out
    def _query(self, database: str, sql: str, *args: Any) -> list[asyncpg.Record]:
        url = with_database(self.postgres_url, f"t{RUN_ID}_{self.stack.var_dir.name}_{database}")

        async def run() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(url)
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return asyncio.run(run())

    def certificates(self, course: Course) -> Counter[str]:
        rows = self._query("certificates", "SELECT user_id FROM certificates WHERE course_id = $1", course.id)
        return Counter(r["user_id"] for r in rows)

    def course_completions(self, course: Course) -> Counter[str]:
        rows = self._query("progress", "SELECT user_id FROM course_completions WHERE course_id = $1", course.id)
        return Counter(r["user_id"] for r in rows)

    def mails(self, learners: Iterable[Learner]) -> Counter[tuple[str, str]]:
        """(address, kind) -> messages the sink holds; kind is ``completed`` or ``certificate``."""
        wanted = {learner.email for learner in learners}
        found: Counter[tuple[str, str]] = Counter()
        for path in (self.stack.var_dir / "mail").glob("*.eml"):
            message = email.message_from_bytes(path.read_bytes(), policy=default_policy)
            to = str(message["To"])
            address = next((a for a in wanted if a in to), None)
            if address is None:
                continue
            kind = "completed" if ".completed@" in str(message["Message-ID"]) else "certificate"
            found[(address, kind)] += 1
        return found

    def outcome(self, learners: list[Learner], course: Course) -> dict[str, int]:
        """Per kind of result, how many learners have none (lost) and how many extra (duplicated)."""
        certs = self.certificates(course)
        mails = self.mails(learners)
        lost = duplicated = 0
        for learner in learners:
            for count in (certs[learner.id], mails[(learner.email, "completed")],
                          mails[(learner.email, "certificate")]):
                lost += count == 0
                duplicated += max(0, count - 1)
        return {"lost": lost, "duplicated": duplicated}

    def converged(self, learners: list[Learner], course: Course) -> bool:
        return self.outcome(learners, course)["lost"] == 0

    def wait_converged(self, learners: list[Learner], course: Course, timeout: float, what: str) -> float:
        """Seconds until every learner has their certificate and both emails."""
        started = time.monotonic()
        try:
            wait_for(lambda: self.converged(learners, course), timeout, what, interval=0.5)
        except TimeoutError as exc:
            raise AssertionError(f"{what}: {self.outcome(learners, course)} after {timeout:.0f}s") from exc
        return round(time.monotonic() - started, 1)

    # ------------------------------------------------------------ processes
    def pid(self, name: str) -> int:
        pid = self.stack.pids().get(name)
        assert pid is not None, f"{name} is not running: {self.stack.pids()}"
        return pid

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        pid = self.pid(name)
        os.kill(pid, sig)
        return pid

    @contextlib.contextmanager
    def broker_paused(self) -> Iterator[None]:
        """SIGSTOP the broker for the block: it neither answers nor drops connections."""
        broker = self.pid("broker")
        os.kill(broker, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(broker, signal.SIGCONT)

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 60) -> float:
        """Seconds until the supervisor runs ``name`` again under a new pid and it is ready."""
        started = time.monotonic()

        def back() -> bool:
            pid = self.stack.pids().get(name)
            if pid is None or pid == old_pid:
                return False
            port = self.stack.ports.get(name)
            if port is None:
                return True
            try:
                return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(back, timeout, f"{name} restarted")
        return round(time.monotonic() - started, 1)

    def all_ready(self) -> bool:
        for port in self.stack.ports.values():
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
        return True


def mail_dir(stack: DevStack) -> Path:
    return stack.var_dir / "mail"
