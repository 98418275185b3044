"""The worker end to end on a broker: parity with the offline model, order, DLQ, metrics."""

from __future__ import annotations

import base64
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from harness import (
    TOLERANCE,
    Reader,
    Reference,
    WorkerProcess,
    create_topics,
    event_bytes,
    free_port,
    produce,
    profile_diff,
    wait_ready,
    worker_env,
)

from hup.runtime import Profiler
from hup.sessions import Dataset, iter_events

pytestmark = pytest.mark.integration


@dataclass
class Run:
    """What one worker run consumed and published."""

    env: dict[str, str]
    reference: Reference
    profiles: list[dict]
    dead_letters: list[tuple[bytes | None, dict]]
    exit_code: int
    metrics: str = ""


def by_user(profiles: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for message in profiles:
        grouped[message["user_id"]].append(message)
    return grouped


@pytest.fixture(scope="module")
def live_run(
    kafka_bootstrap: str,
    it_model: Path,
    it_reference: Reference,
    it_traffic: Dataset,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    """Default batching; events produced while the worker runs; metrics served."""
    tmp = tmp_path_factory.mktemp("live")
    port = free_port()
    env = worker_env(kafka_bootstrap, it_model, tmp / "data", HUP_METRICS_PORT=str(port))
    create_topics(kafka_bootstrap, env)
    reference = it_reference
    worker = WorkerProcess(env, tmp / "worker.log")
    reader = Reader(kafka_bootstrap, env["HUP_OUTPUT_TOPIC"])
    try:
        wait_ready(worker)
        events = iter_events(it_traffic.sessions)
        produce(
            kafka_bootstrap,
            env["HUP_INPUT_TOPIC"],
            ((e.user_id.encode(), event_bytes(e)) for e in events),
        )
        expected = reference.count()
        reader.read_until(lambda m: len(m) >= expected, 240, "every profile", worker)
        reader.poll_for(2.0)  # a duplicate or stray profile would arrive meanwhile
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:  # noqa: S310
            metrics = page.read().decode()
    finally:
        code = worker.stop()
        reader.close()
    yield Run(env, reference, [orjson.loads(v) for _, v in reader.messages], [], code, metrics)


def test_every_event_yields_the_offline_profile_exactly_once_in_order(
    live_run: Run, it_profiler: Profiler
) -> None:
    reference = live_run.reference
    published = by_user(live_run.profiles)
    expected_users = {u for u, p in reference.profiles.items() if p}
    assert set(published) == expected_users
    assert len(live_run.profiles) == reference.count()
    worst = 0.0
    for user, messages in published.items():
        assert [m["seq"] for m in messages] == list(range(1, len(reference.profiles[user]) + 1))
        for message, expected in zip(messages, reference.profiles[user], strict=True):
            worst = max(worst, profile_diff(message, expected))
            assert message["model_version"] == it_profiler.version
    assert worst < TOLERANCE


def test_sigterm_stops_the_worker_cleanly(live_run: Run) -> None:
    assert live_run.exit_code == 0


def test_metrics_count_what_was_published(live_run: Run) -> None:
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in live_run.metrics.splitlines()
        if line and not line.startswith("#")
    }
    n = live_run.reference.count()
    assert samples["hup_profiles_published_total"] == n
    assert samples['hup_events_total{outcome="applied"}'] == n
    assert samples["hup_event_to_profile_seconds_count"] == n
    assert samples["hup_processing_seconds_count"] == n
    assert samples["hup_batch_size_sum"] == samples['hup_events_total{outcome="consumed"}']
    assert 'hup_model_info{path="' in live_run.metrics
    assert "user_id" not in live_run.metrics


def test_changelog_is_compacted(kafka_bootstrap: str, live_run: Run) -> None:
    changelog = f"{live_run.env['HUP_APP_ID']}-profile-state-changelog"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    resource = ConfigResource("topic", changelog)
    configs = admin.describe_configs([resource])[resource].result(10)
    assert configs["cleanup.policy"].value == "compact"
    topic = admin.list_topics(changelog, timeout=10).topics[changelog]
    assert len(topic.partitions) == 3


# --- Poison messages and large batches ---------------------------------------------------

POISON_EVERY = 53  # a bad message after every 53 good ones


def poison(n: int, user: str) -> tuple[bytes | None, bytes | None, str]:
    """The n-th bad message: (key, value, what its DLQ reason must mention)."""
    kinds = [
        (b"{not json", "malformed JSON"),
        (
            orjson.dumps({"user_id": user, "ts": 1.0, "item_id": "i", "categories": ["c"]}),
            "Field required",
        ),
        (
            orjson.dumps(
                {
                    "user_id": user,
                    "ts": 1.0,
                    "item_id": "i",
                    "categories": ["c"],
                    "behavior": "Fly",
                }
            ),
            "unknown behaviour 'Fly'",
        ),
        # A valid event of a user of its own, keyed by someone else.
        (
            orjson.dumps(
                {
                    "user_id": f"ghost-{n}",
                    "ts": 1.0,
                    "item_id": "i",
                    "categories": ["c"],
                    "behavior": 1,
                }
            ),
            "is not the event's user_id",
        ),
        (None, "no value"),
    ]
    value, reason = kinds[n % len(kinds)]
    return user.encode(), value, reason


@pytest.fixture(scope="module")
def backlog_run(
    kafka_bootstrap: str,
    it_model: Path,
    it_reference: Reference,
    it_traffic: Dataset,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Run, list[tuple[bytes | None, bytes | None, str]]]]:
    """A backlog with bad messages interleaved, consumed in large batches."""
    tmp = tmp_path_factory.mktemp("backlog")
    env = worker_env(
        kafka_bootstrap,
        it_model,
        tmp / "data",
        HUP_BATCH_SIZE="2000",
        HUP_BATCH_WITHIN_S="0.5",
    )
    create_topics(kafka_bootstrap, env)
    sessions = it_traffic.sessions[:100]
    reference = it_reference.restricted_to({s.user_id for s in sessions})
    messages: list[tuple[bytes | None, bytes | None]] = []
    bad: list[tuple[bytes | None, bytes | None, str]] = []
    for n, event in enumerate(iter_events(sessions)):
        messages.append((event.user_id.encode(), event_bytes(event)))
        if n % POISON_EVERY == POISON_EVERY - 1:
            key, value, reason = poison(len(bad), event.user_id)
            bad.append((key, value, reason))
            messages.append((key, value))
    produce(kafka_bootstrap, env["HUP_INPUT_TOPIC"], messages)
    worker = WorkerProcess(env, tmp / "worker.log")
    profiles = Reader(kafka_bootstrap, env["HUP_OUTPUT_TOPIC"])
    dlq = Reader(kafka_bootstrap, env["HUP_DLQ_TOPIC"])
    try:
        expected = reference.count()
        profiles.read_until(lambda m: len(m) >= expected, 240, "every profile", worker)
        dlq.read_until(lambda m: len(m) >= len(bad), 60, "every dead letter", worker)
        profiles.poll_for(1.0)
        dlq.poll_for(1.0)
    finally:
        code = worker.stop()
        profiles.close()
        dlq.close()
    run = Run(
        env,
        reference,
        [orjson.loads(v) for _, v in profiles.messages],
        [(k, orjson.loads(v)) for k, v in dlq.messages],
        code,
    )
    yield run, bad


