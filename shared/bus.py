"""Kafka plumbing: the FastStream broker factory and up-front topic creation."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from shared.events import COMPACTED_TOPICS, TOPIC_PARTITIONS, Topic
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)


def broker_security(settings: ServiceSettings) -> BaseSecurity | None:
    """FastStream's form of ``settings.kafka_client_options()`` (the same connection)."""
    options = settings.kafka_client_options()
    ssl_context = options.get("ssl_context")
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    if settings.kafka_security_protocol == "SSL":
        return BaseSecurity(ssl_context=ssl_context, use_ssl=True)
    sasl = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
    return sasl[settings.kafka_sasl_mechanism](
        options["sasl_plain_username"], options["sasl_plain_password"],
        ssl_context=ssl_context, use_ssl=ssl_context is not None,
    )


def create_broker(settings: ServiceSettings, middlewares: Sequence[Any] = ()) -> KafkaBroker:
    # acks=all without the idempotent producer: Tansu has none, and the outbox plus
    # idempotent consumers give exactly-once effects anyway.
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        middlewares=middlewares,
        security=broker_security(settings),
        client_id=settings.service_name,
        acks="all",
        enable_idempotence=False,
        # The broker's clients are its consumers (the outbox relay has its own producer).
        request_timeout_ms=settings.kafka_consumer_request_timeout_ms,
        logger=logging.getLogger(f"faststream.{settings.service_name}"),
    )


@contextlib.asynccontextmanager
async def admin_client(settings: ServiceSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.service_name}-admin",
        request_timeout_ms=settings.kafka_request_timeout_ms,
        **settings.kafka_client_options(),
    )
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def ensure_topics(settings: ServiceSettings, topics: list[Topic] | None = None) -> list[str]:
    """Create every topic with its final partition count; existing topics are left alone.

    The embedded broker cannot add partitions or alter configs later, so this must run
    before anything publishes (auto-creation would pick another partition count).
    """
    wanted = topics or list(TOPIC_PARTITIONS)
    created: list[str] = []
    async with admin_client(settings) as admin:
        existing = set(await admin.list_topics())
        for topic in wanted:
            name = settings.topic(topic.value)
            if name in existing:
                continue
            configs = {"cleanup.policy": "compact"} if topic in COMPACTED_TOPICS else {}
            new = NewTopic(name, num_partitions=TOPIC_PARTITIONS[topic], replication_factor=1,
                           topic_configs=configs)
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([new])
                created.append(name)
    if created:
        log.info("created topics %s", ", ".join(created))
    return created


async def topic_listed(settings: ServiceSettings, name: str) -> bool:
    async with admin_client(settings) as admin:
        return name in set(await admin.list_topics())


async def create_marker_topic(settings: ServiceSettings, name: str) -> None:
    """A one-partition topic that holds nothing: its existence is the information."""
    async with admin_client(settings) as admin:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
