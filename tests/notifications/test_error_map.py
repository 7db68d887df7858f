"""Every refusal the domain states is answered by the API in one place, ``api.ERRORS``."""

from __future__ import annotations

import inspect

from services.notifications import api, domain
from shared.domain import DomainError


def test_every_domain_error_has_an_http_answer() -> None:
    refusals = [
        kind for _, kind in inspect.getmembers(domain, inspect.isclass)
        if issubclass(kind, DomainError) and kind is not DomainError and kind.__module__ == domain.__name__
    ]
    assert refusals, "the domain states no refusal: is this test still looking in the right place?"
    unmapped = [kind.__name__ for kind in refusals if not any(issubclass(kind, mapped) for mapped in api.ERRORS)]
    assert unmapped == []


def test_not_found_keeps_its_code_and_message() -> None:
    mapped = api.ERRORS[domain.NotificationNotFound]
    refusal = domain.NotificationNotFound(7)
    assert (mapped.status, mapped.code, mapped.message or refusal.message) == (
        404, "notification_not_found", "No such notification"
    )
    assert refusal.data == {"mail_id": 7}
