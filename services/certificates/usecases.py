"""What the certificates service does: the API's lookups, templates and regenerations, and the
workers' issuing (once per learner and course) and re-rendering, with the state each runs on.

Refusals are the domain's (``domain.NotEnrolled`` ...); ``api.ERRORS`` answers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import asyncpg
import httpx

from services.certificates import credentials, domain, store
from services.certificates.domain import (
    Certificate,
    CompletionStatus,
    MissOutcome,
    QueuedRegeneration,
    RegenerationProgress,
)
from services.certificates.rendering import (
    Renderer,
    RenderJob,
    TemplateError,
    default_template_source,
    sha256,
    validate_template,
)
from services.certificates.settings import DEVELOPMENT_KEY_PREFIX, CertificatesSettings, WorkerSettings
from shared import db, erasure, outbox
from shared.db import Executor
from shared.events import (
    CertificateIssued,
    CertificateRequested,
    CertificateRevoked,
    CourseCompleted,
    LearnerErased,
)
from shared.inbox import EventContext
from shared.internal import confirm_completion, get_internal
from shared.periodic import Periodic

log = logging.getLogger(__name__)

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"


# -- the API ------------------------------------------------------------------------------------

@dataclass
class CertificatesState:
    """What the certificates API runs on: its client of progress's internal API, and the
    issuer's keys (published, and signing the revocation status lists)."""

    progress: httpx.AsyncClient
    keys: list[credentials.SigningKey]
    # Enrollment's internal API: it confirms erasure requests (learner-erased).
    enrollment: httpx.AsyncClient

    async def close(self) -> None:
        await self.progress.aclose()
        await self.enrollment.aclose()


async def _ask_progress(client: httpx.AsyncClient, course_id: int, user_id: str) -> CompletionStatus | None:
    """Progress's own answer (read-your-writes); None when the learner is not enrolled.
    Progress unreachable or failing: ``PeerUnavailable``."""
    path = f"/internal/courses/{course_id}/learners/{quote(user_id, safe='')}/completion"
    body = await get_internal(client, path, "progress")
    return None if body is None else CompletionStatus.model_validate_json(body)


async def learner_certificate(
    pool: asyncpg.Pool, state: CertificatesState, user_id: str, course_id: int, *, retry_after: timedelta
) -> Certificate | None:
    """The learner's latest attempt's certificate, or None while it is being made (the API
    answers "pending"). A later attempt's completion shows once its certificate is issued
    (from course-completed): until then the earlier one, still valid, is answered.

    On a miss the API's own tables are not trusted: the course-completed event may not have
    arrived. Refuses with ``NotEnrolled``, ``CourseNotComplete`` or ``CertificateNotAvailable``.
    """
    cert = await store.get_certificate(pool, user_id, course_id)
    if cert is not None:
        return cert
    # A worker holds a live lease (it is rendering), or the API handed the completion over a
    # moment ago: pending. A lease that ran out (its worker died) or a stale hand-over: ask
    # progress again and hand the work over anew; the next worker keeps the reserved identity.
    work = await store.work_in_flight(pool, user_id, course_id)
    if domain.is_pending(work, retry_after):
        return None
    # Nothing in flight: the course-completed event may not have arrived. Ask progress.
    status = await _ask_progress(state.progress, course_id, user_id)
    if status is None:
        raise domain.NotEnrolled("You must be enrolled in this course")
    outcome = domain.decide_on_miss(status)
    if outcome is MissOutcome.NOT_COMPLETE:
        raise domain.CourseNotComplete(
            "You must complete all lessons to get a certificate", progress_percentage=status.progress_percentage
        )
    if outcome is MissOutcome.NO_CERTIFICATE:
        raise domain.CertificateNotAvailable("This course does not award certificates")
    if outcome is MissOutcome.REQUEST and status.course_completed is not None:
        # Hand the completion to the workers through the outbox: this process never renders.
        event = CertificateRequested(
            user_id=user_id, course_id=course_id, reason="issue", completion=status.course_completed
        )
        async with pool.acquire() as conn, conn.transaction():
            await store.record_request(conn, event, work.now)
    return None


