"""xAPI statements as a real Learning Record Store (Ralph, ``tests/lrs.py``) receives them
from the notifications service: a viewing session and a course completion stored and read
back, valid per the Video Profile's required fields, once each whatever Kafka redelivers;
a statement the LRS failed (500, also after storing it) or could not be reached for, stored
once after the retries, seen and replayed through the admin API; a forged or altered
viewing session dead-lettered, stating nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lessonstream import infra
from services.notifications import xapi
from shared.events import DeadLetter, Topic, VideoSessionEnded
from tests.helpers import TestEnv, TopicReader, eventually
from tests.lrs import Lrs
from tests.notifications.conftest import Publisher, Service, ServiceFactory
from tests.notifications.events import completed
from tests.notifications.smtp_server import MailServer
from tests.notifications.test_confirmation import produce_forged

# Every test of the real LRS on one worker: one Ralph per run, not one per worker.
pytestmark = pytest.mark.xdist_group("lrs")
BASE = "https://learn.example"
XAPI_HEADERS = {"X-Experience-API-Version": "1.0.3"}
FAST = {"delivery_retry_schedule_s": [0] + [0.2] * 30, "delivery_poll_interval_s": 0.1}


def lrs_settings(url: str, lrs: Lrs) -> dict[str, Any]:
    return {
        "xapi_lrs_url": url, "xapi_lrs_username": lrs.username, "xapi_lrs_password": lrs.password,
        "public_base_url": BASE, **FAST,
    }


def viewing(user: str, course_id: int = 7, lesson_id: int = 3, **overrides: Any) -> VideoSessionEnded:
    """A viewing session as progress publishes it."""
    values: dict[str, Any] = {
        "user_id": user, "course_id": course_id, "lesson_id": lesson_id, "session_id": uuid4(),
        "started_at": datetime(2026, 3, 1, 10, tzinfo=UTC), "ended_at": datetime(2026, 3, 1, 10, 4, tzinfo=UTC),
        "start_position": 5.0, "end_position": 118.0, "played_segments": [(5.0, 60.0), (70.0, 118.0)],
        "video_length": 120.0, "progress": 0.94, "completed": True,
    }
    values.update(overrides)
    return VideoSessionEnded.model_validate(values)


async def xapi_deliveries(service: Service) -> list[dict[str, Any]]:
    rows = await service.runtime.pool.fetch(
        "SELECT d.*, (SELECT array_agg(a.outcome || ':' || coalesce(a.status_code::text, '-') ORDER BY a.attempt) "
        "FROM delivery_attempts a WHERE a.delivery_id = d.id) AS log "
        "FROM deliveries d WHERE destination_kind = 'xapi' ORDER BY id"
    )
    return [dict(r) for r in rows]


async def all_delivered(service: Service, count: int) -> list[dict[str, Any]]:
    async def probe() -> list[dict[str, Any]] | None:
        rows = await xapi_deliveries(service)
        return rows if len(rows) >= count and all(r["status"] == "delivered" for r in rows) else None

    # A generous deadline: a new consumer group joins slowly on a loaded machine.
    found: list[dict[str, Any]] = await eventually(probe, timeout=60, what=f"{count} statements delivered")
    return found


async def stored(lrs: Lrs, statement_id: str) -> list[dict[str, Any]]:
    """Every copy the LRS holds under ``statement_id``."""
    async with httpx.AsyncClient(auth=lrs.auth, headers=XAPI_HEADERS, timeout=10.0) as client:
        response = await client.get(f"{lrs.url}/statements", params={"statementId": statement_id})
    if response.status_code == 404:
        return []
    assert response.status_code == 200, response.text
    statements: list[dict[str, Any]] = response.json()["statements"]
    return statements


async def test_a_session_and_a_course_completion_reach_the_lrs_once_each_per_the_video_profile(
    test_env: TestEnv, smtp: MailServer, notifications: ServiceFactory, publisher: Publisher, lrs: Lrs
) -> None:
    async with notifications(smtp, **lrs_settings(lrs.url, lrs)) as service:
        session, course = viewing("vera"), completed("vera", course_title="Practical <Kafka>")
        # The session twice (a second publication of one event), then a later session of the
        # same learner and course: on one partition, so once the later one is stated the
        # repeated one has been consumed.
        await publisher.publish(session, course)
        await publisher.publish(session)
        later = viewing("vera", completed=False, progress=0.95, played_segments=[(118.0, 119.0)],
                        start_position=118.0, end_position=119.0)
        await publisher.publish(later)
        rows = await all_delivered(service, 4 + 1 + 3)
        assert len(rows) == 8, [r["message_id"] for r in rows]
        assert all(r["log"] == ["delivered:204"] for r in rows), [r["log"] for r in rows]

        ids = {
            "initialized": str(xapi.statement_id(session.event_id, xapi.INITIALIZED)),
            "played": str(xapi.statement_id(session.event_id, xapi.PLAYED)),
            "paused": str(xapi.statement_id(session.event_id, xapi.PAUSED)),
            "completed": str(xapi.video_completion_id("vera", 7, 3, 1)),
            "course": str(xapi.statement_id(course.event_id, xapi.COMPLETED)),
        }
        assert set(ids.values()) <= {r["message_id"] for r in rows}
        found: dict[str, dict[str, Any]] = {}
        for name, sid in ids.items():
            copies = await stored(lrs, sid)
            assert len(copies) == 1, (name, copies)
            found[name] = copies[0]

        video = f"{BASE}/courses/7/lessons/3"
        verbs = {"initialized": xapi.INITIALIZED, "played": xapi.PLAYED, "paused": xapi.PAUSED,
                 "completed": xapi.COMPLETED}
        for name, verb in verbs.items():
            statement = found[name]
            assert statement["verb"]["id"] == verb
            assert statement["actor"]["account"] == {"homePage": BASE, "name": "vera"}
            assert statement["object"]["id"] == video
            assert statement["object"]["definition"]["type"] == "https://w3id.org/xapi/video/activity-type/video"
            context = statement["context"]
            assert context["extensions"][xapi.EXT_SESSION_ID] == str(session.session_id)
            assert [c["id"] for c in context["contextActivities"]["category"]] == ["https://w3id.org/xapi/video"]
        for name in ("paused", "completed"):
            extensions = found[name]["result"]["extensions"]
            assert extensions[xapi.EXT_PROGRESS] == 0.94
            assert extensions[xapi.EXT_PLAYED_SEGMENTS] == "5[.]60[,]70[.]118"
            assert extensions[xapi.EXT_TIME] == 118.0
        assert found["completed"]["result"]["completion"] is True
        assert found["played"]["result"]["extensions"][xapi.EXT_TIME] == 5.0
        assert found["course"]["verb"]["id"] == xapi.COMPLETED
        assert found["course"]["object"]["id"] == f"{BASE}/courses/7"
        assert found["course"]["object"]["definition"]["name"] == {"en-US": "Practical <Kafka>"}
        # The later session did not complete the video: no second completed, its own paused.
        assert len(await stored(lrs, str(xapi.statement_id(later.event_id, xapi.PAUSED)))) == 1
        assert len(rows) == len({r["message_id"] for r in rows})


class FlakyLrs:
    """In front of the LRS: answers the first PUTs as scripted, then passes everything on.
    ``"500"``: an error, nothing stored; ``"stored-500"``: stored, then an error answered
    (the answer lost, as to a crash or a proxy timeout after the write)."""

    def __init__(self, upstream: str, script: list[str]) -> None:
        self.upstream = upstream.rstrip("/")
        self.script = script
        self.puts: list[str] = []
        self._client = httpx.AsyncClient(timeout=10.0)
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "PUT", "POST"])])

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        mode = "pass"
        if request.method == "PUT":
            self.puts.append(request.query_params.get("statementId", ""))
            mode = self.script.pop(0) if self.script else "pass"
        if mode == "500":
            return Response("LRS unavailable", status_code=500)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        answer = await self._client.request(
            request.method, f"{self.upstream}/{request.path_params['path']}", params=request.query_params,
            headers=headers, content=body,
        )
        if mode == "stored-500":
            return Response("gateway timeout", status_code=500)
        return Response(answer.content, status_code=answer.status_code)


@asynccontextmanager
async def serving(app: Any, port: int) -> AsyncIterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: _started(server, task), what="the LRS proxy listening")
        yield
    finally:
        server.should_exit = True
        await task


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()
    return bool(server.started)


async def test_a_statement_the_lrs_was_down_or_failed_for_is_stored_once_after_retries(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher, lrs: Lrs
) -> None:
    port = infra.free_port()
    root = lrs.url.removesuffix("/xAPI")
    flaky = FlakyLrs(root, ["500", "stored-500"])
    async with notifications(smtp, **lrs_settings(f"http://127.0.0.1:{port}/xAPI", lrs)) as service:
        course = completed("lena")
        await publisher.publish(course)
        sid = str(xapi.statement_id(course.event_id, xapi.COMPLETED))

        async def refused() -> bool:
            rows = await xapi_deliveries(service)
            return bool(rows) and rows[0]["attempts"] >= 1 and rows[0]["status"] == "pending"

        await eventually(refused, what="an attempt while the LRS is down")
        async with serving(flaky.app, port):
            [row] = await all_delivered(service, 1)
            # Down (no status), a 500 with nothing stored, a 500 after storing, then accepted.
            log = row["log"]
            assert log[-3:] == ["failed:500", "failed:500", "delivered:204"], log
            assert all(entry == "failed:-" for entry in log[:-3]) and len(log) >= 4, log
            assert flaky.puts == [sid, sid, sid]
            assert len(await stored(lrs, sid)) == 1

            # The admin's view, and a replay: the same statement again, still one copy.
            listing = (await service.client.get("/api/admin/xapi/deliveries", params={"status": "delivered"})).json()
            assert [d["message_id"] for d in listing["data"]] == [sid] and listing["meta"]["total"] == 1
            detail = (await service.client.get(f"/api/admin/xapi/deliveries/{row['id']}")).json()["data"]
            assert detail["event_type"] == "course-completed" and detail["body"] == row["body"]
            assert [a["status_code"] for a in detail["attempt_log"]][-3:] == [500, 500, 204]
            replayed = await service.client.post(f"/api/admin/xapi/deliveries/{row['id']}/replay")
            assert replayed.status_code == 200, replayed.text

            async def sent_again() -> bool:
                [again] = await xapi_deliveries(service)
                return bool(again["status"] == "delivered" and again["attempts"] == row["attempts"] + 1)

            await eventually(sent_again, what="the replayed statement delivered")
            assert flaky.puts == [sid, sid, sid, sid]
            assert len(await stored(lrs, sid)) == 1
        await flaky._client.aclose()
        missing = await service.client.post("/api/admin/xapi/deliveries/999999/replay")
        assert missing.status_code == 404 and missing.json()["code"] == "delivery_not_found"


async def test_a_forged_or_altered_session_is_dead_lettered_and_states_nothing(
    test_env: TestEnv, smtp: MailServer, notifications: ServiceFactory, publisher: Publisher, lrs: Lrs
) -> None:
    dlq = test_env.topic_prefix + Topic.DEAD_LETTER.value
    async with (
        TopicReader(test_env.kafka_bootstrap, dlq) as dead,
        notifications(smtp, **lrs_settings(lrs.url, lrs)) as service,
    ):
        genuine = viewing("olga", completed=False)
        publisher.owners.register(genuine)  # progress published it; the forger altered a copy
        altered = genuine.model_copy(update={"progress": 1.0, "completed": True})
        unknown = viewing("olga", lesson_id=4)
        await produce_forged(test_env, unknown)
        await produce_forged(test_env, altered)

        async def rejected() -> list[DeadLetter] | None:
            found = [DeadLetter.model_validate_json(m.value) for m in dead.messages]
            return found if len(found) >= 2 else None

        letters = await eventually(rejected, timeout=60, what="two dead letters")
        errors = {"unknown" if str(unknown.event_id) in letter.value else "altered": letter.error
                  for letter in letters}
        assert errors["unknown"].startswith("rejected: progress published no video-session-ended"), errors
        assert errors["altered"].startswith("rejected: video-session-ended"), errors
        assert errors["altered"].endswith("differs from progress's copy in progress, completed"), errors
        assert all(letter.attempts == 1 for letter in letters)
        # A genuine session, published after them: stated, and the only thing stated.
        later = viewing("olga", lesson_id=5, completed=False)
        await publisher.publish(later)
        rows = await all_delivered(service, 3)
        assert len(rows) == 3 and {r["event_id"] for r in rows} == {later.event_id}
        assert not await stored(lrs, str(xapi.statement_id(unknown.event_id, xapi.PAUSED)))
        assert not await stored(lrs, str(xapi.video_completion_id("olga", 7, 3, 1)))
