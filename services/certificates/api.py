"""HTTP routes of the certificates service: parse, call one use case, shape the answer; and
``ERRORS``, where the service's refusals become HTTP answers."""

from __future__ import annotations

import functools
import hashlib
import uuid
from datetime import timedelta
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

import jinja2
import orjson
from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from services.certificates import domain, usecases
from services.certificates.domain import Certificate
from services.certificates.settings import CertificatesSettings
from services.certificates.usecases import CertificatesState
from shared import dead_letters_api
from shared.auth import AdminUser, CurrentUser, InternalCaller
from shared.erasure import ReceiptNotFound, require_receipt
from shared.errors import ErrorMap, HttpError
from shared.internal import PeerUnavailable
from shared.openapi import content, errors
from shared.service import DbPool, state_of
from shared.validation import MAX_BIGINT, Text

router = APIRouter(tags=["certificates"])
public_router = APIRouter(tags=["verification"])
issuer_router = APIRouter(tags=["issuer"])
internal_router = APIRouter(prefix="/internal", tags=["internal"], include_in_schema=False)
admin_router = APIRouter(prefix="/api/admin/courses/{course_id}/certificates", tags=["admin"])
revocation_router = APIRouter(prefix="/api/admin/certificates/{certificate_id}", tags=["admin"])
# The service's dead letters: the admin routes every service has (shared.dead_letters_api).
ROUTERS = [router, public_router, issuer_router, admin_router, revocation_router, internal_router,
           dead_letters_api.router("certificates")]

ERRORS: ErrorMap = {
    domain.NotEnrolled: HttpError(403, "not_enrolled"),
    domain.CourseNotComplete: HttpError(400, "course_not_complete"),
    domain.CertificateNotAvailable: HttpError(404, "certificate_not_available"),
    domain.CertificateNotFound: HttpError(404, "certificate_not_found"),
    domain.RegenerationNotFound: HttpError(404, "regeneration_not_found"),
    domain.AlreadyInState: HttpError(409, "status_unchanged"),
    domain.StatusListNotFound: HttpError(404, "status_list_not_found"),
    domain.InvalidTemplate: HttpError(400, "invalid_template"),
    ReceiptNotFound: HttpError(404, "erasure_not_found"),
    PeerUnavailable: HttpError(503, "progress_unavailable", "Course progress cannot be checked right now"),
}

CourseId = Annotated[int, Path(ge=1, le=2_147_483_647, description="Course ID")]

# The public documents answer 304 to a matching If-None-Match.
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {304: {"description": "Not modified (`If-None-Match` matched)"}}
VC = "application/vc+ld+json"


def _settings(request: Request) -> CertificatesSettings:
    settings: CertificatesSettings = request.app.state.settings
    return settings


def _state(request: Request) -> CertificatesState:
    return state_of(request, CertificatesState)


Settings = Annotated[CertificatesSettings, Depends(_settings)]
State = Annotated[CertificatesState, Depends(_state)]


def _certificate_data(cert: Certificate, settings: CertificatesSettings) -> dict[str, Any]:
    return {
        "certificate_url": domain.pdf_url(settings.public_base_url, cert.verification_code),
        "credential_url": domain.credential_url(settings.public_base_url, cert.verification_code),
        "expires_at": cert.valid_until.isoformat() if cert.valid_until else None,
        "certificate_id": cert.certificate_id,
        "issued_at": cert.issued_at.isoformat(),
        "course_title": cert.course_title,
        "student_name": cert.student_name,
        "course_id": cert.course_id,
        "verification_code": cert.verification_code,
        "verification_url": domain.verification_url(settings.public_base_url, cert.verification_code),
        "attempt": cert.attempt,
    }


def _pending() -> JSONResponse:
    return JSONResponse(
        {"status": "pending", "message": "Your certificate is being generated"},
        status_code=202,
        headers={"Retry-After": "2"},
    )


