"""The event producer: encoding, pacing, timestamps, delivery accounting, and a real round trip."""

from __future__ import annotations

import io
import itertools
import uuid
from collections import defaultdict
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from hup.schema import DwellEvent, MicroEvent, parse_event_json
from hup.sessions import Dataset, iter_events
from stream.devtools.producer import Pacer, encode_event, ensure_topic, producer_config, publish


class FakeProducer:
    """Records produce() calls; delivery reports are served on poll/flush like librdkafka."""

    def __init__(self, fail_every: int = 0, full_every: int = 0, stuck: int = 0) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.pending: list[tuple[Any, int]] = []
        self.fail_every = fail_every
        self.full_every = full_every
        self.stuck = stuck  # messages never delivered, reported by flush()
        self.calls = 0
        self.flushed = False

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        self.calls += 1
        if self.full_every and self.calls % self.full_every == 0:
            raise BufferError("Local: Queue full")
        self.sent.append((topic, key, value))
        self.pending.append((on_delivery, len(self.sent)))

    def _serve(self) -> int:
        served = 0
        while self.pending:
            callback, n = self.pending.pop(0)
            failed = self.fail_every and n % self.fail_every == 0
            callback("Broker: Message timed out" if failed else None, None)
            served += 1
        return served

    def poll(self, timeout: float) -> int:
        return self._serve()

    def flush(self, timeout: float) -> int:
        self.flushed = True
        if self.stuck:
            self.pending = self.pending[: -self.stuck]
        self._serve()
        return self.stuck


def _micro(user: str = "u1", ts: float = 1_700_000_000.5, **extra: Any) -> MicroEvent:
    return MicroEvent(
        user_id=user, ts=ts, item_id="i7", categories=["c1", "c1.2"], behavior=5, **extra
    )


def test_encode_event_uses_schema_names_behaviour_code_and_user_key() -> None:
    key, value = encode_event(_micro(event_id="u1:0"))
    body = orjson.loads(value)
    assert key == b"u1"
    assert body == {
        "user_id": "u1",
        "ts": 1_700_000_000.5,
        "item_id": "i7",
        "event_id": "u1:0",
        "kind": "micro",
        "categories": ["c1", "c1.2"],
        "behavior": 5,
    }
    assert parse_event_json(value) == _micro(event_id="u1:0")


def test_encode_event_replaces_ts_and_drops_absent_fields() -> None:
    dwell = DwellEvent(user_id="u2", ts=10.0, item_id="i1", kind="dwell", dwell_s=4.5)
    key, value = encode_event(dwell, ts=1234.25)
    body = orjson.loads(value)
    assert key == b"u2"
    assert body == {
        "user_id": "u2",
        "ts": 1234.25,
        "item_id": "i1",
        "kind": "dwell",
        "dwell_s": 4.5,
    }


def test_producer_config_keeps_order_and_java_compatible_partitioning() -> None:
    config = producer_config("h:1", max_batch=1)
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["partitioner"] == "murmur2_random"
    assert config["batch.num.messages"] == 1
    assert "batch.num.messages" not in producer_config("h:1")


