"""Composition root of the progress service: settings, routes, subscriptions, lifespan."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.progress import api, handlers
from services.progress.analytics import api as analytics_api
from services.progress.analytics.folder import AnalyticsFolder
from services.progress.heartbeats import HeartbeatBuffer
from services.progress.replicas import Replicas
from services.progress.settings import ProgressSettings
from services.progress.usecases import RECHECK_BACKOFF, ProgressState, Recalculator, SessionCloser, Tracker
from shared.events import Topic
from shared.internal import internal_client
from shared.listener import Listener
from shared.periodic import Periodic
from shared.retry import Backoff
from shared.service import Runtime, ServiceSpec, create_app


def build_app(settings: ProgressSettings | None = None) -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory services.progress.app:build_app`) and tests."""
    settings = settings or ProgressSettings()

    async def open_state(runtime: Runtime[ProgressState]) -> ProgressState:
        client = internal_client(settings, settings.enrollment_internal_url)
        replicas = Replicas(runtime.pool, client, settings.replica_cache_ttl_s)
        buffer = HeartbeatBuffer(
            runtime.pool, settings.heartbeat_flush_interval_s, session_idle_s=settings.video_session_idle_s,
            mark_interval_s=settings.video_session_check_interval_s,
        )
        await buffer.start()
        folder = AnalyticsFolder(runtime.pool, settings.analytics_fold_interval_s, idle_interval_s=settings.idle_poll_s)
        folder.start()
        interval = settings.completion_recheck_interval_s
        recheck = Backoff(first_s=interval, max_s=RECHECK_BACKOFF.max_s)
        tracker = Tracker(runtime.pool, replicas, buffer, recheck)
        # Both look every interval while they find work, back off to IDLE_POLL_S while they
        # find none, and are woken at commit when any process queues a due row (migration 012).
        rechecks = Periodic(interval, tracker.recheck_pending, "completion re-check",
                            idle_interval_s=settings.idle_poll_s)
        rechecks.start()
        recalculator = Recalculator(runtime.pool, settings.recalculation_batch_size, settings.recalculation_lease_s)
        recalculations = Periodic(settings.recalculation_interval_s, recalculator.run_due, "progress recalculation",
                                  idle_interval_s=settings.idle_poll_s)
        recalculations.start()
        listener = Listener(settings.database_url)
        listener.on("completion_recheck_due", rechecks.wake)
        listener.on("recalculation_due", recalculations.wake)
        listener.start()
        # Runs when a flush found records whose coverage may have reached a threshold; backs off
        # while there are none (and while none are left to retry).
        watching = Periodic(settings.heartbeat_flush_interval_s, tracker.complete_watched_round, "automatic completion",
                            idle_interval_s=settings.idle_poll_s)
        buffer.on_watch_candidates = watching.wake
        watching.start()
        closer = SessionCloser(runtime.pool, settings.video_session_idle_s, settings.video_session_flusher_expiry_s)
        sessions = Periodic(settings.video_session_check_interval_s, closer.close_idle, "video sessions")
        sessions.start()
        return ProgressState(client, replicas, buffer, folder, tracker, rechecks, recalculations, watching, sessions,
                             listener)

    app = create_app(
        ServiceSpec(
            name="progress",
            settings=settings,
            migrations=Path(__file__).parent / "migrations",
            routers=[*api.ROUTERS, analytics_api.router],
            # The analytics subpackage answers its own refusals; both maps are the service's.
            errors={**api.ERRORS, **analytics_api.ERRORS},
            quiet_routes=frozenset({("POST", "/api/progress")}),
            subscriptions=handlers.subscriptions(settings),
            # What it publishes through its outbox, for the event documents (/asyncapi.json).
            publishes=[Topic.LESSON_COMPLETED, Topic.LESSON_REOPENED, Topic.COURSE_COMPLETED,
                       Topic.PROGRESS_RECALCULATED, Topic.VIDEO_SESSIONS],
            open_state=open_state,
        )
    )
    app.router.routes.insert(0, api.heartbeat_route)  # matched first: POST /api/progress, see api.HeartbeatEndpoint
    return app
