"""A real webhook receiver for the tests: an HTTP server (uvicorn, in this process) that
records every request and answers with scripted status codes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request, Response

from tests.helpers import served


@dataclass(frozen=True)
class Hit:
    headers: dict[str, str]
    body: bytes

    @property
    def message_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # the next answers, in order; then `default`
    default: int = 200
    # Held open this long before answering (a slow receiver: deliveries overlap).
    latency_s: float = 0.0

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            self.hits.append(Hit(dict(request.headers), await request.body()))
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            status = self.answers.pop(0) if self.answers else self.default
            return Response(f"answer {status}", status_code=status, media_type="text/plain")

        return app

    def of(self, message_id: str) -> list[Hit]:
        return [h for h in self.hits if h.message_id == message_id]


@asynccontextmanager
async def receiving(**options: object) -> AsyncIterator[Receiver]:
    receiver = Receiver(**options)  # type: ignore[arg-type]
    async with served(receiver.app()) as base:
        receiver.url = f"{base}/hook"
        yield receiver