async def certificate_pdf(pool: Executor, code: str, version: int | None) -> store.PdfFile:
    """The current PDF of the certificate with this code, or the numbered ``version``."""
    return _found(
        await store.get_pdf(pool, code, version) if domain.is_plausible_code(code) else None,
        "No certificate has this code",
    )


async def certificate_by_code(pool: Executor, code: str) -> Certificate:
    """The certificate a verification code stands for (public verification)."""
    return _found(
        await store.get_certificate_by_code(pool, code) if domain.is_plausible_code(code) else None,
        "No certificate has this verification code",
    )


def issuer_did_document(settings: CertificatesSettings, state: CertificatesState) -> dict[str, Any]:
    """The issuer's ``did:web`` document: every key, so that credentials signed before a
    rotation keep verifying."""
    return credentials.did_document(settings.public_base_url, state.keys)


def issuer_jwks(state: CertificatesState) -> dict[str, Any]:
    return credentials.jwks(state.keys)


async def stored_credential(pool: Executor, code: str, version: int | None) -> store.StoredCredential:
    """The signed credential of a certificate's current rendering (or of ``version``)."""
    return _found(
        await store.get_credential(pool, code, version) if domain.is_plausible_code(code) else None,
        "No credential has this code",
    )


@dataclass(frozen=True)
class Verification:
    certificate: Certificate
    state: domain.CredentialState
    detail: str  # why the proof failed, when it did
    version: int | None  # of the credential checked (None: issued before credentials)


async def verify_certificate(
    pool: Executor, settings: CertificatesSettings, state: CertificatesState, code: str, version: int | None = None
) -> Verification:
    """What a verifier of this code is told: the credential's proof (the current rendering's,
    or ``version``'s) checked with the issuer's current keys, then its revocation, expiry and
    whether a regeneration superseded it."""
    cert = await certificate_by_code(pool, code)
    found = await store.get_credential(pool, code, version)
    if found is None and version is not None:
        raise domain.CertificateNotFound("No credential has this code and version")
    if found is None:
        # Issued before credentials existed: no proof to check, but revocation and expiry are
        # the certificate's own and apply to it all the same.
        verdict = domain.credential_state(
            proof_valid=True, revoked=cert.revoked_at is not None, valid_until=cert.valid_until,
            version=1, current_version=1, now=datetime.now(UTC),
        )
        return Verification(cert, verdict, "", None)
    did = credentials.did_web(settings.public_base_url)
    keys = {credentials.verification_method_id(did, key): key.public_key for key in state.keys}
    # Canonicalisation is CPU work: off the event loop.
    proof = await asyncio.to_thread(credentials.verify_proof, found.credential, keys.get)
    verdict = domain.credential_state(
        proof_valid=proof.valid, revoked=found.revoked_at is not None, valid_until=found.valid_until,
        version=found.version, current_version=found.current_version, now=datetime.now(UTC),
    )
    return Verification(cert, verdict, "" if proof.valid else proof.reason, found.version)


async def change_status(
    pool: asyncpg.Pool, settings: CertificatesSettings, certificate_id: str, *, revoke: bool, reason: str,
    by: str,
) -> Certificate:
    """Revoke or reinstate a certificate. The change, its history row, its status list's new
    revision and the certificate-revoked event commit together; the list is re-signed when
    next asked for. Revocation applies to every rendering; regeneration never revokes."""
    now = datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        cert = await store.lock_certificate(conn, certificate_id)
        if cert is None:
            raise domain.CertificateNotFound("No certificate has this id")
        if (cert.revoked_at is not None) == revoke:
            raise domain.AlreadyInState(
                "This certificate is already revoked" if revoke else "This certificate is not revoked"
            )
        await store.change_status(conn, certificate_id, revoked_at=now if revoke else None, reason=reason,
                                  changed_by=by, changed_at=now)
        await outbox.add(conn, CertificateRevoked(
            user_id=cert.user_id, course_id=cert.course_id, certificate_id=cert.certificate_id,
            verification_code=cert.verification_code, status="revoked" if revoke else "reinstated",
            reason=reason, changed_at=now, course_title=cert.course_title, student_name=cert.student_name,
            student_email=cert.student_email,
            verification_url=domain.verification_url(settings.public_base_url, cert.verification_code),
        ))
        changed = await store.get_certificate_by_id(conn, certificate_id)
    assert changed is not None
    return changed


