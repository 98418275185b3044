"""The metrics struct and its gauges (each test on a fresh CollectorRegistry), and the rate-limited log."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry, generate_latest

from hup.runtime import Profiler
from hup.sessions import Dataset, iter_events
from state.store import MemoryStore
from stream.agents import process_and_send
from stream.app import create_app
from stream.guards.tables import BatchStore
from stream.metrics import (
    MeteredKeyValue,
    Metrics,
    RateLimitedLog,
    consumer_lag,
    users_by_partition,
)
from stream.processor import BatchResult, InputRecord, OutputProfile, Processor
from stream.settings import Settings


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_each_registry_gets_its_own_metrics() -> None:
    first, second = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    first.profiles_published.inc()
    assert value(first, "hup_profiles_published_total") == 1
    assert value(second, "hup_profiles_published_total") == 0


def test_a_batch_counts_outcomes_step_time_and_latencies(metrics: Metrics) -> None:
    result = BatchResult(outcomes=Counter(consumed=3, applied=2, dlq=1, clamped_gap=0))
    result.step_seconds = 0.004
    metrics.observe_batch(3, result)
    profiles = [OutputProfile(b"u", b"{}", event_ts=10.0, received_ts=11.5)] * 2
    metrics.observe_published(profiles, now=12.0)

    assert value(metrics, "hup_events_total", outcome="applied") == 2
    assert value(metrics, "hup_events_total", outcome="dlq") == 1
    assert value(metrics, "hup_events_total", outcome="clamped_gap") is None  # zero: no series
    assert value(metrics, "hup_batch_size_sum") == 3
    assert value(metrics, "hup_model_step_seconds_sum") == pytest.approx(0.004)
    assert value(metrics, "hup_profiles_published_total") == 2
    assert value(metrics, "hup_event_to_profile_seconds_sum") == pytest.approx(4.0)
    assert value(metrics, "hup_processing_seconds_sum") == pytest.approx(1.0)


def test_model_version_is_an_info_metric(metrics: Metrics) -> None:
    metrics.set_model("abc123", "/models/demo")
    assert value(metrics, "hup_model_info", version="abc123", path="/models/demo") == 1


def test_partition_gauges_drop_revoked_partitions(metrics: Metrics) -> None:
    metrics.set_users_in_state({0: 10, 1: 4})
    metrics.add_user(1)
    assert value(metrics, "hup_users_in_state", partition="1") == 5
    metrics.set_users_in_state({1: 5, 2: 0})  # partition 0 went to another worker
    assert value(metrics, "hup_users_in_state", partition="0") is None
    assert value(metrics, "hup_users_in_state", partition="2") == 0

    metrics.set_consumer_lag({0: 3, 2: 7})
    metrics.set_consumer_lag({2: 1})
    assert value(metrics, "hup_consumer_lag", partition="0") is None
    assert value(metrics, "hup_consumer_lag", partition="2") == 1


class DictKeyValue(dict):
    def put(self, key: bytes, value: bytes) -> None:
        self[key] = value


def test_metered_store_counts_new_users_once_and_state_sizes(metrics: Metrics) -> None:
    backing = DictKeyValue({b"old": b"x" * 100})
    partitions = {b"old": 0, b"new": 2}
    store = MeteredKeyValue(backing, partitions, metrics)
    for key in (b"old", b"new"):
        assert store.get(key) == backing.get(key)
        store.put(key, b"y" * 300)
    store.put(b"new", b"y" * 300)  # a second write of the same user in one batch
    store.put(b"unread", b"z")  # written without a read: not known to be new

    assert value(metrics, "hup_users_in_state", partition="2") == 1
    assert value(metrics, "hup_users_in_state", partition="0") is None
    assert value(metrics, "hup_state_size_bytes_count") == 4
    assert value(metrics, "hup_state_size_bytes_sum") == 901
    assert value(metrics, "hup_state_size_bytes_bucket", le="256.0") == 1


def test_a_worker_batch_leaves_no_user_id_in_any_label(
    checkpoint_dir: Path, traffic: Dataset, metrics: Metrics
) -> None:
    events = list(iter_events(traffic.sessions[:3]))
    records = [
        InputRecord(
            orjson.dumps(e.model_dump(mode="json", exclude_none=True)),
            "micro-behaviors",
            sum(e.user_id.encode()) % 3,
            n,
            e.user_id.encode(),
            1.0,
        )
        for n, e in enumerate(events)
    ]
    partitions = {r.key: r.partition for r in records if r.key}
    store = BatchStore(MeteredKeyValue(MemoryStore(), partitions, metrics))

    async def deliver(key: bytes | None, value: bytes) -> asyncio.Future[object]:
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    processor = Processor(Profiler.load(checkpoint_dir), require_user_key=True)

    async def run() -> None:
        sent = await process_and_send(records, store, processor, deliver, deliver, metrics)
        await sent.delivered

    asyncio.run(run())

    users = {e.user_id for e in events}
    counted = sum(value(metrics, "hup_users_in_state", partition=str(p)) or 0 for p in range(3))
    assert counted == len(users)
    assert value(metrics, "hup_state_size_bytes_count") == len(users)
    page = generate_latest(metrics.registry).decode()
    assert not any(user in page for user in users)


def test_users_are_counted_per_active_partition_of_the_rocksdb_table(
    checkpoint_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(app_id="test-metrics", datadir=tmp_path)
    registry = CollectorRegistry()
    app = create_app(settings, profiler=Profiler.load(checkpoint_dir), registry=registry)
    table = app.tables[settings.table_name]
    store = table.data
    for partition, n in ((0, 3), (1, 2), (2, 5)):
        db = store._db_for_partition(partition)  # faust's own per-partition RocksDB
        for k in range(n):
            db[f"user-{partition}-{k}".encode()] = b"state"
        store.set_persisted_offset(TP(settings.changelog_topic, partition), n)
    changelog = settings.changelog_topic
    actives = {TP(changelog, 0), TP(changelog, 2), TP(settings.input_topic, 1)}
    monkeypatch.setattr(app.assignor, "assigned_actives", lambda: actives)

    assert users_by_partition(table) == {0: 3, 2: 5}  # the offset key is not a user
    asyncio.run(table.call_recover_callbacks())  # what faust runs after each recovery
    assert registry.get_sample_value("hup_users_in_state", {"partition": "2"}) == 5
    assert registry.get_sample_value("hup_users_in_state", {"partition": "1"}) is None


def test_users_are_unknown_on_a_store_without_partitions() -> None:
    table = SimpleNamespace(data={b"a": b"1"})
    assert users_by_partition(table) is None  # type: ignore[arg-type]


def test_consumer_lag_is_highwater_minus_committed_per_input_partition() -> None:
    highwaters = {TP("in", 0): 120, TP("in", 1): None, TP("in", 2): 5, TP("in", 3): 40}
    consumer = SimpleNamespace(
        assignment=lambda: {*highwaters, TP("changelog", 0)},
        highwater=highwaters.__getitem__,
        # 2: tansu's too-low highwater after a multi-record batch; 3: nothing committed.
        _committed_offset={TP("in", 0): 100, TP("in", 2): 9},
    )
    app = SimpleNamespace(consumer=consumer)
    assert consumer_lag(app, "in") == {0: 20, 2: 0, 3: 40}  # type: ignore[arg-type]


def test_a_flood_logs_a_few_lines_then_how_many_were_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = RateLimitedLog(
        logging.getLogger("test.ratelog"),
        lines=3,
        window_s=60.0,
        what="dead letters",
        clock=lambda: now[0],
    )
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        for i in range(25):
            log.log("letter %d", i)
        assert [r.getMessage() for r in caplog.records] == ["letter 0", "letter 1", "letter 2"]
        assert log.suppressed == 22
        now[0] = 61.0
        log.log("letter %d", 25)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[3].startswith("22 more dead letters not logged in the last 61 s")
    assert messages[4] == "letter 25" and log.suppressed == 0


def test_a_quiet_window_logs_no_summary(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("test.ratelog"), lines=3, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        log.log("one")
        now[0] = 120.0
        log.log("two")
    assert [r.getMessage() for r in caplog.records] == ["one", "two"]
