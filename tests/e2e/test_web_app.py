"""The reference web app (web/, at /app/ on the gateway) in a real browser, against the whole
stack: a learner signs in, plays a lesson's video, reloads and resumes where they stopped,
completes lessons in order and opens their certificate; an instructor sees their learners
sorted by progress and the course's charts drawn with the API's numbers. Screenshots of
every page go under var/screenshots/."""

from __future__ import annotations

import os
import re
import signal
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, ViewportSize, expect

from lessonstream.cli import SAMPLE_VIDEO_SECONDS
from tests.browser import screenshot, until
from tests.devstack import DevStack, published_course
from tests.e2e.test_end_to_end import auth, wait_for

pytestmark = pytest.mark.xdist_group("e2e")

VIDEO_SECONDS = SAMPLE_VIDEO_SECONDS  # web/media/sample.webm, the video every video lesson plays
PHONE: ViewportSize = {"width": 390, "height": 844}
MOMENT = re.compile(r"\d{4}-\d\d-\d\dT[0-9:.]+[+-]\d\d:\d\d")


def sequential_course(
    client: httpx.Client, title: str, lessons: list[tuple[str, str]], instructor: str, **fields: object,
) -> tuple[int, list[int]]:
    """A published course whose lessons open in order (``(title, kind)``, all required),
    with certificates and any other ``fields``; video lessons last as long as the sample video."""
    admin = auth("admin-web", "Admin", "admin@example.com", ["admin"])
    return published_course(
        client, admin, title, [(name, True, kind) for name, kind in lessons], duration_seconds=VIDEO_SECONDS,
        requires_sequential_progress=True, instructor_ids=[instructor], **fields,
    )


def sign_in(page: Page, gateway: str, user_id: str, name: str, role: str = "learner") -> None:
    """The development sign-in page, as a person fills it in."""
    page.goto(f"{gateway}/app/")
    expect(page.locator("h1")).to_have_text("Sign in")
    page.get_by_label("User id").fill(user_id)
    page.get_by_label("Name").fill(name)
    page.get_by_label("Role").select_option(role)
    page.get_by_role("button", name="Sign in", exact=True).click()


def play_until(page: Page, seconds: float, *, rate: float = 1.0) -> float:
    """Start the player (at ``rate``) and wait until it has reached ``seconds``."""
    page.evaluate(f"(() => {{ const v = document.querySelector('video'); v.playbackRate = {rate}; v.play(); }})()")
    position: float = until(
        page, f"(() => {{ const t = document.querySelector('video').currentTime; return t >= {seconds} && t; }})()",
        what=f"the video at {seconds} s", timeout=seconds / rate + 30,
    )
    return position


