"""The agent's pieces without Kafka: batch handling, the table adapter, settings, app wiring."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import faust
import orjson
import pytest
import torch
from faust.streams import current_event
from faust.types import TP, Message
from mode import CrashingSupervisor
from prometheus_client import CollectorRegistry

from hup.runtime import Profiler
from hup.sessions import Dataset, iter_events
from state.store import MemoryStore
from stream.agents import describe, install_broker_fixes, process_and_publish, to_record
from stream.app import broker_credentials, create_app, faust_options
from stream.guards.tables import BatchStore, TableKeyValue
from stream.metrics import Metrics
from stream.processor import InputRecord, Origin, Processor
from stream.rekey import ORIGIN_HEADER, Forward, rekey
from stream.settings import Settings
from stream.startup import WorkerContext
from stream.topics import topic_specs
from stream.worker import worker_argv

TOPIC = "micro-behaviors"


def _records(events, partitions: int = 3) -> list[InputRecord]:
    offsets = [0] * partitions
    records = []
    for event in events:
        partition = sum(event.user_id.encode()) % partitions
        value = orjson.dumps(event.model_dump(mode="json", exclude_none=True))
        records.append(
            InputRecord(value, TOPIC, partition, offsets[partition], event.user_id.encode(), 1.0)
        )
        offsets[partition] += 1
    return records


class Sink:
    """Records what is sent; deliveries succeed, or fail with ``error``."""

    def __init__(self, error: Exception | None = None) -> None:
        self.sent: list[tuple[bytes | None, bytes]] = []
        self.error = error

    async def __call__(self, key: bytes | None, value: bytes) -> asyncio.Future[object]:
        self.sent.append((key, value))
        delivery: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self.error is None:
            delivery.set_result(None)
        else:
            delivery.set_exception(self.error)
        return delivery


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny matmuls on a busy 2-core machine: one thread is several times faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def _sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def _run(coro):
    return asyncio.run(coro)


def test_a_batch_is_published_then_its_state_saved(
    profiler: Profiler, traffic: Dataset, metrics: Metrics
) -> None:
    records = _records(iter_events(traffic.sessions[:4]))
    bad = InputRecord(b"{oops", TOPIC, 1, 999, b"u")
    backing = MemoryStore()
    store = BatchStore(backing)
    profiles, dead = Sink(), Sink()

    result = _run(
        process_and_publish(
            [*records, bad],
            store,
            Processor(profiler, require_user_key=True),
            profiles,
            dead,
            metrics,
            clock=lambda: 5.0,
        )
    )

    assert [v for _, v in profiles.sent] == [p.value for p in result.profiles]
    assert len(profiles.sent) == result.outcomes["applied"]
    assert [orjson.loads(v)["offset"] for _, v in dead.sent] == [999]
    assert len(backing) == 4 and store.pending == 0
    assert _sample(metrics, "hup_profiles_published_total") == len(profiles.sent)
    assert _sample(metrics, "hup_events_total", {"outcome": "dlq"}) == 1
    assert _sample(metrics, "hup_events_total", {"outcome": "consumed"}) == len(records) + 1
    assert _sample(metrics, "hup_batch_size_count") == 1
    assert _sample(metrics, "hup_processing_seconds_sum") == pytest.approx(4.0 * len(profiles.sent))
    for stage in ("process", "deliver", "write"):  # "confirm" is the agent's, after this
        assert _sample(metrics, "hup_batch_stage_seconds_count", {"stage": stage}) == 1
        assert _sample(metrics, "hup_batch_stage_seconds_sum", {"stage": stage}) >= 0.0
    assert _sample(metrics, "hup_batch_stage_seconds_sum", {"stage": "process"}) > 0.0


def test_a_failed_delivery_saves_no_state_and_the_retry_republishes_the_same(
    profiler: Profiler, traffic: Dataset, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    records = _records(iter_events(traffic.sessions[:3]))
    backing = MemoryStore()
    processor = Processor(profiler, require_user_key=True)

    failing = Sink(error=RuntimeError("broker gone"))
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="broker gone"):
        _run(process_and_publish(records, BatchStore(backing), processor, failing, Sink(), metrics))
    assert len(backing) == 0  # nothing saved: the redelivered batch is processed anew
    assert f"{TOPIC}[" in caplog.text and "not acked" in caplog.text
    assert _sample(metrics, "hup_profiles_published_total") == 0

    retry = Sink()
    _run(process_and_publish(records, BatchStore(backing), processor, retry, Sink(), metrics))

    def stable(sent):
        return [{k: v for k, v in orjson.loads(m).items() if k != "published_ts"} for _, m in sent]

    assert stable(retry.sent) == stable(failing.sent)
    again = Sink()  # a redelivery after the save is skipped by offset: nothing twice
    result = _run(
        process_and_publish(records, BatchStore(backing), processor, again, Sink(), metrics)
    )
    assert again.sent == [] and result.outcomes["skipped_duplicate"] == len(records)


def test_a_bug_in_processing_sends_nothing_and_is_raised(
    profiler: Profiler, traffic: Dataset, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    records = _records(iter_events(traffic.sessions[:2]))

    class Broken(Processor):
        def process(self, records, store):
            raise ZeroDivisionError("bug")

    sink = Sink()
    with caplog.at_level(logging.ERROR), pytest.raises(ZeroDivisionError):
        _run(
            process_and_publish(
                records, BatchStore(MemoryStore()), Broken(profiler), sink, sink, metrics
            )
        )
    assert sink.sent == []
    assert describe(records) in caplog.text


def test_describe_gives_offset_ranges_per_partition() -> None:
    records = [
        InputRecord(b"", "t", 2, 9),
        InputRecord(b"", "t", 0, 17),
        InputRecord(b"", "t", 2, 5),
        InputRecord(b"", "t", 0, 42),
    ]
    assert describe(records) == "t[0]@17..42, t[2]@5..9"


def test_batch_store_reads_its_own_writes_and_commits_them_all() -> None:
    backing = MemoryStore()
    backing.put(b"a", b"old")
    store = BatchStore(backing)
    store.put(b"a", b"new")
    store.put(b"b", b"1")
    assert store.get(b"a") == b"new" and backing.get(b"a") == b"old"
    assert store.pending == 2
    store.commit()
    assert dict(backing.items()) == {b"a": b"new", b"b": b"1"}


def _event(app: faust.App, key: bytes, partition: int, offset: int) -> faust.Event:
    message = Message(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        timestamp=0.0,
        timestamp_type=0,
        headers={},
        key=key,
        value=b"{}",
        checksum=None,
        tp=TP(TOPIC, partition),
    )
    return faust.Event(app, key, b"{}", {}, message)


def test_table_access_runs_under_the_event_of_the_users_partition() -> None:
    app = faust.App("test-tables")
    events = [_event(app, b"alice", 0, 1), _event(app, b"bob", 2, 7), _event(app, b"alice", 0, 2)]

    class Table(dict):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[tuple[str, bytes, int, int]] = []

        def get(self, key, default=None):
            event = current_event()
            self.seen.append(("get", key, event.message.partition, event.message.offset))
            return super().get(key, default)

        def __setitem__(self, key, value) -> None:
            event = current_event()
            self.seen.append(("set", key, event.message.partition, event.message.offset))
            super().__setitem__(key, value)

    table = Table()
    store = TableKeyValue(table, events)
    assert store.get(b"bob") is None
    store.put(b"alice", b"state")
    assert table.seen == [("get", b"bob", 2, 7), ("set", b"alice", 0, 2)]  # last event of a user
    assert current_event() is None  # restored afterwards
    with pytest.raises(LookupError, match="carol"):
        store.put(b"carol", b"x")


def test_to_record_keeps_where_the_event_came_from() -> None:
    event = _event(faust.App("test-record"), b"alice", 2, 41)
    record = to_record(event, 1000.0, 50.0)
    assert (record.topic, record.partition, record.offset) == (TOPIC, 2, 41)
    assert (record.key, record.value, record.received_ts) == (b"alice", b"{}", 1000.0)
    event.message.time_in = 48.5  # taken in 1.5 s before the batch was handed over
    assert to_record(event, 1000.0, 50.0).received_ts == 998.5


def test_to_record_reads_the_origin_only_of_a_forwarded_event() -> None:
    event = _event(faust.App("test-record-origin"), b"u", 0, 8)
    assert to_record(event, 0.0, 0.0, forwarded=True).origin is None  # no header
    value = orjson.dumps(
        {"user_id": "u", "ts": 1, "item_id": "i", "categories": ["c"], "behavior": 1}
    )
    forward = rekey(InputRecord(value, TOPIC, 1, 5, b"device-1"))
    assert isinstance(forward, Forward)
    event.message.headers = forward.headers
    assert to_record(event, 0.0, 0.0, forwarded=True).origin == Origin(TOPIC, 1, 5, b"device-1")
    # On the input topic the header is a producer's: never trusted.
    assert to_record(event, 0.0, 0.0).origin is None
    event.message.headers = dict(forward.headers)  # faust may hand headers over as a mapping
    assert to_record(event, 0.0, 0.0, forwarded=True).origin == Origin(TOPIC, 1, 5, b"device-1")
    event.message.headers = [(ORIGIN_HEADER, b"garbage")]
    assert to_record(event, 0.0, 0.0, forwarded=True).origin is None  # logged, not raised


def test_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "HUP_KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings()
    assert (defaults.input_topic, defaults.output_topic, defaults.dlq_topic) == (
        "micro-behaviors",
        "user-profiles",
        "micro-behaviors-dlq",
    )
    assert defaults.partitions == 3 and defaults.batch_size == 256
    assert (defaults.batch_within_s, defaults.batch_idle_s) == (0.02, 0.002)
    assert defaults.output_linger_ms == 1.0 and defaults.fetch_max_wait_ms == 20
    assert defaults.producer_max_batch_size == 1_048_576 and defaults.metrics_port == 9108
    assert defaults.retention_ms == 7 * 24 * 3600 * 1000
    assert defaults.bootstrap_servers == "127.0.0.1:9092"
    monkeypatch.setenv("HUP_MODEL", "/models/x")
    monkeypatch.setenv("HUP_COALESCE", "1")
    monkeypatch.setenv("HUP_BATCH_WITHIN_S", "0.2")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    settings = Settings()
    assert settings.model == Path("/models/x") and settings.coalesce
    assert settings.batch_within_s == 0.2
    assert faust_options(settings)["broker"] == ["kafka://k1:9092", "kafka://k2:9092"]
    with pytest.raises(ValueError, match="frozen"):
        settings.batch_size = 1  # type: ignore[misc]


def test_security_settings_map_onto_faust_credentials(tmp_path: Path) -> None:
    assert broker_credentials(Settings()) is None
    with pytest.raises(ValueError, match="HUP_KAFKA_SASL_USERNAME"):
        Settings(kafka_security_protocol="SASL_SSL")
    sasl = broker_credentials(
        Settings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="worker",
            kafka_sasl_password="secret",  # noqa: S106
        )
    )
    assert isinstance(sasl, faust.SASLCredentials)
    assert (sasl.username, sasl.password, sasl.mechanism.value) == (
        "worker",
        "secret",
        "SCRAM-SHA-512",
    )
    assert isinstance(sasl.ssl_context, ssl.SSLContext) and sasl.protocol.value == "SASL_SSL"
    plain = broker_credentials(
        Settings(
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_username="worker",
            kafka_sasl_password="secret",  # noqa: S106
        )
    )
    assert plain.protocol.value == "SASL_PLAINTEXT" and plain.ssl_context is None
    tls = broker_credentials(Settings(kafka_security_protocol="SSL"))
    assert isinstance(tls, faust.SSLCredentials)
    assert "secret" not in repr(Settings(kafka_sasl_password="secret"))  # noqa: S106


def test_the_app_carries_the_mandatory_broker_settings(profiler: Profiler, tmp_path: Path) -> None:
    settings = Settings(
        app_id="test-app", producer_max_batch_size=1, session_timeout_s=6, datadir=tmp_path
    )
    app = create_app(settings, profiler=profiler)
    conf = app.conf
    assert conf.producer_max_batch_size == 1
    assert conf.processing_guarantee.value == "at_least_once"
    assert conf.broker_session_timeout == 6 and conf.broker_heartbeat_interval == 1
    assert str(conf.store) == "rocksdb:"
    assert conf.consumer_auto_offset_reset == "earliest"
    table = app.tables["profile-state"]
    assert (
        table.partitions == 3 and table.changelog_topic.get_topic_name() == settings.changelog_topic
    )
    (agent,) = app.agents.values()
    assert agent.supervisor_strategy is CrashingSupervisor
    assert agent.channel.get_topic_name() == "micro-behaviors"
    store = table.data  # the state table's local stores: no RocksDB log (HUP_STORE_WAL=0)
    store._open_for_partition(0).put(b"user", b"x" * 16_000)
    assert sum(f.stat().st_size for f in Path(store.partition_path(0)).glob("*.log")) == 0
    specs = {s.name: s for s in topic_specs(settings)}
    assert specs[settings.changelog_topic].config == {"cleanup.policy": "compact"}
    assert specs["user-profiles"].config == {"retention.ms": str(settings.retention_ms)}
    assert {s.partitions for s in specs.values()} == {3}


def test_prepare_refuses_a_missing_model_with_its_path(
    tmp_path: Path,
    metrics: Metrics,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("stream.startup.ensure_topics", lambda *a, **k: [])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    missing = tmp_path / "nowhere"
    with pytest.raises(SystemExit) as refused:
        WorkerContext(Settings(model=missing), metrics, []).prepare()
    assert refused.value.code == 2
    assert str(missing) in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        WorkerContext(Settings(model=None), metrics, []).prepare()
    assert refused.value.code == 2
    assert "HUP_MODEL is not set" in capsys.readouterr().err


def test_prepare_loads_the_model_and_creates_the_topics(
    checkpoint_dir: Path, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    created, threads, asked = [], [], []
    monkeypatch.setattr(
        "stream.startup.ensure_topics",
        lambda bootstrap, specs, timeout, client_config: created.append(specs),
    )
    monkeypatch.setattr(
        "stream.startup.is_embedded_broker",
        lambda bootstrap, client_config: asked.append(bootstrap) or True,
    )
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    settings = Settings(
        model=checkpoint_dir, kafka_bootstrap_servers="k:9092", metrics_port=0, web_port=0
    )
    context = WorkerContext(settings, metrics, topic_specs(settings))
    with pytest.raises(RuntimeError, match="not loaded"):
        _ = context.processor
    assert context.embedded_broker is False  # unknown until prepared: no correction
    context.prepare()
    assert asked == ["k:9092"] and context.embedded_broker is True
    assert context.processor.profiler.version
    assert threads == [1]
    assert [s.name for s in created[0]] == [s.name for s in topic_specs(settings)]
    info = metrics.registry.get_sample_value(
        "hup_model_info",
        {"version": context.processor.profiler.version, "path": str(checkpoint_dir)},
    )
    assert info == 1.0


def test_worker_argv_follows_the_web_port() -> None:
    assert worker_argv(Settings(web_port=0)) == ["worker", "--without-web", "--loglevel", "info"]
    assert worker_argv(Settings(web_port=6067, log_level="warning"))[:3] == [
        "worker",
        "--web-port",
        "6067",
    ]


def test_prepare_creates_the_topics_on_a_secured_cluster_too(
    checkpoint_dir: Path, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(
        "stream.startup.ensure_topics",
        lambda bootstrap, specs, timeout, client_config: calls.append((specs, client_config)),
    )
    monkeypatch.setattr("stream.startup.is_embedded_broker", lambda bootstrap, client_config: False)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    settings = Settings(
        model=checkpoint_dir,
        metrics_port=0,
        web_port=0,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="worker",
        kafka_sasl_password="secret",  # noqa: S106
    )
    WorkerContext(settings, metrics, topic_specs(settings)).prepare()
    [(specs, client_config)] = calls
    assert [s.name for s in specs] == [s.name for s in topic_specs(settings)]
    assert client_config["security.protocol"] == "SASL_SSL"
    assert client_config["sasl.username"] == "worker"


def test_the_high_watermark_correction_is_installed_on_the_embedded_broker_only(
    profiler: Profiler, metrics: Metrics, tmp_path: Path
) -> None:
    for embedded in (False, True):
        settings = Settings(datadir=tmp_path / str(embedded))
        app = create_app(settings, profiler=profiler)
        context = WorkerContext(settings, metrics, [], profiler)
        context.embedded_broker = embedded
        reported = app.consumer.highwaters
        assert install_broker_fixes(app, context) is embedded
        assert (app.consumer.highwaters == reported) is not embedded
