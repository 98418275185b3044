"""The broker helper end to end: start, create topics, produce, consume, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from stream.devtools.broker import (
    BrokerError,
    start_broker,
    start_embedded_broker,
    wait_for_broker,
)
from stream.settings import Settings
from stream.topics import TopicSpec, ensure_topics

pytestmark = pytest.mark.integration


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_ensure_topics_creates_with_configs_and_is_idempotent(kafka_bootstrap: str) -> None:
    events, changelog = _topic("events"), _topic("changelog")
    specs = [
        TopicSpec(events, partitions=3, config={"retention.ms": "600000"}),
        TopicSpec(changelog, partitions=3, config={"cleanup.policy": "compact"}),
    ]

    assert sorted(ensure_topics(kafka_bootstrap, specs, timeout=10)) == sorted([events, changelog])
    assert ensure_topics(kafka_bootstrap, specs, timeout=10) == []

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    metadata = admin.list_topics(timeout=10)
    assert len(metadata.topics[events].partitions) == 3
    resource = ConfigResource("topic", changelog)
    configs = admin.describe_configs([resource])[resource].result(10)
    assert configs["cleanup.policy"].value == "compact"


def test_produce_and_consume_in_a_group(kafka_bootstrap: str) -> None:
    topic = _topic("roundtrip")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=2)], timeout=10)
    sent = {f"user-{i}".encode(): f"event-{i}".encode() for i in range(5)}

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": _topic("group"),
            "auto.offset.reset": "earliest",
            # tansu: a longer session makes group joins take ~20 s.
            "session.timeout.ms": 6000,
            "enable.auto.commit": False,
        }
    )
    received: dict[bytes, bytes] = {}
    try:
        consumer.subscribe([topic])
        for _ in range(60):
            msg = consumer.poll(1.0)
            if msg is None:
                if len(received) == len(sent):
                    break
                continue
            assert msg.error() is None, msg.error()
            key, value = msg.key(), msg.value()
            assert key is not None and value is not None
            received[key] = value
            if len(received) == len(sent):
                consumer.commit(message=msg, asynchronous=False)
                break
    finally:
        consumer.close()
    assert received == sent


def test_embedded_broker_stops_cleanly(tmp_path: Path) -> None:
    log_path = tmp_path / "tansu.log"
    with start_embedded_broker(log_path=log_path, startup_timeout=20) as handle:
        assert handle.kind == "embedded"
        process = handle.process
        assert process is not None and process.poll() is None
        admin = AdminClient({"bootstrap.servers": handle.bootstrap_servers})
        assert admin.list_topics(timeout=5).brokers
    assert handle.stopped
    assert process.poll() is not None
    handle.stop()  # idempotent
    assert log_path.exists()


def test_env_bootstrap_is_used_as_is() -> None:
    with start_broker(Settings(kafka_bootstrap_servers="kafka.invalid:9092")) as handle:
        assert (handle.kind, handle.bootstrap_servers) == ("env", "kafka.invalid:9092")
        assert handle.process is None


def test_start_times_out_with_a_clear_error() -> None:
    with pytest.raises(BrokerError, match="did not answer within"):
        wait_for_broker("127.0.0.1:1", timeout=0.5)


def test_module_runs_a_foreground_broker_until_sigterm(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HUP_BROKER_PORT": str(port), "HUP_BROKER_LOG": str(tmp_path / "b.log")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    proc = subprocess.Popen([sys.executable, "-m", "stream.devtools.broker"], env=env)
    try:
        wait_for_broker(f"127.0.0.1:{port}", timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(BrokerError):
        wait_for_broker(f"127.0.0.1:{port}", timeout=0.5)