@router.get("/api/courses/{course_id}/certificate", response_model=None, responses={
    202: {"description": "Being generated: ask again after `Retry-After` seconds",
          "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
    **errors((400, "course_not_complete"), (403, "not_enrolled"), (404, "certificate_not_available"),
             (503, "progress_unavailable")),
})
async def get_course_certificate(
    course_id: CourseId, user: CurrentUser, pool: DbPool, settings: Settings, state: State
) -> dict[str, Any] | JSONResponse:
    cert = await usecases.learner_certificate(
        pool, state, user.id, course_id, retry_after=timedelta(seconds=settings.request_retry_s)
    )
    if cert is None:
        return _pending()
    return {"data": _certificate_data(cert, settings)}


# -- public: PDF and verification ------------------------------------------------------------

@public_router.get("/certificates/{code}.pdf", response_class=Response, responses={
    200: {"description": "The certificate's PDF", **content("application/pdf", {"type": "string", "format": "binary"})},
    **NOT_MODIFIED, **errors((404, "certificate_not_found")),
})
async def download_pdf(
    code: str, request: Request, pool: DbPool, settings: Settings,
    version: Annotated[int | None, Query(ge=1, le=1_000_000, description="An earlier rendering")] = None,
) -> Response:
    found = await usecases.certificate_pdf(pool, code, version)
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
    templates = FilePath(__file__).parent / "templates"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=True)
    return env.get_template("verify.html.j2")


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


@public_router.get("/certificates/verify/{code}", response_model=None, responses={
    200: {"description": "A page for people; JSON `{\"data\": {...}}` for `Accept: application/json`",
          "content": {"text/html": {"schema": {"type": "string"}}, "application/json": {"schema": {"type": "object"}}}},
    404: {"description": "Unknown code: a page for people, `certificate_not_found` for `Accept: application/json`",
          **content("text/html")},
})
async def verify(
    code: str, request: Request, pool: DbPool, settings: Settings, state: State,
    version: Annotated[int | None, Query(ge=1, le=1_000_000, description="The credential of an earlier rendering")]
    = None,
) -> Response | dict[str, Any]:
    wants_json = _wants_json(request)
    checked: usecases.Verification | None
    try:
        checked = await usecases.verify_certificate(pool, settings, state, code, version)
    except domain.CertificateNotFound:
        if wants_json:
            raise
        checked = None  # a person gets the page that says so, as a 404
    if wants_json and checked is not None:
        found = checked.certificate
        return {"data": {
            "valid": checked.state is domain.CredentialState.VALID, "status": checked.state.value,
            **_certificate_data(found, settings),
            "revoked_at": found.revoked_at.isoformat() if found.revoked_at else None,
            "revocation_reason": found.revocation_reason, "proof_error": checked.detail or None,
            "credential_version": checked.version,
        }}
    cert = checked.certificate if checked else None
    html = _verify_template().render(
        certificate=cert,
        status=checked.state.value if checked else "",
        issued_on=f"{cert.issued_at:%d %B %Y}".lstrip("0") if cert else "",
        expires_on=f"{cert.valid_until:%d %B %Y}".lstrip("0") if cert and cert.valid_until else "",
        revoked_on=f"{cert.revoked_at:%d %B %Y}".lstrip("0") if cert and cert.revoked_at else "",
        pdf_url=domain.pdf_url(settings.public_base_url, cert.verification_code) if cert else "",
        credential_url=(domain.credential_url(settings.public_base_url, checked.certificate.verification_code)
                        if checked and checked.version is not None else ""),
        platform_name=settings.platform_name,
        app_url=domain.app_url(settings.public_base_url),
    )
    return HTMLResponse(html, status_code=200 if cert else 404, headers={"Cache-Control": "public, max-age=60"})


