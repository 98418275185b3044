"""The output producer (`stream.publish`) and its place in the batch: delivered before the commit."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import faust
import orjson
import pytest
from faust.types import TP, Message
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from hup.runtime import Profiler
from hup.sessions import Dataset, iter_events
from stream.agents import ProfileBatches, output_producer
from stream.app import create_app
from stream.guards.tables import StagedTable
from stream.metrics import Metrics
from stream.processor import InputRecord, Processor
from stream.publish import OutputDeliveryError, OutputProducer, output_producer_config
from stream.settings import Settings


class FakeProducer:
    """librdkafka's produce/poll/flush: deliveries wait until `release` allows them."""

    def __init__(self, error: Callable[[str, bytes | None], str | None] = lambda t, k: None):
        self.error = error
        self.records: list[tuple[str, bytes | None, bytes]] = []
        self.partitions: list[int] = []  # each record's partition argument (-1: any)
        self._queued: list[tuple[str, bytes | None, Any]] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._released.set()
        self.full_for = 0  # produce calls that raise BufferError first

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def produce(
        self, topic: str, value: bytes, key: bytes | None, partition: int, *, on_delivery: Any
    ) -> None:
        with self._lock:
            if self.full_for > 0:
                self.full_for -= 1
                raise BufferError("Local: Queue full")
            self.records.append((topic, key, value))
            self.partitions.append(partition)
            self._queued.append((topic, key, on_delivery, len(self.records) - 1))

    def poll(self, timeout: float) -> int:
        if not self._released.wait(timeout):
            return 0
        with self._lock:
            queued, self._queued = self._queued, []
        for topic, key, on_delivery, offset in queued:
            message = SimpleNamespace(topic=lambda t=topic: t, offset=lambda o=offset: o)
            on_delivery(self.error(topic, key), message)
        if not queued:
            time.sleep(min(timeout, 0.005))
        return len(queued)

    def flush(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._queued:
                    return 0
            time.sleep(0.005)
        with self._lock:
            return len(self._queued)


def _records(events) -> list[InputRecord]:
    return [
        InputRecord(
            orjson.dumps(e.model_dump(mode="json", exclude_none=True)),
            "mb",
            0,
            offset,
            e.user_id.encode(),
            1.0,
        )
        for offset, e in enumerate(events)
    ]


def _counting(metrics: Metrics, fake: FakeProducer) -> OutputProducer:
    records = metrics.output_records
    return OutputProducer(
        lambda: fake,
        on_delivered=lambda _t: records.labels("delivered").inc(),
        on_failed=lambda _t: records.labels("failed").inc(),
    )


def _count(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value("hup_output_records_total", {"result": result})
    return value or 0.0


def test_a_send_completes_when_the_broker_acknowledged_it() -> None:
    fake = FakeProducer()
    metrics = Metrics(CollectorRegistry())
    output = _counting(metrics, fake)

    async def run() -> None:
        fake.hold()
        delivery = await output.send("user-profiles", b"u1", b"{}")
        await asyncio.sleep(0.05)
        assert not delivery.done() and output.pending == 1  # queued, not acknowledged
        fake.release()
        await asyncio.wait_for(delivery, 5)
        assert output.pending == 0
        await output.close()

    asyncio.run(run())
    assert fake.records == [("user-profiles", b"u1", b"{}")]
    assert _count(metrics, "delivered") == 1 and _count(metrics, "failed") == 0


def test_a_run_of_delivery_reports_wakes_the_event_loop_a_few_times_not_once_each() -> None:
    fake = FakeProducer()
    output = OutputProducer(lambda: fake)
    wakeups = 0

    async def run() -> None:
        nonlocal wakeups
        loop = asyncio.get_running_loop()
        wake = loop.call_soon_threadsafe

        def counting(*args: Any) -> Any:
            nonlocal wakeups
            wakeups += 1
            return wake(*args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        fake.hold()
        deliveries = [await output.send("t", b"k%d" % n, b"v") for n in range(200)]
        fake.release()  # the next poll reports all 200
        offsets = await asyncio.wait_for(asyncio.gather(*deliveries), 5)
        assert offsets == list(range(200)) and output.pending == 0
        await output.close()

    asyncio.run(run())
    # The loop drains while reports still arrive, so a run takes a few wake-ups, not 200.
    assert 1 <= wakeups <= 20, wakeups


def test_a_delivery_error_fails_the_send_with_a_clear_error_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeProducer(error=lambda topic, key: "Broker: Message size too large")
    metrics = Metrics(CollectorRegistry())
    output = _counting(metrics, fake)

    async def run() -> None:
        delivery = await output.send("user-profiles", b"u1", b"{}")
        with pytest.raises(OutputDeliveryError) as failed:
            await asyncio.wait_for(delivery, 5)
        assert failed.value.topic == "user-profiles"
        assert "Message size too large" in str(failed.value) and "b'u1'" in str(failed.value)
        await output.close()

    with caplog.at_level(logging.ERROR, logger="stream.publish"):
        asyncio.run(run())
    assert _count(metrics, "failed") == 1 and _count(metrics, "delivered") == 0
    assert any("delivery to user-profiles failed" in r.getMessage() for r in caplog.records)


def test_a_full_local_queue_waits_instead_of_failing() -> None:
    fake = FakeProducer()
    fake.full_for = 3
    output = OutputProducer(lambda: fake)

    async def run() -> None:
        await asyncio.wait_for(await output.send("t", b"k", b"v"), 5)
        await output.close()

    asyncio.run(run())
    assert fake.records == [("t", b"k", b"v")]


def test_flush_raises_when_records_stay_undelivered() -> None:
    fake = FakeProducer()
    output = OutputProducer(lambda: fake)

    async def run() -> None:
        fake.hold()
        await output.send("t", b"k", b"v")
        with pytest.raises(OutputDeliveryError, match="1 records still undelivered"):
            await output.flush(timeout=0.1)
        fake.release()
        await output.flush(timeout=5)
        await output.close()

    asyncio.run(run())


Send = Callable[[bytes | None, bytes], Awaitable[asyncio.Future[None]]]


class _Saved:
    """`ProfileBatches` over dict tables, profiles and dead letters both sent by ``send``."""

    def __init__(self, profiler: Profiler, send: Send, metrics: Metrics) -> None:
        self.app = faust.App("publish-test")
        self.state: dict[bytes, bytes] = {}
        self.latest: dict[bytes, bytes] = {}
        self.confirms = 0

        async def confirm() -> None:
            self.confirms += 1

        processor = Processor(profiler, require_user_key=True)
        self.batches = ProfileBatches(
            StagedTable(self.state),
            StagedTable(self.latest),
            confirm,
            lambda: processor,
            send,
            send,
            metrics,
            save_interval_s=3.0,
            save_max_bytes=2**26,
        )

    def events(self, records: list[InputRecord]) -> list[faust.Event]:
        events = []
        for r in records:
            message = Message(
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                timestamp=0.0,
                timestamp_type=0,
                headers={},
                key=r.key,
                value=r.value,
                checksum=None,
                tp=TP(r.topic, r.partition),
            )
            events.append(faust.Event(self.app, r.key, r.value, {}, message))
        return events


def _published(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("hup_profiles_published_total") or 0.0


def test_the_batch_state_is_written_only_after_its_profiles_are_delivered(
    profiler: Profiler, traffic: Dataset
) -> None:
    fake = FakeProducer()
    metrics = Metrics(CollectorRegistry())
    output = _counting(metrics, fake)
    records = _records(iter_events(traffic.sessions[:3]))

    async def send(key: bytes | None, value: bytes) -> asyncio.Future[None]:
        return await output.send("user-profiles", key, value)

    saved = _Saved(profiler, send, metrics)

    async def run() -> None:
        fake.hold()
        # The batch is processed and sent without waiting for the broker.
        assert await saved.batches.handle(saved.events(records), lambda: True)
        save = asyncio.ensure_future(saved.batches.save(lambda: True))
        await asyncio.sleep(0.2)
        # Every profile is queued, none acknowledged: nothing is written, published or confirmed.
        assert not save.done()
        assert len(fake.records) > 0 and saved.state == {} and saved.latest == {}
        assert saved.confirms == 0 and _published(metrics) == 0
        fake.release()
        assert await asyncio.wait_for(save, 10) is True
        await output.close()

    asyncio.run(run())
    assert len(saved.state) == 3 and len(saved.latest) == 3 and saved.confirms == 1
    assert _published(metrics) == len(fake.records)  # every record sent was a profile
    assert _count(metrics, "delivered") == len(fake.records)


def test_a_failed_profile_delivery_saves_nothing_and_raises(
    profiler: Profiler, traffic: Dataset
) -> None:
    user = traffic.sessions[1].user_id.encode()
    fake = FakeProducer(
        error=lambda topic, key: "Broker: Not enough in-sync replicas" if key == user else None
    )
    metrics = Metrics(CollectorRegistry())
    output = _counting(metrics, fake)

    async def send(key: bytes | None, value: bytes) -> asyncio.Future[None]:
        return await output.send("user-profiles", key, value)

    saved = _Saved(profiler, send, metrics)

    async def run() -> None:
        try:
            records = _records(iter_events(traffic.sessions[:3]))
            assert await saved.batches.handle(saved.events(records), lambda: True)
            with pytest.raises(OutputDeliveryError, match="Not enough in-sync replicas"):
                await saved.batches.save(lambda: True)
        finally:
            await output.close()

    asyncio.run(run())
    # Not acked: consumed again after the restart. Nothing written, nothing left staged.
    assert saved.state == {} and saved.latest == {} and saved.confirms == 0
    assert len(saved.batches.state) == 0 and len(saved.batches.latest) == 0
    assert _published(metrics) == 0
    assert _count(metrics, "failed") >= 1


def test_the_producer_config_follows_the_settings() -> None:
    settings = Settings(
        kafka_bootstrap_servers="k1:9092,k2:9092",
        app_id="app",
        output_linger_ms=7,
        producer_max_batch_size=65_536,
        producer_max_request_size=2_000_000,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="user",
        kafka_sasl_password=SecretStr("secret"),
        kafka_ssl_cafile="/etc/ca.pem",
    )
    config = output_producer_config(settings)
    assert config["bootstrap.servers"] == "k1:9092,k2:9092"
    assert config["acks"] == "all" and config["enable.idempotence"] is True
    # The key hashing of aiokafka and the Java client: a user's profiles keep their partition.
    assert config["partitioner"] == "murmur2_random"
    assert config["linger.ms"] == 7 and config["batch.size"] == 65_536
    assert config["message.max.bytes"] == 2_000_000
    assert config["security.protocol"] == "SASL_SSL"
    assert (config["sasl.mechanism"], config["sasl.username"], config["sasl.password"]) == (
        "SCRAM-SHA-512",
        "user",
        "secret",
    )
    assert config["ssl.ca.location"] == "/etc/ca.pem"
    plain = output_producer_config(Settings())
    assert plain["security.protocol"] == "PLAINTEXT" and "sasl.username" not in plain


def test_the_worker_closes_its_output_producer_when_the_app_stops(tmp_path) -> None:
    app = create_app(Settings(app_id="output-test", datadir=tmp_path, metrics_port=0))
    fake = FakeProducer()
    output = output_producer(app, Settings(), Metrics(CollectorRegistry()))
    output._factory = lambda: fake  # noqa: SLF001 - no broker in a unit test

    async def run() -> None:
        fake.hold()
        delivery = await output.send("t", b"k", b"v")
        stopping = asyncio.create_task(app.on_before_shutdown.send())
        await asyncio.sleep(0.1)
        assert not stopping.done()  # flushing: waits for the delivery
        fake.release()
        await asyncio.wait_for(stopping, 5)
        assert delivery.done() and output._producer is None  # noqa: SLF001

    asyncio.run(run())


def test_the_output_metric_counts_profiles_and_dead_letters_not_changelog_records(
    tmp_path,
) -> None:
    settings = Settings(app_id="count-test", datadir=tmp_path, metrics_port=0)
    app = create_app(settings)
    metrics = Metrics(CollectorRegistry())
    fake = FakeProducer(
        error=lambda topic, key: "Broker: boom" if key == b"bad" else None,
    )
    output = output_producer(app, settings, metrics)
    output._factory = lambda: fake  # noqa: SLF001 - no broker in a unit test

    async def run() -> None:
        changelog = f"{settings.app_id}-profile-state-changelog"
        deliveries = [
            await output.send(settings.output_topic, b"u1", b"{}"),
            await output.send(settings.dlq_topic, b"u2", b"{}"),
            output.send_now(changelog, b"u1", b"state", 0),
            output.send_now(changelog, b"bad", b"state", 0),
        ]
        await asyncio.gather(*deliveries, return_exceptions=True)
        await output.close()

    asyncio.run(run())
    assert _count(metrics, "delivered") == 2 and _count(metrics, "failed") == 0
