"""What the worker publishes: profiles and dead letters, in records the producer accepts.

faust stays the consumer-group runtime (input, tables, commits); what the agent
publishes, and the tables' changelog records (`stream.guards.tables.ConfirmedTable`),
go through one confluent-kafka producer (librdkafka), which batches records per
partition in its own thread (``linger.ms``, ``batch.size``) the way Quix Streams
produces; faust's producer buffer and aiokafka would spend a large share of the
worker's time on their produce path under load.

At-least-once hinges on one rule: an input offset is committed only after every
output of its event is on the broker. `OutputProducer.send` returns an asyncio future
that completes only when librdkafka's delivery report for that record arrives, and
fails with `OutputDeliveryError` when the report carries an error; a save awaits every
future of the batches it saves before it writes their state and acks their events
(`stream.agents.ProfileBatches`), and faust commits acked offsets only. A record
still in librdkafka's queue when the process dies was never acknowledged, so its
event was never acked and is consumed again. Delivery reports are served by a
daemon thread that polls the producer and hands each result to the event loop.

Record size: a producer refuses a record larger than its ``max_request_size``
(HUP_PRODUCER_MAX_REQUEST_SIZE, also faust's ``producer_max_request_size`` for the
changelogs) before sending it, and the agent's crashing supervisor then stops the
worker; the restarted worker consumes the same input and fails again. So no input may
lead to a larger record: dead letters are fitted into the limit (`fit_dead_letter`),
and the processor dead-letters an event whose profile or state record would not fit.
What counts is key plus value plus the framing of a one-record batch (61 bytes of
batch header, a record header of up to ~20 bytes, and any Kafka headers):
`max_record_bytes` leaves `FRAMING_RESERVE` for that.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson

from stream.settings import DEFAULT_MAX_REQUEST_SIZE, Settings

__all__ = [
    "DEAD_LETTER_KEY_MAX_BYTES",
    "DEFAULT_MAX_RECORD_BYTES",
    "FRAMING_RESERVE",
    "REASON_MAX_CHARS",
    "KafkaProducer",
    "OutputDeliveryError",
    "OutputProducer",
    "clip_text",
    "fit_dead_letter",
    "max_record_bytes",
    "output_producer_config",
]

logger = logging.getLogger(__name__)

# Bytes of a produced record that are neither key nor value (see the module docstring).
FRAMING_RESERVE = 1024
DEFAULT_MAX_RECORD_BYTES = DEFAULT_MAX_REQUEST_SIZE - FRAMING_RESERVE
# A reason can quote the input (a key, an unknown kind): at most this many characters.
REASON_MAX_CHARS = 1000
# A dead letter is keyed by the original key only up to this size (a user id is short).
DEAD_LETTER_KEY_MAX_BYTES = 1024


def max_record_bytes(max_request_size: int) -> int:
    """The most key plus value bytes one record may carry under ``max_request_size``."""
    return max_request_size - FRAMING_RESERVE


def clip_text(text: str, limit: int = REASON_MAX_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, saying so when cut."""
    if len(text) <= limit:
        return text
    marker = f"... [cut, {len(text)} characters in all]"
    return text[: max(0, limit - len(marker))] + marker


