"""True end offsets of a partition whose last record batch holds several records."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Consumer, Producer, TopicPartition
from faust.types import TP

from stream.devtools.broker import start_embedded_broker
from stream.guards.highwater import true_end_offset
from stream.topics import TopicSpec, ensure_topics, is_embedded_broker

pytestmark = pytest.mark.integration


def test_the_end_offset_counts_every_record_of_the_last_batch(kafka_bootstrap: str) -> None:
    topic = f"hw-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=1)], timeout=10)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 200})
    producer.produce(topic, value=b"alone")
    assert producer.flush(10) == 0
    for n in range(5):  # one batch of five records
        producer.produce(topic, value=str(n).encode())
    assert producer.flush(10) == 0
    watermarks = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": topic})
    _, reported = watermarks.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    watermarks.close()

    async def corrected() -> int:
        reader = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
        await reader.start()
        try:
            return await true_end_offset(reader, TP(topic, 0), reported)
        finally:
            await reader.stop()

    # tansu reports 2 here (the last batch's base offset + 1, broker notes T1); Kafka 6.
    assert reported in (2, 6)
    assert asyncio.run(corrected()) == 6


def test_only_the_embedded_broker_is_recognised_as_such() -> None:
    # The correction is for tansu as the project runs it; a cluster with another id
    # (here tansu itself, started under a Kafka-like id) is treated as real Kafka.
    with start_embedded_broker() as embedded:
        assert is_embedded_broker(embedded.bootstrap_servers, timeout=10)
    with start_embedded_broker(cluster_id="4L6g3nShT-eMCtK--X86sw") as other:
        assert not is_embedded_broker(other.bootstrap_servers, timeout=10)
