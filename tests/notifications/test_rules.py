"""Pure rules and message building, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from typing import Any
from uuid import uuid4

import aiosmtplib
import pytest

from services.notifications import domain
from services.notifications.mail import MailComposer
from services.notifications.settings import NotificationsSettings
from services.notifications.smtp import classify
from tests.notifications.events import certificate, completed

NOW = datetime(2025, 3, 6, tzinfo=UTC)


def test_message_id_is_stable_per_event_and_kind() -> None:
    event_id = uuid4()
    a = domain.message_id(domain.MailKind.COURSE_COMPLETED, event_id, "x@mail.example")
    assert a == domain.message_id(domain.MailKind.COURSE_COMPLETED, event_id, "x@mail.example")
    assert a != domain.message_id(domain.MailKind.CERTIFICATE_READY, event_id, "x@mail.example")
    assert a.endswith("@mail.example>") and event_id.hex in a


def test_plan_skips_mail_without_address_or_for_old_events() -> None:
    fresh = completed("a", occurred_at=NOW - timedelta(hours=1))
    assert domain.plan(fresh, from_address="f@x.example", now=NOW, max_age=timedelta(days=7)).status == "pending"
    old = completed("a", occurred_at=NOW - timedelta(days=8))
    planned = domain.plan(old, from_address="f@x.example", now=NOW, max_age=timedelta(days=7))
    assert planned.status == "skipped" and "older" in (planned.note or "")
    assert domain.plan(old, from_address="f@x.example", now=NOW, max_age=None).status == "pending"
    for bad in ("", "not-an-address", "a@b", "a b@c.example", "x@y.example\r\nBcc: z@evil.example"):
        planned = domain.plan(completed("a", user_email=bad), from_address="f@x.example", now=NOW, max_age=None)
        assert planned.status == "skipped", bad


def test_header_safe_removes_line_breaks_and_bounds_length() -> None:
    assert domain.header_safe("a\r\nBcc: b\tc") == "a Bcc: b c"
    assert len(domain.header_safe("x" * 500, 100)) == 100


@pytest.mark.parametrize(("attempt", "expected"), [(1, 30.0), (2, 60.0), (5, 480.0), (20, 3600.0)])
def test_retry_delay_grows_exponentially_up_to_the_cap(attempt: int, expected: float) -> None:
    # The jitter draws below the exponential step, down to 40 % less (docs/notifications.md).
    assert domain.retry_delay(attempt, base_s=30, max_s=3600, draw=0.0) == pytest.approx(expected)
    assert domain.retry_delay(attempt, base_s=30, max_s=3600, draw=0.5) == pytest.approx(0.8 * expected)
    low = domain.retry_delay(attempt, base_s=30, max_s=3600, draw=0.999)
    assert 0.6 * expected <= low < 0.601 * expected


@pytest.mark.parametrize(("base_s", "max_s"), [(30.0, 3600.0), (0.1, 0.5), (7.0, 100.0), (50.0, 20.0)])
def test_retry_delay_never_exceeds_the_cap(base_s: float, max_s: float) -> None:
    draws: list[float | None] = [*(i / 100 for i in range(100)), 0.999999]
    draws += [None] * 100  # random draws
    for attempt in range(1, 41):
        for draw in draws:
            delay = domain.retry_delay(attempt, base_s=base_s, max_s=max_s, draw=draw)
            assert 0 < delay <= max_s, (attempt, draw, delay)


def test_retry_delays_of_a_burst_are_spread() -> None:
    # 200 mails failing together at their 3rd try: their next tries must not coincide.
    step = 120.0
    delays = [domain.retry_delay(3, base_s=30, max_s=3600) for _ in range(200)]
    assert all(0.6 * step <= d <= step for d in delays)
    assert max(delays) - min(delays) > 0.3 * step
    assert len({round(d, 3) for d in delays}) > 150
    # Also at the cap, where the exponential steps of different tries are all the same.
    capped = [domain.retry_delay(12, base_s=30, max_s=3600) for _ in range(200)]
    assert max(capped) <= 3600 and max(capped) - min(capped) > 0.3 * 3600


def test_after_failure_decides_retry_give_up_or_fail() -> None:
    temporary, permanent = domain.Failure(True, "451"), domain.Failure(False, "550")
    retry = domain.after_failure(temporary, 1, max_attempts=3, delay_s=2.0)
    assert (retry.status, retry.retry_in_s, retry.dead_letter) == ("pending", 2.0, False)
    last = domain.after_failure(temporary, 3, max_attempts=3, delay_s=2.0)
    assert (last.status, last.dead_letter) == ("expired", True)
    failed = domain.after_failure(permanent, 1, max_attempts=3, delay_s=2.0)
    assert (failed.status, failed.outcome, failed.dead_letter) == ("failed", "permanent_failure", True)


def test_smtp_errors_are_classified_by_reply_code() -> None:
    refused = aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "no such user", "a@b.c")])
    assert classify(refused) == domain.Failure(False, "550 no such user", 550)
    busy = aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(452, "full", "a@b.c")])
    assert classify(busy).temporary
    assert not classify(aiosmtplib.SMTPDataError(554, "rejected")).temporary
    assert classify(aiosmtplib.SMTPSenderRefused(421, "closing", "f@x")).temporary
    assert classify(aiosmtplib.SMTPAuthenticationError(535, "bad credentials")).temporary
    assert classify(aiosmtplib.SMTPConnectError("refused")).temporary
    assert classify(aiosmtplib.SMTPServerDisconnected("gone")).temporary
    assert classify(ConnectionRefusedError()).temporary
    assert classify(TimeoutError()).temporary


def test_composed_message_is_multipart_with_safe_headers() -> None:
    settings = NotificationsSettings(mail_from_name="Academy\r\nX-Evil: 1", mail_from_address="m@academy.example")
    composer = MailComposer(settings)
    event = certificate("u", course_title="Ä\nB", student_name="N\r\nCc: x@evil.example")
    msg = composer.compose(
        domain.MailKind.CERTIFICATE_READY, event, message_id="<id@academy.example>", date=NOW
    )
    raw = msg.as_bytes()
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == "Your certificate for Ä B is ready"
    assert "Cc" not in parsed and "X-Evil" not in parsed
    assert parsed["From"].addresses[0].display_name == "Academy X-Evil: 1"
    assert parsed["To"].addresses[0].display_name == "N Cc: x@evil.example"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]


def test_lrs_answers_stored_already_stored_refused_or_retried() -> None:
    assert domain.lrs_answer(204) == (True, False)
    assert domain.lrs_answer(200) == (True, False)
    # Only we write under our ids, always the same statement: the LRS already holds it.
    assert domain.lrs_answer(409) == (True, False)
    for refused in (400, 413):
        assert domain.lrs_answer(refused) == (False, False)
    for temporary in (401, 403, 404, 429, 500, 502, 503):
        assert domain.lrs_answer(temporary) == (False, True)


def test_video_sessions_are_consumed_only_with_an_lrs() -> None:
    from services.notifications.handlers import VIDEO_SESSIONS_CONSUMER, subscriptions
    from shared.events import Topic

    without = {s.topic for s in subscriptions(NotificationsSettings(xapi_lrs_url=""))}
    assert Topic.VIDEO_SESSIONS not in without
    [video] = [s for s in subscriptions(NotificationsSettings(xapi_lrs_url="https://lrs.example/xAPI/"))
               if s.topic is Topic.VIDEO_SESSIONS]
    assert video.consumer == VIDEO_SESSIONS_CONSUMER == "notifications-video-sessions"


def test_lrs_settings_authenticate_one_way_and_never_in_clear_in_production() -> None:
    from services.notifications.lrs import lrs_headers

    basic = NotificationsSettings(xapi_lrs_url="https://lrs.example/xAPI/", xapi_lrs_username="ls",
                                  xapi_lrs_password="pw")
    assert basic.xapi_lrs_url == "https://lrs.example/xAPI"
    headers = lrs_headers(basic)
    assert headers["Authorization"] == "Basic bHM6cHc=" and headers["X-Experience-API-Version"] == "1.0.3"
    given = NotificationsSettings(xapi_lrs_url="https://lrs.example/xAPI", xapi_lrs_authorization="Bearer t0k")
    assert lrs_headers(given)["Authorization"] == "Bearer t0k"
    assert "Authorization" not in lrs_headers(NotificationsSettings(xapi_lrs_url="https://lrs.example/xAPI"))
    refused: list[dict[str, Any]] = [
        {"xapi_lrs_url": "lrs.example/xAPI"},
        {"xapi_lrs_url": "https://lrs.example", "xapi_lrs_username": "ls", "xapi_lrs_authorization": "Basic x"},
        {"xapi_lrs_url": "https://lrs.example", "xapi_lrs_password": "pw"},
        {"xapi_lrs_url": "https://lrs.example", "xapi_timeout_s": 90},  # beyond the delivery lease
    ]
    for values in refused:
        with pytest.raises(ValueError):
            NotificationsSettings(**values)
    production: dict[str, Any] = {
        "env": "production", "jwt_secret": "x" * 40, "internal_token": "y" * 40, "app_password_token_secret": "z" * 40,
        "public_base_url": "https://learn.example", "xapi_lrs_username": "ls", "xapi_lrs_password": "pw",
    }
    assert NotificationsSettings(xapi_lrs_url="https://lrs.example/xAPI", **production).xapi_enabled
    with pytest.raises(ValueError, match="over http"):
        NotificationsSettings(xapi_lrs_url="http://lrs.example/xAPI", **production)
