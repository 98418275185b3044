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
from stream.agents import ProfileBatches, describe, install_broker_fixes, to_record
from stream.app import broker_credentials, create_app, faust_options
from stream.guards.tables import BatchStore, StagedTable, TableKeyValue
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


class _Table(dict):
    """A table as the staged tables write it: counts each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.writes += 1
        super().__setitem__(key, value)


class _Batches:
    """`ProfileBatches` over in-memory tables, with a changelog confirm that is counted."""

    def __init__(
        self,
        processor: Processor,
        metrics: Metrics,
        profiles: Sink,
        dead: Sink | None = None,
        *,
        interval: float = 3.0,
        max_bytes: int = 2**26,
    ) -> None:
        self.app = faust.App("test-batches")
        self.state, self.latest = _Table(), _Table()
        self.confirms = 0
        self.now = 0.0
        self.offsets: dict[int, int] = {}

        async def confirm() -> None:
            self.confirms += 1

        self.batches = ProfileBatches(
            StagedTable(self.state),
            StagedTable(self.latest),
            confirm,
            lambda: processor,
            profiles,
            dead or Sink(),
            metrics,
            save_interval_s=interval,
            save_max_bytes=max_bytes,
            clock=lambda: self.now,
        )

    def events(self, records: list[InputRecord]) -> list[faust.Event]:
        """The records as faust events (the key's partition, offsets as given)."""
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

    async def handle(self, records: list[InputRecord]) -> None:
        assert await self.batches.handle(self.events(records), lambda: True)

    async def commit(self, owned: bool = True) -> bool:
        return await self.batches.save(lambda: owned)


def test_batches_are_published_at_once_and_their_state_saved_at_the_commit(
    profiler: Profiler, traffic: Dataset, metrics: Metrics
) -> None:
    records = _records(iter_events(traffic.sessions[:4]))
    bad = InputRecord(b"{oops", TOPIC, 1, 999, b"u")
    profiles, dead = Sink(), Sink()
    batches = _Batches(Processor(profiler, require_user_key=True), metrics, profiles, dead)

    async def run() -> None:
        half = len(records) // 2
        await batches.handle(records[:half])
        await batches.handle([*records[half:], bad])
        # Published at once; nothing saved or confirmed before the commit.
        assert len(profiles.sent) == len(records) and len(dead.sent) == 1
        assert batches.state == {} and batches.latest == {} and batches.confirms == 0
        assert len(batches.batches.state) == 4  # staged: each user's newest state
        assert await batches.commit()

    _run(run())
    assert [orjson.loads(v)["offset"] for _, v in dead.sent] == [999]
    # Each user written once for both batches, then the changelogs confirmed once.
    assert len(batches.state) == 4 and batches.state.writes == 4
    assert len(batches.latest) == 4 and batches.latest.writes == 4
    assert batches.confirms == 1 and len(batches.batches.state) == 0
    assert _sample(metrics, "hup_profiles_published_total") == len(profiles.sent)
    assert _sample(metrics, "hup_events_total", {"outcome": "dlq"}) == 1
    assert _sample(metrics, "hup_events_total", {"outcome": "consumed"}) == len(records) + 1
    assert _sample(metrics, "hup_batch_size_count") == 2
    assert _sample(metrics, "hup_batch_stage_seconds_count", {"stage": "process"}) == 2
    for stage in ("deliver", "write", "confirm"):  # once per commit
        assert _sample(metrics, "hup_batch_stage_seconds_count", {"stage": stage}) == 1
        assert _sample(metrics, "hup_batch_stage_seconds_sum", {"stage": stage}) >= 0.0
    assert _sample(metrics, "hup_batch_stage_seconds_sum", {"stage": "process"}) > 0.0


def test_a_later_batch_reads_the_state_an_earlier_one_staged(
    profiler: Profiler, traffic: Dataset, metrics: Metrics
) -> None:
    """Two batches of one user in an interval: the second continues the first's state."""
    session = traffic.sessions[0]
    records = _records(iter_events([session]))
    assert len(records) >= 4
    profiles = Sink()
    batches = _Batches(Processor(profiler, require_user_key=True), metrics, profiles)

    async def run() -> None:
        await batches.handle(records[:2])
        await batches.handle(records[2:])
        await batches.handle(records[:2])  # a redelivery: skipped by the staged state's offsets
        assert await batches.commit()

    _run(run())
    assert [orjson.loads(v)["seq"] for _, v in profiles.sent] == list(range(1, len(records) + 1))
    assert batches.state.writes == 1


def test_batches_go_on_while_a_save_is_written_in_parts(
    profiler: Profiler, traffic: Dataset, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save writes what was staged when it began; later batches stage anew and read it."""
    monkeypatch.setattr("stream.agents.SAVE_PART", 1)
    sessions = [s for s in traffic.sessions if len(s.events) >= 4][:3]
    records = _records(iter_events(sessions))
    by_user: dict[bytes | None, list[InputRecord]] = {}
    for r in records:
        by_user.setdefault(r.key, []).append(r)
    first = [r for rs in by_user.values() for r in rs[:2]]
    second = [r for rs in by_user.values() for r in rs[2:]]
    profiles = Sink()
    batches = _Batches(Processor(profiler, require_user_key=True), metrics, profiles, interval=0.05)

    async def run() -> None:
        await batches.handle(first)
        save = asyncio.ensure_future(batches.batches.save(lambda: True))
        while batches.latest.writes == 0:  # the first part is written, not the rest
            await asyncio.sleep(0.001)
        assert not save.done() and batches.state.writes == 0
        await batches.handle(second)  # reads the states being saved
        assert await save
        saved = dict(batches.state)
        assert batches.state.writes == len(by_user) and batches.confirms == 1
        assert len(batches.batches.state) == len(by_user)  # the second batch's, staged
        assert await batches.commit()
        assert batches.state.writes == 2 * len(by_user)
        assert all(batches.state[k] != saved[k] for k in saved)

    _run(run())
    seqs: dict[str, list[int]] = {}
    for _, value in profiles.sent:
        message = orjson.loads(value)
        seqs.setdefault(message["user_id"], []).append(message["seq"])
    assert {u: sorted(v) for u, v in seqs.items()} == {
        u: list(range(1, len(v) + 1)) for u, v in seqs.items()
    }
    assert sum(len(v) for v in seqs.values()) == len(records)


def test_a_save_cancelled_before_it_ran_is_dropped_and_the_next_one_saves(
    profiler: Profiler, traffic: Dataset, metrics: Metrics
) -> None:
    """A revoke that gives up cancels the save; dropping it leaves no half-taken save behind."""
    records = _records(iter_events(traffic.sessions[:2]))
    batches = _Batches(Processor(profiler, require_user_key=True), metrics, Sink())

    async def run() -> None:
        await batches.handle(records)
        save = asyncio.ensure_future(batches.batches.save(lambda: True))
        save.cancel()  # before it ran: nothing written, the save's values still taken
        batches.batches.drop()
        assert len(batches.batches.state) == 0 and len(batches.batches.latest) == 0
        await batches.handle(records)  # consumed again: nothing was saved, so applied anew
        assert await batches.commit()

    _run(run())
    assert len(batches.state) == 2 and batches.confirms == 1


def test_a_failed_delivery_saves_no_state_and_the_retry_republishes_the_same(
    profiler: Profiler, traffic: Dataset, metrics: Metrics
) -> None:
    records = _records(iter_events(traffic.sessions[:3]))
    processor = Processor(profiler, require_user_key=True)
    failing = Sink(error=RuntimeError("broker gone"))
    batches = _Batches(processor, metrics, failing)

    async def fail() -> None:
        await batches.handle(records)
        with pytest.raises(RuntimeError, match="broker gone"):
            await batches.commit()

    _run(fail())
    assert batches.state == {} and batches.latest == {}  # the redelivered events start anew
    assert len(batches.batches.state) == 0 and batches.confirms == 0
    assert _sample(metrics, "hup_profiles_published_total") == 0

    retry = Sink()
    again = _Batches(processor, metrics, retry)
    again.state, again.latest = batches.state, batches.latest

    async def succeed() -> None:
        await again.handle(records)
        assert await again.commit()

    _run(succeed())

    def stable(sent):
        return [{k: v for k, v in orjson.loads(m).items() if k != "published_ts"} for _, m in sent]

    assert stable(retry.sent) == stable(failing.sent)


def test_a_commit_after_a_partition_moved_writes_nothing(
    profiler: Profiler, traffic: Dataset, metrics: Metrics
) -> None:
    records = _records(iter_events(traffic.sessions[:2]))
    batches = _Batches(Processor(profiler, require_user_key=True), metrics, Sink())

    async def run() -> bool:
        await batches.handle(records)
        return await batches.commit(owned=False)

    assert _run(run()) is False
    assert batches.state == {} and batches.latest == {} and batches.confirms == 0
    assert len(batches.batches.state) == 0 and len(batches.batches.latest) == 0


def test_a_commit_is_due_after_the_interval_or_at_the_memory_budget(
    profiler: Profiler, traffic: Dataset, metrics: Metrics
) -> None:
    records = _records(iter_events(traffic.sessions[:2]))
    processor = Processor(profiler, require_user_key=True)
    timed = _Batches(processor, metrics, Sink(), interval=3.0)
    assert not timed.batches.due()
    timed.now = 2.9
    assert not timed.batches.due()
    timed.now = 3.0
    assert timed.batches.due()
    _run(timed.commit())
    assert not timed.batches.due()  # the interval restarts at each commit

    small = _Batches(processor, metrics, Sink(), max_bytes=1000)
    assert not small.batches.due()
    _run(small.handle(records))
    assert small.batches.due()  # two users' states are over 1,000 bytes


def test_a_bug_in_processing_sends_nothing_and_is_raised(
    profiler: Profiler, traffic: Dataset, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    records = _records(iter_events(traffic.sessions[:2]))

    class Broken(Processor):
        def process(self, records, store):
            raise ZeroDivisionError("bug")

    sink = Sink()
    batches = _Batches(Broken(profiler), metrics, sink, sink)
    with caplog.at_level(logging.ERROR), pytest.raises(ZeroDivisionError):
        _run(batches.handle(records))
    assert sink.sent == [] and len(batches.batches.state) == 0
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
    assert (defaults.save_interval_s, defaults.save_max_mb) == (10.0, 64)
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