def fit_dead_letter(
    fields: Mapping[str, object], key: bytes | None, value: bytes | None, max_bytes: int
) -> tuple[bytes | None, bytes]:
    """The Kafka key and JSON value of a dead letter of at most ``max_bytes`` in all.

    The JSON holds ``fields`` (reason, topic, partition, offset; short), then the
    original ``key`` and ``value`` in base64, each with its original size (``key_size``,
    ``value_size``: null for a missing one) and whether it was cut (``key_truncated``,
    ``value_truncated``). When both do not fit, each keeps a prefix: the shorter one
    whole if it fits in half the room, the other the rest. The dead letter's own Kafka
    key is the original key when it is at most `DEAD_LETTER_KEY_MAX_BYTES`, else none.

    Raises:
        ValueError: ``fields`` alone do not fit (a limit far below any real broker's).
    """
    record_key = key if key is not None and len(key) <= DEAD_LETTER_KEY_MAX_BYTES else None

    def payload(key_b64: str | None, value_b64: str | None, cut: tuple[bool, bool]) -> bytes:
        return orjson.dumps(
            {
                **fields,
                "key": key_b64,
                "key_size": None if key is None else len(key),
                "key_truncated": cut[0],
                "value": value_b64,
                "value_size": None if value is None else len(value),
                "value_truncated": cut[1],
            }
        )

    # Measured with empty strings where there is data and null where there is none (as
    # written), and with "false", one character longer than "true": the room is a floor.
    absent_or_empty = (None if key is None else "", None if value is None else "")
    fixed = len(payload(*absent_or_empty, (False, False))) + len(record_key or b"")
    room = max_bytes - fixed
    if room < 0:
        raise ValueError(f"a dead letter needs {fixed} bytes before its key and value")
    key_full = _b64_length(key)
    value_full = _b64_length(value)
    key_room = min(key_full, max(room - value_full, room // 2))
    value_room = min(value_full, room - key_room)
    key_b64, key_cut = _b64_prefix(key, key_room)
    value_b64, value_cut = _b64_prefix(value, value_room)
    return record_key, payload(key_b64, value_b64, (key_cut, value_cut))


def _b64_length(data: bytes | None) -> int:
    return 0 if data is None else 4 * ((len(data) + 2) // 3)


def _b64_prefix(data: bytes | None, room: int) -> tuple[str | None, bool]:
    """Base64 of the longest prefix of ``data`` whose encoding takes at most ``room`` chars."""
    if data is None:
        return None, False
    if _b64_length(data) <= room:
        return base64.b64encode(data).decode(), False
    return base64.b64encode(data[: room // 4 * 3]).decode(), True


# How long one poll of the delivery-report thread blocks when nothing is delivered.
_POLL_S = 0.1
# How long `send` waits for librdkafka to drain its local queue when it is full.
_BACKPRESSURE_S = 0.005
# librdkafka's RD_KAFKA_PARTITION_UA: the configured partitioner picks the partition.
_ANY_PARTITION = -1


class KafkaProducer(Protocol):
    """The part of `confluent_kafka.Producer` the output producer uses."""

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        *,
        on_delivery: Any = None,
    ) -> None:
        """Queue a record (partition -1: the partitioner's); BufferError when the queue is full."""

    def poll(self, timeout: float) -> int:
        """Serve delivery reports; return how many."""

    def flush(self, timeout: float) -> int:
        """Wait for every queued record; return how many are still undelivered."""


# A delivery report: the send's future, topic, key, librdkafka's error (None: delivered), offset.
_Report = tuple["asyncio.Future[int]", str, bytes | None, Any, int]


class OutputDeliveryError(Exception):
    """The broker did not take an output record: its batch must not be acked."""

    def __init__(self, topic: str, key: bytes | None, reason: str) -> None:
        """Name the topic, the record's key (cut to 100 bytes) and librdkafka's reason."""
        super().__init__(f"delivery to {topic} failed for key {(key or b'')[:100]!r}: {reason}")
        self.topic = topic
        self.reason = reason


def output_producer_config(settings: Settings) -> dict[str, str | int | float | bool]:
    """Librdkafka settings of the output producer, from the worker's settings.

    ``acks=all`` and idempotence (retries never reorder or repeat a user's records),
    the Java client's key hashing (``murmur2_random``: a user's profiles land on the
    partition aiokafka and Kafka Streams would pick), ``linger.ms`` from
    HUP_OUTPUT_LINGER_MS, the per-partition batch from HUP_PRODUCER_MAX_BATCH_SIZE and
    the largest request from HUP_PRODUCER_MAX_REQUEST_SIZE, and the HUP_KAFKA_*
    security settings.
    """
    config: dict[str, str | int | float | bool] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": f"{settings.app_id}-output",
        "acks": "all",
        "enable.idempotence": True,
        "partitioner": "murmur2_random",
        "linger.ms": settings.output_linger_ms,
        "batch.size": min(settings.producer_max_batch_size, settings.producer_max_request_size),
        "message.max.bytes": settings.producer_max_request_size,
        "security.protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username or ""
        config["sasl.password"] = password.get_secret_value() if password else ""
    if settings.kafka_ssl_cafile is not None and settings.kafka_security_protocol in (
        "SSL",
        "SASL_SSL",
    ):
        config["ssl.ca.location"] = str(settings.kafka_ssl_cafile)
    return config


class OutputProducer:
    """One librdkafka producer whose sends are awaitable until the broker has them."""

    def __init__(
        self,
        factory: Callable[[], KafkaProducer],
        *,
        on_delivered: Callable[[str], None] | None = None,
        on_failed: Callable[[str], None] | None = None,
    ) -> None:
        """Bind how to build the producer; it is built, and polled, on the first send.

        Args:
            factory: Builds the producer (``lambda: Producer(config)``; tests pass fakes).
            on_delivered: Called with the topic of each record the broker acknowledged.
            on_failed: Called with the topic of each record whose delivery failed.
        """
        self._factory = factory
        self._on_delivered = on_delivered
        self._on_failed = on_failed
        self._producer: KafkaProducer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._pending = 0  # futures not completed yet (the event loop's thread only)
        # Delivery reports on their way from librdkafka's thread to the event loop, which
        # is woken once per run of them (one self-pipe write each would cost about as
        # much as the rest of the delivery thread's work).
        self._reports: list[_Report] = []
        self._reports_lock = threading.Lock()
        self._drain_scheduled = False

    @property
    def pending(self) -> int:
        """Records sent whose delivery report has not reached the event loop yet."""
        return self._pending

    def _start(self) -> KafkaProducer:
        if self._producer is None:
            self._loop = asyncio.get_running_loop()
            self._producer = self._factory()
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._serve_reports, name="hup-output-delivery", daemon=True
            )
            self._thread.start()
        return self._producer

    def _serve_reports(self) -> None:
        producer = self._producer
        assert producer is not None  # noqa: S101 - set before the thread starts
        while not self._stopping.is_set():
            producer.poll(_POLL_S)

    async def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[int]:
        """Queue a record; the returned future completes when the broker acknowledged it.

        The future gives the record's offset, and fails with `OutputDeliveryError` if
        librdkafka reports an error (after its own retries, within ``message.timeout.ms``).
        Waits while librdkafka's local queue is full.
        """
        while True:
            try:
                return self._produce(topic, key, value, _ANY_PARTITION)
            except BufferError:
                await asyncio.sleep(_BACKPRESSURE_S)

    def send_now(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int
    ) -> asyncio.Future[int]:
        """`send` to one partition, for callers that cannot await (a faust table's write).

        ``value`` None is a tombstone. While librdkafka's local queue is full it serves
        delivery reports, blocking the event loop, until the queue has room.
        """
        while True:
            try:
                return self._produce(topic, key, value, partition)
            except BufferError:
                self._start().poll(_BACKPRESSURE_S)

    def _produce(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int
    ) -> asyncio.Future[int]:
        producer = self._start()
        loop = self._loop
        assert loop is not None  # noqa: S101 - set by _start
        future: asyncio.Future[int] = loop.create_future()

        def on_delivery(error: Any, message: Any) -> None:
            # librdkafka's thread (the poller, or a flush): hand over to the loop.
            offset = -1 if error is not None or message is None else message.offset()
            self._report(loop, (future, topic, key, error, offset))

        producer.produce(
            topic,
            value=value,
            key=key,
            partition=partition,
            on_delivery=on_delivery,
        )
        self._pending += 1
        return future

    def _report(self, loop: asyncio.AbstractEventLoop, report: _Report) -> None:
        """Queue a delivery report for the loop; schedule a drain unless one is pending."""
        with self._reports_lock:
            self._reports.append(report)
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        try:
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody waits for the result
            logger.debug("delivery report for %s after the event loop closed", report[1])

    def _drain(self) -> None:
        """Complete every queued delivery report (on the event loop)."""
        with self._reports_lock:
            reports, self._reports = self._reports, []
            self._drain_scheduled = False
        for report in reports:
            self._complete(*report)

    def _complete(
        self, future: asyncio.Future[int], topic: str, key: bytes | None, error: Any, offset: int
    ) -> None:
        self._pending -= 1
        if error is None:
            if self._on_delivered is not None:
                self._on_delivered(topic)
            if not future.done():
                future.set_result(offset)
            return
        if self._on_failed is not None:
            self._on_failed(topic)
        failure = OutputDeliveryError(topic, key, str(error))
        logger.error("%s", failure)
        if not future.done():
            future.set_exception(failure)

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until every record sent so far is delivered or failed.

        Raises:
            OutputDeliveryError: Records were still undelivered after ``timeout`` seconds.
        """
        producer = self._producer
        if producer is None:
            return
        left = await asyncio.get_running_loop().run_in_executor(None, producer.flush, timeout)
        if left:
            raise OutputDeliveryError(
                "(any)", None, f"{left} records still undelivered after {timeout:g} s"
            )

    async def close(self, timeout: float = 30.0) -> None:
        """Flush, then stop the delivery-report thread (a later send starts it again)."""
        if self._producer is None:
            return
        try:
            await self.flush(timeout)
        except OutputDeliveryError as exc:
            logger.error("output producer closed with records undelivered: %s", exc)
        finally:
            self._stopping.set()
            if self._thread is not None:
                await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._producer = None
            self._thread = None
