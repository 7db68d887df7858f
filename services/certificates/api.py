"""HTTP routes of the certificates service: thin, validating, mapping to the error shape."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import jinja2
from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from services.certificates import domain, store
from services.certificates.domain import Certificate, CompletionStatus, MissOutcome
from services.certificates.rendering import TEMPLATES, TemplateError, default_template_source, validate_template
from services.certificates.settings import CertificatesSettings
from shared.auth import AdminUser, CurrentUser, InternalCaller
from shared.errors import ApiError, bad_request, not_found
from shared.events import CertificateRequested
from shared.service import DbPool, state_of
from shared.validation import MAX_BIGINT, Text

router = APIRouter(tags=["certificates"])
public_router = APIRouter(tags=["verification"])
internal_router = APIRouter(prefix="/internal", tags=["internal"])
admin_router = APIRouter(prefix="/api/admin/courses/{course_id}/certificates", tags=["admin"])

CourseId = Annotated[int, Path(ge=1, le=2_147_483_647, description="Course ID")]


def _settings(request: Request) -> CertificatesSettings:
    settings: CertificatesSettings = request.app.state.settings
    return settings


@dataclass
class CertificatesState:
    """What the certificates API runs on: its client of progress's internal API."""

    progress: httpx.AsyncClient

    async def close(self) -> None:
        await self.progress.aclose()


def _progress(request: Request) -> httpx.AsyncClient:
    return state_of(request, CertificatesState).progress


Settings = Annotated[CertificatesSettings, Depends(_settings)]
ProgressClient = Annotated[httpx.AsyncClient, Depends(_progress)]


def _certificate_data(cert: Certificate, settings: CertificatesSettings) -> dict[str, Any]:
    return {
        "certificate_url": domain.pdf_url(settings.public_base_url, cert.verification_code),
        "certificate_id": cert.certificate_id,
        "issued_at": cert.issued_at.isoformat(),
        "course_title": cert.course_title,
        "student_name": cert.student_name,
        "course_id": cert.course_id,
        "verification_code": cert.verification_code,
        "verification_url": domain.verification_url(settings.public_base_url, cert.verification_code),
    }


def _pending() -> JSONResponse:
    return JSONResponse(
        {"status": "pending", "message": "Your certificate is being generated"},
        status_code=202,
        headers={"Retry-After": "2"},
    )


async def _ask_progress(client: httpx.AsyncClient, course_id: int, user_id: str) -> CompletionStatus | None:
    """Progress's own answer (read-your-writes); None when the learner is not enrolled."""
    try:
        response = await client.get(f"/internal/courses/{course_id}/learners/{quote(user_id, safe='')}/completion")
    except httpx.HTTPError as exc:
        raise ApiError(503, "progress_unavailable", "Course progress cannot be checked right now") from exc
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise ApiError(503, "progress_unavailable", "Course progress cannot be checked right now")
    return CompletionStatus.model_validate_json(response.content)


@router.get("/api/courses/{course_id}/certificate", response_model=None)
async def get_course_certificate(
    course_id: CourseId, user: CurrentUser, pool: DbPool, settings: Settings, progress: ProgressClient
) -> dict[str, Any] | JSONResponse:
    cert = await store.get_certificate(pool, user.id, course_id)
    if cert is not None:
        return {"data": _certificate_data(cert, settings)}
    # A worker holds a live lease (it is rendering), or the API handed the completion over a
    # moment ago: pending. A lease that ran out (its worker died) or a stale hand-over: ask
    # progress again and hand the work over anew; the next worker keeps the reserved identity.
    work = await store.work_in_flight(pool, user.id, course_id)
    if domain.is_pending(work, timedelta(seconds=settings.request_retry_s)):
        return _pending()
    # Nothing in flight: the course-completed event may not have arrived. Ask progress.
    status = await _ask_progress(progress, course_id, user.id)
    if status is None:
        raise ApiError(403, "not_enrolled", "You must be enrolled in this course")
    outcome = domain.decide_on_miss(status)
    if outcome is MissOutcome.NOT_COMPLETE:
        raise bad_request(
            "course_not_complete", "You must complete all lessons to get a certificate",
            progress_percentage=status.progress_percentage,
        )
    if outcome is MissOutcome.NO_CERTIFICATE:
        raise not_found("certificate_not_available", "This course does not award certificates")
    if outcome is MissOutcome.REQUEST and status.course_completed is not None:
        # Hand the completion to the workers through the outbox: this process never renders.
        event = CertificateRequested(
            user_id=user.id, course_id=course_id, reason="issue", completion=status.course_completed
        )
        async with pool.acquire() as conn, conn.transaction():
            await store.record_request(conn, event, work.now)
    return _pending()


# -- public: PDF and verification ------------------------------------------------------------

@public_router.get("/certificates/{code}.pdf", response_model=None)
async def download_pdf(
    code: str, request: Request, pool: DbPool, settings: Settings,
    version: Annotated[int | None, Query(ge=1, le=1_000_000, description="An earlier rendering")] = None,
) -> Response:
    found = await store.get_pdf(pool, code, version) if domain.is_plausible_code(code) else None
    if found is None:
        raise not_found("certificate_not_found", "No certificate has this code")
    etag = f'"{found.sha256[:32]}"'
    # A numbered version never changes; the current one changes when the course's
    # certificates are regenerated, so it is cached briefly and revalidated by ETag.
    cache = "public, max-age=31536000, immutable" if version else f"public, max-age={settings.pdf_max_age_s}"
    headers = {
        "Cache-Control": cache,
        "ETag": etag,
        "Last-Modified": found.rendered_at.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "Content-Disposition": f'inline; filename="{found.certificate_id}.pdf"',
        "X-Certificate-Version": str(found.version),
    }
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(found.pdf, media_type="application/pdf", headers=headers)