def test_bad_messages_land_in_the_dlq_with_reasons_and_original_bytes(backlog_run) -> None:
    run, bad = backlog_run
    assert len(bad) >= 5 * 10  # every kind, many times over
    assert len(run.dead_letters) == len(bad)
    # Bad messages keyed by one user share that user's partition, so order by offset
    # within each partition and match them to what was sent, in order, per key.
    sent_by_key: dict[bytes | None, list[tuple[bytes | None, str]]] = defaultdict(list)
    for key, value, reason in bad:
        sent_by_key[key].append((value, reason))
    got_by_key: dict[bytes | None, list[dict]] = defaultdict(list)
    for key, letter in run.dead_letters:
        got_by_key[key].append(letter)
    assert got_by_key.keys() == sent_by_key.keys()
    for key, letters in got_by_key.items():
        letters.sort(key=lambda letter: letter["offset"])
        for letter, (value, reason) in zip(letters, sent_by_key[key], strict=True):
            assert reason in letter["reason"], (letter["reason"], reason)
            assert letter["topic"] == run.env["HUP_INPUT_TOPIC"]
            original = None if letter["value"] is None else base64.b64decode(letter["value"])
            assert original == value
            assert base64.b64decode(letter["key"]) == key


def test_every_good_event_is_processed_despite_poison(backlog_run) -> None:
    run, _ = backlog_run
    published = by_user(run.profiles)
    assert not any(user.startswith("ghost-") for user in published)
    assert len(run.profiles) == run.reference.count()
    worst = 0.0
    for user, expected in run.reference.profiles.items():
        messages = published.get(user, [])
        assert len(messages) == len(expected), user
        for message, reference in zip(messages, expected, strict=True):
            worst = max(worst, profile_diff(message, reference))
    assert worst < TOLERANCE
    assert run.exit_code == 0


def test_large_batches_keep_each_users_order(backlog_run) -> None:
    run, _ = backlog_run
    for user, messages in by_user(run.profiles).items():
        seqs = [m["seq"] for m in messages]
        assert all(a < b for a, b in zip(seqs, seqs[1:], strict=False)), user
        assert [m["event_ts"] for m in messages] == run.reference.event_ts[user]
