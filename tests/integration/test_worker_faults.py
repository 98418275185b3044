"""The worker under faults: SIGKILL mid-stream (local and changelog recovery), a crashing batch."""

from __future__ import annotations

import base64
import sys
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from harness import (
    TOLERANCE,
    Reader,
    Reference,
    WorkerProcess,
    assert_same_republish,
    create_topics,
    event_bytes,
    free_port,
    produce,
    profile_diff,
    scrape,
    worker_env,
)

from hup.sessions import Dataset, iter_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def latest_seqs(messages: list[tuple[bytes | None, bytes]]) -> dict[str, int]:
    latest: dict[str, int] = defaultdict(int)
    for _, value in messages:
        message = orjson.loads(value)
        latest[message["user_id"]] = max(latest[message["user_id"]], message["seq"])
    return latest


def all_users_done(reference: Reference):
    wanted = {u: len(p) for u, p in reference.profiles.items() if p}

    def done(messages: list[tuple[bytes | None, bytes]]) -> bool:
        return latest_seqs(messages) == wanted

    return done


def check_at_least_once(messages: list[tuple[bytes | None, bytes]], reference: Reference) -> int:
    """Every (user, seq) published, equal to the reference; repeats the same. Returns repeats."""
    first: dict[tuple[str, int], dict] = {}
    repeats = 0
    worst = 0.0
    for _, value in messages:
        message = orjson.loads(value)
        user, seq = message["user_id"], message["seq"]
        expected = reference.profiles[user]
        assert 1 <= seq <= len(expected), (user, seq)  # never applied twice: seq <= events
        worst = max(worst, profile_diff(message, expected[seq - 1]))
        if (user, seq) in first:
            repeats += 1
            assert_same_republish(message, first[(user, seq)], TOLERANCE)
        else:
            first[(user, seq)] = message
    wanted = {(u, n) for u, p in reference.profiles.items() for n in range(1, len(p) + 1)}
    assert set(first) == wanted  # none lost
    assert worst < TOLERANCE
    return repeats


