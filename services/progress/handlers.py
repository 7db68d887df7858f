"""Event entry points: keep the local replicas of catalog, enrollments and certificates."""

from __future__ import annotations

from services.progress import store
from services.progress.replicas import Replicas
from shared.events import CertificateIssued, CourseCatalogEntry, EnrollmentChanged
from shared.inbox import EventContext


class Handlers:
    def __init__(self) -> None:
        self.replicas: Replicas | None = None  # set at start-up, once the pool exists

    async def on_course(self, event: CourseCatalogEntry, ctx: EventContext) -> None:
        async with ctx.transaction() as conn:
            saved = await store.save_course(conn, event)  # older revisions are ignored
        if saved and self.replicas is not None:
            self.replicas.on_course(event)

    async def on_enrollment(self, event: EnrollmentChanged, ctx: EventContext) -> None:
        async with ctx.transaction() as conn:
            saved = await store.save_enrollment(conn, event)
        if saved and self.replicas is not None:
            self.replicas.on_enrollment(event)

    async def on_certificate(self, event: CertificateIssued, ctx: EventContext) -> None:
        async with ctx.transaction() as conn:
            await store.save_certificate(conn, event.user_id, event.course_id, event.certificate_url, event.issued_at)
