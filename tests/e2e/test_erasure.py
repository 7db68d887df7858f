"""Erasing a learner across every real service (``lessonstream dev``): a learner with
progress, a course completion, a certificate, mails and an application password is erased
with the CLI; every service reports it done; no table of any service's database holds the
learner's id, name or address any more; the course's analytics are unchanged; a second
erase changes nothing; a forged ``learner-erased`` erases nobody. The export gathers what
every service holds first.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest

from lessonstream import infra
from shared.auth import issue_token
from shared.db import with_database
from shared.events import EnrollmentChanged, LearnerErased
from shared.settings import ServiceSettings
from tests.devstack import DevStack, published_course
from tests.helpers import produce_raw

pytestmark = pytest.mark.xdist_group("e2e")

T = TypeVar("T")
SETTINGS = ServiceSettings()  # the dev stack runs on the development secrets
DATABASES = ("enrollment", "progress", "certificates", "notifications")


def auth(user_id: str, name: str = "", email: str = "", roles: list[str] | None = None) -> dict[str, str]:
    token = issue_token(SETTINGS, user_id=user_id, name=name, email=email, roles=roles or ["learner"])
    return {"Authorization": f"Bearer {token}"}


ADMIN = auth("erasure-admin", "Erasure Admin", "erasure-admin@example.com", ["admin"])


def wait_for(probe: Callable[[], T | None], *, timeout: float = 90, what: str) -> T:
    return infra.wait_until(probe, timeout, interval=0.25, what=what)


class Databases:
    """The stack's four service databases, read directly (the test's own connections)."""

    def __init__(self, server_url: str, prefix: str) -> None:
        self.urls = {name: with_database(server_url, f"{prefix}{name}") for name in DATABASES}

    def run(self, work: Callable[[asyncpg.Connection], Any], database: str) -> Any:
        async def go() -> Any:
            conn = await asyncpg.connect(self.urls[database])
            try:
                return await work(conn)
            finally:
                await conn.close()

        return asyncio.run(go())

    def fetchval(self, database: str, sql: str, *args: object) -> Any:
        return self.run(lambda conn: conn.fetchval(sql, *args), database)

    def find(self, needles: list[str]) -> list[str]:
        """Every (database, table, column) holding one of ``needles`` in a text, varchar,
        text array, json, jsonb or bytea column: all of them, found via information_schema."""
        async def search(conn: asyncpg.Connection) -> list[str]:
            columns = await conn.fetch(
                "SELECT table_name, column_name, data_type, udt_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND (data_type IN ('text', 'character varying', 'json', 'jsonb', "
                "'bytea') OR udt_name IN ('_text', '_varchar')) "
                "AND table_name IN (SELECT table_name FROM information_schema.tables "
                "                   WHERE table_schema = 'public' AND table_type = 'BASE TABLE')"
            )
            hits = []
            for column in columns:
                name = f'"{column["column_name"]}"'
                if column["data_type"] == "bytea":  # PDFs too: compared as bytes
                    match = f"position(convert_to(n, 'UTF8') IN {name}) > 0"
                elif column["data_type"] == "ARRAY":
                    match = f"strpos(array_to_string({name}, ' '), n) > 0"
                else:
                    match = f"strpos({name}::text, n) > 0"
                found = await conn.fetchval(
                    f'SELECT count(*) FROM "{column["table_name"]}" '
                    f"WHERE EXISTS (SELECT 1 FROM unnest($1::text[]) AS n WHERE {match})",
                    needles,
                )
                if found:
                    hits.append(f"{column['table_name']}.{column['column_name']} ({found} rows)")
            return hits

        return [f"{db}: {hit}" for db in DATABASES for hit in self.run(search, db)]

    def counts(self, table: str) -> dict[str, int]:
        return {db: self.fetchval(db, f"SELECT count(*) FROM {table}") for db in DATABASES}


def forms(value: str) -> list[str]:
    """How a value may be stored: as it is, and escaped inside JSON (``\\u00e9``)."""
    return sorted({value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]})


def analytics(client: httpx.Client, course_id: int) -> dict[str, Any]:
    """The course's analytics report, without what moves with the clock."""
    response = client.get(f"/api/admin/courses/{course_id}/analytics", headers=ADMIN)
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()["data"]
    report.pop("generated_at")
    report["drop_off"].pop("inactive_since")
    return report


