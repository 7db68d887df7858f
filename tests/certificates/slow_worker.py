"""A certificate worker whose renders hang (``SLOW_RENDER_S``): a worker caught mid-render
when it is killed. Run as ``uvicorn --factory tests.certificates.slow_worker:build_app``."""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI

from services.certificates import worker
from services.certificates.rendering import Rendered, Renderer, RenderJob


class SlowRenderer(Renderer):
    async def render(self, job: RenderJob) -> Rendered:
        await asyncio.sleep(float(os.environ.get("SLOW_RENDER_S", "600")))
        return await super().render(job)


def build_app() -> FastAPI:
    worker.Renderer = SlowRenderer  # type: ignore[attr-defined]  # the worker builds its pool from this name
    return worker.build_app()
