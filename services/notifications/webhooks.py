"""The webhook destination kind: one signed POST per attempt (Standard Webhooks), the
endpoint's failure streak, and disabling an endpoint that keeps failing (its owner is mailed).

Where a request may go (SSRF): in production a target must be https and every address its
host name resolves to public (``domain.address_refused``), checked at registration and
again at every attempt; the request is then sent to the address that was checked (the URL's
host is kept for the ``Host`` header and TLS), so a name that resolves elsewhere a moment
later (DNS rebinding) cannot redirect it. Redirects are not followed. In development and
tests any address is allowed and the URL is used as it is.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import httpx

from services.notifications import domain, store
from services.notifications.settings import NotificationsSettings
from shared.db import Connection
from shared.events import utcnow

USER_AGENT = "Lessonstream-Webhooks/1.0"
EXCERPT_BYTES = 1024  # of a receiver's answer, kept in the attempt log


class TargetRefused(Exception):
    """The target is not one the service sends to (production): the reason."""


async def public_addresses(url: str) -> list[str]:
    """The addresses ``url``'s host resolves to, all public; ``TargetRefused`` otherwise."""
    parts = httpx.URL(url)
    host = parts.host
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except (OSError, UnicodeError) as exc:
        raise TargetRefused(f"{host} does not resolve ({exc})") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise TargetRefused(f"{host} does not resolve")
    if refused := domain.refused_addresses(addresses):
        raise TargetRefused(f"{host} resolves to {', '.join(refused)}, not a public address")
    return addresses


async def check_target(url: str, *, production: bool) -> None:
    """Whether an endpoint may be registered with ``url``: ``TargetRefused`` if not."""
    if (reason := domain.url_refusal(url, production=production)) is not None:
        raise TargetRefused(reason)
    if production:
        await public_addresses(url)


