"""Consumer lag in messages, read from the broker: for each consumer group of a process and
its topic, the log end of every partition minus the group's committed offset.

Read at scrape (``/metrics``) rather than by a loop, so an idle process pays nothing between
scrapes. From the broker, not from the consumer: the group's committed offsets and the log
ends are the broker's, so the figure is right whichever member holds a partition, and also
while the consumer is stopped or has left the group, which is when lag matters. Every
process of a group therefore reports the whole group's lag, and a process may report groups
it is not in (``ServiceSpec.also_watched``: the certificates API reports its workers'). A
partition nothing has been committed on counts from its first offset. Where the broker cannot say (a request fails),
no figure is given, and ``lessonstream_event_age_seconds`` still tells the lag in time.

The log end is the high watermark a fetch answers, not ListOffsets: Tansu answers
ListOffsets with the base offset of a partition's last record batch plus one (measured: five
records sent in one batch, end offset 1), which would hide everything a producer batched;
its fetch answers carry the true high watermark, as Apache Kafka's do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.events import TOPIC_PARTITIONS, Topic
from shared.settings import ServiceSettings


@dataclass(frozen=True)
class Watched:
    group: str  # the consumer name, as the subscription names it (without the topic prefix)
    topic: Topic


# How long a reading waits for every partition's high watermark: one fetch answer each, which
# the broker gives at once when there is data and after FETCH_WAIT_MS when there is none.
FETCH_WAIT_MS = 100
HIGHWATER_TIMEOUT_S = 2.0


class LagMonitor:
    """Two clients of its own, opened at the first reading and kept: an admin client for the
    committed offsets and a group-less consumer for the partitions' first and end offsets. The
    consumer is assigned the partitions only during a reading (an assigned consumer keeps
    fetching), positioned at the end, and reads the high watermark of its first fetch."""

    def __init__(self, settings: ServiceSettings, watched: Sequence[Watched]) -> None:
        self._settings = settings
        self.watched = list(watched)
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()  # scrapes side by side share one reading at a time

    def _partitions(self, topic: Topic) -> list[TopicPartition]:
        name = self._settings.topic(topic.value)
        return [TopicPartition(name, p) for p in range(TOPIC_PARTITIONS[topic])]

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        s = self._settings
        if self._admin is None or self._offsets is None:
            await self.close()
            admin = AIOKafkaAdminClient(
                bootstrap_servers=s.kafka_bootstrap_servers, client_id=f"{s.service_name}-lag",
                request_timeout_ms=s.kafka_request_timeout_ms, **s.kafka_client_options(),
            )
            offsets = AIOKafkaConsumer(
                bootstrap_servers=s.kafka_bootstrap_servers, client_id=f"{s.service_name}-lag",
                group_id=None, enable_auto_commit=False, request_timeout_ms=s.kafka_request_timeout_ms,
                # A fetch at the log's end brings (almost) nothing back but the high watermark.
                fetch_max_wait_ms=FETCH_WAIT_MS, max_partition_fetch_bytes=1024,
                **s.kafka_client_options(),
            )
            try:
                await admin.start()
                await offsets.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await admin.close()
                with contextlib.suppress(Exception):
                    await offsets.stop()
                raise
            self._admin, self._offsets = admin, offsets
        return self._admin, self._offsets

    async def read(self) -> dict[Watched, int]:
        """The lag of every watched group, in messages. A failure closes the clients (a broker
        that restarted leaves dead connections) and raises: the next reading starts afresh."""
        async with self._lock:
            try:
                return await self._read()
            except BaseException:
                await self.close()
                raise

    async def _read(self) -> dict[Watched, int]:
        if not self.watched:
            return {}
        admin, offsets = await self._clients()
        partitions = sorted({tp for w in self.watched for tp in self._partitions(w.topic)})
        firsts = await offsets.beginning_offsets(partitions)
        ends = await self._high_watermarks(offsets, partitions)

        async def lag_of(w: Watched) -> int:
            tps = self._partitions(w.topic)
            committed = await admin.list_consumer_group_offsets(self._settings.group(w.group), partitions=tps)
            total = 0
            for tp in tps:
                done = committed[tp].offset if tp in committed else -1
                start = done if done >= 0 else firsts[tp]  # -1: nothing committed yet
                total += max(0, ends[tp] - start)
            return total

        lags = await asyncio.gather(*(lag_of(w) for w in self.watched))
        return dict(zip(self.watched, lags, strict=True))

    @staticmethod
    async def _high_watermarks(
        offsets: AIOKafkaConsumer, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        offsets.assign(partitions)
        try:
            # At or just before the end (ListOffsets may answer short of it, never past it).
            await offsets.seek_to_end(*partitions)
            deadline = asyncio.get_running_loop().time() + HIGHWATER_TIMEOUT_S
            while True:
                marks = {tp: offsets.highwater(tp) for tp in partitions}
                if all(mark is not None for mark in marks.values()):
                    return {tp: int(mark) for tp, mark in marks.items() if mark is not None}
                if asyncio.get_running_loop().time() > deadline:
                    missing = sorted(f"{tp.topic}[{tp.partition}]" for tp, m in marks.items() if m is None)
                    raise TimeoutError(f"no high watermark for {', '.join(missing)}")
                await asyncio.sleep(0.01)
        finally:
            offsets.unsubscribe()  # no fetching between readings

    async def close(self) -> None:
        admin, offsets, self._admin, self._offsets = self._admin, self._offsets, None, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
        if offsets is not None:
            with contextlib.suppress(Exception):
                await offsets.stop()
