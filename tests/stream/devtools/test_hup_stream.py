"""`hup-stream`: argument and error handling, produce/tail against a broker, the schema command."""

from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource
from typer.testing import CliRunner

from hup.data import load_dataset
from hup.schema import event_json_schema
from hup.sessions import iter_events
from stream.devtools import hup_stream as cli
from stream.devtools.hup_stream import app
from stream.devtools.tail import consumer_config, format_profile
from stream.profile import (
    profile_json_schema,
)
from stream.settings import Settings

DATA = "synthetic:users=4,seed=3"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in (
        "KAFKA_BOOTSTRAP_SERVERS",
        "HUP_KAFKA_BOOTSTRAP_SERVERS",
        "HUP_PARTITIONS",
        "HUP_BROKER_PORT",
    ):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


def _text(output: str) -> str:
    return " ".join(output.split())  # rich wraps long lines at 80 columns off a terminal


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _consume_all(bootstrap: str, topic: str, count: int) -> list[tuple[int, bytes, bytes]]:
    consumer = Consumer(consumer_config(bootstrap, from_beginning=True))
    consumer.subscribe([topic])
    got: list[tuple[int, bytes, bytes]] = []
    try:
        while len(got) < count:
            message = consumer.poll(15)
            assert message is not None, f"{len(got)} of {count} messages arrived"
            if message.error() is None:
                got.append((message.partition(), message.key(), message.value()))
    finally:
        consumer.close()
    return got


# --- errors, no broker needed --------------------------------------------------------------


@pytest.mark.parametrize("command", [["produce", "--data", DATA, "--rate", "0"], ["tail"]])
def test_without_bootstrap_the_tools_use_the_local_broker_port(
    runner: CliRunner, command: list[str]
) -> None:
    # Like the worker: 127.0.0.1 on HUP_BROKER_PORT (nothing listens on port 1).
    result = runner.invoke(app, [*command, "--timeout", "0.5"], env={"HUP_BROKER_PORT": "1"})
    assert result.exit_code == 1, result.output
    text = _text(result.output)
    assert "broker at 127.0.0.1:1 did not answer" in text
    assert "HUP_BROKER_PORT" in text and "KAFKA_BOOTSTRAP_SERVERS" in text
    assert "Traceback" not in result.output


def test_the_default_bootstrap_is_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "HUP_KAFKA_BOOTSTRAP_SERVERS", "HUP_BROKER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert cli._bootstrap(None) == Settings().bootstrap_servers == "127.0.0.1:9092"
    monkeypatch.setenv("HUP_BROKER_PORT", "19092")
    assert cli._bootstrap("  ") == Settings().bootstrap_servers == "127.0.0.1:19092"
    assert cli._bootstrap("kafka:9092, kafka2:9092") == "kafka:9092,kafka2:9092"


@pytest.mark.parametrize("port", ["http", "0", "70000"])
def test_a_bad_broker_port_is_a_clear_error(runner: CliRunner, port: str) -> None:
    result = runner.invoke(app, ["tail"], env={"HUP_BROKER_PORT": port})
    assert result.exit_code == 2
    assert f"HUP_BROKER_PORT='{port}' is not a port number" in _text(result.output)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("nope:x", "unknown dataset scheme 'nope'"),
        ("synthetic:users=many", "synthetic option users='many': not int"),
        ("synthetic:colour=3", "unknown synthetic option 'colour'"),
        ("synthetic:users=0", "users >= 1"),
        ("jd:/no/such/file.txt", "cannot read /no/such/file.txt"),
    ],
)
def test_produce_rejects_a_bad_data_spec(runner: CliRunner, spec: str, expected: str) -> None:
    result = runner.invoke(
        app, ["produce", "--data", spec, "--rate", "0", "--bootstrap", "127.0.0.1:1"]
    )
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and expected in _text(result.output)
    assert "Traceback" not in result.output