def test_sigkill_mid_stream_then_restart_loses_and_repeats_nothing(
    kafka_bootstrap: str,
    it_model: Path,
    it_reference: Reference,
    it_traffic: Dataset,
    tmp_path: Path,
) -> None:
    """SIGTERM mid-stream, then SIGKILL, then a wiped datadir (state from the changelog)."""
    sessions = it_traffic.sessions[:150]
    reference = it_reference.restricted_to({s.user_id for s in sessions})
    env = worker_env(kafka_bootstrap, it_model, tmp_path / "data")
    create_topics(kafka_bootstrap, env)
    events = list(iter_events(sessions))
    produce(
        kafka_bootstrap,
        env["HUP_INPUT_TOPIC"],
        ((e.user_id.encode(), event_bytes(e)) for e in events),
    )
    total = reference.count()
    reader = Reader(kafka_bootstrap, env["HUP_OUTPUT_TOPIC"])
    try:
        first = WorkerProcess(env, tmp_path / "worker-1.log")
        reader.read_until(lambda m: len(m) >= total // 4, 120, "a quarter of the profiles", first)
        assert first.stop() == 0  # graceful: faust commits what was acked and exits 0
        killed_at = len(reader.messages)

        second = WorkerProcess(env, tmp_path / "worker-2.log")
        reader.read_until(lambda m: len(m) >= killed_at + total // 4, 120, "more profiles", second)
        second.kill()
        assert len(latest_seqs(reader.messages)) > 0
        assert sum(latest_seqs(reader.messages).values()) < total  # killed mid-stream

        wiped = tmp_path / "data-wiped"  # a new machine: state comes from the changelog
        third = WorkerProcess({**env, "HUP_DATADIR": str(wiped)}, tmp_path / "worker-3.log")
        reader.read_until(all_users_done(reference), 180, "every user's last profile", third)
        reader.poll_for(2.0)
        assert third.stop() == 0
    finally:
        reader.close()
    check_at_least_once(reader.messages, reference)
    assert "Recovery" in (tmp_path / "worker-3.log").read_text()
    for n in (1, 2, 3):  # no input record was dropped on its way to the agent (F5, 4)
        assert "never reached the agent" not in (tmp_path / f"worker-{n}.log").read_text()


# Runs the real worker with Processor.process failing once, on the first batch that
# reaches offset 200 of any partition: a stand-in for a bug in the processing code.
_BUGGY_WORKER = """
import os, pathlib
import stream.processor
marker = pathlib.Path(os.environ["TEST_BUG_MARKER"])
real = stream.processor.Processor.process
def process(self, records, store):
    if not marker.exists() and any(r.offset >= 200 for r in records):
        marker.write_text("fired")
        raise RuntimeError("injected bug")
    return real(self, records, store)
stream.processor.Processor.process = process
from stream.worker import main
main()
"""


def test_a_failing_batch_stops_the_worker_and_is_processed_after_restart(
    kafka_bootstrap: str,
    it_model: Path,
    it_reference: Reference,
    it_traffic: Dataset,
    tmp_path: Path,
) -> None:
    sessions = it_traffic.sessions[:60]
    reference = it_reference.restricted_to({s.user_id for s in sessions})
    marker = tmp_path / "bug-fired"
    env = worker_env(
        kafka_bootstrap,
        it_model,
        tmp_path / "data",
        HUP_BATCH_SIZE="50",
        TEST_BUG_MARKER=str(marker),
    )
    create_topics(kafka_bootstrap, env)
    produce(
        kafka_bootstrap,
        env["HUP_INPUT_TOPIC"],
        ((e.user_id.encode(), event_bytes(e)) for e in iter_events(sessions)),
    )
    reader = Reader(kafka_bootstrap, env["HUP_OUTPUT_TOPIC"])
    try:
        buggy = WorkerProcess(env, tmp_path / "buggy.log", [sys.executable, "-c", _BUGGY_WORKER])
        code = buggy.wait(120)
        log = (tmp_path / "buggy.log").read_text()
        assert marker.exists(), log[-3000:]
        assert code != 0, log[-3000:]
        assert "injected bug" in log
        assert f"from {env['HUP_INPUT_TOPIC']}[" in log  # the batch's topic[partition]@offsets
        reader.poll_for(1.0)
        before = len(reader.messages)
        assert 0 < before < reference.count()

        healthy = WorkerProcess(env, tmp_path / "healthy.log")
        reader.read_until(all_users_done(reference), 120, "every user's last profile", healthy)
        reader.poll_for(2.0)
        assert healthy.stop() == 0
    finally:
        reader.close()
    # Nothing of the failed batch was published or saved, and earlier batches were
    # committed or skipped by offset: exactly one profile per event.
    assert check_at_least_once(reader.messages, reference) == 0
    assert len(reader.messages) == reference.count()


def test_repartitioning_rekeys_and_applies_once_across_a_sigkill(
    kafka_bootstrap: str,
    it_model: Path,
    it_reference: Reference,
    it_traffic: Dataset,
    tmp_path: Path,
) -> None:
    """Keyed by device (one per user), not user_id: re-keyed before any state is touched.

    No offset is committed before the SIGKILL (60 s commit interval), so the restarted
    worker forwards every input record again under new offsets: each event then reaches
    the profile stage twice and must be applied once. Malformed records are dead-lettered
    where their producer wrote them, with their own key.
    """
    sessions = it_traffic.sessions[:60]
    reference = it_reference.restricted_to({s.user_id for s in sessions})
    env = worker_env(
        kafka_bootstrap,
        it_model,
        tmp_path / "data",
        HUP_REPARTITION="1",
        HUP_COMMIT_INTERVAL_S="60",
        HUP_COMMIT_EVERY="1000000",
    )
    create_topics(kafka_bootstrap, env)
    messages: list[tuple[bytes | None, bytes | None]] = [
        (f"device-{e.user_id}".encode(), event_bytes(e)) for e in iter_events(sessions)
    ]
    bad = [b"{not json", b'{"user_id": "u-bad", "ts": 1}', b'{"ts": 2}']
    for n, value in enumerate(bad):
        messages.insert((n + 1) * len(messages) // (len(bad) + 1), (b"device-bad", value))
    produce(kafka_bootstrap, env["HUP_INPUT_TOPIC"], messages)
    total = reference.count()
    reader = Reader(kafka_bootstrap, env["HUP_OUTPUT_TOPIC"])
    dlq = Reader(kafka_bootstrap, env["HUP_DLQ_TOPIC"])
    forwarded = Reader(kafka_bootstrap, f"{env['HUP_INPUT_TOPIC']}-{env['HUP_APP_ID']}-by-user")
    try:
        first = WorkerProcess(env, tmp_path / "worker-1.log")
        reader.read_until(lambda m: len(m) >= total // 3, 120, "a third of the profiles", first)
        first.kill()
        assert sum(latest_seqs(reader.messages).values()) < total  # killed mid-stream

        second = WorkerProcess(env, tmp_path / "worker-2.log")
        reader.read_until(all_users_done(reference), 180, "every user's last profile", second)
        reader.poll_for(2.0)
        dlq.poll_for(1.0)
        forwarded.poll_for(2.0)
        assert second.stop() == 0
    finally:
        reader.close()
        dlq.close()
        forwarded.close()
    # The premise: records were forwarded more than once (else this tests nothing).
    assert len(forwarded.messages) > len(messages) - len(bad)
    check_at_least_once(reader.messages, reference)
    assert all(key == orjson.loads(value)["user_id"].encode() for key, value in reader.messages)
    letters = [orjson.loads(value) for _, value in dlq.messages]
    assert {base64.b64decode(d["value"]) for d in letters} == set(bad)
    for letter in letters:
        assert letter["topic"] == env["HUP_INPUT_TOPIC"]  # where the producer wrote it
        assert base64.b64decode(letter["key"]) == b"device-bad"
    for n in (1, 2):
        assert "never reached the agent" not in (tmp_path / f"worker-{n}.log").read_text()


# Runs the real worker with faust's fetch loop dropping offsets 100 and 101 of input
# partition 0 the first time it reads them: records lost on their way to the agent,
# as faust did around rebalances (broker notes F5, 4). faust marks the jump as a gap.
_HOLE_WORKER = """
import os
import faust.transport.consumer as consumer
topic = os.environ["HUP_INPUT_TOPIC"]
dropped = set()
real = consumer.Consumer.getmany
async def getmany(self, timeout):
    async for tp, message in real(self, timeout):
        if (tp.topic, tp.partition) == (topic, 0) and message.offset in (100, 101):
            if message.offset not in dropped:
                dropped.add(message.offset)
                continue
        yield tp, message
consumer.Consumer.getmany = getmany
from stream.worker import main
main()
"""


def test_records_dropped_before_the_agent_are_read_again_not_committed_over(
    kafka_bootstrap: str,
    it_model: Path,
    it_reference: Reference,
    it_traffic: Dataset,
    tmp_path: Path,
) -> None:
    sessions = it_traffic.sessions[:60]
    reference = it_reference.restricted_to({s.user_id for s in sessions})
    port = free_port()
    env = worker_env(
        kafka_bootstrap,
        it_model,
        tmp_path / "data",
        HUP_BATCH_SIZE="20",
        HUP_METRICS_PORT=str(port),
    )
    create_topics(kafka_bootstrap, env)
    produce(
        kafka_bootstrap,
        env["HUP_INPUT_TOPIC"],
        ((e.user_id.encode(), event_bytes(e)) for e in iter_events(sessions)),
    )
    reader = Reader(kafka_bootstrap, env["HUP_OUTPUT_TOPIC"])
    log_path = tmp_path / "worker.log"
    try:
        worker = WorkerProcess(env, log_path, [sys.executable, "-c", _HOLE_WORKER])
        reader.read_until(all_users_done(reference), 180, "every user's last profile", worker)
        reader.poll_for(2.0)
        samples = scrape(port)
        assert worker.stop() == 0
    finally:
        reader.close()
    assert check_at_least_once(reader.messages, reference) == 0
    log = log_path.read_text()
    topic = env["HUP_INPUT_TOPIC"]
    assert f"{topic}[0]@100..101 never reached the agent; reading the partition again" in log
    assert f"{topic}[0]@100 read again after a hole" in log
    assert samples['hup_offset_gaps_total{action="reread"}'] == 1.0
    assert samples['hup_offset_gaps_total{action="committed"}'] == 0.0
