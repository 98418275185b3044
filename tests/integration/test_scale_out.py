"""Scale-out: 1 -> 2 -> 1 and 1 -> 3 -> 1 workers of one consumer group during a replay.

State moves through the changelog (and standby replicas when enabled), and while all
workers run, ``GET /profiles/{user_id}`` on any of them answers for every user, routed
to the worker that owns the user's partition.
"""

from __future__ import annotations

import time
from collections import Counter
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
    http_get,
    produce,
    scrape,
    wait_ready,
    worker_env,
)
from test_worker_faults import all_users_done, check_at_least_once, latest_seqs

from hup.runtime import Profiler
from hup.schema import Event
from hup.sessions import Dataset, iter_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APPLIED = 'hup_events_total{outcome="applied"}'


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


def profiles_per_user(profiler: Profiler, events: list[Event]) -> dict[str, int]:
    """How many profiles each user's events yield (the events the featurizer accepts)."""
    states: dict[str, object] = {}
    counts: Counter[str] = Counter()
    for event in events:
        state = states.get(event.user_id) or profiler.featurizer.initial_state()
        states[event.user_id], features, _ = profiler.featurizer.apply(state, event)
        if features is not None:
            counts[event.user_id] += 1
    return dict(counts)


def assert_every_worker_serves_every_user(
    ports: list[int], last: dict[str, bytes], workers: list[WorkerProcess]
) -> None:
    """Each worker answers each user's latest profile, routing to the owner when needed."""
    for user, message in last.items():
        for port, worker in zip(ports, workers, strict=True):
            url = f"http://127.0.0.1:{port}/profiles/{user}"
            status, body = http_get(url)
            deadline = time.monotonic() + 10  # the table is written just after delivery
            while (status, body) != (200, message) and time.monotonic() < deadline:
                assert worker.alive(), worker.log()
                time.sleep(0.2)
                status, body = http_get(url)
            assert status == 200, (url, status, body[:200])
            assert orjson.loads(body) == orjson.loads(message), url


@pytest.mark.parametrize(
    ("peak", "standby"), [(2, 0), (3, 1)], ids=["two-workers-no-standby", "three-workers-standby-1"]
)
def test_scaling_out_and_back_during_a_replay_loses_and_repeats_nothing(
    peak: int,
    standby: int,
    kafka_bootstrap: str,
    it_model: Path,
    it_profiler: Profiler,
    it_reference: Reference,
    it_traffic: Dataset,
    tmp_path: Path,
) -> None:
    """A runs throughout; the others join after the first part and leave (SIGTERM) after the second."""
    started = time.monotonic()
    sessions = it_traffic.sessions[:150]
    reference = it_reference.restricted_to({s.user_id for s in sessions})
    total = reference.count()
    events = list(iter_events(sessions))
    # Each user's events stay in order across the parts: they are cut from one merged stream.
    cut1, cut2 = len(events) * 2 // 5, len(events) * 7 // 10
    parts = [events[:cut1], events[cut1:cut2], events[cut2:]]
    after_two_parts = profiles_per_user(it_profiler, events[:cut2])
    base = worker_env(
        kafka_bootstrap,
        it_model,
        tmp_path / "data",
        HUP_STANDBY_REPLICAS=str(standby),
        HUP_BATCH_SIZE="50",
        HUP_WEB_HOST="127.0.0.1",  # the URL each worker advertises for routed queries
    )
    create_topics(kafka_bootstrap, base)
    names = "abc"[:peak]
    metric_ports = {name: free_port() for name in names}
    web_ports = {name: free_port() for name in names}
    envs = {
        name: {
            **base,
            "HUP_DATADIR": str(tmp_path / f"data-{name}"),
            "HUP_METRICS_PORT": str(metric_ports[name]),
            "HUP_WEB_PORT": str(web_ports[name]),
        }
        for name in names
    }

    def publish(part: list) -> None:
        produce(
            kafka_bootstrap,
            base["HUP_INPUT_TOPIC"],
            ((e.user_id.encode(), event_bytes(e)) for e in part),
        )

    reader = Reader(kafka_bootstrap, base["HUP_OUTPUT_TOPIC"])
    first = WorkerProcess(envs["a"], tmp_path / "worker-a.log")
    workers = {"a": first}
    try:
        wait_ready(first)
        publish(parts[0])
        reader.read_until(lambda m: len(m) >= total // 5, 120, "a fifth of the profiles", first)

        for name in names[1:]:  # join mid-replay, one after the other
            workers[name] = WorkerProcess(envs[name], tmp_path / f"worker-{name}.log")
            wait_ready(workers[name])
        publish(parts[1])
        # Each joiner owns partitions now, took their state from the changelog, applied events.
        for name in names[1:]:
            wait_metric(metric_ports[name], APPLIED, 1, workers[name], 120)
        reader.read_until(
            lambda m: latest_seqs(m) == after_two_parts, 180, "the first two parts", first
        )
        assert sum(after_two_parts.values()) < total  # still mid-replay
        last = {orjson.loads(v)["user_id"]: v for _, v in reader.messages}
        live = [workers[name] for name in names]
        assert_every_worker_serves_every_user([web_ports[n] for n in names], last, live)
        joiners_applied = {name: scrape(metric_ports[name])[APPLIED] for name in names[1:]}
        for name in names[1:]:  # graceful leave: A takes their partitions back
            assert workers[name].stop() == 0

        publish(parts[2])
        reader.read_until(all_users_done(reference), 240, "every user's last profile", first)
        reader.poll_for(2.0)  # a stray duplicate would arrive meanwhile
        a_applied = scrape(metric_ports["a"])[APPLIED]
        assert first.stop() == 0
    finally:
        for worker in workers.values():
            worker.stop()
        reader.close()
    elapsed = time.monotonic() - started

    # Every (user, seq) 1..n published, equal to the offline forward pass (which the
    # single-worker e2e test also equals); repeats only identical; seq never above n.
    repeats = check_at_least_once(reader.messages, reference)
    final = latest_seqs(reader.messages)
    assert final == {u: len(p) for u, p in reference.profiles.items() if p}
    assert {orjson.loads(v)["user_id"] for _, v in reader.messages} == set(final)
    assert all(applied > 0 for applied in joiners_applied.values()), joiners_applied
    assert a_applied < total  # the others really did part of it
    for name in names:  # no input record was dropped on its way to an agent (F5, 4)
        assert "never reached the agent" not in (tmp_path / f"worker-{name}.log").read_text()
    print(
        f"\nscale-out to {peak} workers, standby={standby}: {len(events)} events, {total} "
        f"profiles, {len(reader.messages)} published ({repeats} identical repeats), "
        f"joiners applied {joiners_applied} by their leave, routed queries "
        f"{len(last) * peak} answered, {elapsed:.1f}s"
    )