@public_router.get("/certificates/{code}/credential", response_class=Response, responses={
    200: {"description": "The signed credential", **content(VC, {"type": "object"})},
    **NOT_MODIFIED, **errors((404, "certificate_not_found")),
})
async def download_credential(
    code: str, request: Request, pool: DbPool,
    version: Annotated[int | None, Query(ge=1, le=1_000_000, description="An earlier rendering's")] = None,
) -> Response:
    """The signed Open Badges 3.0 credential: as public as the PDF, behind the same code."""
    found = await usecases.stored_credential(pool, code, version)
    body = orjson.dumps(found.credential)
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    cache = "public, max-age=31536000, immutable" if version else "public, max-age=60"
    headers = {"Cache-Control": cache, "ETag": etag, "X-Certificate-Version": str(found.version)}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/vc+ld+json", headers=headers)


@public_router.get("/certificates/status/{list_number}", response_class=Response, responses={
    200: {"description": "The signed status list", **content(VC, {"type": "object"})},
    **NOT_MODIFIED, **errors((404, "status_list_not_found")),
})
async def revocation_status_list(
    list_number: Annotated[int, Path(ge=1, le=1_000_000)], request: Request, pool: DbPool, settings: Settings,
    state: State,
) -> Response:
    """The signed BitstringStatusListCredential the credentials' ``credentialStatus`` point at."""
    credential, revision = await usecases.status_list(pool, settings, state, list_number)
    etag = f'"{list_number}-{revision}"'
    # Verifiers cache it briefly: a revocation shows within this many seconds.
    headers = {"Cache-Control": f"public, max-age={settings.status_list_max_age_s}", "ETag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(orjson.dumps(credential), media_type="application/vc+ld+json", headers=headers)


@issuer_router.get("/.well-known/did.json", response_class=Response, responses={
    200: {"description": "The did:web document", **content("application/did+ld+json", {"type": "object"})}})
async def did_document(settings: Settings, state: State) -> Response:
    """The issuer's did:web document (every key, current and earlier)."""
    body = orjson.dumps(usecases.issuer_did_document(settings, state))
    return Response(body, media_type="application/did+ld+json", headers={"Cache-Control": "public, max-age=300"})


@issuer_router.get("/.well-known/jwks.json", response_class=Response, responses={
    200: {"description": "The issuer's public keys", **content("application/jwk-set+json", {"type": "object"})}})
async def jwk_set(state: State) -> Response:
    body = orjson.dumps(usecases.issuer_jwks(state))
    return Response(body, media_type="application/jwk-set+json", headers={"Cache-Control": "public, max-age=300"})


# -- internal: confirmation of certificate-issued events -----------------------------------------

@internal_router.get("/certificates/{certificate_id}")
async def issued_certificate(
    certificate_id: Annotated[str, Path(max_length=64)], _: InternalCaller, pool: DbPool, settings: Settings
) -> dict[str, Any]:
    """What was issued under this id, for consumers of certificate-issued (notifications) to
    confirm an event before they act on it."""
    cert = await usecases.issued_certificate(pool, certificate_id)
    return {
        **_status_data(cert, settings), "user_id": cert.user_id, "student_email": cert.student_email,
        "issued_event_id": str(cert.issued_event_id) if cert.issued_event_id else None,
        "status_changed_at": cert.status_changed_at.isoformat() if cert.status_changed_at else None,
    }


# -- internal: erasure and export of a learner ----------------------------------------------------

@internal_router.get("/erasures/{event_id}")
async def erasure(event_id: uuid.UUID, _: InternalCaller, pool: DbPool) -> dict[str, Any]:
    """This service's receipt of a learner's erasure (404 while it has not erased them)."""
    return (await require_receipt(pool, event_id)).model_dump(mode="json")


@internal_router.get("/learners/{user_id}/export")
async def learner_export(user_id: str, _: InternalCaller, pool: DbPool) -> dict[str, Any]:
    """Everything this service holds on the learner (its part of an export)."""
    return await usecases.export_learner(pool, user_id)


# -- admin: templates, regeneration, listing --------------------------------------------------

class TemplateBody(BaseModel):
    template: Text = Field(min_length=1, description="Jinja2 HTML template (see docs/certificates.md)")


@admin_router.get("/template")
async def get_template(course_id: CourseId, admin: AdminUser, pool: DbPool) -> dict[str, Any]:
    current = await usecases.course_template(pool, course_id)
    return {"data": {
        "course_id": current.course_id,
        "custom": current.custom,
        "revision": current.revision,
        "template": current.template,
    }}


@admin_router.put("/template", responses=errors((400, "invalid_template")))
async def put_template(
    course_id: CourseId, admin: AdminUser, pool: DbPool, body: Annotated[TemplateBody, Body()]
) -> dict[str, Any]:
    revision = await usecases.save_template(pool, course_id, body.template, admin.id)
    return {"message": "Certificate template saved; regenerate to apply it to issued certificates",
            "data": {"course_id": course_id, "revision": revision, "custom": True}}


@admin_router.delete("/template")
async def delete_template(course_id: CourseId, admin: AdminUser, pool: DbPool) -> dict[str, Any]:
    revision = await usecases.reset_template(pool, course_id, admin.id)
    return {"message": "The course uses the default certificate template again",
            "data": {"course_id": course_id, "revision": revision, "custom": False}}


@admin_router.post("/regenerate", status_code=202)
async def regenerate(course_id: CourseId, admin: AdminUser, pool: DbPool) -> dict[str, Any]:
    queued = await usecases.regenerate(pool, course_id, f"admin:{admin.id}")
    return {"message": f"Re-rendering {queued.certificates} certificates",
            "data": {"regeneration_id": queued.regeneration_id, "course_id": queued.course_id,
                     "certificates": queued.certificates}}


@admin_router.get("/regenerations/{regeneration_id}", responses=errors((404, "regeneration_not_found")))
async def regeneration_status(
    course_id: CourseId, regeneration_id: Annotated[int, Path(ge=1, le=MAX_BIGINT)], admin: AdminUser, pool: DbPool
) -> dict[str, Any]:
    found = await usecases.regeneration_status(pool, course_id, regeneration_id)
    return {"data": {
        "regeneration_id": found.regeneration_id, "course_id": found.course_id, "total": found.total,
        "done": found.done, "status": found.status,
        "requested_at": found.requested_at.isoformat(), "requested_by": found.requested_by,
    }}


@admin_router.get("")
async def list_certificates(
    course_id: CourseId, admin: AdminUser, pool: DbPool, settings: Settings,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    certs, total = await usecases.course_certificates(pool, course_id, page, per_page)
    items = [{**_certificate_data(c, settings), "user_id": c.user_id, "version": c.current_version} for c in certs]
    return {"data": items, "meta": {"total": total, "page": page, "per_page": per_page}}


# -- admin: revocation ----------------------------------------------------------------------

class StatusChange(BaseModel):
    reason: Text = Field(min_length=1, max_length=1000, description="Why; shown to verifiers when revoked")


CertificateId = Annotated[str, Path(min_length=1, max_length=64)]


def _status_data(cert: Certificate, settings: CertificatesSettings) -> dict[str, Any]:
    return {
        **_certificate_data(cert, settings), "status": "revoked" if cert.revoked_at else "valid",
        "revoked_at": cert.revoked_at.isoformat() if cert.revoked_at else None,
        "revocation_reason": cert.revocation_reason,
    }


@revocation_router.post("/{action}", responses=errors((404, "certificate_not_found"), (409, "status_unchanged")))
async def change_status(
    certificate_id: CertificateId, action: Annotated[Literal["revoke", "reinstate"], Path()], admin: AdminUser,
    pool: DbPool, settings: Settings, body: Annotated[StatusChange, Body()],
) -> dict[str, Any]:
    """``revoke`` or ``reinstate`` the certificate, with the reason."""
    revoke = action == "revoke"
    cert = await usecases.change_status(pool, settings, certificate_id, revoke=revoke, reason=body.reason,
                                        by=f"admin:{admin.id}")
    return {"message": "Certificate revoked" if revoke else "Certificate reinstated",
            "data": _status_data(cert, settings)}
