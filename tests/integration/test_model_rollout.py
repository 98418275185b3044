"""Model rollout: a worker restarted on a new checkpoint resets old-version states.

The new model starts each user afresh, but the user's profile ``seq`` carries on and
events the old worker applied are still recognised when they are delivered again.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
import torch
from harness import (
    TOLERANCE,
    Reader,
    Reference,
    WorkerProcess,
    create_topics,
    event_bytes,
    free_port,
    offline_reference,
    produce,
    profile_diff,
    scrape,
    wait_ready,
    worker_env,
)
from test_worker_faults import all_users_done

from hup.hup_checkpoint import load_checkpoint, save_checkpoint
from hup.model import HupModel
from hup.runtime import Profiler
from hup.sessions import Dataset, Session, iter_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def m2_model(tmp_path_factory: pytest.TempPathFactory, it_model: Path) -> Path:
    """Same config, vocabulary and features as `it_model`, other weights: another version."""
    m1 = load_checkpoint(it_model)
    torch.manual_seed(1)
    model = HupModel(m1.model.config)
    directory = tmp_path_factory.mktemp("it-model-m2")
    save_checkpoint(directory, model, m1.spec, m1.vocabularies)
    return directory


def test_a_new_checkpoint_resets_old_states_keeps_seq_and_skips_redelivered_events(
    kafka_bootstrap: str,
    it_model: Path,
    m2_model: Path,
    it_profiler: Profiler,
    it_reference: Reference,
    it_traffic: Dataset,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    m2 = Profiler.load(m2_model)
    assert m2.version != it_profiler.version
    sessions = it_traffic.sessions[:60]
    users = {s.user_id for s in sessions}
    # Each user's events, first half under M1, second half under M2 (same users).
    before: list[Session] = []
    after: list[Session] = []
    for s in sessions:
        half = len(s.events) // 2
        before.append(Session(s.session_id, s.user_id, s.events[:half]))
        after.append(Session(s.session_id, s.user_id, s.events[half:]))
    ref_before = offline_reference(it_profiler, before)
    # A model change starts users afresh: M2's forward over the events after the switch only.
    ref_after = offline_reference(m2, after)
    port = free_port()
    env = worker_env(kafka_bootstrap, it_model, tmp_path / "data", HUP_METRICS_PORT=str(port))
    # M1 never commits and is killed: M2 consumes every event M1 applied again.
    m1_env = {**env, "HUP_COMMIT_EVERY": "1000000", "HUP_COMMIT_INTERVAL_S": "3600"}
    n_events_before = sum(1 for _ in iter_events(before))
    create_topics(kafka_bootstrap, env)
    reader = Reader(kafka_bootstrap, env["HUP_OUTPUT_TOPIC"])
    try:
        produce(
            kafka_bootstrap,
            env["HUP_INPUT_TOPIC"],
            ((e.user_id.encode(), event_bytes(e)) for e in iter_events(before)),
        )
        m1_worker = WorkerProcess(m1_env, tmp_path / "worker-m1.log")
        reader.read_until(all_users_done(ref_before), 120, "M1's profiles", m1_worker)
        # Events that make no profile (dropped) may still be in flight, and the last
        # events' state waits for the next save: wait for all of them to be saved.
        _wait_consumed(port, n_events_before, m1_worker)
        m1_worker.kill()
        n_before = len(reader.messages)

        m2_worker = WorkerProcess({**env, "HUP_MODEL": str(m2_model)}, tmp_path / "worker-m2.log")
        wait_ready(m2_worker)
        produce(
            kafka_bootstrap,
            env["HUP_INPUT_TOPIC"],
            ((e.user_id.encode(), event_bytes(e)) for e in iter_events(after)),
        )
        reader.read_until(
            lambda m: len(m) >= n_before + ref_after.count(), 120, "M2's profiles", m2_worker
        )
        reader.poll_for(2.0)
        metrics = scrape(port)
        assert m2_worker.stop() == 0
    finally:
        reader.close()
    elapsed = time.monotonic() - started

    messages = [orjson.loads(v) for _, v in reader.messages]
    old, new = messages[:n_before], messages[n_before:]
    assert {m["model_version"] for m in old} == {it_profiler.version}
    assert {m["model_version"] for m in new} == {m2.version}
    assert len(new) == ref_after.count()
    # Every user that had M1 state and got an event under M2 was reset once, and only those.
    # (The worker saves a state for every user with an event, even one the featurizer dropped.)
    had_state = {s.user_id for s in before if s.events}
    reset = metrics['hup_events_total{outcome="state_reset_version"}']
    assert reset == len(had_state)
    assert metrics.get('hup_events_total{outcome="state_reset_corrupt"}', 0.0) == 0.0
    # Every event M1 applied came again and was recognised by the carried input offset.
    assert metrics['hup_events_total{outcome="skipped_duplicate"}'] == n_events_before
    # After the switch: seq carries on from M1's count, the profiles equal M2's forward
    # pass over the events after the switch only.
    worst = 0.0
    by_user: dict[str, list[dict]] = {u: [] for u in users}
    for message in new:
        by_user[message["user_id"]].append(message)
    for user, got in by_user.items():
        expected = ref_after.profiles[user]
        seq_before = len(ref_before.profiles.get(user, []))
        assert [m["seq"] for m in got] == list(
            range(seq_before + 1, seq_before + len(expected) + 1)
        ), user
        for message, reference in zip(got, expected, strict=True):
            worst = max(worst, profile_diff(message, reference))
    assert worst < TOLERANCE
    print(
        f"\nrollout: {len(old)} profiles under {it_profiler.version}, {len(new)} under "
        f"{m2.version}, {reset:.0f} states reset, {n_events_before} redelivered events "
        f"skipped, {elapsed:.1f}s"
    )


def _wait_consumed(port: int, count: int, worker: WorkerProcess, timeout: float = 60.0) -> None:
    """Block until the worker has processed ``count`` input records and saved their state.

    Profiles are published before their state is saved (`HUP_SAVE_INTERVAL_S`): a kill
    before the save would make the next worker apply the events again, as it should.
    """
    deadline = time.monotonic() + timeout
    consumed, unsaved = 0.0, 0.0
    while time.monotonic() < deadline:
        samples = scrape(port)
        consumed = samples.get('hup_events_total{outcome="consumed"}', 0.0)
        unsaved = samples.get("hup_events_unsaved", 0.0)
        if consumed >= count and unsaved == 0:
            return
        time.sleep(0.2)
    raise AssertionError(
        f"worker consumed {consumed:.0f} of {count} records, {unsaved:.0f} not saved\n"
        f"{worker.log()}"
    )
