"""The delivery loop: workers claim due mail from the queue, send it, record the outcome.

Order of one attempt, and why:
1. claim (one transaction): the row becomes ``sending`` under a lease and an attempt
   row ``sending`` is logged, *before* any byte goes to the SMTP server;
2. send over the worker's reused SMTP connection;
3. record (one transaction): the attempt's outcome and the mail's new status (sent,
   retry at a later time, or given up with a dead letter).
A crash between 2 and 3 leaves a ``sending`` row whose lease runs out; it is then sent
again with the same Message-ID, and the log shows the interrupted attempt. That window
(the server accepted, the outcome was not yet written) is the only way a learner can
get a mail twice; step 3 is retried while the process lives to keep it that short.

Failures never block anything else: a mail that failed temporarily waits in the table
until its next try, while the workers carry on with the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC

import asyncpg
import httpx
from prometheus_client import Counter, Histogram

from services.notifications import domain, store
from services.notifications.mail import Attachment, MailComposer
from services.notifications.settings import NotificationsSettings
from services.notifications.smtp import DeliveryError, SmtpConnection
from shared.events import CertificateIssued, CertificateRevoked, CourseCompleted, RecertificationScheduled
from shared.retry import Backoff
from shared.workers import WakeableWorkers

log = logging.getLogger(__name__)

MAIL_ATTEMPTS = Counter(
    "lessonstream_mail_attempts_total", "SMTP delivery attempts by kind and outcome", ["kind", "outcome"]
)
MAIL_SEND_SECONDS = Histogram(
    "lessonstream_mail_send_seconds", "Time for one delivery attempt (render, attach, SMTP)", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# How a worker retries a failed bookkeeping write (database down): pauses of 0.25, 0.5,
# 1, 2 and 4 s between RECORD_ATTEMPTS tries, about 8 s in all.
RECORD_RETRY = Backoff(first_s=0.25, max_s=5.0)
RECORD_ATTEMPTS = 6


class MailSender:
    def __init__(self, settings: NotificationsSettings) -> None:
        self._settings = settings
        self._composer = MailComposer(settings)
        self._pool: asyncpg.Pool | None = None
        self._http: httpx.AsyncClient | None = None
        self._workers = WakeableWorkers("mail-sender")

    async def start(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._http = httpx.AsyncClient(
            timeout=self._settings.mail_attachment_timeout_s, follow_redirects=True
        )
        self._workers.start(self._settings.smtp_connections, self._worker)

    async def stop(self) -> None:
        # Attempts in flight finish and are recorded: one cut short is sent again later.
        await self._workers.stop(self._settings.smtp_timeout_s + 5)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def wake(self) -> None:
        """Mail may be due (queued in this process, or a ``mail_due`` notification from any
        process's commit): workers look now rather than at the next safety poll."""
        self._workers.wake()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("mail sender is not started")
        return self._pool

    async def _worker(self, wake: asyncio.Event) -> None:
        connection = SmtpConnection(self._settings)
        try:
            while not self._workers.stopping:
                wake.clear()
                try:
                    await self._next(wake, connection)
                except Exception:
                    # Whatever went wrong (a database driver error of an unexpected kind, a
                    # bug), the worker goes on: a worker that ended would leave the queue
                    # to the others, or to nobody, without a word. A claimed mail keeps its
                    # lease and is sent again once it runs out.
                    log.exception("mail sender worker failed; going on after a pause")
                    await self._idle(wake, connection, self._settings.mail_poll_interval_s)
        finally:
            await connection.close()

    async def _next(self, wake: asyncio.Event, connection: SmtpConnection) -> None:
        """Claim the next due mail and deliver it, or wait until one may be due."""
        try:
            mail = await store.claim_next(self.pool, self._settings.mail_lease_s)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("cannot claim mail: %r", exc)
            await self._idle(wake, connection, self._settings.mail_poll_interval_s)
            return
        if mail is None:
            await self._idle(wake, connection, await self._until_next_due())
            return
        await self._deliver(mail, connection)

    async def _until_next_due(self) -> float:
        poll = self._settings.mail_poll_interval_s
        try:
            due = await store.next_due_in(self.pool)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return poll
        return poll if due is None else min(max(due, 0.01), poll)

    async def _idle(self, wake: asyncio.Event, connection: SmtpConnection, timeout: float) -> None:
        if connection.connected:
            # Wake in time to close an unused connection, rather than keep it for a whole
            # safety poll (the server may drop it meanwhile).
            timeout = min(timeout, max(self._settings.smtp_idle_close_s - connection.idle_for(), 0) + 0.1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout)
        if connection.connected and connection.idle_for() > self._settings.smtp_idle_close_s:
            await connection.close()

    async def _deliver(self, mail: store.ClaimedMail, connection: SmtpConnection) -> None:
        started = time.perf_counter()
        try:
            message_event = _parse_event(mail)
            attachment = await self._attachment(mail, message_event)
            message = self._composer.compose(
                mail.kind, message_event, message_id=mail.message_id,
                date=mail.created_at.astimezone(UTC), attachment=attachment,
            )
            reply = await connection.send(message, self._composer.sender, mail.recipient)
        except DeliveryError as exc:
            await self._failed(mail, exc.failure)
        except Exception as exc:
            # A mail that cannot even be built (bad stored data, template error) will not
            # get better by retrying.
            log.exception("cannot build %s mail %d", mail.kind.value, mail.id)
            await self._failed(mail, domain.Failure(False, f"cannot build the message: {exc!r}"))
        else:
            MAIL_ATTEMPTS.labels(mail.kind.value, "sent").inc()
            await self._record(lambda: store.record_sent(self.pool, mail, reply), mail)
            log.info("sent %s mail %d (%s) attempt %d", mail.kind.value, mail.id, mail.message_id, mail.attempt)
        finally:
            MAIL_SEND_SECONDS.labels(mail.kind.value).observe(time.perf_counter() - started)

    async def _failed(self, mail: store.ClaimedMail, failure: domain.Failure) -> None:
        s = self._settings
        delay = domain.retry_delay(mail.attempt, base_s=s.mail_retry_base_s, max_s=s.mail_retry_max_s)
        decision = domain.after_failure(failure, mail.attempt, max_attempts=s.mail_max_attempts, delay_s=delay)
        MAIL_ATTEMPTS.labels(mail.kind.value, decision.outcome.value).inc()
        log.warning(
            "%s mail %d attempt %d failed (%s): %s -> %s",
            mail.kind.value, mail.id, mail.attempt, "temporary" if failure.temporary else "permanent",
            failure.detail, decision.status.value,
        )
        await self._record(
            lambda: store.record_failure(self.pool, mail, decision, failure.smtp_code, failure.detail), mail
        )

    async def _record(self, write: Callable[[], Awaitable[bool]], mail: store.ClaimedMail) -> None:
        """Write an outcome, retrying through a short database outage: until it is written
        the lease is all that stops another worker from sending the mail again."""
        for tried in range(1, RECORD_ATTEMPTS + 1):
            try:
                if not await write():
                    log.warning("mail %d: lease lost before attempt %d was recorded", mail.id, mail.attempt)
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if tried == RECORD_ATTEMPTS or self._workers.stopping:
                    log.error("mail %d: could not record attempt %d: %r", mail.id, mail.attempt, exc)
                    return
                await asyncio.sleep(RECORD_RETRY.delay(tried))

    async def _attachment(
        self, mail: store.ClaimedMail, event: domain.Notice
    ) -> Attachment | None:
        if not (isinstance(event, CertificateIssued) and self._settings.mail_attach_certificate):
            return None
        assert self._http is not None
        limit = self._settings.mail_attachment_max_bytes
        try:
            async with self._http.stream("GET", event.certificate_url) as response:
                if response.status_code != 200:
                    # Not there yet, or the server is struggling: try again later. Other
                    # 4xx (forbidden, gone) will not change.
                    temporary = response.status_code in (404, 408, 425, 429) or response.status_code >= 500
                    raise DeliveryError(
                        domain.Failure(temporary, f"certificate download answered {response.status_code}")
                    )
                content = bytearray()
                async for chunk in response.aiter_bytes():
                    content += chunk
                    if len(content) > limit:
                        raise DeliveryError(domain.Failure(False, f"certificate larger than {limit} bytes"))
        except httpx.HTTPError as exc:
            raise DeliveryError(domain.Failure(True, f"certificate download failed: {exc!r}")) from exc
        return Attachment(filename=f"certificate-{event.verification_code}.pdf", content=bytes(content))


def _parse_event(mail: store.ClaimedMail) -> domain.Notice:
    if mail.kind is domain.MailKind.WEBHOOK_DISABLED:
        return domain.WebhookDisabled.model_validate(mail.event)
    if mail.kind is domain.MailKind.COURSE_COMPLETED:
        return CourseCompleted.model_validate(mail.event)
    if mail.kind is domain.MailKind.RECERTIFICATION_SCHEDULED:
        return RecertificationScheduled.model_validate(mail.event)
    if mail.kind in (domain.MailKind.CERTIFICATE_REVOKED, domain.MailKind.CERTIFICATE_REINSTATED):
        return CertificateRevoked.model_validate(mail.event)
    return CertificateIssued.model_validate(mail.event)
