"""Scale-out: 1 -> 2 -> 1 workers of one consumer group during a replay; state moves via the changelog."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from harness import (
    Reader,
    Reference,
    WorkerProcess,
    create_topics,
    event_bytes,
    free_port,
    produce,
    scrape,
    wait_ready,
    worker_env,
)
from test_worker_faults import all_users_done, check_at_least_once, latest_seqs

from hup.data import Dataset, iter_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def wait_metric(
    port: int, series: str, minimum: float, worker: WorkerProcess, timeout: float
) -> float:
    """Poll `series` on the worker's /metrics until it reaches `minimum`."""
    deadline = time.monotonic() + timeout
    while True:
        value = scrape(port).get(series, 0.0)
        if value >= minimum:
            return value
        assert worker.alive(), worker.log()
        assert time.monotonic() < deadline, f"{series}={value} < {minimum}\n{worker.log()}"
        time.sleep(0.5)


@pytest.mark.xfail(
    strict=False,
    reason=(
        "known defect, not yet fixed: now and then one user's profiles end off by one "
        "across the 2 -> 1 step, as in the SIGKILL test (docs/broker-notes.md, F5, "
        "'still open')"
    ),
)
@pytest.mark.parametrize("standby", [0, 1], ids=["no-standby", "standby-1"])
def test_one_two_one_workers_during_a_replay_lose_and_repeat_nothing(
    standby: int,
    kafka_bootstrap: str,
    it_model: Path,
    it_reference: Reference,
    it_traffic: Dataset,
    tmp_path: Path,
) -> None:
    """A runs throughout; B joins after the first part and leaves (SIGTERM) after the second."""
    started = time.monotonic()
    sessions = it_traffic.sessions[:150]
    reference = it_reference.restricted_to({s.user_id for s in sessions})
    total = reference.count()
    events = list(iter_events(sessions))
    # Each user's events stay in order across the parts: they are cut from one merged stream.
    cut1, cut2 = len(events) * 2 // 5, len(events) * 7 // 10
    parts = [events[:cut1], events[cut1:cut2], events[cut2:]]
    port_a, port_b = free_port(), free_port()
    base = worker_env(
        kafka_bootstrap,
        it_model,
        tmp_path / "data-a",
        HUP_STANDBY_REPLICAS=str(standby),
        HUP_BATCH_SIZE="50",
    )
    env_a = {**base, "HUP_METRICS_PORT": str(port_a)}
    # Same group (HUP_APP_ID) and topics, its own state directory and ports.
    env_b = {**base, "HUP_DATADIR": str(tmp_path / "data-b"), "HUP_METRICS_PORT": str(port_b)}
    create_topics(kafka_bootstrap, env_a)

    def publish(part: list) -> None:
        produce(
            kafka_bootstrap,
            base["HUP_INPUT_TOPIC"],
            ((e.user_id.encode(), event_bytes(e)) for e in part),
        )

    reader = Reader(kafka_bootstrap, base["HUP_OUTPUT_TOPIC"])
    worker_a = WorkerProcess(env_a, tmp_path / "worker-a.log")
    worker_b: WorkerProcess | None = None
    try:
        wait_ready(worker_a)
        publish(parts[0])
        reader.read_until(lambda m: len(m) >= total // 5, 120, "a fifth of the profiles", worker_a)

        worker_b = WorkerProcess(env_b, tmp_path / "worker-b.log")  # joins mid-replay
        wait_ready(worker_b)
        publish(parts[1])
        # B owns partitions now, took their state from the changelog and applied events.
        applied = 'hup_events_total{outcome="applied"}'
        wait_metric(port_b, applied, 1, worker_b, 120)
        reader.read_until(lambda m: len(m) >= total // 2, 120, "half of the profiles", worker_a)
        b_applied = scrape(port_b)[applied]
        assert sum(latest_seqs(reader.messages).values()) < total  # still mid-replay
        assert worker_b.stop() == 0  # graceful leave: A takes B's partitions back

        publish(parts[2])
        reader.read_until(all_users_done(reference), 240, "every user's last profile", worker_a)
        reader.poll_for(2.0)  # a stray duplicate would arrive meanwhile
        a_metrics = scrape(port_a)
        assert worker_a.stop() == 0
    finally:
        if worker_b is not None:
            worker_b.stop()
        worker_a.stop()
        reader.close()
    elapsed = time.monotonic() - started

    # Every (user, seq) 1..n published, equal to the offline forward pass (which the
    # single-worker e2e test also equals); repeats only identical; seq never above n.
    repeats = check_at_least_once(reader.messages, reference)
    final = latest_seqs(reader.messages)
    assert final == {u: len(p) for u, p in reference.profiles.items() if p}
    profiles = [orjson.loads(v) for _, v in reader.messages]
    assert {m["user_id"] for m in profiles} == set(final)
    assert b_applied > 0
    assert a_metrics[applied] < total  # B really did part of it
    print(
        f"\nscale-out standby={standby}: {len(events)} events, {total} profiles, "
        f"{len(reader.messages)} published ({repeats} identical repeats), "
        f"B applied {b_applied:.0f} by its leave, {elapsed:.1f}s"
    )