async def status_list(
    pool: Executor, settings: CertificatesSettings, state: CertificatesState, list_number: int
) -> tuple[dict[str, Any], int]:
    """The signed revocation status list and its revision, signed again when an entry has
    changed since it was last signed."""
    current = await store.get_status_list(pool, list_number)
    if current is None:
        raise domain.StatusListNotFound("No such status list")
    if current.credential is not None and current.signed_revision == current.revision:
        return current.credential, current.revision
    # The revision is read before the entries: a change committed in between is in the list
    # and makes the saved copy look older than it is, so it is signed again once more.
    revoked = await store.revoked_indexes(pool, list_number)
    signed = await asyncio.to_thread(_signed_status_list, settings, state.keys[-1], list_number, revoked)
    await store.save_status_list(pool, list_number, current.revision, signed)
    return signed, current.revision


def _signed_status_list(
    settings: CertificatesSettings, key: credentials.SigningKey, list_number: int, revoked: list[int]
) -> dict[str, Any]:
    did = credentials.did_web(settings.public_base_url)
    unsigned = credentials.status_list_credential(
        list_url=domain.status_list_url(settings.public_base_url, list_number), issuer_id=did,
        valid_from=datetime.now(UTC), encoded_list=credentials.encode_status_list(revoked),
    )
    return credentials.sign(unsigned, key, credentials.verification_method_id(did, key), datetime.now(UTC))


async def issued_certificate(pool: Executor, certificate_id: str) -> Certificate:
    """What was issued under this id (consumers of certificate-issued confirm events with it)."""
    return _found(await store.get_certificate_by_id(pool, certificate_id), "No certificate has this id")


def _found(thing: T | None, message: str) -> T:
    if thing is None:
        raise domain.CertificateNotFound(message)
    return thing


@dataclass(frozen=True)
class TemplateInfo:
    course_id: int
    custom: bool  # False: the course uses the default template
    revision: int
    template: str


async def course_template(pool: Executor, course_id: int) -> TemplateInfo:
    """The course's template, or the default one."""
    current = await store.get_template(pool, course_id)
    return TemplateInfo(
        course_id=course_id,
        custom=current.source is not None,
        revision=current.revision,
        template=current.source if current.source is not None else default_template_source(),
    )


async def save_template(pool: Executor, course_id: int, source: str, by: str) -> int:
    """Keep a course's own template once it compiles and renders sample data; its revision."""
    try:
        validate_template(source)
    except TemplateError as exc:
        raise domain.InvalidTemplate("The template does not render", error=str(exc)) from exc
    return await store.set_template(pool, course_id, source, by)


async def reset_template(pool: Executor, course_id: int, by: str) -> int:
    """Back to the default template; the new revision."""
    return await store.set_template(pool, course_id, None, by)


def _regeneration_event(user_id: str, course_id: int, regeneration_id: int, attempt: int) -> CertificateRequested:
    return CertificateRequested(
        user_id=user_id, course_id=course_id, reason="regenerate", regeneration_id=regeneration_id, attempt=attempt
    )