class WebhookDestination:
    kind = domain.WEBHOOK_KIND

    def __init__(self, settings: NotificationsSettings, mail_queued: Callable[[], None]) -> None:
        self._settings = settings
        self._production = settings.env == "production"
        self._mail_queued = mail_queued
        disable_after = settings.webhook_disable_after_s
        self._disable_after = None if disable_after == 0 else timedelta(seconds=disable_after)
        # Our own client: receivers are strangers, so no environment proxies, no redirects,
        # and pool limits of their own (a slow receiver does not starve the owners' clients).
        # In production requests go to a checked address, and a pooled connection is keyed
        # by that address: none is kept, so one verified for a host name never carries a
        # request for another name at the same address.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.webhook_timeout_s),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=0 if self._production else 20),
            headers={"User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def send(self, pool: asyncpg.Pool, delivery: store.ClaimedDelivery) -> domain.Outcome:
        target = await store.endpoint_target(pool, delivery.destination_id)
        if target is None:
            return domain.Outcome(delivered=False, error="the endpoint was deleted", retry=False)
        if not target.enabled:
            return domain.Outcome(delivered=False, error="the endpoint is disabled", hold=True)
        started = time.perf_counter()

        def took() -> int:
            return int((time.perf_counter() - started) * 1000)

        body = delivery.body.encode()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": domain.signature_header(target.secrets, delivery.message_id, timestamp, body),
        }
        try:
            # The whole attempt, resolving included, within the timeout (httpx's applies per phase).
            async with asyncio.timeout(self._settings.webhook_timeout_s):
                request = await self._request(target.url, headers, body)
                response = await self._http.send(request, stream=True)
                try:
                    excerpt = await _excerpt(response)
                finally:
                    await response.aclose()
        except TargetRefused as exc:
            return domain.Outcome(delivered=False, error=f"refused target: {exc}", duration_ms=took())
        except TimeoutError:
            return domain.Outcome(delivered=False, error="timed out", duration_ms=took())
        except httpx.HTTPError as exc:
            return domain.Outcome(delivered=False, error=f"{type(exc).__name__}: {exc}"[:500], duration_ms=took())
        code = response.status_code
        return domain.Outcome(
            delivered=200 <= code < 300,
            status_code=code,
            error=None if 200 <= code < 300 else f"answered {code}",
            duration_ms=took(),
            response_excerpt=excerpt,
        )

    async def _request(self, url: str, headers: dict[str, str], body: bytes) -> httpx.Request:
        if (reason := domain.url_refusal(url, production=self._production)) is not None:
            raise TargetRefused(reason)
        if not self._production:
            return self._http.build_request("POST", url, headers=headers, content=body)
        # Production: send to the address just checked, never to a second resolution's.
        parsed = httpx.URL(url)
        address = (await public_addresses(url))[0]
        pinned = parsed.copy_with(host=address)
        extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
        return self._http.build_request(
            "POST", pinned, headers={**headers, "host": parsed.netloc.decode("ascii")}, content=body,
            extensions=extensions,
        )

    async def recorded(
        self, conn: Connection, delivery: store.ClaimedDelivery, outcome: domain.Outcome,
        decision: domain.DeliveryDecision,
    ) -> None:
        if outcome.hold:
            return
        endpoint_id = delivery.destination_id
        if outcome.delivered:
            await store.endpoint_succeeded(conn, endpoint_id)
            return
        endpoint = await store.endpoint_failed(conn, endpoint_id)
        if endpoint is None or not endpoint["enabled"]:
            return
        reason = domain.sustained_failure(
            exhausted=decision.exhausted, failing_since=endpoint["failing_since"], now=utcnow(),
            disable_after=self._disable_after,
        )
        if reason is None or not await store.disable_endpoint(conn, endpoint_id, reason):
            return
        # Its pending deliveries wait (held) until an admin enables it again; the owner is told.
        await store.hold_deliveries(conn, self.kind, endpoint_id)
        await self._queue_owner_mail(conn, endpoint, reason, outcome.error)
        self._mail_queued()

    async def _queue_owner_mail(
        self, conn: Connection, endpoint: dict[str, Any], reason: str, last_error: str | None
    ) -> None:
        notice = domain.WebhookDisabled(
            event_id=uuid4(),
            occurred_at=utcnow(),
            endpoint_id=endpoint["id"],
            url=endpoint["url"],
            description=endpoint["description"],
            reason=reason,
            failing_since=endpoint["failing_since"],
            last_error=last_error,
            owner_email=endpoint["owner_email"],
            created_by=endpoint["created_by"],
            manage_url=f"{self._settings.public_base_url.rstrip('/')}/api/admin/webhooks/{endpoint['id']}",
        )
        recipient = notice.owner_email.strip()
        valid = domain.valid_address(recipient)
        planned = domain.PlannedMail(
            event_id=notice.event_id,
            kind=domain.MailKind.WEBHOOK_DISABLED,
            user_id=notice.created_by,
            course_id=None,
            recipient=recipient,
            message_id=domain.message_id(
                domain.MailKind.WEBHOOK_DISABLED, notice.event_id, self._settings.mail_from_address
            ),
            status=domain.MailStatus.PENDING if valid else domain.MailStatus.SKIPPED,
            note=None if valid else "no valid recipient address",
        )
        # Not from a Kafka message: the source names the endpoint, for a dead letter should
        # the mail never go out.
        source = store.Source(
            topic="webhook-endpoints", partition=-1, offset=-1, consumer_group="notifications-deliveries",
            key=f"endpoint:{notice.endpoint_id}",
        )
        await store.enqueue(conn, planned, notice.model_dump(mode="json"), source)


async def _excerpt(response: httpx.Response) -> str:
    """The beginning of the answer, for the attempt log; never more than ``EXCERPT_BYTES`` read."""
    content = bytearray()
    async for chunk in response.aiter_bytes():
        content += chunk
        if len(content) >= EXCERPT_BYTES:
            break
    return bytes(content[:EXCERPT_BYTES]).decode("utf-8", "replace")
