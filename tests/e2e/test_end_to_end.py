"""A learner's whole journey through the gateway, across every real service process:
catalog, enrollment, progress, completion, certificate (a real PDF), emails (real SMTP).

Nothing is stubbed: ``lessonstream dev`` runs Tansu, the services, the certificate worker,
the SMTP sink and Caddy; the test only speaks HTTP to the gateway and reads the mail
the sink kept on disk.
"""

from __future__ import annotations

import email
import io
from collections.abc import Callable
from email.message import Message
from email.policy import default as default_policy
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pypdf
import pytest

from lessonstream import infra
from services.certificates import credentials
from shared.auth import issue_token
from shared.settings import ServiceSettings
from tests.devstack import DevStack, issued_certificate, published_course
from tests.reference_verifier import verify_with_reference

pytestmark = pytest.mark.xdist_group("e2e")

T = TypeVar("T")
SETTINGS = ServiceSettings()  # the dev stack runs on the development secret
FLUENT = "/wp-json/fluent-community/v2"




@pytest.fixture
def stack(e2e_stack: DevStack) -> DevStack:
    return e2e_stack


def auth(user_id: str, name: str = "", email_address: str = "", roles: list[str] | None = None) -> dict[str, str]:
    token = issue_token(SETTINGS, user_id=user_id, name=name, email=email_address, roles=roles or ["learner"])
    return {"Authorization": f"Bearer {token}"}


def wait_for(probe: Callable[[], T | None], *, timeout: float = 60, what: str) -> T:
    return infra.wait_until(probe, timeout, interval=0.2, what=what)


def mails_to(mail_dir: Path, address: str) -> list[Message]:
    found: list[Message] = []
    for path in sorted(mail_dir.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=default_policy)
        if address in str(message["To"]):
            found.append(message)
    return found


def text_of(message: Message) -> str:
    parts = [p for p in message.walk() if p.get_content_type() == "text/plain"]
    return "\n".join(str(p.get_content()) for p in parts)  # type: ignore[attr-defined]