def test_a_learner_resumes_a_video_completes_the_course_in_order_and_opens_the_certificate(
    e2e_stack: DevStack, page: Page,
) -> None:
    gateway = e2e_stack.gateway
    with httpx.Client(base_url=gateway, timeout=15) as client:
        course_id, (first, second, third) = sequential_course(
            client, "Watching Birds", [("Songbirds", "video"), ("Raptors", "video"), ("Field notes", "text")],
            "instructor-web-1",
        )

    sign_in(page, gateway, "learner-web-1", "Wren Okafor")
    expect(page.locator("h1")).to_have_text("My courses")
    expect(page.locator("main")).to_contain_text("You are not enrolled in any course yet.")
    # A wrong course number: the API's own message, not a crash.
    page.get_by_label("Enroll in course number").fill("987654321")
    page.get_by_role("button", name="Enroll", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("Course not found")
    page.get_by_label("Enroll in course number").fill(str(course_id))
    page.get_by_role("button", name="Enroll", exact=True).click()

    # The course: the first lesson is next, the others locked with the reason.
    expect(page.locator("h1")).to_have_text("Watching Birds")
    lessons = page.locator(".lessons > li")
    expect(lessons).to_have_count(3)
    expect(page.locator(f'[data-lesson-id="{first}"]')).to_have_class("lesson new next")
    for locked in (second, third):
        row = page.locator(f'[data-lesson-id="{locked}"]')
        expect(row).to_have_attribute("data-status", "locked")
        expect(row).to_contain_text("Locked: complete “Songbirds” first")
        expect(row.get_by_role("link")).to_have_count(0)
    screenshot(page, "app-course-locked-lessons")

    # Play, see a heartbeat saved, reload: the player resumes within a heartbeat of where it stopped.
    page.get_by_role("link", name="Songbirds").click()
    expect(page.locator("h1")).to_have_text("Songbirds")
    play_until(page, 6.5)
    expect(page.locator("#saved")).to_contain_text("Progress saved at")
    stopped: float = page.evaluate("document.querySelector('video').currentTime")
    page.reload()  # pagehide: the last position goes out with navigator.sendBeacon
    expect(page.locator("#resume")).to_contain_text("Resuming where you stopped")
    resumed: float = until(page, "(v => v.readyState >= 1 && v.currentTime)(document.querySelector('video'))",
                           what="the resumed position")
    assert stopped - 5 <= resumed <= stopped + 1, (stopped, resumed)
    screenshot(page, "app-lesson-resumed")

    # To the end: the lesson completes and the next one opens.
    play_until(page, VIDEO_SECONDS - 0.1)
    expect(page.locator("#outcome")).to_contain_text("Lesson marked as complete")
    page.get_by_role("link", name="Watching Birds").click()
    expect(page.locator(f'[data-lesson-id="{first}"]')).to_have_attribute("data-status", "completed")
    expect(page.locator(f'[data-lesson-id="{second}"]')).to_have_class("lesson new next")
    expect(page.locator(f'[data-lesson-id="{third}"]')).to_contain_text("Locked: complete “Raptors” first")
    page.get_by_role("link", name="Raptors", exact=True).click()
    expect(page.locator("h1")).to_have_text("Raptors")
    play_until(page, VIDEO_SECONDS - 0.1, rate=2.0)
    expect(page.locator("#outcome")).to_contain_text("Lesson marked as complete")
    page.get_by_role("link", name="Next: Field notes").click()
    page.get_by_role("button", name="Mark as complete").click()
    expect(page.locator("#outcome")).to_contain_text("course 100% complete")
    screenshot(page, "app-lesson-completed")

    # The certificate, once the workers issued it: the PDF, the verification page, the credential.
    page.get_by_role("link", name="Course complete: see your certificate").click()
    pdf = page.get_by_role("link", name="Download the certificate (PDF)")
    expect(pdf).to_be_visible(timeout=60_000)
    expect(page.locator("#certificate")).to_contain_text("Awarded to Wren Okafor for Watching Birds")
    for name, kind in (("Download the certificate (PDF)", "application/pdf"),
                       ("Signed credential (Open Badges 3.0)", "application/vc+ld+json"),
                       ("Verification page", "text/html")):
        href = page.get_by_role("link", name=name).get_attribute("href")
        assert href and href.startswith("/"), href
        answer = page.request.get(f"{gateway}{href}")
        assert answer.status == 200 and answer.headers["content-type"].startswith(kind), (name, answer.status)
    screenshot(page, "app-certificate")

    page.get_by_role("link", name="My courses").first.click()
    card = page.locator(f'[data-course-id="{course_id}"]')
    expect(card.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    screenshot(page, "app-my-courses")

    # What the page showed is what the API holds.
    with httpx.Client(base_url=gateway, timeout=15) as client:
        progress = client.get(f"/api/courses/{course_id}/progress", headers=auth("learner-web-1")).json()["data"]
    assert progress["progress_percentage"] == 100 and progress["completed_at"] is not None


def learner_at(
    client: httpx.Client, course_id: int, lessons: list[int], user_id: str, name: str, done: int, *,
    then_watched: float = 0,
) -> None:
    """A learner enrolled who watched and completed the first ``done`` lessons, then watched
    ``then_watched`` seconds of the next one, as a player reports it."""
    headers = auth(user_id, name, f"{user_id}@example.com")
    assert client.post(f"/api/courses/{course_id}/enroll", headers=headers).status_code == 200
    for i, lesson_id in enumerate(lessons[:done + 1]):
        watched = VIDEO_SECONDS if i < done else then_watched
        if watched:
            beat = client.post("/api/progress", headers=headers, json={
                "course_id": course_id, "lesson_id": lesson_id, "video_progress": watched,
                "last_position": watched, "played_segments": [[0, watched]]})
            assert beat.status_code == 200, beat.text
        if i < done:
            completed = client.post(f"/api/courses/{course_id}/lessons/{lesson_id}/complete", headers=headers)
            assert completed.status_code == 200, completed.text


def test_the_instructor_sees_learners_by_progress_and_charts_with_the_apis_numbers(
    e2e_stack: DevStack, page: Page,
) -> None:
    gateway = e2e_stack.gateway
    instructor = "instructor-web-2"
    with httpx.Client(base_url=gateway, timeout=15) as client:
        course_id, lessons = sequential_course(
            client, "Tide Pools", [("Anemones", "video"), ("Crabs", "video"), ("Starfish", "text")], instructor)
        for user_id, name, done, then in (("web-tide-1", "Noor Haddad", 1, 6), ("web-tide-2", "Ines Duarte", 3, 0),
                                          ("web-tide-3", "Tomas Lind", 0, 0), ("web-tide-4", "Mei Chen", 2, 0)):
            learner_at(client, course_id, lessons, user_id, name, done, then_watched=then)
        staff = auth(instructor, "Rosa Vance", "rosa@example.com", ["instructor"])

        def settled() -> list[dict[str, Any]] | None:
            rows = client.get(f"/api/courses/{course_id}/students", headers=staff,
                              params={"orderby": "progress_percentage", "order": "desc"}).json()["data"]
            ordered: list[dict[str, Any]] = rows
            return ordered if [r["progress_percentage"] for r in rows] == [100, 66, 33, 0] else None

        students = wait_for(settled, what="every learner's progress in enrollment")

        def analysed() -> dict[str, Any] | None:
            answer = client.get(f"/api/admin/courses/{course_id}/analytics", headers=staff)
            report: dict[str, Any] = answer.json()["data"]
            done = {d["title"]: (d["completed"], d["started"]) for d in report["lesson_difficulty"]}
            return report if report["completion"]["enrolled"] == 4 and done["Crabs"] == (2, 3) else None

        # Progress learns of enrollments from their events: every learner counted there too.
        # Noor started "Crabs" without finishing it: 2 of its 3 learners completed it.
        report = wait_for(analysed, what="every enrollment in the course's analytics")
        csv = client.get(f"/api/admin/courses/{course_id}/analytics", headers=staff, params={"format": "csv"}).text

    sign_in(page, gateway, instructor, "Rosa Vance", role="instructor")
    expect(page.locator("h1")).to_have_text("Courses you manage")
    page.get_by_role("link", name="Tide Pools").click()
    expect(page.locator("h1")).to_have_text("Tide Pools")

    # Learners, most progress first; the column sorts the other way on request.
    rows = page.locator("table.students tbody tr")
    expect(rows).to_have_count(4)
    assert [rows.nth(i).get_attribute("data-user-id") for i in range(4)] == [s["user_id"] for s in students]
    expect(rows.first).to_contain_text("Ines Duarte")
    page.get_by_role("button", name="Progress").click()
    expect(rows.first).to_have_attribute("data-progress", "0")
    expect(rows.last).to_have_attribute("data-progress", "100")

    # The charts show the report's numbers.
    completion = page.locator('[data-chart="completion"]')
    expect(completion.locator('[data-key="enrolled"]')).to_have_text(str(report["completion"]["enrolled"]))
    expect(completion.locator('[data-key="completed"]')).to_have_text(str(report["completion"]["completed"]))
    assert report["completion"] == {"enrolled": 4, "completed": 1, "completion_rate": 25.0}
    expect(completion.locator('[data-key="completion_rate"]')).to_have_text("25%")
    bars = page.locator('[data-chart="difficulty"] g.bar')
    expect(bars).to_have_count(3)
    shown = [(int(bars.nth(i).get_attribute("data-key") or 0), float(bars.nth(i).get_attribute("data-value") or 0))
             for i in range(3)]
    assert shown == [(d["lesson_id"], d["completion_rate"] or 0.0) for d in report["lesson_difficulty"]]
    for d in report["lesson_difficulty"]:
        expect(page.locator(f'[data-chart="difficulty"] g.bar[data-key="{d["lesson_id"]}"] text.value')).to_have_text(
            f'{round(d["completion_rate"], 1):g}% ({d["completed"]} of {d["started"]})')
    # Engagement is of the video lessons (Starfish is a reading).
    engagement = page.locator('[data-chart="engagement"] g.bar')
    expect(engagement).to_have_count(2)
    for e in report["engagement"][:2]:
        bar = page.locator(f'[data-chart="engagement"] g.bar[data-key="{e["lesson_id"]}"]')
        value = bar.get_attribute("data-value")
        assert float(value or 0) == (e["average_watched_ratio"] or 0.0)
    expect(page.locator('[data-chart="drop-off"] g.bar')).to_have_count(3)
    screenshot(page, "app-instructor-dashboard")

    # The CSV download is the API's report.
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    downloaded = download.value
    assert downloaded.suggested_filename == f"course-{course_id}-analytics.csv"
    saved = Path(downloaded.path()).read_bytes().decode()
    # Generated a moment apart: the same but for the moments it names (generated, inactive since).
    assert re.sub(MOMENT, "<moment>", saved) == re.sub(MOMENT, "<moment>", csv)
    assert saved.count("\n") > 10

    # The date range: nobody enrolled from tomorrow on, as the API says too.
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    page.get_by_label("Enrolled from").fill(tomorrow)
    page.get_by_role("button", name="Apply").click()
    expect(completion.locator('[data-key="enrolled"]')).to_have_text("0")
    with httpx.Client(base_url=gateway, timeout=15) as client:
        later = client.get(f"/api/admin/courses/{course_id}/analytics", headers=staff, params={"from": tomorrow})
    assert later.json()["data"]["completion"]["enrolled"] == 0
    expect(page.get_by_label("Enrolled from")).to_have_value(tomorrow)

    # One learner's detail.
    page.get_by_role("link", name="Mei Chen").click()
    expect(page.locator("h1")).to_have_text("Learner web-tide-4")
    expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "66")
    screenshot(page, "app-instructor-learner")


def test_the_app_fits_a_phone_and_every_control_has_a_name(e2e_stack: DevStack, page: Page) -> None:
    page.set_viewport_size(PHONE)
    gateway = e2e_stack.gateway
    with httpx.Client(base_url=gateway, timeout=15) as client:
        course_id, _ = sequential_course(client, "Knots at Sea", [("Bowline", "video"), ("Cleat hitch", "text")],
                                         "instructor-web-3")
        assert client.post(f"/api/courses/{course_id}/enroll", headers=auth("learner-web-3")).status_code == 200
    page.goto(f"{gateway}/app/")
    expect(page.locator("h1")).to_have_text("Sign in")
    screenshot(page, "app-sign-in-phone")
    # A demo person is one press away; signing out comes back here.
    page.get_by_role("button", name=re.compile("^Margaret Hamilton")).click()
    expect(page.locator("h1")).to_have_text("Courses you manage")
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, gateway, "learner-web-3", "Kai Moana")
    for path, heading in ((f"#/courses/{course_id}", "Knots at Sea"), ("#/", "My courses")):
        page.goto(f"{gateway}/app/{path}")
        expect(page.locator("h1")).to_have_text(heading)
        # Nothing wider than the screen, every field labelled, every button named.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        unnamed = page.evaluate("""[...document.querySelectorAll('input, select, button, a')]
            .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
            .map(el => el.outerHTML)""")
        assert unnamed == []
        screenshot(page, f"app-phone-{heading}")
    # Keyboard: each page puts focus on its content, and Tab goes on from there to the course.
    assert page.evaluate("document.activeElement.id") == "main"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Knots at Sea"
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Knots at Sea")


def test_a_host_platform_hands_the_app_its_token_in_the_fragment(e2e_stack: DevStack, page: Page) -> None:
    """Production's way in (no development sign-in there): /app/#token=..., kept for the tab
    and taken out of the address bar."""
    token = auth("learner-web-6", "Ola Nordmann")["Authorization"].removeprefix("Bearer ")
    page.goto(f"{e2e_stack.gateway}/app/#token={token}")
    expect(page.locator("h1")).to_have_text("My courses")
    expect(page.locator("#nav")).to_contain_text("Ola Nordmann")
    assert token not in page.url
    page.reload()
    expect(page.locator("h1")).to_have_text("My courses")  # still signed in, in this tab

    # A token the services refuse (expired, or not theirs): back to sign-in, told why.
    page.goto(f"{e2e_stack.gateway}/app/#token={token[:-4]}AAAA")
    expect(page.locator("h1")).to_have_text("Sign in")
    expect(page.locator("main")).to_contain_text("Your session has ended: please sign in again.")


def test_a_video_skipped_to_its_end_is_not_completed_and_the_page_says_why(e2e_stack: DevStack, page: Page) -> None:
    gateway = e2e_stack.gateway
    with httpx.Client(base_url=gateway, timeout=15) as client:
        course_id, (video,) = sequential_course(client, "Glassblowing", [("Gathering", "video")], "instructor-web-5",
                                                video_completion_threshold=0.9)
        assert client.post(f"/api/courses/{course_id}/enroll", headers=auth("learner-web-5")).status_code == 200
    sign_in(page, gateway, "learner-web-5", "Sami Virtanen")
    page.goto(f"{gateway}/app/#/courses/{course_id}/lessons/{video}")
    expect(page.locator("h1")).to_have_text("Gathering")
    until(page, "document.querySelector('video').readyState >= 1", what="the video's metadata")
    page.evaluate("(v => { v.currentTime = 10.5; v.play(); })(document.querySelector('video'))")
    refusal = page.get_by_role("alert")
    expect(refusal).to_contain_text("Watch at least 90% of this video to complete it", timeout=20_000)
    expect(refusal).to_contain_text(re.compile(r"Watched \d+%, 90% needed\."))
    expect(page.locator(".done")).to_have_attribute("data-status", "open")
    screenshot(page, "app-lesson-not-watched")
    with httpx.Client(base_url=gateway, timeout=15) as client:
        records = client.get(f"/api/progress?course_id={course_id}", headers=auth("learner-web-5")).json()
    assert [(r["lesson_id"], r["completed"]) for r in records] == [(video, False)]
    assert records[0]["watched_ratio"] < 0.9


def test_a_restarting_service_is_asked_again_and_the_page_shows_its_answer(e2e_stack: DevStack, page: Page) -> None:
    """Enrollment killed under the page: the gateway answers 503 with Retry-After until the
    runner has started it again, the app says so and asks again, then shows the courses."""
    gateway = e2e_stack.gateway
    with httpx.Client(base_url=gateway, timeout=15) as client:
        course_id, _ = sequential_course(client, "Bread Baking", [("Starter", "video")], "instructor-web-4")
        assert client.post(f"/api/courses/{course_id}/enroll", headers=auth("learner-web-4")).status_code == 200
    sign_in(page, gateway, "learner-web-4", "Lena Brot")
    card = page.locator(f'[data-course-id="{course_id}"]')
    expect(card).to_be_visible()

    answers: list[int] = []
    page.on("response", lambda r: answers.append(r.status) if "/api/courses/my-courses" in r.url else None)
    before = e2e_stack.pids()["enrollment"]
    os.kill(before, signal.SIGKILL)
    page.reload()
    expect(page.locator("#status")).to_contain_text("unavailable for a moment", timeout=10_000)
    expect(card).to_be_visible(timeout=60_000)
    assert answers[0] == 503 and answers[-1] == 200, answers
    expect(page.locator("#status")).to_be_empty()
    screenshot(page, "app-after-a-restart")

    # The stack is whole again for the modules after this one.
    def restarted() -> bool | None:
        pid = e2e_stack.pids().get("enrollment")
        ready = httpx.get(f"{gateway}/ready/enrollment", timeout=5).status_code == 200
        return True if pid not in (None, before) and ready else None

    wait_for(restarted, what="enrollment started again and ready")
