"""Event entry points of the certificate workers: issue once, re-render on request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import asyncpg
import httpx

from services.certificates import domain, store
from services.certificates.rendering import Renderer, RenderJob, sha256
from shared import outbox
from shared.events import CertificateIssued, CertificateRequested, CourseCompleted
from shared.inbox import EventContext
from shared.internal import confirm_completion
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)


class CertificateWorker:
    """Turns completions into certificates. Rendering goes to the process pool; the
    database work around it is short, and the final write is one transaction."""

    def __init__(
        self, settings: ServiceSettings, renderer: Callable[[], Renderer], progress: Callable[[], httpx.AsyncClient],
        *, signatory_name: str, signatory_title: str, platform_name: str, lease_s: float,
    ) -> None:
        self._settings = settings
        self._renderer = renderer
        self._progress = progress
        self._lease_s = lease_s
        self._signatory_name = signatory_name
        self._signatory_title = signatory_title
        self._platform_name = platform_name
        self.identity = f"{socket.gethostname()}:{os.getpid()}"

    async def on_course_completed(self, event: CourseCompleted, ctx: EventContext) -> None:
        await self._issue(event, ctx)

    async def on_certificate_requested(self, event: CertificateRequested, ctx: EventContext) -> None:
        if event.reason == "issue" and event.completion is not None:
            await self._issue(event.completion, ctx)
        elif event.reason == "regenerate":
            await self._regenerate(event, ctx)
        else:
            async with ctx.transaction():
                pass  # nothing to do; recorded as applied

    def _job(self, identity: domain.Identity, name: str, title: str, completed_at: datetime,
             template: str | None) -> RenderJob:
        return RenderJob(
            certificate_id=identity.certificate_id,
            verification_code=identity.verification_code,
            verification_url=domain.verification_url(self._settings.public_base_url, identity.verification_code),
            student_name=name,
            course_title=title,
            issued_at=identity.issued_at,
            completed_at=completed_at,
            signatory_name=self._signatory_name,
            signatory_title=self._signatory_title,
            platform_name=self._platform_name,
            template_source=template,
        )

    async def _issue(self, claimed: CourseCompleted, ctx: EventContext) -> None:
        pool = ctx.pool
        if (
            not claimed.certificate_enabled
            or await ctx.already_applied()
            or await store.get_certificate(pool, claimed.user_id, claimed.course_id) is not None
        ):
            async with ctx.transaction():
                return  # nothing to render; the event is recorded as applied
        # A certificate is irreversible: issue it only for a completion progress confirms,
        # with progress's values (a forged or altered event is rejected and dead-lettered).
        completion = await confirm_completion(self._progress(), claimed)
        if not completion.certificate_enabled:
            async with ctx.transaction():
                return
        identity = await store.reserve_identity(
            pool, completion.user_id, completion.course_id, datetime.now(UTC), domain.new_verification_code,
            holder=self.identity, lease_s=self._lease_s,
        )
        template = await store.get_template(pool, completion.course_id)
        job = self._job(identity, completion.user_name, completion.course_title, completion.completed_at,
                        template.source)
        async with self._leased(pool, identity):
            pdf = await self._renderer().render(job)
        issued_event = CertificateIssued(
            user_id=identity.user_id,
            course_id=identity.course_id,
            certificate_id=identity.certificate_id,
            verification_code=identity.verification_code,
            certificate_url=domain.pdf_url(self._settings.public_base_url, identity.verification_code),
            verification_url=job.verification_url,
            issued_at=identity.issued_at,
            course_title=completion.course_title,
            student_name=completion.user_name,
            student_email=completion.user_email,
        )
        async with ctx.transaction() as conn:
            issued = await store.insert_certificate(
                conn, identity,
                student_name=completion.user_name, student_email=completion.user_email,
                course_title=completion.course_title, completed_at=completion.completed_at,
                source_event_id=completion.event_id, issued_event_id=issued_event.event_id, pdf=pdf,
                sha256=sha256(pdf), template_revision=template.revision, rendered_by=self.identity,
            )
            if issued:
                await outbox.add(conn, issued_event)
        if issued:
            log.info("issued %s for %s in course %d", identity.certificate_id, identity.user_id, identity.course_id)

    @contextlib.asynccontextmanager
    async def _leased(self, pool: asyncpg.Pool, identity: domain.Identity) -> AsyncIterator[None]:
        """Keep the reservation's lease alive while the body (the render) runs.

        The lease tells the API a worker is on it; if this process dies, the renewals stop
        and the lease runs out, so the work is handed over within one lease.
        """

        async def renew() -> None:
            while True:
                await asyncio.sleep(self._lease_s / 3)
                try:
                    if not await store.renew_lease(pool, identity.user_id, identity.course_id,
                                                   holder=self.identity, lease_s=self._lease_s):
                        return  # another worker took the reservation over; it renews now
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    # The render goes on; at worst the work is handed over once more.
                    log.warning("could not renew the lease on %s: %r", identity.certificate_id, exc)

        renewing = asyncio.create_task(renew())
        try:
            yield
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    async def _regenerate(self, event: CertificateRequested, ctx: EventContext) -> None:
        pool = ctx.pool
        cert = None if await ctx.already_applied() else await store.get_certificate(
            pool, event.user_id, event.course_id
        )
        if cert is None:
            async with ctx.transaction():
                return
        template = await store.get_template(pool, cert.course_id)
        identity = domain.Identity(cert.user_id, cert.course_id, cert.certificate_id, cert.verification_code,
                                   cert.issued_at)
        pdf = await self._renderer().render(
            self._job(identity, cert.student_name, cert.course_title, cert.completed_at, template.source)
        )
        async with ctx.transaction() as conn:
            version = await store.add_version(
                conn, cert.certificate_id, pdf=pdf, sha256=sha256(pdf), template_revision=template.revision,
                regeneration_id=event.regeneration_id, rendered_by=self.identity,
            )
        log.info("re-rendered %s as version %d", cert.certificate_id, version)