@functools.lru_cache(maxsize=1)
def _verify_template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    return env.get_template("verify.html.j2")


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


@public_router.get("/certificates/verify/{code}", response_model=None)
async def verify(code: str, request: Request, pool: DbPool, settings: Settings) -> Response | dict[str, Any]:
    cert = await store.get_certificate_by_code(pool, code) if domain.is_plausible_code(code) else None
    if _wants_json(request):
        if cert is None:
            raise not_found("certificate_not_found", "No certificate has this verification code")
        return {"data": {"valid": True, **_certificate_data(cert, settings)}}
    html = _verify_template().render(
        certificate=cert,
        issued_on=f"{cert.issued_at:%d %B %Y}".lstrip("0") if cert else "",
        pdf_url=domain.pdf_url(settings.public_base_url, cert.verification_code) if cert else "",
        platform_name=settings.platform_name,
    )
    return HTMLResponse(html, status_code=200 if cert else 404, headers={"Cache-Control": "public, max-age=60"})


# -- internal: confirmation of certificate-issued events -----------------------------------------

@internal_router.get("/certificates/{certificate_id}")
async def issued_certificate(
    certificate_id: Annotated[str, Path(max_length=64)], _: InternalCaller, pool: DbPool, settings: Settings
) -> dict[str, Any]:
    """What was issued under this id, for consumers of certificate-issued (notifications) to
    confirm an event before they act on it."""
    cert = await store.get_certificate_by_id(pool, certificate_id)
    if cert is None:
        raise not_found("certificate_not_found", "No certificate has this id")
    return {
        **_certificate_data(cert, settings), "user_id": cert.user_id, "student_email": cert.student_email,
        "issued_event_id": str(cert.issued_event_id) if cert.issued_event_id else None,
    }


# -- admin: templates, regeneration, listing --------------------------------------------------

class TemplateBody(BaseModel):
    template: Text = Field(min_length=1, description="Jinja2 HTML template (see docs/certificates.md)")


@admin_router.get("/template")
async def get_template(course_id: CourseId, admin: AdminUser, pool: DbPool) -> dict[str, Any]:
    current = await store.get_template(pool, course_id)
    return {"data": {
        "course_id": course_id,
        "custom": current.source is not None,
        "revision": current.revision,
        "template": current.source if current.source is not None else default_template_source(),
    }}


@admin_router.put("/template")
async def put_template(
    course_id: CourseId, admin: AdminUser, pool: DbPool, body: Annotated[TemplateBody, Body()]
) -> dict[str, Any]:
    try:
        validate_template(body.template)
    except TemplateError as exc:
        raise bad_request("invalid_template", "The template does not render", error=str(exc)) from exc
    revision = await store.set_template(pool, course_id, body.template, admin.id)
    return {"message": "Certificate template saved; regenerate to apply it to issued certificates",
            "data": {"course_id": course_id, "revision": revision, "custom": True}}


@admin_router.delete("/template")
async def delete_template(course_id: CourseId, admin: AdminUser, pool: DbPool) -> dict[str, Any]:
    revision = await store.set_template(pool, course_id, None, admin.id)
    return {"message": "The course uses the default certificate template again",
            "data": {"course_id": course_id, "revision": revision, "custom": False}}


def regeneration_event(user_id: str, course_id: int, regeneration_id: int) -> CertificateRequested:
    return CertificateRequested(
        user_id=user_id, course_id=course_id, reason="regenerate", regeneration_id=regeneration_id
    )


@admin_router.post("/regenerate", status_code=202)
async def regenerate(course_id: CourseId, admin: AdminUser, pool: DbPool) -> dict[str, Any]:
    async with pool.acquire() as conn:
        regeneration_id, count = await store.request_regeneration(
            conn, course_id, f"admin:{admin.id}", regeneration_event
        )
    return {"message": f"Re-rendering {count} certificates",
            "data": {"regeneration_id": regeneration_id, "course_id": course_id, "certificates": count}}


@admin_router.get("/regenerations/{regeneration_id}")
async def regeneration_status(
    course_id: CourseId, regeneration_id: Annotated[int, Path(ge=1, le=MAX_BIGINT)], admin: AdminUser, pool: DbPool
) -> dict[str, Any]:
    row = await store.regeneration_status(pool, course_id, regeneration_id)
    if row is None:
        raise not_found("regeneration_not_found", "No such regeneration for this course")
    done, total = int(row["done"]), int(row["total"])
    return {"data": {
        "regeneration_id": row["id"], "course_id": row["course_id"], "total": total, "done": done,
        "status": "done" if done >= total else "running",
        "requested_at": row["requested_at"].isoformat(), "requested_by": row["requested_by"],
    }}


@admin_router.get("")
async def list_certificates(
    course_id: CourseId, admin: AdminUser, pool: DbPool, settings: Settings,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    certs, total = await store.list_course_certificates(pool, course_id, per_page, (page - 1) * per_page)
    items = [{**_certificate_data(c, settings), "user_id": c.user_id, "version": c.current_version} for c in certs]
    return {"data": items, "meta": {"total": total, "page": page, "per_page": per_page}}
