"""The promise under faults, on the real processes of ``lessonstream dev``: a crash, a
restart, a paused broker, a stopped database or mail server, duplicated or forged
messages, a stale replica — each delays work but never loses it, never does it twice,
and never does it early.

Each case counts, for its own learners, certificates (in the certificates database) and
emails of each kind (in the SMTP sink's files), waiting with a deadline; none of them
asks for a certificate, so nothing is produced by a learner's action. The runner kill is
last: it replaces the stack.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from shared.events import CourseCompleted, DeadLetter, Topic
from tests.faults.conftest import FaultEnv
from tests.faults.support import Course, Learner, Lms, until, wait_for
from tests.helpers import produce_raw
from tests.promql import sample_sum

# One stack serves the module: under xdist its cases stay together on one worker.
pytestmark = pytest.mark.xdist_group("faults")


def quiet(lms: Lms) -> bool:
    """Nothing left to publish or to mail: a duplicate still on its way would be counted."""
    for database in ("progress", "enrollment", "certificates", "notifications"):
        rows = lms._query(database, "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
        if rows[0]["n"]:
            return False
    rows = lms._query("notifications", "SELECT count(*) AS n FROM outgoing_mail WHERE status IN ('pending', 'sending')")
    return bool(rows[0]["n"] == 0)


def settle_and_count(faults: FaultEnv, learners: list[Learner], course: Course, case: str, **figures: Any) -> None:
    lms = faults.lms
    wait_for(lambda: quiet(lms), 60, "outboxes and the mail queue drained")
    outcome = lms.outcome(learners, course)
    faults.figures.add(case, N=len(learners), **outcome, **figures)
    assert outcome == {"lost": 0, "duplicated": 0}, outcome


def heartbeats_served(lms: Lms, replica: str) -> float:
    """POST /api/progress requests a replica has answered, from its own metrics."""
    text = httpx.get(f"{lms.stack.url(replica)}/metrics", timeout=5).text
    return sample_sum(text, "lessonstream_http_request_duration_seconds_count", method="POST",
                      route="/api/progress") or 0.0


def test_the_gateway_spreads_learners_over_progress_replicas_and_keeps_each_on_one(faults: FaultEnv) -> None:
    lms = faults.lms
    course, learners = lms.cohort("lb", 24)
    replicas = ["progress-1", "progress-2"]
    before = {r: heartbeats_served(lms, r) for r in replicas}
    for learner in learners:
        response = lms.http.post("/api/progress", headers=learner.headers, json={
            "course_id": course.id, "lesson_id": course.lessons[0], "last_position": 5, "video_progress": 5,
        })
        assert response.status_code == 200, response.text
    spread = {r: heartbeats_served(lms, r) - before[r] for r in replicas}
    assert sum(spread.values()) == len(learners)
    assert all(n > 0 for n in spread.values()), spread
    # One learner's requests all reach the same replica. A replica the gateway saw fail is
    # skipped for fail_duration (10 s): routing then moves, correctly, so the window is
    # tried again until the deadline; every window is kept for the message.
    [learner] = learners[:1]
    windows: list[list[float]] = []

    def one_replica_serves_the_window() -> bool:
        before = {r: heartbeats_served(lms, r) for r in replicas}
        for position in range(10):
            lms.http.post("/api/progress", headers=learner.headers, json={
                "course_id": course.id, "lesson_id": course.lessons[0], "last_position": 6 + position,
            })
        windows.append(sorted(heartbeats_served(lms, r) - before[r] for r in replicas))
        return windows[-1] == [0, 10]

    try:
        wait_for(one_replica_serves_the_window, 30, "one learner's heartbeats on one replica", interval=0.5)
    except TimeoutError as exc:
        raise AssertionError(f"no window went to one replica: {windows}") from exc
    faults.figures.add("gateway balancing", learners=len(learners), per_replica=list(spread.values()),
                       windows_until_sticky=len(windows))


def test_a_certificate_worker_killed_mid_burst_loses_and_repeats_nothing(faults: FaultEnv) -> None:
    lms = faults.lms
    course, learners = lms.cohort("wk", 60)
    with ThreadPoolExecutor(1) as pool:
        burst = pool.submit(lms.complete_course, learners, course)
        wait_for(lambda: sum(lms.certificates(course).values()) >= 3, 120, "the first certificates")
        old = lms.kill("certificates-worker-1")
        killed = time.monotonic()
        acknowledged = burst.result(timeout=180)
    assert len(acknowledged) == len(learners)
    restarted = lms.wait_restarted("certificates-worker-1", old)
    lms.wait_converged(learners, course, 150, "certificates and emails after the worker kill")
    converge = round(time.monotonic() - killed, 1)
    numbers = lms._query("certificates", "SELECT count(DISTINCT certificate_id) AS n FROM certificates "
                                         "WHERE course_id = $1", course.id)[0]["n"]
    assert numbers == len(learners), "every certificate has a number of its own"
    settle_and_count(faults, learners, course, "worker kill -9 mid-burst", converge_s=converge,
                     restart_s=restarted)


def completions_lag(lms: Lms) -> float | None:
    """The certificate workers' lag on course-completed, as the certificates API process
    reports it at a scrape (read from the broker), or None when that scrape had none."""
    text = httpx.get(f"{lms.stack.url('certificates')}/metrics", timeout=10).text
    return sample_sum(text, "lessonstream_consumer_lag_messages", group="certificates-worker",
                      topic=Topic.COURSE_COMPLETED.value)


def test_paused_certificate_workers_show_their_backlog_as_lag_and_clear_it(faults: FaultEnv) -> None:
    """Both workers stopped (SIGSTOP: they neither consume nor leave the group): the backlog is
    reported as lag by the certificates API process, from the broker, while no worker can
    answer a scrape; it falls to 0 once they run again, every certificate issued once."""
    lms = faults.lms
    course, learners = lms.cohort("lg", 20)
    assert completions_lag(lms) == 0
    workers = ["certificates-worker-1", "certificates-worker-2"]
    pids = [lms.kill(worker, signal.SIGSTOP) for worker in workers]
    try:
        acknowledged = lms.complete_course(learners, course)
        assert len(acknowledged) == len(learners)
        peak = wait_for(lambda: (lag := completions_lag(lms)) is not None and lag >= len(learners) and lag,
                        60, "the paused workers' backlog in the lag")
        assert sum(lms.certificates(course).values()) == 0, "nothing is issued while the workers are stopped"
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    lms.wait_converged(learners, course, 120, "certificates and emails after the workers resumed")
    wait_for(lambda: completions_lag(lms) == 0, 60, "the lag back to 0")
    settle_and_count(faults, learners, course, "workers SIGSTOP (lag)", lag_peak=peak,
                     converge_s=round(time.monotonic() - resumed, 1))


def test_a_paused_broker_delays_completions_and_loses_none(faults: FaultEnv) -> None:
    lms = faults.lms
    course, learners = lms.cohort("bp", 20)
    with lms.broker_paused():
        paused = time.monotonic()
        acknowledged = lms.complete_course(learners, course)
        # Writes go on while the broker is away: they wait in the outboxes.
        assert len(acknowledged) == len(learners)
        assert lms.outcome(learners, course)["lost"] > 0, "nothing can be issued while the broker is paused"
        remaining = 20 - (time.monotonic() - paused)
        if remaining > 0:
            wait_for(lambda: time.monotonic() - paused >= 20, remaining + 5, "the 20 s pause")
    resumed = time.monotonic()
    lms.wait_converged(learners, course, 120, "certificates and emails after the broker pause")
    settle_and_count(faults, learners, course, "broker SIGSTOP 20 s", converge_s=round(time.monotonic() - resumed, 1))


def test_a_stopped_database_gets_503_never_500_and_every_acknowledged_completion_counts(faults: FaultEnv) -> None:
    lms = faults.lms
    course, learners = lms.cohort("db", 12, lessons=2)
    # The first lesson before the outage, the second during it (retried until acknowledged).
    for learner in learners:
        assert lms.complete(learner, course, course.lessons[0]).status_code == 200
    pids = dict(faults.stack.pids())
    statuses: dict[int, int] = {}
    faults.postgres.stop_server()
    stopped = time.monotonic()
    try:
        while time.monotonic() - stopped < 10:
            for learner in learners:
                for response in (
                    lms.complete(learner, course, course.lessons[1]),
                    lms.http.post("/api/progress", headers=learner.headers, json={
                        "course_id": course.id, "lesson_id": course.lessons[0], "last_position": 30,
                        "video_progress": 30, "completed": False,
                    }),
                ):
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if response.status_code == 503:
                        assert response.headers.get("retry-after"), response.headers
                        assert response.json()["code"] == "service_unavailable"
    finally:
        faults.postgres.start_server()
    assert not [s for s in statuses if s >= 500 and s != 503], statuses
    assert statuses.get(503), "requests met the stopped database"
    started = time.monotonic()
    # The services recover without a restart: the same processes answer again.
    wait_for(lms.all_ready, 60, "every service ready again")
    recovered = round(time.monotonic() - started, 1)
    assert faults.stack.pids() == pids
    for learner in learners:  # what was refused during the outage is retried by the client
        assert lms.complete(learner, course, course.lessons[1]).status_code == 200
    lms.wait_converged(learners, course, 120, "certificates and emails after the database outage")
    settle_and_count(faults, learners, course, "database stop 10 s", requests=sum(statuses.values()),
                     answered_503=statuses.get(503, 0), recovered_s=recovered)


def test_a_killed_smtp_sink_is_restarted_and_every_email_arrives_once(faults: FaultEnv) -> None:
    lms = faults.lms
    course, learners = lms.cohort("sm", 10)
    old = lms.kill("smtp-sink")
    acknowledged = lms.complete_course(learners, course)
    assert len(acknowledged) == len(learners)
    restarted = lms.wait_restarted("smtp-sink", old)
    lms.wait_converged(learners, course, 120, "emails after the SMTP sink came back")
    settle_and_count(faults, learners, course, "SMTP sink kill -9", restart_s=restarted)


def test_a_killed_progress_replica_loses_at_most_one_flush_interval_of_positions(faults: FaultEnv) -> None:
    lms = faults.lms
    course, [learner] = lms.cohort("pk", 1)
    replica = faults.stack.url("progress-1")
    acknowledged: list[tuple[float, float]] = []  # (when, position) of every 200
    position = 0.0
    with httpx.Client(base_url=replica, headers=learner.headers, timeout=5) as client:
        started = time.monotonic()
        while time.monotonic() - started < 3:
            # Paced by the clock, twenty a second.
            until(started + len(acknowledged) * 0.05)
            position += 0.1
            response = client.post("/api/progress", json={
                "course_id": course.id, "lesson_id": course.lessons[0], "last_position": round(position, 1),
                "video_progress": round(position, 1), "completed": False,
            })
            assert response.status_code == 200, response.text
            acknowledged.append((time.monotonic(), round(position, 1)))
        old = lms.kill("progress-1")
        killed = time.monotonic()
    lms.wait_restarted("progress-1", old)
    stored = lms._query("progress", "SELECT last_position FROM lesson_progress WHERE user_id = $1",
                        learner.id)[0]["last_position"]
    last_position = acknowledged[-1][1]
    # The stored position is that of a heartbeat acknowledged at most one flush interval
    # (0.5 s) before the kill, plus the time a flush takes on a busy machine.
    when_stored = next(t for t, p in acknowledged if p >= stored)
    lost_s = round(killed - when_stored, 2)
    faults.figures.add("progress kill -9", N=len(acknowledged), last_acknowledged=last_position, stored=stored,
                       lost_s=lost_s)
    assert stored <= last_position
    assert lost_s <= 0.5 + 0.5, (stored, last_position, lost_s)


def test_two_progress_replicas_with_alternating_routing_store_the_true_time_spent(faults: FaultEnv) -> None:
    lms = faults.lms
    course, [learner] = lms.cohort("rp", 1)
    replicas = [httpx.Client(base_url=faults.stack.url(f"progress-{i}"), headers=learner.headers, timeout=5)
                for i in (1, 2)]
    try:
        started = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - started) < 12:
            response = replicas[sent % 2].post("/api/progress", json={
                "course_id": course.id, "lesson_id": course.lessons[0], "last_position": round(elapsed, 2),
                "video_progress": round(elapsed, 2), "completed": False,
            })
            assert response.status_code == 200, response.text
            sent += 1
            # Heartbeats paced by the clock, as a player sends them.
            until(started + sent * 0.25)
        truth = elapsed  # the learner watched from 0 to the last position without pausing

        def agreed() -> tuple[float, float] | None:
            values = []
            for client in replicas:
                [record] = client.get(f"/api/progress?courseId={course.id}").json()
                values.append(record["time_spent_seconds"])
            return (values[0], values[1]) if values[0] == values[1] else None

        first, _ = wait_for(agreed, 10, "both replicas to answer the same time spent")
    finally:
        for client in replicas:
            client.close()
    stored = lms._query("progress", "SELECT time_spent_seconds FROM lesson_progress WHERE user_id = $1",
                        learner.id)[0]["time_spent_seconds"]
    faults.figures.add("two progress replicas, alternating", heartbeats=sent, truth_s=round(truth, 2),
                       stored_s=round(stored, 2), answered_s=first)
    assert stored <= truth + 0.01
    assert stored >= truth * 0.95, (stored, truth)


def test_a_stale_catalog_under_a_paused_broker_never_completes_a_course_early(faults: FaultEnv) -> None:
    lms = faults.lms
    course, [learner] = lms.cohort("sc", 1, lessons=2)
    with lms.broker_paused():
        # The catalog changes while progress cannot hear of it.
        course.lessons.append(lms.add_lesson(course.id, "Added while the broker was paused"))
        last: dict[str, Any] = {}
        for lesson_id in course.lessons[:2]:
            response = lms.complete(learner, course, lesson_id)
            assert response.status_code == 200, response.text
            last = response.json()["data"]
        assert last["total_lessons"] == 3 and last["completed_lessons"] == 2, last
        assert last["progress_percentage"] < 100
        assert not lms.course_completions(course), "no course-completed on a stale catalog"
    # Completing the added lesson completes the course, once.
    assert lms.complete(learner, course, course.lessons[2]).status_code == 200
    lms.wait_converged([learner], course, 90, "the certificate once the course is really complete")
    settle_and_count(faults, [learner], course, "stale catalog, paused broker")


def test_forged_and_malformed_events_make_no_certificate_and_no_email(faults: FaultEnv) -> None:
    lms = faults.lms
    course = lms.course("forged")
    real, forged_learner = lms.learners("fg", 2)
    lms.enroll([real], course)
    bootstrap = f"127.0.0.1:{faults.stack.kafka_port}"
    topic = Topic.COURSE_COMPLETED.value

    def forged(user: Learner, course_id: int) -> CourseCompleted:
        return CourseCompleted(
            user_id=user.id, course_id=course_id, completed_at=datetime.now(UTC), user_name="Mallory",
            user_email=user.email, course_title="Forged course", certificate_enabled=True,
            enrolled_at=datetime.now(UTC), instructor_ids=[],
        )

    async def produce() -> None:
        unknown_course = forged(forged_learner, 999_999)
        not_completed = forged(forged_learner, course.id)
        for event in (unknown_course, not_completed):
            await produce_raw(bootstrap, topic, event.model_dump_json().encode(), event.key().encode())
        await produce_raw(bootstrap, topic, b"{not json", b"x:1")
        await produce_raw(bootstrap, topic, b'{"type": "course-completed", "event_id": "' +
                          str(uuid.uuid4()).encode() + b'"}', b"x:2")

    asyncio.run(produce())
    # A real completion after the forged ones: it goes through, so they were consumed.
    assert lms.complete_course([real], course) == [real]
    lms.wait_converged([real], course, 90, "the real learner's certificate and emails")
    settle_and_count(faults, [real], course, "forged and malformed events (the real learner)")
    assert lms.outcome([forged_learner], course)["lost"] == 3, "no certificate and no email for forged events"
    letters = {
        database: [
            DeadLetter.model_validate_json(r["payload"])
            for r in lms._query(database, "SELECT payload FROM outbox WHERE topic = 'dead-letter'")
        ]
        for database in ("certificates", "notifications")
    }
    for database, found in letters.items():
        forged_letters = [d for d in found if forged_learner.id in d.value]
        assert len(forged_letters) == 2, (database, found)
        assert all(d.error.startswith("rejected: ") for d in forged_letters), forged_letters
        assert sum("not json" in d.error or "invalid event" in d.error for d in found) >= 2, found
    rejected = sum(len(found) for found in letters.values())
    faults.figures.add("forged and malformed events", forged=2, malformed=2, certificates=0, emails=0,
                       dead_lettered=rejected)


def test_a_killed_broker_is_restarted_with_every_client_and_nothing_is_lost(faults: FaultEnv) -> None:
    lms = faults.lms
    course, learners = lms.cohort("bk", 20)
    acknowledged = lms.complete_course(learners[:10], course)
    old = lms.kill("broker")
    killed = time.monotonic()
    acknowledged += lms.complete_course(learners[10:], course)
    assert len(acknowledged) == len(learners)
    lms.wait_restarted("broker", old)
    wait_for(lms.all_ready, 120, "every service ready on the new broker")
    lms.wait_converged(learners, course, 120, "certificates and emails after the broker restart")
    settle_and_count(faults, learners, course, "broker kill -9", converge_s=round(time.monotonic() - killed, 1))


def test_the_runner_killed_right_after_a_burst_and_started_again_loses_nothing(faults: FaultEnv) -> None:
    lms = faults.lms
    course, learners = lms.cohort("rk", 30)
    acknowledged = lms.complete_course(learners, course)
    assert len(acknowledged) == len(learners)
    faults.stack.process.send_signal(signal.SIGKILL)  # the runner; its children get SIGTERM
    faults.stack.process.wait(10)
    restart_begun = time.monotonic()
    faults.start_runner_again()
    ready_s = round(time.monotonic() - restart_begun, 1)
    started = time.monotonic()
    # The deadline only bounds the wait (on a quiet machine it converges within seconds of
    # being ready; the figure is reported): what is asserted is that nothing is lost or doubled.
    converge = faults.lms.wait_converged(learners, course, 120, "certificates and emails after the runner restart")
    settle_and_count(faults, learners, course, "runner kill -9 and restart", ready_s=ready_s,
                     converge_after_ready_s=round(time.monotonic() - started, 1), waited_s=converge)
