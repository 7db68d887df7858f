"""The certificates service on a real PostgreSQL and the real broker: worker, API, verification,
exactly-once issuing, and regeneration."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pypdf

from services.certificates import store
from shared.events import CertificateIssued, Topic
from tests.certificates.support import Stack, certificate_stack, completion
from tests.helpers import TestEnv, TopicReader, eventually

ROOT = Path(__file__).resolve().parents[2]


def pdf_text(pdf: bytes) -> str:
    return "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf)).pages)


async def issued_events(reader: TopicReader) -> list[CertificateIssued]:
    return [CertificateIssued.model_validate_json(m.value) for m in reader.messages]


async def wait_for_certificate(stack: Stack, user: str, course_id: int = 10) -> dict[str, object]:
    async def probe() -> dict[str, object] | None:
        r = await stack.api.get(f"/api/courses/{course_id}/certificate", headers=stack.token(user))
        return r.json()["data"] if r.status_code == 200 else None

    return await eventually(probe, timeout=60, what=f"certificate of {user}")


async def test_completion_event_becomes_a_verifiable_pdf_certificate(test_env: TestEnv) -> None:
    async with certificate_stack(test_env) as stack, TopicReader(
        test_env.kafka_bootstrap, stack.settings.topic(Topic.CERTIFICATE_ISSUED.value)
    ) as reader:
        event = completion("u-1", name="Zoë Ødegård 李小龍")
        await stack.publish_completion(event)
        data = await wait_for_certificate(stack, "u-1")

        assert set(data) >= {"certificate_url", "certificate_id", "issued_at", "course_title", "student_name"}
        assert data["student_name"] == "Zoë Ødegård 李小龍"
        assert data["course_title"] == "Introduction to Web Development"
        assert str(data["certificate_id"]).startswith(f"CERT-{str(data['issued_at'])[:4]}-")
        code = str(data["verification_code"])
        assert data["certificate_url"] == f"{stack.settings.public_base_url}/certificates/{code}.pdf"

        pdf = await stack.api.get(f"/certificates/{code}.pdf")
        assert pdf.status_code == 200
        assert pdf.headers["content-type"] == "application/pdf"
        assert "max-age" in pdf.headers["cache-control"]
        text = pdf_text(pdf.content)
        for expected in ("Zoë Ødegård 李小龍", "Introduction to Web Development", str(data["certificate_id"]),
                         str(data["verification_url"])):
            assert expected in text
        cached = await stack.api.get(f"/certificates/{code}.pdf", headers={"If-None-Match": pdf.headers["etag"]})
        assert cached.status_code == 304

        page = await stack.api.get(f"/certificates/verify/{code}")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "Zoë Ødegård 李小龍" in page.text and "Introduction to Web Development" in page.text
        as_json = await stack.api.get(f"/certificates/verify/{code}", headers={"Accept": "application/json"})
        assert as_json.json()["data"]["valid"] is True
        assert as_json.json()["data"]["certificate_id"] == data["certificate_id"]

        for unknown in ("/certificates/verify/" + "a" * 24, "/certificates/" + "a" * 24 + ".pdf",
                        "/certificates/verify/nonsense"):
            r = await stack.api.get(unknown, headers={"Accept": "application/json"})
            assert r.status_code == 404
            assert r.json()["code"] == "certificate_not_found"
        assert (await stack.api.get("/certificates/verify/" + "a" * 24)).status_code == 404

        events = await eventually(lambda: issued_events(reader), what="certificate-issued")
        assert [(e.user_id, e.certificate_id, e.student_email) for e in events] == [
            ("u-1", data["certificate_id"], "u-1@example.com")
        ]
        asked = stack.progress.calls
        again = await stack.api.get("/api/courses/10/certificate", headers=stack.token("u-1"))
        assert again.json()["data"]["certificate_id"] == data["certificate_id"]
        assert stack.progress.calls == asked  # once issued, progress is not asked again


async def test_redelivered_and_duplicate_completions_issue_one_certificate(test_env: TestEnv) -> None:
    async with certificate_stack(test_env, workers=2) as stack, TopicReader(
        test_env.kafka_bootstrap, stack.settings.topic(Topic.CERTIFICATE_ISSUED.value)
    ) as reader:
        first = completion("u-dup")
        again = completion("u-dup")  # a second completion event for the same learner and course
        for event in (first, first, again, first, again):
            await stack.publish_completion(event)
        await stack.publish_completion(completion("u-other"))
        await wait_for_certificate(stack, "u-other")
        await wait_for_certificate(stack, "u-dup")

        async def all_applied() -> bool:
            n = await stack.db.fetchval("SELECT count(*) FROM inbox WHERE consumer = 'certificates-worker'")
            return int(n) == 3

        await eventually(all_applied, what="three distinct events applied")
        await eventually(lambda: _count_at_least(reader, 2), what="events published")
        assert await stack.certificate_count() == 2
        events = await issued_events(reader)
        assert sorted(e.user_id for e in events) == ["u-dup", "u-other"]


async def _count_at_least(reader: TopicReader, n: int) -> bool:
    return len(reader.messages) >= n


async def test_api_request_racing_the_worker_gives_one_certificate(test_env: TestEnv) -> None:
    async with certificate_stack(test_env) as stack, TopicReader(
        test_env.kafka_bootstrap, stack.settings.topic(Topic.CERTIFICATE_ISSUED.value)
    ) as reader:
        users = [f"race-{i}" for i in range(6)]
        for user in users:
            stack.progress.completions[(user, 10)] = completion(user)
        # The learners ask at the moment their completion events are published.
        asks = [stack.api.get("/api/courses/10/certificate", headers=stack.token(u)) for u in users]
        responses = await asyncio.gather(*asks, *(stack.publish_completion(stack.progress.completions[(u, 10)])
                                                  for u in users))
        for r in responses[: len(users)]:
            assert isinstance(r, httpx.Response)
            assert r.status_code in (200, 202)
            if r.status_code == 202:
                assert r.json()["status"] == "pending"
        for user in users:
            await wait_for_certificate(stack, user)
        await eventually(lambda: _count_at_least(reader, len(users)), what="events published")

        async def requests_settled() -> bool:  # the handed-over completions were consumed too
            pending = await stack.db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            return int(pending) == 0

        await eventually(requests_settled, what="outbox drained")
        await asyncio.sleep(0)  # let the reader catch up on anything already fetched
        assert await stack.certificate_count() == len(users)
        events = await issued_events(reader)
        assert sorted(e.user_id for e in events) == sorted(users)


async def test_a_completion_the_worker_has_not_seen_is_answered_from_progress(test_env: TestEnv) -> None:
    async with certificate_stack(test_env) as stack:
        stack.progress.completions[("fast", 10)] = completion("fast", name="Fast Learner")
        # No event published: only the progress service knows about this completion.
        r = await stack.api.get("/api/courses/10/certificate", headers=stack.token("fast"))
        assert r.status_code == 202
        assert r.json()["status"] == "pending"
        data = await wait_for_certificate(stack, "fast")
        assert data["student_name"] == "Fast Learner"

        stack.progress.percentages[("slow", 10)] = 75
        r = await stack.api.get("/api/courses/10/certificate", headers=stack.token("slow"))
        assert r.status_code == 400
        assert r.json() == {
            "code": "course_not_complete",
            "message": "You must complete all lessons to get a certificate",
            "data": {"status": 400, "progress_percentage": 75},
        }

        stack.progress.completions[("nocert", 11)] = completion("nocert", 11, enabled=False)
        await stack.publish_completion(stack.progress.completions[("nocert", 11)])
        r = await stack.api.get("/api/courses/11/certificate", headers=stack.token("nocert"))
        assert r.status_code == 404
        assert r.json()["code"] == "certificate_not_available"

        r = await stack.api.get("/api/courses/12/certificate", headers=stack.token("stranger"))
        assert r.status_code == 403 and r.json()["code"] == "not_enrolled"
        assert (await stack.api.get("/api/courses/10/certificate")).status_code == 401
        assert (await stack.api.get("/api/courses/abc/certificate", headers=stack.token("x"))).status_code == 400
        assert await stack.certificate_count(11) == 0


async def test_regeneration_rerenders_with_the_new_template_and_keeps_old_versions(test_env: TestEnv) -> None:
    async with certificate_stack(test_env) as stack:
        for user in ("r-1", "r-2"):
            await stack.publish_completion(completion(user, 20, title="Data Science"))
        before = {u: await wait_for_certificate(stack, u, 20) for u in ("r-1", "r-2")}
        admin = stack.token("admin-1", roles=["admin"])

        learner = await stack.api.post("/api/admin/courses/20/certificates/regenerate", headers=stack.token("r-1"))
        assert learner.status_code == 403
        bad = await stack.api.put("/api/admin/courses/20/certificates/template", headers=admin,
                                  json={"template": "{{ student_name "})
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_template"
        template = ("<html><body style='font-family: {{ font_stack | safe }}'><h1>Data Science Diploma</h1>"
                    "<p>{{ student_name }} {{ certificate_id }}</p><p>{{ verification_url }}</p></body></html>")
        saved = await stack.api.put("/api/admin/courses/20/certificates/template", headers=admin,
                                    json={"template": template})
        assert saved.status_code == 200 and saved.json()["data"]["revision"] == 1

        started = await stack.api.post("/api/admin/courses/20/certificates/regenerate", headers=admin)
        assert started.status_code == 202
        assert started.json()["data"]["certificates"] == 2
        rid = started.json()["data"]["regeneration_id"]

        async def finished() -> bool:
            r = await stack.api.get(f"/api/admin/courses/20/certificates/regenerations/{rid}", headers=admin)
            return bool(r.json()["data"]["status"] == "done")

        await eventually(finished, timeout=60, what="regeneration done")
        for user, old in before.items():
            now = await wait_for_certificate(stack, user, 20)
            assert (now["certificate_id"], now["verification_code"]) == (old["certificate_id"],
                                                                          old["verification_code"])
            code = old["verification_code"]
            current = await stack.api.get(f"/certificates/{code}.pdf")
            assert current.headers["x-certificate-version"] == "2"
            assert "Data Science Diploma" in pdf_text(current.content)
            first = await stack.api.get(f"/certificates/{code}.pdf?version=1")
            assert "Certificate of Completion" in pdf_text(first.content)
            assert "immutable" in first.headers["cache-control"]

        # The command-line entry point queues the same work for the workers.
        env = {**os.environ, "DATABASE_URL": stack.settings.database_url, "PYTHONPATH": str(ROOT)}
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "services.certificates.regenerate", "--course", "20"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "queued for 2 certificates" in done.stdout

        async def third_versions() -> bool:
            versions = await stack.db.fetchval("SELECT count(*) FROM certificate_files WHERE version = 3")
            return int(versions) == 2

        await eventually(third_versions, timeout=60, what="CLI regeneration rendered")
        cert = await store.get_certificate(stack.db, "r-1", 20)
        assert cert is not None and cert.current_version == 3
        assert len(await store.list_versions(stack.db, cert.certificate_id)) == 3
        listing = await stack.api.get("/api/admin/courses/20/certificates", headers=admin)
        assert listing.json()["meta"]["total"] == 2
        assert orjson.loads(listing.content)["data"][0]["version"] == 3
