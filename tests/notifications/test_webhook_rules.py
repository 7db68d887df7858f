"""The webhook rules without I/O: signatures as the reference library makes them, the retry
schedule, when an endpoint is disabled, and which targets production refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from services.notifications import domain
from services.notifications.settings import NotificationsSettings


def test_our_signature_is_the_reference_librarys() -> None:
    secret, body, when = domain.new_secret(), '{"type":"course.completed","data":{"n":"Zoë"}}', 1_741_183_380
    assert secret.startswith("whsec_") and len(domain.secret_key(secret)) == domain.SECRET_BYTES
    reference = Webhook(secret).sign("msg_1", datetime.fromtimestamp(when, UTC), body)
    assert domain.signature(secret, "msg_1", when, body.encode()) == reference
    other = domain.new_secret()
    assert domain.signature_header([secret, other], "msg_1", when, body.encode()).split(" ") == [
        reference, domain.signature(other, "msg_1", when, body.encode())
    ]


def test_the_schedule_retries_then_fails_and_a_success_ends_it() -> None:
    schedule = [0.0, 5.0, 300.0]
    failed = domain.Outcome(delivered=False, status_code=500, error="answered 500")
    assert domain.after_attempt(failed, 1, schedule) == domain.DeliveryDecision(domain.DeliveryStatus.PENDING, 5.0)
    assert domain.after_attempt(failed, 2, schedule).retry_in_s == 300.0
    assert domain.after_attempt(failed, 3, schedule) == domain.DeliveryDecision(
        domain.DeliveryStatus.FAILED, exhausted=True
    )
    assert domain.after_attempt(domain.Outcome(delivered=True, status_code=204), 3, schedule).status is (
        domain.DeliveryStatus.DELIVERED
    )
    hopeless = domain.Outcome(delivered=False, error="the endpoint was deleted", retry=False)
    assert domain.after_attempt(hopeless, 1, schedule).exhausted
    held = domain.Outcome(delivered=False, hold=True)
    assert domain.after_attempt(held, 1, schedule).status is domain.DeliveryStatus.HELD


def test_an_endpoint_is_disabled_after_an_exhausted_delivery_or_a_long_failure() -> None:
    now = datetime(2026, 1, 10, tzinfo=UTC)
    five_days = timedelta(days=5)
    assert domain.sustained_failure(exhausted=True, failing_since=None, now=now, disable_after=None)
    assert domain.sustained_failure(
        exhausted=False, failing_since=now - timedelta(days=4), now=now, disable_after=five_days
    ) is None
    assert domain.sustained_failure(
        exhausted=False, failing_since=now - five_days, now=now, disable_after=five_days
    ) == "no delivery succeeded for 5 days"
    assert domain.sustained_failure(exhausted=False, failing_since=None, now=now, disable_after=five_days) is None


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.251", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.1.1.1", "192.0.2.1", "not an address",
])
def test_production_refuses_every_address_that_is_not_public(address: str) -> None:
    assert domain.refused_addresses([address]) == [address]


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:1.1.1.1"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert domain.refused_addresses([address]) == []


def test_urls_production_refuses_as_written_and_development_allows() -> None:
    for url in ("http://partner.example/x", "https://10.0.0.1/x", "https://[::1]:8443/x", "https://127.0.0.1/x"):
        assert domain.url_refusal(url, production=True) is not None, url
        assert domain.url_refusal(url, production=False) is None, url
    for url in ("ftp://partner.example/x", "file:///etc/passwd", "https:///x", "http://[::1/x",
                "http://partner.example:99999/x", "https://" + "a" * 2000 + ".example/"):
        assert domain.url_refusal(url, production=False) is not None, url
    assert domain.url_refusal("https://partner.example/hooks?x=1", production=True) is None


def test_the_schedule_setting_reads_a_comma_list_and_refuses_a_lease_below_the_timeout() -> None:
    settings = NotificationsSettings(delivery_retry_schedule_s="0, 5,300")
    assert settings.delivery_retry_schedule_s == [0.0, 5.0, 300.0]
    assert NotificationsSettings().delivery_retry_schedule_s == [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    with pytest.raises(ValueError, match="DELIVERY_LEASE_S"):
        NotificationsSettings(delivery_lease_s=5, webhook_timeout_s=10)
    with pytest.raises(ValueError, match="negative"):
        NotificationsSettings(delivery_retry_schedule_s=[0, -1])


def test_the_body_carries_the_confirmed_fields_and_no_internal_ids() -> None:
    from tests.notifications.events import certificate

    issued = certificate("ann")
    body = domain.webhook_body(issued)
    assert body["type"] == "certificate.issued" and body["timestamp"].endswith("Z")
    assert body["data"]["certificate_id"] == issued.certificate_id and "event_id" not in body["data"]
    assert domain.webhook_message_id(issued.event_id) == f"msg_{issued.event_id.hex}"