def cli(stack: DevStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lessonstream.cli", "learner", *args, "--gateway", stack.gateway],
        cwd=infra.ROOT, capture_output=True, text=True, timeout=120,
    )


def test_an_erased_learner_is_gone_from_every_service_and_the_course_figures_stay(
    e2e_stack: DevStack, postgres_server: infra.Postgres
) -> None:
    stack = e2e_stack
    dbs = Databases(postgres_server.url, stack.db_prefix)
    tag = uuid.uuid4().hex[:10]
    erin_id, erin_name, erin_email = f"erin-{tag}", f"Erin Érasé {tag}", f"erin.{tag}@example.org"
    kept_id, kept_name, kept_email = f"kept-{tag}", f"Kept Learner {tag}", f"kept.{tag}@example.org"
    erin, kept = auth(erin_id, erin_name, erin_email), auth(kept_id, kept_name, kept_email)
    erin_data = [*forms(erin_id), *forms(erin_name), *forms(erin_email)]

    with httpx.Client(base_url=stack.gateway, timeout=20) as client:
        course_id, lessons = published_course(client, ADMIN, f"Erasure course {tag}", [("One", True), ("Two", True)])
        # A webhook endpoint that never answers: its deliveries (with Erin's data) stay queued.
        hook = client.post("/api/admin/webhooks", headers=ADMIN, json={
            "url": "http://127.0.0.1:9/erasure-hook", "description": f"erasure test {tag}",
            "event_types": ["course.completed", "certificate.issued", "enrollment.changed"]})
        assert hook.status_code == 201, hook.text
        hook_id = hook.json()["data"]["id"]

        # Two learners: Erin completes the course (certificate, mails), the other starts it.
        for who in (erin, kept):
            assert client.post(f"/api/courses/{course_id}/enroll", headers=who).status_code == 200
            heartbeat = client.post("/api/progress", headers=who, json={
                "course_id": course_id, "lesson_id": lessons[0], "completed": False,
                "video_progress": 240, "last_position": 240})
            assert heartbeat.status_code == 200, heartbeat.text
        for lesson_id in lessons:
            done = client.post(f"/api/courses/{course_id}/lessons/{lesson_id}/complete", headers=erin)
            assert done.status_code == 200, done.text
        assert client.post(f"/api/courses/{course_id}/lessons/{lessons[0]}/complete", headers=kept).status_code == 200
        password = client.post("/api/admin/app-passwords", headers=ADMIN, json={
            "user_id": erin_id, "name": erin_name, "email": erin_email, "roles": ["learner"], "label": "phone"})
        assert password.status_code == 201, password.text
        basic = {"Authorization": "Basic " + base64.b64encode(
            password.json()["data"]["credentials"].encode()).decode()}
        assert client.get("/api/courses/my-courses", headers=basic).status_code == 200

        # Everything settled: the certificate issued and known to enrollment and progress,
        # both mails sent and logged.
        def certified() -> bool:
            courses = client.get("/api/courses/my-courses?status=completed", headers=erin).json()["data"]
            progress = client.get(f"/api/courses/{course_id}/progress", headers=erin).json()["data"]
            return any(c["course_id"] == course_id and c["certificate_url"] for c in courses) \
                and bool(progress["certificate_url"])

        wait_for(certified, what="the certificate known to enrollment and progress")
        wait_for(lambda: dbs.fetchval("notifications", "SELECT count(*) FROM outgoing_mail WHERE user_id = $1 "
                                      "AND status = 'sent'", erin_id) >= 2, what="both mails sent")
        wait_for(lambda: dbs.fetchval("notifications", "SELECT count(*) FROM deliveries WHERE destination_id = $1 "
                                      "AND strpos(body, $2) > 0", hook_id, erin_email) >= 3,
                 what="the webhook deliveries about Erin")
        certificate = client.get(f"/api/courses/{course_id}/certificate", headers=erin).json()["data"]
        verification = certificate["verification_url"].replace(SETTINGS.public_base_url, stack.gateway)
        assert httpx.get(verification, headers={"Accept": "application/json"}).status_code == 200
        before = analytics(client, course_id)
        assert before["completion"]["enrolled"] == 2 and before["completion"]["completed"] == 1

        # The export: what every service holds on Erin, in one document.
        exported = client.get(f"/api/admin/exports/{erin_id}", headers=ADMIN)
        assert exported.status_code == 200, exported.text
        services = exported.json()["data"]["services"]
        assert len(services["enrollment"]["enrollments"]) == 1
        assert services["enrollment"]["app_passwords"][0]["email"] == erin_email
        assert "password_hash" not in services["enrollment"]["app_passwords"][0]
        assert len(services["progress"]["lesson_progress"]) == 2
        assert services["progress"]["course_completions"][0]["event"]["user_email"] == erin_email
        assert services["certificates"]["certificates"][0]["student_name"] == erin_name
        assert services["certificates"]["certificate_files"]
        assert len(services["notifications"]["outgoing_mail"]) == 2
        assert len(services["notifications"]["deliveries"]) >= 3
        assert client.get(f"/api/admin/erasures/{erin_id}", headers=ADMIN).status_code == 404
        assert client.get(f"/api/admin/exports/{erin_id}", headers=erin).status_code == 403

    # The same document with the CLI.
    exported_by_cli = cli(stack, "export", erin_id)
    assert exported_by_cli.returncode == 0, exported_by_cli.stderr
    document = json.loads(exported_by_cli.stdout)
    assert document["user_id"] == erin_id and set(document["services"]) == set(DATABASES)
    assert document["services"]["certificates"]["certificates"][0]["student_email"] == erin_email

    # A forged learner-erased (no such request at enrollment) erases nobody: every consumer
    # dead-letters it as rejected and Erin's data is where it was.
    forged = LearnerErased(user_id=erin_id, requested_at=datetime.now(UTC))
    asyncio.run(produce_raw(f"127.0.0.1:{stack.kafka_port}", "learner-erased",
                            forged.model_dump_json().encode(), erin_id.encode()))
    def rejected(db: str) -> bool:
        return bool(dbs.fetchval(
            db, "SELECT count(*) FROM outbox WHERE topic = 'dead-letter' "
            "AND strpos(convert_from(payload, 'UTF8'), $1) > 0 "
            "AND strpos(convert_from(payload, 'UTF8'), 'rejected') > 0",
            str(forged.event_id)) == 1)

    for db in ("progress", "certificates", "notifications"):
        wait_for(lambda db=db: rejected(db), what=f"{db} to reject the forged erasure")  # type: ignore[misc]
    assert dbs.counts("erasures") == dict.fromkeys(DATABASES, 0)
    assert dbs.fetchval("progress", "SELECT count(*) FROM lesson_progress WHERE user_id = $1", erin_id) == 2
    assert dbs.fetchval("certificates", "SELECT count(*) FROM certificate_files f JOIN certificates c "
                        "USING (certificate_id) WHERE c.user_id = $1", erin_id) >= 1

    # The erasure, with the CLI: it waits until every service reports it done.
    erased = cli(stack, "erase", erin_id, "--wait", "90")
    assert erased.returncode == 0, erased.stderr + erased.stdout
    assert "Erasure requested" in erased.stderr
    for name in DATABASES:
        assert f"{name} " in erased.stdout and "pending" not in erased.stdout, erased.stdout

    with httpx.Client(base_url=stack.gateway, timeout=20) as client:
        status = client.get(f"/api/admin/erasures/{erin_id}", headers=ADMIN).json()["data"]
        assert status["done"] is True and status["completed_at"] is not None
        assert {name: part["status"] for name, part in status["services"].items()} == dict.fromkeys(DATABASES, "done")
        assert status["services"]["progress"]["erased"]["lesson_progress"] == 2
        assert status["services"]["certificates"]["erased"]["revoked"] == 1
        assert status["services"]["notifications"]["erased"]["outgoing_mail"] == 2
        assert status["services"]["notifications"]["erased"]["deliveries"] >= 3
        # The certificate is revoked and gone: its code verifies nothing.
        assert httpx.get(verification, headers={"Accept": "application/json"}).status_code == 404

        # Nothing in any table of any service names Erin; the other learner is untouched.
        assert dbs.find(erin_data) == []
        assert dbs.find(forms(kept_id)) != []
        assert analytics(client, course_id) == before
        kept_records = client.get(f"/api/progress?courseId={course_id}", headers=kept).json()
        assert [r["lesson_id"] for r in kept_records] == [lessons[0]]
        exported = client.get(f"/api/admin/exports/{erin_id}", headers=ADMIN).json()["data"]["services"]
        assert all(rows == [] for service in exported.values() for rows in service.values()), exported

        # Asking again changes nothing: the same request, no new event, no new receipt.
        erasures, events = dbs.counts("erasures"), dbs.fetchval(
            "enrollment", "SELECT count(*) FROM outbox WHERE topic = 'learner-erased'")
        again = client.post(f"/api/admin/erasures/{erin_id}", headers=ADMIN)
        assert again.status_code == 202, again.text
        assert again.json()["message"] == "Erasure was already requested"
        assert again.json()["data"]["erasure_id"] == status["erasure_id"]
        assert dbs.counts("erasures") == erasures == dict.fromkeys(DATABASES, 1)
        assert dbs.fetchval("enrollment", "SELECT count(*) FROM outbox WHERE topic = 'learner-erased'") == events == 0
        assert dbs.find(erin_data) == []

    # An event about Erin produced before the erasure and delivered after it (late, or
    # published again) brings nothing back: progress would otherwise store her name and
    # address in its enrollment replica.
    late = EnrollmentChanged(
        user_id=erin_id, course_id=course_id, enrollment_id=10**9, status="active", revision=10**6,
        enrolled_at=datetime.now(UTC), username=erin_id, display_name=erin_name, email=erin_email,
        occurred_at=datetime.fromisoformat(status["requested_at"]) - timedelta(seconds=5),
    )
    asyncio.run(produce_raw(f"127.0.0.1:{stack.kafka_port}", "enrollment-changed",
                            late.model_dump_json().encode(), late.key().encode()))
    for db, consumer in (("progress", "progress-enrollments"), ("notifications", "notifications-enrollment-changed")):
        wait_for(lambda db=db, consumer=consumer: dbs.fetchval(  # type: ignore[misc]
            db, "SELECT count(*) FROM inbox WHERE consumer = $1 AND event_id = $2", consumer, late.event_id) == 1,
            what=f"{db} to consume the late event")
    assert dbs.find(erin_data) == []
    assert httpx.delete(f"{stack.gateway}/api/admin/webhooks/{hook_id}", headers=ADMIN).status_code == 204

    # Her application password is gone: refused within APP_PASSWORD_CACHE_S (2 s here). (Each
    # refusal is a failed sign-in counted under the id given, as for anyone unknown.)
    wait_for(lambda: httpx.get(f"{stack.gateway}/api/courses/my-courses", headers=basic).status_code == 401,
             timeout=15, what="the application password to be refused")
