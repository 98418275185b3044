"""Replaying events into Kafka: serialization, pacing, wall-clock timestamps, delivery counts.

Framework-free so the CLI, the demo and the tests share it: `publish` drives any object
with confluent-kafka's `produce/poll/flush`, so unit tests pass a fake.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any, Protocol

import orjson

from hup.schema import Event
from stream.topics import TopicSpec, ensure_topics

__all__ = [
    "DEFAULT_RETENTION_MS",
    "KafkaProducerLike",
    "Pacer",
    "ProduceSummary",
    "encode_event",
    "ensure_topic",
    "producer_config",
    "publish",
]

DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000

# How long one poll waits for delivery reports when librdkafka's queue is full.
_BACKPRESSURE_POLL_S = 0.05


class KafkaProducerLike(Protocol):
    """The part of `confluent_kafka.Producer` that `publish` uses."""

    def produce(self, topic: str, value: bytes, key: bytes, *, on_delivery: Any) -> None:
        """Queue a message; raises BufferError when the local queue is full."""

    def poll(self, timeout: float) -> int:
        """Serve delivery reports; return how many."""

    def flush(self, timeout: float) -> int:
        """Wait for every queued message; return how many are still undelivered."""


@dataclass
class ProduceSummary:
    """What a `publish` run did; `failed` includes messages still undelivered at the end."""

    topic: str
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    seconds: float = 0.0
    first_error: str | None = None
    interrupted: bool = False

    @property
    def events_per_s(self) -> float:
        """Send rate over the whole run, final flush included."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        """One line for people."""
        text = (
            f"sent {self.sent} events to {self.topic}, failed {self.failed}, "
            f"{self.seconds:.1f} s, {self.events_per_s:.0f} events/s"
        )
        if self.first_error:
            text += f" (first error: {self.first_error})"
        return text


def producer_config(
    bootstrap: str, max_batch: int | None = None, client_id: str = "hup-stream-produce"
) -> dict[str, str | int | bool]:
    """Settings for a confluent-kafka Producer of events.

    Args:
        bootstrap: Kafka bootstrap servers.
        max_batch: messages per produce batch; 1 on embedded tansu keeps its high
            watermarks right (docs/broker-notes.md, T1). None keeps librdkafka's default.
        client_id: how the broker logs this client.
    """
    config: dict[str, str | int | bool] = {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "acks": "all",
        # Retries must not reorder a user's events; idempotence keeps order with retries.
        "enable.idempotence": True,
        # The Java client's (and aiokafka's) key hashing: a key lands on the same partition
        # whichever client produced it, so a user's state is never split across partitions.
        "partitioner": "murmur2_random",
        "linger.ms": 5,
    }
    if max_batch is not None:
        config["batch.num.messages"] = max_batch
    return config


def ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    retention_ms: int = DEFAULT_RETENTION_MS,
    timeout: float = 30.0,
) -> bool:
    """Create ``topic`` with explicit configs unless it exists; return whether it was created."""
    spec = TopicSpec(topic, partitions=partitions, config={"retention.ms": str(retention_ms)})
    return bool(ensure_topics(bootstrap, [spec], timeout=timeout))


def encode_event(event: Event, ts: float | None = None) -> tuple[bytes, bytes]:
    """Key and JSON value of an event: the schema's field names, behaviour as its code.

    Args:
        event: the event to send.
        ts: replaces the event time when given (the wall clock at send time).

    Returns:
        (user_id as UTF-8, the JSON object).
    """
    body = event.model_dump(mode="json", exclude_none=True)
    if ts is not None:
        body["ts"] = ts
    return event.user_id.encode(), orjson.dumps(body)


class Pacer:
    """Spaces calls `1/rate` apart on a fixed schedule, so sleep jitter does not accumulate."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Pace at ``rate`` calls/s; 0 (or less) never waits."""
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self._count = 0

    def wait(self) -> None:
        """Block until the next call is due."""
        if self.interval == 0.0:
            return
        now = self._clock()
        if self._start is None:
            self._start = now
        due = self._start + self._count * self.interval
        self._count += 1
        if due > now:
            self._sleep(due - now)


class _WallClock:
    """Wall-clock timestamps that never go backwards (per-user times must not decrease)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last = 0.0

    def __call__(self) -> float:
        self._last = max(self._last, self._clock())
        return self._last


def publish(
    events: Iterable[Event],
    producer: KafkaProducerLike,
    topic: str,
    *,
    rate: float = 0.0,
    keep_ts: bool = False,
    record: IO[bytes] | None = None,
    on_sent: Callable[[Event, bytes, float], None] | None = None,
    flush_timeout: float = 30.0,
    clock: Callable[[], float] = time.time,
    pacer: Pacer | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ProduceSummary:
    """Send events keyed by user, in the order given, and wait for their delivery reports.

    A user's events keep their order: one producer, one key, one partition, idempotent
    retries. Ctrl-C (KeyboardInterrupt) stops sending, still flushes, and marks the summary
    interrupted.

    Args:
        events: the events, in per-user order (e.g. `hup.sessions.iter_events`).
        producer: a confluent-kafka Producer (or a fake with the same methods).
        topic: where to send.
        rate: events per second; 0 sends as fast as the producer takes them.
        keep_ts: keep the events' own timestamps instead of the wall clock at send time.
        record: gets exactly the values sent, one per line (JSONL).
        on_sent: called with (event, value, send wall-clock time) after each send.
        flush_timeout: seconds to wait for the last delivery reports.
        clock: the wall clock (injectable for tests).
        pacer: overrides the pacing built from ``rate``.
        should_stop: polled before each send; True stops early (the demo's shutdown).

    Returns:
        The counts; messages still undelivered after the flush count as failed.
    """
    summary = ProduceSummary(topic)
    pacer = pacer or Pacer(rate)
    wall = _WallClock(clock)

    def on_delivery(error: Any, _message: Any) -> None:
        if error is None:
            summary.delivered += 1
            return
        summary.failed += 1
        if summary.first_error is None:
            summary.first_error = str(error)

    started = time.perf_counter()
    try:
        for event in events:
            if should_stop is not None and should_stop():
                summary.interrupted = True
                break
            pacer.wait()
            now = wall()
            key, value = encode_event(event, None if keep_ts else now)
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    # librdkafka's local queue is full: serve delivery reports, then retry.
                    producer.poll(_BACKPRESSURE_POLL_S)
            producer.poll(0)
            summary.sent += 1
            if record is not None:
                record.write(value + b"\n")
            if on_sent is not None:
                on_sent(event, value, now)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        undelivered = producer.flush(flush_timeout)
        summary.failed += undelivered
        if undelivered and summary.first_error is None:
            summary.first_error = f"{undelivered} messages undelivered after {flush_timeout:.0f} s"
        summary.seconds = time.perf_counter() - started
    return summary
