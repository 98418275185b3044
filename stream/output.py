"""The worker's output producer: profiles and dead letters through one confluent-kafka producer.

faust stays the consumer-group runtime (input, tables, commits); what the agent
publishes goes through librdkafka, which batches records per partition in its own
thread (``linger.ms``, ``batch.size``) the way Quix Streams produces, instead of
through faust's producer buffer and aiokafka (a quarter of the worker's time went to
aiokafka's produce path under load).

At-least-once hinges on one rule: an input offset is committed only after every
output of its event is on the broker. `OutputProducer.send` returns an asyncio future
that completes only when librdkafka's delivery report for that record arrives, and
fails with `OutputDeliveryError` when the report carries an error; the agent awaits
every future of a batch before it writes the batch's state and acks its events
(`stream.agents.process_and_publish`), and faust commits acked offsets only. A record
still in librdkafka's queue when the process dies was never acknowledged, so its
event was never acked and is consumed again. Delivery reports are served by a
daemon thread that polls the producer and hands each result to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from stream.settings import Settings

__all__ = [
    "KafkaProducer",
    "OutputDeliveryError",
    "OutputProducer",
    "output_producer_config",
]

logger = logging.getLogger(__name__)

# How long one poll of the delivery-report thread blocks when nothing is delivered.
_POLL_S = 0.1
# How long `send` waits for librdkafka to drain its local queue when it is full.
_BACKPRESSURE_S = 0.005


class KafkaProducer(Protocol):
    """The part of `confluent_kafka.Producer` the output producer uses."""

    def produce(self, topic: str, value: bytes, key: bytes | None, *, on_delivery: Any) -> None:
        """Queue a record; raises BufferError when the local queue is full."""

    def poll(self, timeout: float) -> int:
        """Serve delivery reports; return how many."""

    def flush(self, timeout: float) -> int:
        """Wait for every queued record; return how many are still undelivered."""


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

    async def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[None]:
        """Queue a record; the returned future completes when the broker acknowledged it.

        The future fails with `OutputDeliveryError` if librdkafka reports an error (after
        its own retries, within ``message.timeout.ms``). Waits while librdkafka's local
        queue is full.
        """
        producer = self._start()
        loop = self._loop
        assert loop is not None  # noqa: S101 - set by _start
        future: asyncio.Future[None] = loop.create_future()

        def on_delivery(error: Any, _message: Any) -> None:
            # librdkafka's thread (the poller, or a flush): hand over to the loop.
            try:
                loop.call_soon_threadsafe(self._complete, future, topic, key, error)
            except RuntimeError:  # the loop is closed: nobody waits for the result
                logger.debug("delivery report for %s after the event loop closed", topic)

        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                await asyncio.sleep(_BACKPRESSURE_S)
        self._pending += 1
        return future

    def _complete(
        self, future: asyncio.Future[None], topic: str, key: bytes | None, error: Any
    ) -> None:
        self._pending -= 1
        if error is None:
            if self._on_delivered is not None:
                self._on_delivered(topic)
            if not future.done():
                future.set_result(None)
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
