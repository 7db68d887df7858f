"""A consumer's long fetch wait (``KAFKA_FETCH_MAX_WAIT_MS``, 10 s by default, for an idle
stack's sake) delays nothing: the broker answers a waiting fetch as soon as a record
arrives. On the embedded broker that holds once a partition has had its first record (the
first one waits out the fetch: docs/operations.md, "Idle cost"), so the partitions are
written once before the clock runs."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.settings import ServiceSettings
from tests.helpers import TestEnv

PARTITIONS = 3


async def test_a_record_reaches_a_consumer_waiting_on_the_default_fetch_at_once(test_env: TestEnv) -> None:
    defaults = ServiceSettings()
    assert defaults.kafka_fetch_max_wait_ms == 10_000
    topic = f"{test_env.topic_prefix}fetch-wait"
    admin = AIOKafkaAdminClient(bootstrap_servers=test_env.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=test_env.kafka_bootstrap)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=test_env.kafka_bootstrap, group_id=f"{test_env.topic_prefix}fetch-wait",
        auto_offset_reset="earliest", fetch_max_wait_ms=defaults.kafka_fetch_max_wait_ms,
        request_timeout_ms=defaults.kafka_consumer_request_timeout_ms,
    )
    await producer.start()
    await consumer.start()
    try:
        for partition in range(PARTITIONS):
            await producer.send_and_wait(topic, b"first", partition=partition)
        for _ in range(PARTITIONS):
            await consumer.getone()
        delays = []
        for i in range(6):
            started = time.monotonic()
            await producer.send_and_wait(topic, b"next", partition=i % PARTITIONS)
            await consumer.getone()
            delays.append(time.monotonic() - started)
        # Far below the 10 s a fetch may wait: the answer came with the record.
        assert max(delays) < 2.0, delays
    finally:
        await consumer.stop()
        await producer.stop()