def test_a_learner_enrolls_completes_gets_a_certificate_and_the_emails(stack: DevStack) -> None:
    admin = auth("admin-1", "Admin", "admin@example.com", ["admin"])
    learner_email = "zoe@example.com"
    learner = auth("learner-7", "Zoë Ångström-李", learner_email)
    with httpx.Client(base_url=stack.gateway, timeout=15) as client:
        # The catalog: two required lessons and an optional one.
        course_id, lessons = published_course(client, admin, "Introduction to Web Development",
                                              [("HTML", True), ("CSS", True), ("Extras", False)])

        # Enroll through the Fluent alias, then record progress at once (read-your-writes).
        enrolled = client.post(f"{FLUENT}/courses/{course_id}/enroll", headers=learner)
        assert enrolled.status_code == 200, enrolled.text
        assert enrolled.json()["message"] == "Successfully enrolled in course"
        assert enrolled.json()["data"]["course_id"] == course_id
        again = client.post(f"/api/courses/{course_id}/enroll", headers=learner)
        assert again.status_code == 400 and again.json()["code"] == "already_enrolled"

        heartbeat = client.post("/api/progress", headers=learner, json={
            "course_id": course_id, "lesson_id": lessons[0], "completed": False,
            "video_progress": 180, "last_position": 180,
        })
        assert heartbeat.status_code == 200, heartbeat.text
        assert heartbeat.json()["last_position"] == 180

        records = client.get(f"/api/progress?courseId={course_id}", headers=learner).json()
        assert [(r["lesson_id"], r["last_position"], r["state"]) for r in records] == [
            (lessons[0], 180, "in_progress")
        ]

        # Completing both required lessons completes the course.
        first = client.post(f"/api/courses/{course_id}/lessons/{lessons[0]}/complete", headers=learner)
        assert first.json()["message"] == "Lesson marked as complete"
        assert first.json()["data"]["progress_percentage"] == 50
        assert first.json()["data"]["next_lesson"]["id"] == lessons[1]
        last = client.post(f"{FLUENT}/courses/{course_id}/lessons/{lessons[1]}/complete", headers=learner)
        assert last.json()["data"]["progress_percentage"] == 100
        repeat = client.post(f"/api/courses/{course_id}/lessons/{lessons[1]}/complete", headers=learner)
        assert repeat.json()["message"] == "Lesson already marked as complete"

        progress = client.get(f"/api/courses/{course_id}/progress", headers=learner).json()["data"]
        assert progress["progress_percentage"] == 100
        assert progress["completed_at"] is not None
        assert progress["missing_required_lessons"] == []

        # The certificate, asked for at once: pending or ready, never "not complete".
        issued = issued_certificate(client, course_id, learner)
        assert issued["course_title"] == "Introduction to Web Development"
        assert issued["student_name"] == "Zoë Ångström-李"
        assert issued["certificate_id"].startswith("CERT-")

        pdf = client.get(issued["certificate_url"].replace(SETTINGS.public_base_url, stack.gateway))
        assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
        text = "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf.content)).pages)
        assert "Introduction to Web Development" in text
        assert issued["certificate_id"] in text

        verified = client.get(
            issued["verification_url"].replace(SETTINGS.public_base_url, stack.gateway),
            headers={"Accept": "application/json"},
        )
        assert verified.status_code == 200
        assert verified.json()["data"]["valid"] is True

        # The signed credential, verified offline with the issuer's did:web document, both
        # fetched through the gateway; by our verifier and by the independent one.
        served = client.get(issued["credential_url"].replace(SETTINGS.public_base_url, stack.gateway))
        assert served.status_code == 200 and served.headers["content-type"] == "application/vc+ld+json"
        credential = served.json()
        did_url = credentials.did_document_url(credential["issuer"]["id"])
        assert did_url.endswith("/.well-known/did.json")
        did_document = client.get(urlsplit(did_url).path).json()
        assert did_document["id"] == credential["issuer"]["id"]
        assert credentials.verify_proof(credential, credentials.keys_from_did_document(did_document).get).valid
        contexts = {url: credentials.document_loader(url)["document"] for url in credentials.CONTEXT_URLS}
        assert verify_with_reference(credential, did_document, contexts) == (True, "")

        # The enrollment and the progress object learn of the completion and the certificate.
        def completed_course() -> dict[str, Any] | None:
            courses = client.get("/api/courses/my-courses?status=completed", headers=learner).json()["data"]
            done = [c for c in courses if c["course_id"] == course_id and c["certificate_url"]]
            return done[0] if done else None

        mine = wait_for(completed_course, what="the enrollment to be completed with its certificate")
        assert mine["status"] == "completed" and mine["completed_at"] is not None
        assert mine["progress_percentage"] == 100

        def certificate_url_in_progress() -> str | None:
            data = client.get(f"/api/courses/{course_id}/progress", headers=learner).json()["data"]
            return data["certificate_url"] or None

        assert wait_for(certificate_url_in_progress, what="certificate_url in progress") == issued["certificate_url"]

    # Exactly one email of each kind reaches the learner's inbox.
    mail_dir = stack.var_dir / "mail"

    def both_mails() -> list[Message] | None:
        found = mails_to(mail_dir, learner_email)
        return found if len(found) >= 2 else None

    mails = wait_for(both_mails, what="the completion and certificate emails")
    subjects = sorted(str(m["Subject"]) for m in mails_to(mail_dir, learner_email))
    assert subjects == [
        "Congratulations, you completed Introduction to Web Development",
        "Your certificate for Introduction to Web Development is ready",
    ]
    certificate_mail = next(m for m in mails if str(m["Subject"]).startswith("Your certificate"))
    assert issued["verification_url"] in text_of(certificate_mail)
    assert issued["credential_url"] in text_of(certificate_mail)

    # An admin revokes the certificate through the gateway: the status list says so, the
    # enrollment records it, and the learner is told why (each confirmed with certificates).
    with httpx.Client(base_url=stack.gateway, timeout=15) as client:
        revoked = client.post(f"/api/admin/certificates/{issued['certificate_id']}/revoke",
                              headers=auth("admin-1", roles=["admin"]), json={"reason": "Identity not confirmed"})
        assert revoked.status_code == 200, revoked.text
        status_list = client.get(urlsplit(credential["credentialStatus"]["statusListCredential"]).path).json()
        bits = credentials.decode_status_list(status_list["credentialSubject"]["encodedList"])
        assert credentials.status_bit(bits, int(credential["credentialStatus"]["statusListIndex"]))

        def revocation_recorded() -> dict[str, Any] | None:
            courses = client.get("/api/courses/my-courses?status=completed", headers=learner).json()["data"]
            done = [c for c in courses if c["course_id"] == course_id and c.get("certificate_revoked_at")]
            return done[0] if done else None

        assert wait_for(revocation_recorded, what="the revocation in the enrollment")["certificate_revocation_reason"] \
            == "Identity not confirmed"

    def revocation_mail() -> Message | None:
        found = [m for m in mails_to(mail_dir, learner_email) if "revoked" in str(m["Subject"])]
        return found[0] if found else None

    assert "Identity not confirmed" in text_of(wait_for(revocation_mail, what="the revocation email"))
