"""The xAPI destination kind: one statement per delivery, stored in the configured Learning
Record Store with ``PUT {XAPI_LRS_URL}/statements?statementId=<id>`` (xAPI 1.0.3).

The statement id is the delivery's ``message_id`` and the body the statement as queued, so
every retry and replay sends the same statement under the same id: the LRS stores it once
(204 the first time, 204 or 409 after that, both counted as delivered, ``domain.lrs_answer``).
There is one LRS (destination id 0), configured by an operator: no per-destination failure
streak and no disabling, a failing LRS only delays its statements along the schedule.
"""

from __future__ import annotations

import base64
import time

import asyncpg
import httpx

from services.notifications import domain, store
from services.notifications.settings import NotificationsSettings
from services.notifications.xapi import XAPI_VERSION
from shared.db import Connection

USER_AGENT = "Lessonstream-xAPI/1.0"
EXCERPT_CHARS = 1024  # of the LRS's answer, kept in the attempt log


def lrs_headers(settings: NotificationsSettings) -> dict[str, str]:
    """The headers of every statement request, authentication included."""
    headers = {
        "X-Experience-API-Version": XAPI_VERSION,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    if authorization := settings.xapi_lrs_authorization.get_secret_value():
        headers["Authorization"] = authorization
    elif settings.xapi_lrs_username:
        pair = f"{settings.xapi_lrs_username}:{settings.xapi_lrs_password.get_secret_value()}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return headers


class XapiDestination:
    kind = domain.XAPI_KIND

    def __init__(self, settings: NotificationsSettings) -> None:
        self._statements_url = f"{settings.xapi_lrs_url}/statements"
        # The LRS is configured by an operator (not a stranger's URL as a webhook is), but
        # its answers are still not followed elsewhere: a redirect is a misconfiguration.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.xapi_timeout_s),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=settings.delivery_workers, max_keepalive_connections=20),
            headers=lrs_headers(settings),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def send(self, pool: asyncpg.Pool, delivery: store.ClaimedDelivery) -> domain.Outcome:
        started = time.perf_counter()

        def took() -> int:
            return int((time.perf_counter() - started) * 1000)

        try:
            response = await self._http.put(
                self._statements_url, params={"statementId": delivery.message_id}, content=delivery.body.encode()
            )
        except httpx.HTTPError as exc:
            return domain.Outcome(delivered=False, error=f"{type(exc).__name__}: {exc}"[:500], duration_ms=took())
        code = response.status_code
        delivered, retry = domain.lrs_answer(code)
        return domain.Outcome(
            delivered=delivered,
            status_code=code,
            error=None if delivered else f"answered {code}",
            duration_ms=took(),
            response_excerpt=response.text[:EXCERPT_CHARS] or None,
            retry=retry,
        )

    async def recorded(
        self, conn: Connection, delivery: store.ClaimedDelivery, outcome: domain.Outcome,
        decision: domain.DeliveryDecision,
    ) -> None:
        """Nothing to keep about the one LRS beyond the attempt log."""