def test_pacer_spaces_calls_on_a_fixed_schedule() -> None:
    now = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds + 0.001  # oversleeps a little each time

    pacer = Pacer(10.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        pacer.wait()
    assert sleeps[0] == pytest.approx(0.1)
    # The schedule absorbs the oversleep instead of adding it up: call n is due at 100 + n/10.
    assert now[0] == pytest.approx(100.4 + 0.001, abs=1e-9)
    unpaced = Pacer(0.0, clock=lambda: 0.0, sleep=lambda _: pytest.fail("slept"))
    for _ in range(3):
        unpaced.wait()


def test_publish_keeps_per_user_order_and_records_what_was_sent(traffic: Dataset) -> None:
    events = list(iter_events(traffic.sessions))
    producer = FakeProducer()
    record = io.BytesIO()
    summary = publish(events, producer, "t", keep_ts=True, record=record)

    assert summary.sent == summary.delivered == len(events)
    assert summary.failed == 0 and producer.flushed
    assert record.getvalue().splitlines() == [value for _, _, value in producer.sent]
    by_user: dict[bytes, list[str]] = defaultdict(list)
    for topic, key, value in producer.sent:
        assert topic == "t"
        event = parse_event_json(value)
        assert key == event.user_id.encode()
        by_user[key].append(event.event_id)
    for session in traffic.sessions:
        assert by_user[session.user_id.encode()] == [e.event_id for e in session.events]
    # --keep-ts: the original timestamps, untouched.
    assert [parse_event_json(v).ts for _, _, v in producer.sent] == [e.ts for e in events]


def test_publish_stamps_wall_clock_times_that_never_go_back(traffic: Dataset) -> None:
    clock = iter([50.0, 49.0, 51.0, 51.0, 52.5])  # the wall clock steps back once
    seen: list[float] = []
    producer = FakeProducer()
    events = itertools.islice(iter_events(traffic.sessions), 5)
    publish(
        events, producer, "t", clock=lambda: next(clock), on_sent=lambda e, v, at: seen.append(at)
    )
    stamped = [orjson.loads(v)["ts"] for _, _, v in producer.sent]
    assert stamped == [50.0, 50.0, 51.0, 51.0, 52.5]
    assert seen == stamped


def test_publish_counts_failed_deliveries_and_retries_a_full_queue(traffic: Dataset) -> None:
    events = list(itertools.islice(iter_events(traffic.sessions), 40))
    producer = FakeProducer(fail_every=10, full_every=7)
    summary = publish(events, producer, "t", keep_ts=True)
    assert summary.sent == 40
    assert [parse_event_json(v).event_id for _, _, v in producer.sent] == [
        e.event_id for e in events
    ]  # a full queue delays a message, never drops or reorders it
    assert summary.failed == 4 and summary.delivered == 36
    assert summary.first_error == "Broker: Message timed out"
    assert "failed 4" in summary.describe()


def test_publish_counts_messages_left_after_the_flush_as_failed(traffic: Dataset) -> None:
    producer = FakeProducer(stuck=3)
    producer.poll = lambda timeout: 0  # type: ignore[method-assign]  # nothing delivered early
    summary = publish(itertools.islice(iter_events(traffic.sessions), 10), producer, "t")
    assert summary.failed == 3 and summary.delivered == 7
    assert "undelivered" in (summary.first_error or "")


def test_publish_stops_on_interrupt_and_still_flushes(traffic: Dataset) -> None:
    def events():
        yield from itertools.islice(iter_events(traffic.sessions), 3)
        raise KeyboardInterrupt

    producer = FakeProducer()
    summary = publish(events(), producer, "t")
    assert summary.interrupted and summary.sent == 3 and producer.flushed


def test_publish_should_stop(traffic: Dataset) -> None:
    producer = FakeProducer()
    summary = publish(
        iter_events(traffic.sessions), producer, "t", should_stop=lambda: len(producer.sent) >= 4
    )
    assert summary.sent == 4 and summary.interrupted


@pytest.mark.integration
def test_round_trip_on_a_broker_is_keyed_by_user_in_per_user_order(
    kafka_bootstrap: str, traffic: Dataset
) -> None:
    topic = f"events-{uuid.uuid4().hex[:8]}"
    assert ensure_topic(kafka_bootstrap, topic, partitions=3, timeout=10)
    assert not ensure_topic(kafka_bootstrap, topic, partitions=3, timeout=10)
    events = list(itertools.islice(iter_events(traffic.sessions), 400))
    producer = Producer(producer_config(kafka_bootstrap))
    summary = publish(events, producer, topic, flush_timeout=20)
    producer.close()
    assert (summary.sent, summary.delivered, summary.failed) == (400, 400, 0)

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "enable.partition.eof": True,
        }
    )
    consumer.subscribe([topic])
    received: list[tuple[int, bytes, bytes]] = []
    eof: set[int] = set()
    try:
        while len(received) < 400 or len(eof) < 3:
            message = consumer.poll(10)
            assert message is not None, f"only {len(received)} of 400 messages arrived"
            if message.error() is not None:
                assert message.error().code() == KafkaError._PARTITION_EOF
                eof.add(message.partition())
                continue
            received.append((message.partition(), message.key(), message.value()))
    finally:
        consumer.close()

    partitions: dict[bytes, set[int]] = defaultdict(set)
    order: dict[bytes, list[str | None]] = defaultdict(list)
    for partition, key, value in received:
        event = parse_event_json(value)
        assert key == event.user_id.encode()
        partitions[key].add(partition)
        order[key].append(event.event_id)
    assert all(len(p) == 1 for p in partitions.values())  # a user never spans partitions
    assert len({p for ps in partitions.values() for p in ps}) > 1  # users are spread out
    for key, ids in order.items():
        assert ids == [e.event_id for e in events if e.user_id.encode() == key]