@pytest.mark.parametrize("bootstrap", ["localhost", "host:port", ":9092", "a:1,b"])
def test_produce_rejects_a_malformed_bootstrap(runner: CliRunner, bootstrap: str) -> None:
    result = runner.invoke(
        app, ["produce", "--data", DATA, "--rate", "0", "--bootstrap", bootstrap]
    )
    assert result.exit_code == 2
    assert "is not HOST:PORT" in _text(result.output)


@pytest.mark.parametrize(
    "args",
    [["--rate", "-1"], ["--rate", "fast"], ["--rate", "0", "--limit", "-3"], []],
)
def test_produce_rejects_bad_options(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(app, ["produce", "--data", DATA, "--bootstrap", "127.0.0.1:1", *args])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_produce_reports_an_unreachable_broker(runner: CliRunner) -> None:
    result = runner.invoke(
        app,
        ["produce", "--data", DATA, "--rate", "0", "--bootstrap", "127.0.0.1:1", "--timeout", "1"],
    )
    assert result.exit_code == 1
    assert "did not answer" in _text(result.output) and "is the broker running?" in _text(
        result.output
    )


def test_bootstrap_comes_from_the_environment(runner: CliRunner) -> None:
    result = runner.invoke(
        app,
        ["produce", "--data", DATA, "--rate", "0", "--timeout", "0.5"],
        env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
    )
    assert result.exit_code == 1  # took the environment's servers, then could not connect
    assert "127.0.0.1:1" in _text(result.output)
    assert "HUP_BROKER_PORT" not in _text(result.output)  # not the local default


def test_record_to_an_unwritable_path_is_a_clear_error(
    runner: CliRunner, kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        [
            "produce",
            "--data",
            DATA,
            "--rate",
            "0",
            "--bootstrap",
            kafka_bootstrap,
            "--topic",
            _topic("norecord"),
            "--record",
            str(tmp_path / "missing" / "dir" / "sent.jsonl"),
        ],
    )
    assert result.exit_code == 2
    assert "--record" in result.output and "Traceback" not in result.output


# --- produce and tail against a broker ------------------------------------------------------

pytestmark_broker = pytest.mark.integration


@pytestmark_broker
def test_produce_limit_keep_ts_and_record(
    runner: CliRunner, kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic, record = _topic("produce"), tmp_path / "sent.jsonl"
    result = runner.invoke(
        app,
        [
            "produce",
            "--data",
            DATA,
            "--rate",
            "0",
            "--bootstrap",
            kafka_bootstrap,
            "--topic",
            topic,
            "--limit",
            "30",
            "--keep-ts",
            "--record",
            str(record),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sent 30 events" in _text(result.output) and "failed 0" in result.output

    expected = list(itertools.islice(iter_events(load_dataset(DATA).sessions), 30))
    lines = record.read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == [
        e.model_dump(mode="json", exclude_none=True) for e in expected
    ]  # --keep-ts: byte for byte what an offline run reads, timestamps included

    received = _consume_all(kafka_bootstrap, topic, 30)
    assert sorted(value for _, _, value in received) == sorted(lines)
    assert all(key == orjson.loads(value)["user_id"].encode() for _, key, value in received)

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert len(admin.list_topics(timeout=10).topics[topic].partitions) == 3
    resource = ConfigResource("topic", topic)
    configs = admin.describe_configs([resource])[resource].result(10)
    assert int(configs["retention.ms"].value) > 0


@pytestmark_broker
def test_produce_stamps_wall_clock_times_and_reads_partitions_from_env(
    runner: CliRunner, kafka_bootstrap: str, tmp_path: Path
) -> None:
    import time

    topic, record = _topic("wallclock"), tmp_path / "sent.jsonl"
    before = time.time()
    result = runner.invoke(
        app,
        ["produce", "--data", DATA, "--rate", "200", "--topic", topic, "--limit", "20"]
        + ["--record", str(record)],
        env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "HUP_PARTITIONS": "2"},
    )
    after = time.time()
    assert result.exit_code == 0, result.output
    stamps = [orjson.loads(line)["ts"] for line in record.read_bytes().splitlines()]
    assert len(stamps) == 20
    assert before <= stamps[0] and stamps[-1] <= after
    assert stamps == sorted(stamps)
    assert stamps[-1] - stamps[0] >= 19 / 200 * 0.9  # paced at 200 events/s
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert len(admin.list_topics(timeout=10).topics[topic].partitions) == 2


def _profile(user: str, seq: int) -> dict:
    return {
        "user_id": user,
        "event_ts": 1000.0,
        "published_ts": 1000.25,
        "model_version": "hup-0123456789ab",
        "seq": seq,
        "event_id": f"{user}:{seq}",
        "profile": {"micro": None, "item": [0.5, -0.25], "category": [[1.0], [0.0, 1.0]]},
        "top_categories": [{"id": "c1.2", "score": 0.875}, {"id": "c0.1", "score": 0.5}],
        "top_items": [{"id": "sku-7", "score": 0.25}],
    }


@pytestmark_broker
def test_tail_prints_profiles_raw_or_as_lines(runner: CliRunner, kafka_bootstrap: str) -> None:
    topic = _topic("profiles")
    values = [orjson.dumps(_profile(f"u{n}", n + 1)) for n in range(3)]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for value in values:
        producer.produce(topic, key=b"k", value=value)
    assert producer.flush(10) == 0
    producer.close()

    args = ["tail", "--topic", topic, "--bootstrap", kafka_bootstrap, "--from-beginning"]
    raw = runner.invoke(app, [*args, "--limit", "3", "--json"])
    assert raw.exit_code == 0, raw.output
    assert raw.stdout.splitlines() == [v.decode() for v in values]

    lines = runner.invoke(app, [*args, "--limit", "2"])
    assert lines.exit_code == 0, lines.output
    first = lines.stdout.splitlines()[0]
    for part in ("u0", "seq", "1", "hup-01234567", "250 ms", "c1.2:0.88"):
        assert part in first

    idle = runner.invoke(app, [*args, "--max-idle", "1", "--json"])
    assert idle.exit_code == 0 and len(idle.stdout.splitlines()) == 3


def test_tail_consumer_uses_a_fresh_group_that_does_not_commit() -> None:
    config = consumer_config("h:1")
    assert config["session.timeout.ms"] == 6000
    assert config["group.id"] != consumer_config("h:1")["group.id"]
    assert config["enable.auto.commit"] is False and config["auto.offset.reset"] == "latest"
    named = consumer_config("h:1", group="mine", from_beginning=True)
    assert named["group.id"] == "mine" and named["enable.auto.commit"] is True
    assert named["auto.offset.reset"] == "earliest"


def test_format_profile_survives_junk() -> None:
    assert "not JSON" in format_profile(b"{oops")
    assert "not a profile" in format_profile(b"[1, 2]")
    assert "u9" in format_profile(orjson.dumps({"user_id": "u9"}))


# --- the profile schema ------------------------------------------------------------------


def test_schema_command_writes_both_topics_schemas(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["schema", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    profiles = tmp_path / "out" / "profile.schema.json"
    events = tmp_path / "out" / "events.schema.json"
    assert result.stdout.split() == [str(profiles), str(events)]
    assert json.loads(profiles.read_text()) == profile_json_schema()
    assert json.loads(events.read_text()) == event_json_schema()


def test_produce_batches_by_its_own_variable_not_the_workers(
    runner: CliRunner, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HUP_PRODUCER_MAX_BATCH_SIZE is the worker's (bytes); the CLI has HUP_PRODUCE_MAX_BATCH."""
    seen: list[int | None] = []
    real = cli.producer_config

    def recording(server: str, max_batch: int | None = None) -> dict:
        seen.append(max_batch)
        return real(server, max_batch)

    monkeypatch.setattr(cli, "producer_config", recording)
    args = ["produce", "--data", DATA, "--rate", "0", "--limit", "3"]
    args += ["--bootstrap", kafka_bootstrap, "--topic", _topic("batch")]
    result = runner.invoke(
        app, args, env={"HUP_PRODUCER_MAX_BATCH_SIZE": "1048576", "HUP_PRODUCE_MAX_BATCH": "7"}
    )
    assert result.exit_code == 0, result.output
    assert seen == [7]
