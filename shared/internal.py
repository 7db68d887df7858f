"""Client for the services' internal APIs (read-your-writes fallbacks).

Internal routes live under ``/internal/...`` on each service, require the shared
``X-Internal-Token`` header, and are never routed by the gateway.
"""

from __future__ import annotations

import httpx

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
