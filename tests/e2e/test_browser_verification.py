"""The public verification page in a real browser (Chromium through Playwright), through the
gateway of the shared end-to-end stack: a learner's certificate is issued, then anyone
opening its verification link sees it verified, with the learner, the course and working
links to the PDF and the signed credential; an unknown code says so."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Page

from tests.browser import screenshot
from tests.devstack import DevStack, issued_certificate, published_course
from tests.e2e.test_end_to_end import SETTINGS, auth

pytestmark = pytest.mark.xdist_group("e2e")


def test_a_verification_link_shows_the_certificate_verified_in_a_browser(e2e_stack: DevStack, page: Page) -> None:
    admin = auth("admin-1", "Admin", "admin@example.com", ["admin"])
    learner = auth("learner-41", "Amara Nwosu", "amara@example.com")
    with httpx.Client(base_url=e2e_stack.gateway, timeout=15) as client:
        course_id, lessons = published_course(client, admin, "Data Ethics", [("Consent", True)])
        assert client.post(f"/api/courses/{course_id}/enroll", headers=learner).status_code == 200
        done = client.post(f"/api/courses/{course_id}/lessons/{lessons[0]}/complete", headers=learner)
        assert done.status_code == 200, done.text

        issued = issued_certificate(client, course_id, learner)

    link = str(issued["verification_url"]).replace(SETTINGS.public_base_url, e2e_stack.gateway)
    answer = page.goto(link)
    assert answer is not None and answer.status == 200
    assert page.locator("h1").inner_text() == "Certificate verified"
    body = page.locator("main").inner_text()
    assert "Amara Nwosu" in body and "Data Ethics" in body
    screenshot(page, "verification-valid")

    # The links a verifier follows: the PDF and the signed credential.
    for name, kind in (("Download the certificate (PDF)", "application/pdf"),
                       ("download the credential", "application/vc+ld+json")):
        href = page.get_by_role("link", name=name).get_attribute("href")
        assert href
        followed = page.request.get(href.replace(SETTINGS.public_base_url, e2e_stack.gateway))
        assert followed.status == 200 and followed.headers["content-type"].startswith(kind), (name, followed.status)

    # Back to the platform: its web app.
    assert (page.get_by_role("link", name=re.compile("^Go to ")).get_attribute("href") or "").endswith("/app/")

    page.goto(f"{e2e_stack.gateway}/certificates/verify/NOT-A-CODE")
    assert page.locator("h1").inner_text() == "Certificate not found"
    screenshot(page, "verification-not-found")