async def regenerate(pool: asyncpg.Pool, course_id: int, requested_by: str) -> QueuedRegeneration:
    """Queue a re-rendering of each of the course's certificates (the workers render them)."""
    async with pool.acquire() as conn:
        regeneration_id, count = await store.request_regeneration(
            conn, course_id, requested_by, _regeneration_event
        )
    return QueuedRegeneration(course_id, regeneration_id, count)


async def regenerate_courses(
    settings: CertificatesSettings, course_ids: Sequence[int], requested_by: str = "cli"
) -> list[QueuedRegeneration]:
    """The regenerate commands' work, outside a running service: migrate the database if
    needed, then queue each course's re-rendering in the outbox as the API does."""
    await db.migrate_service(settings.database_url, "certificates", MIGRATIONS)
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        return [await regenerate(pool, course_id, requested_by) for course_id in course_ids]
    finally:
        await pool.close()


async def regeneration_status(pool: Executor, course_id: int, regeneration_id: int) -> RegenerationProgress:
    found = await store.regeneration_status(pool, course_id, regeneration_id)
    if found is None:
        raise domain.RegenerationNotFound("No such regeneration for this course")
    return found


async def course_certificates(
    pool: Executor, course_id: int, page: int, per_page: int
) -> tuple[list[Certificate], int]:
    """One page of the course's issued certificates, and how many there are."""
    return await store.list_course_certificates(pool, course_id, per_page, (page - 1) * per_page)


# -- the workers ----------------------------------------------------------------------------

def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class WorkerState:
    """What a certificate worker runs on. Rendering goes to the process pool; the database
    work around it is short, and the final write is one transaction."""

    settings: WorkerSettings
    renderer: Renderer
    progress: httpx.AsyncClient  # progress confirms every completion before it is certified
    keys: list[credentials.SigningKey]  # the issuer's keys; the last one signs
    identity: str = field(default_factory=_holder)  # this process, as lease holder and renderer

    async def close(self) -> None:
        await asyncio.to_thread(self.renderer.close, True)  # waits for a render in flight
        await self.progress.aclose()


def load_signing_keys(settings: CertificatesSettings) -> list[credentials.SigningKey]:
    """The issuer's keys: configured (production), or a development key generated once and
    kept in ``signing_key_file``, so that every process of a stack signs and publishes the same."""
    configured = settings.signing_keys.get_secret_value()
    keys = credentials.parse_keys(configured) if configured else _development_keys(settings.signing_key_file)
    if not keys:
        raise ValueError("no credential signing key")
    return keys


def _development_keys(path: Path) -> list[credentials.SigningKey]:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written aside and linked into place: a process starting at the same moment either
        # finds no file or a complete one, and only one key wins.
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        draft.write_text(credentials.format_keys([credentials.generate_key(f"{DEVELOPMENT_KEY_PREFIX}1")]) + "\n")
        draft.chmod(0o600)
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
        draft.unlink()
    return credentials.parse_keys(path.read_text().strip())


@dataclass(frozen=True)
class CredentialFacts:
    """What a certificate's credential states besides its identity."""

    course_id: int
    course_title: str
    student_email: str
    valid_until: datetime | None


def unsigned_credential(
    settings: CertificatesSettings, identity: domain.Identity, facts: CredentialFacts
) -> dict[str, Any]:
    base = settings.public_base_url
    status = None
    if identity.status_list is not None and identity.status_index is not None:
        status = credentials.status_entry(domain.status_list_url(base, identity.status_list), identity.status_index)
    return credentials.build_credential(
        # Each rendering's credential is a resource of its own: a regenerated certificate's
        # new credential supersedes, and does not replace, the earlier one.
        credential_id=f"urn:uuid:{uuid.uuid4()}",
        issuer_id=credentials.did_web(base), issuer_name=settings.platform_name, issuer_url=base,
        valid_from=identity.issued_at, valid_until=facts.valid_until,
        # The learner is named by a salted hash of their email, never the address itself.
        recipient_email=facts.student_email, salt=secrets.token_hex(16),
        achievement_id=domain.achievement_url(base, facts.course_id), achievement_name=facts.course_title,
        achievement_description=f"Awarded by {settings.platform_name} for completing the course {facts.course_title}.",
        criteria_narrative=f"Completed every required lesson of the course {facts.course_title}.",
        status=status,
    )


