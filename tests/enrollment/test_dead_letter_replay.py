"""A poison message fixed by an operator and replayed, in the real enrollment service.

Progress reports a lesson completed by a learner enrollment has no enrollment for (an
enrollment lost in an import, say): enrollment retries, gives up and keeps the dead letter.
The operator enrolls the learner, then replays the letter through the admin API: the
progress is applied once, and replaying again changes nothing.
"""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import REGISTRY

from shared.events import LessonCompleted, Topic
from tests.enrollment.conftest import Service
from tests.enrollment.test_progress_events import T0, completed, my_course
from tests.helpers import TopicReader, eventually

BASE = "/api/admin/dead-letters/enrollment"


def applied_count() -> float:
    labels = {"service": "enrollment", "topic": "lesson-completed", "outcome": "applied"}
    return REGISTRY.get_sample_value("lessonstream_events_consumed_total", labels) or 0.0


async def test_progress_of_a_learner_enrolled_after_the_fact_is_applied_once_on_replay(consuming: Service) -> None:
    service = consuming
    course = await service.create_course("Late", lessons=4)
    cid = course["id"]
    stray = completed("late", course, 0, 25, T0)
    async with TopicReader(service.env.kafka_bootstrap, service.topic(Topic.LESSON_COMPLETED)) as topic:
        await service.publish([stray])

        async def dead_letter() -> list[dict[str, object]]:
            response = await service.client.get(BASE, params={"source": "lesson-completed"}, headers=service.admin)
            assert response.status_code == 200, response.text
            found: list[dict[str, object]] = response.json()["data"]
            return found

        [letter] = await eventually(dead_letter, what="the dead letter")
        assert letter["event_id"] == str(stray.event_id) and "no enrollment" in str(letter["error"])
        assert letter["consumer_group"] == "enrollment.lesson-completed"

        await service.enroll(cid, "late")  # the operator's fix
        assert (await my_course(service, "late", cid) or {}).get("progress_percentage") == 0
        before = applied_count()
        replayed = await service.client.post(f"{BASE}/{letter['id']}/replay", headers=service.admin)
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["data"]["outcome"] == "replayed"

        async def progress_applied() -> bool:
            row = await my_course(service, "late", cid)
            return row is not None and row["progress_percentage"] == 25

        await eventually(progress_applied, what="the replayed progress applied")
        again = await service.client.post(f"{BASE}/{letter['id']}/replay", headers=service.admin)
        assert again.json()["data"]["outcome"] == "already_replayed"
        selection = await service.client.post(f"{BASE}/replay", headers=service.admin)
        assert selection.json()["data"]["counts"] == {}

        # A later event of the same learner and course passes after everything before it.
        later = completed("late", course, 1, 50, T0 + timedelta(minutes=5))
        await service.publish([later])

        async def later_applied() -> bool:
            row = await my_course(service, "late", cid)
            return row is not None and row["progress_percentage"] == 50

        await eventually(later_applied, what="the later progress applied")
        copies = [m for m in topic.messages if LessonCompleted.model_validate_json(m.value).event_id == stray.event_id]
        assert len(copies) == 2, "the original and one replayed copy, on the same partition"
        assert copies[0].partition == copies[1].partition and copies[0].key == copies[1].key
    assert applied_count() - before == 2, "the replayed event and the later one, each applied once"
    assert len(await dead_letter()) == 1, "the replayed copy was not dead-lettered again"
    origin = await service.runtime.pool.fetchval(
        "SELECT origin FROM inbox WHERE consumer = 'enrollment.lesson-completed' AND event_id = $1", stray.event_id)
    assert origin == "applied"
