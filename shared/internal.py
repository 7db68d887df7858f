"""Client for the services' internal APIs (read-your-writes fallbacks).

Internal routes live under ``/internal/...`` on each service, require the shared
``X-Internal-Token`` header, and are never routed by the gateway.
"""

from __future__ import annotations

import httpx
from pydantic import BaseModel, ConfigDict

from shared.events import CourseCatalogEntry, EnrollmentChanged
from shared.settings import ServiceSettings

INTERNAL_PREFIX = "/internal"


def internal_client(settings: ServiceSettings, base_url: str, timeout: float = 3.0) -> httpx.AsyncClient:
    """A pooled client for one peer service; create once per process and close on shutdown."""
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"X-Internal-Token": settings.internal_token},
        timeout=httpx.Timeout(timeout, connect=1.0),
        limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
    )


class CourseConfirmation(BaseModel):
    """The owner's answer to "is my copy of this course current, and is this learner still
    enrolled?" (enrollment's ``GET /internal/courses/{id}/confirmation``).

    ``revision`` and ``status`` are the course's current ones; ``course`` is the whole
    current entry only when it is newer than the revision the caller said it holds;
    ``enrollment`` is the learner's current enrollment in any status (``unenrolled``
    included), or null if they never enrolled.
    """

    model_config = ConfigDict(frozen=True)

    course_id: int
    revision: int
    status: str
    course: CourseCatalogEntry | None = None
    enrollment: EnrollmentChanged | None = None