def _job(state: WorkerState, identity: domain.Identity, name: str, title: str, completed_at: datetime,
         template: str | None, facts: CredentialFacts) -> RenderJob:
    settings = state.settings
    key = state.keys[-1]
    return RenderJob(
        certificate_id=identity.certificate_id,
        verification_code=identity.verification_code,
        verification_url=domain.verification_url(settings.public_base_url, identity.verification_code),
        student_name=name,
        course_title=title,
        issued_at=identity.issued_at,
        completed_at=completed_at,
        signatory_name=settings.signatory_name,
        signatory_title=settings.signatory_title,
        platform_name=settings.platform_name,
        template_source=template,
        credential_url=domain.credential_url(settings.public_base_url, identity.verification_code),
        credential=unsigned_credential(settings, identity, facts),
        signing_key=key.to_setting(),
        verification_method=credentials.verification_method_id(credentials.did_web(settings.public_base_url), key),
    )


async def issue(state: WorkerState, claimed: CourseCompleted, ctx: EventContext) -> None:
    """Issue the learner's certificate for a completion, once per attempt: confirmed with
    progress, rendered under a lease, stored with its certificate-issued event in one transaction."""
    pool = ctx.pool
    if (
        not claimed.certificate_enabled
        or await ctx.already_applied()
        or await store.get_certificate(pool, claimed.user_id, claimed.course_id, claimed.attempt) is not None
    ):
        async with ctx.transaction():
            return  # nothing to render; the event is recorded as applied
    # A certificate is irreversible: issue it only for a completion progress confirms,
    # with progress's values (a forged or altered event is rejected and dead-lettered).
    completion = await confirm_completion(state.progress, claimed)
    if not completion.certificate_enabled:
        async with ctx.transaction():
            return
    lease_s = state.settings.lease_s
    identity = await store.reserve_identity(
        pool, completion.user_id, completion.course_id, datetime.now(UTC), domain.new_verification_code,
        domain.new_status_index, holder=state.identity, lease_s=lease_s, attempt=completion.attempt,
    )
    template = await store.get_template(pool, completion.course_id)
    facts = CredentialFacts(
        course_id=completion.course_id, course_title=completion.course_title, student_email=completion.user_email,
        valid_until=domain.valid_until(identity.issued_at, completion.certificate_validity_days),
    )
    job = _job(state, identity, completion.user_name, completion.course_title, completion.completed_at,
               template.source, facts)
    async with _leased(pool, identity, holder=state.identity, lease_s=lease_s):
        rendered = await state.renderer.render(job)
    pdf = rendered.pdf
    issued_event = CertificateIssued(
        user_id=identity.user_id,
        course_id=identity.course_id,
        certificate_id=identity.certificate_id,
        verification_code=identity.verification_code,
        certificate_url=domain.pdf_url(state.settings.public_base_url, identity.verification_code),
        verification_url=job.verification_url,
        credential_url=job.credential_url,
        issued_at=identity.issued_at,
        course_title=completion.course_title,
        student_name=completion.user_name,
        student_email=completion.user_email,
        attempt=identity.attempt,
    )
    async with ctx.transaction() as conn:
        issued = await store.insert_certificate(
            conn, identity,
            student_name=completion.user_name, student_email=completion.user_email,
            course_title=completion.course_title, completed_at=completion.completed_at,
            source_event_id=completion.event_id, issued_event_id=issued_event.event_id, pdf=pdf,
            sha256=sha256(pdf), template_revision=template.revision, rendered_by=state.identity,
            credential=rendered.credential, valid_until=facts.valid_until,
        )
        if issued:
            await outbox.add(conn, issued_event)
    if issued:
        log.info("issued %s for %s in course %d", identity.certificate_id, identity.user_id, identity.course_id)


@contextlib.asynccontextmanager
async def _leased(pool: asyncpg.Pool, identity: domain.Identity, *, holder: str, lease_s: float) -> AsyncIterator[None]:
    """Keep the reservation's lease alive while the body (the render) runs.

    The lease tells the API a worker is on it; if this process dies, the renewals stop
    and the lease runs out, so the work is handed over within one lease.
    """
    taken_over = False

    async def renew() -> None:
        nonlocal taken_over
        if taken_over:
            return  # another worker took the reservation over; it renews now
        # A failed renewal is logged and retried next tick; the render goes on, and at worst
        # the work is handed over once more.
        taken_over = not await store.renew_lease(
            pool, identity.user_id, identity.course_id, holder=holder, lease_s=lease_s, attempt=identity.attempt
        )

    renewing = Periodic(lease_s / 3, renew, f"renewing the lease on {identity.certificate_id}")
    renewing.start()
    try:
        yield
    finally:
        await renewing.stop()


async def fulfil_request(state: WorkerState, event: CertificateRequested, ctx: EventContext) -> None:
    """Work the API or an admin queued: issue a handed-over completion, or re-render."""
    if event.reason == "issue" and event.completion is not None:
        await issue(state, event.completion, ctx)
    elif event.reason == "regenerate":
        await rerender(state, event, ctx)
    else:
        async with ctx.transaction():
            pass  # nothing to do; recorded as applied


async def rerender(state: WorkerState, event: CertificateRequested, ctx: EventContext) -> None:
    """Render the learner's certificate again with the course's current template, as a new
    version (same id and code; earlier versions stay)."""
    pool = ctx.pool
    cert = None if await ctx.already_applied() else await store.get_certificate(
        pool, event.user_id, event.course_id, event.attempt
    )
    if cert is None:
        async with ctx.transaction():
            return
    template = await store.get_template(pool, cert.course_id)
    identity = await store.get_identity(pool, cert.certificate_id)
    # The new rendering gets a credential of its own; the earlier ones are superseded.
    facts = CredentialFacts(
        course_id=cert.course_id, course_title=cert.course_title, student_email=cert.student_email,
        valid_until=cert.valid_until,
    )
    rendered = await state.renderer.render(
        _job(state, identity, cert.student_name, cert.course_title, cert.completed_at, template.source, facts)
    )
    async with ctx.transaction() as conn:
        version = await store.add_version(
            conn, cert.certificate_id, pdf=rendered.pdf, sha256=sha256(rendered.pdf),
            template_revision=template.revision, regeneration_id=event.regeneration_id, rendered_by=state.identity,
            credential=rendered.credential,
        )
    log.info("re-rendered %s as version %d", cert.certificate_id, version)


# -- erasure and export (GDPR) -------------------------------------------------------------------


async def _erase(conn: db.Connection, user_id: str, pseudonym: str) -> tuple[dict[str, int], list[str]]:
    personal = await store.learner_personal_data(conn, user_id)
    return await store.erase_learner(conn, user_id, pseudonym, datetime.now(UTC)), personal


async def erase_learner(state: CertificatesState, event: LearnerErased, ctx: EventContext) -> None:
    """Once enrollment confirms the request: the learner's certificates revoked, their PDFs
    and credentials deleted, the records anonymous, the outbox purged of them. No
    certificate-revoked event is published: it would carry the name and address again."""
    await erasure.apply(ctx, state.enrollment, event, _erase)


async def export_learner(pool: asyncpg.Pool, user_id: str) -> dict[str, Any]:
    """Every row of this service naming the learner; the files as a list (not their bytes)."""
    async with pool.acquire() as conn:
        found = await erasure.export_rows(conn, store.LEARNER_TABLES, user_id)
        found["certificate_files"] = await store.learner_certificate_files(conn, user_id)
    return found
