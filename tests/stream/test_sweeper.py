"""The worker's TTL sweep (HUP_STATE_TTL_S) against the store surface faust's RocksDB store has."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry

from state.codec import encode_state
from stream import sweeper as sweeper_module
from stream.metrics import Metrics
from stream.sweeper import TableSweeper, sweep_interval

NOW = 1_700_000_000.0
TTL = 3600.0
OFFSET_KEY = b"__faust\x00offset__"


class FakeDB(dict):
    """A partition database: sorted iteration, optionally from a key (rocksdict's ``items``)."""

    def items(self, from_key: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:  # type: ignore[override]
        for key in sorted(self):
            if from_key is None or key >= from_key:
                yield key, self[key]


class FakeStore:
    """faust's RocksDB store as the sweeper sees it: per-partition DBs and the offset key."""

    offset_key = OFFSET_KEY

    def __init__(self, dbs: dict[int, FakeDB]) -> None:
        self._dbs = dbs

    def __contains__(self, key: bytes) -> bool:
        return any(key in db for db in self._dbs.values())

    def __delitem__(self, key: bytes) -> None:
        for db in self._dbs.values():
            db.pop(key, None)


class FakeTable:
    def __init__(self, name: str, dbs: dict[int, FakeDB]) -> None:
        self.data = FakeStore(dbs)
        self.changelog_topic = SimpleNamespace(get_topic_name=lambda: f"app-{name}-changelog")
        self.sent: list[tuple[int, bytes, None, str]] = []

    def send_changelog(
        self, partition: int, key: bytes, value: None, value_serializer: str
    ) -> None:
        self.sent.append((partition, key, value, value_serializer))


def _state(last_ts: float) -> bytes:
    return encode_state({"last_ts": np.array(last_ts, dtype=np.float64)}, "hup-test")


def _setup(actives: set[int]) -> tuple[SimpleNamespace, FakeTable, FakeTable, Metrics]:
    state_dbs = {
        0: FakeDB({b"old0": _state(NOW - TTL - 1), b"new0": _state(NOW - 5), OFFSET_KEY: b"7"}),
        1: FakeDB({b"old1": _state(NOW - 10 * TTL), b"junk": b"not a state"}),
        2: FakeDB({b"old2": _state(NOW - 10 * TTL)}),  # a standby partition here
    }
    latest_dbs = {
        p: FakeDB({k: b"{}" for k in db if k != OFFSET_KEY}) for p, db in state_dbs.items()
    }
    state, latest = FakeTable("profile-state", state_dbs), FakeTable("latest-profile", latest_dbs)
    completed = asyncio.Event()
    completed.set()
    app = SimpleNamespace(
        rebalancing=False,
        tables=SimpleNamespace(recovery=SimpleNamespace(completed=completed)),
        assignor=SimpleNamespace(
            assigned_actives=lambda: {TP("app-profile-state-changelog", p) for p in actives}
        ),
    )
    metrics = Metrics(CollectorRegistry())
    metrics.set_users_in_state({p: len(state_dbs[p]) for p in actives})
    return app, state, latest, metrics


def test_idle_users_of_owned_partitions_go_with_tombstones_in_both_changelogs() -> None:
    app, state, latest, metrics = _setup({0, 1})
    sweeper = TableSweeper(app, state, latest, TTL, metrics, clock=lambda: NOW)
    asyncio.run(sweeper.run())

    dbs = state.data._dbs
    assert set(dbs[0]) == {b"new0", OFFSET_KEY}  # the idle user went, the offset key stays
    assert set(dbs[1]) == set()  # an unreadable state goes too
    assert set(dbs[2]) == {b"old2"}  # standby partitions are their owner's to sweep
    assert set(latest.data._dbs[0]) == {b"new0"} and set(latest.data._dbs[1]) == set()
    removed = {(0, b"old0", None, "raw"), (1, b"old1", None, "raw"), (1, b"junk", None, "raw")}
    assert set(state.sent) == removed and set(latest.sent) == removed
    registry = metrics.registry
    assert registry.get_sample_value("hup_state_expired_total") == 3
    assert registry.get_sample_value("hup_users_in_state", {"partition": "0"}) == 2


def test_the_sweep_goes_in_steps_and_stops_at_a_rebalance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweeper_module, "SWEEP_STEP", 2)
    app, state, latest, metrics = _setup({0})
    state.data._dbs[0].update({f"idle{i}".encode(): _state(0.0) for i in range(6)})
    sweeper = TableSweeper(app, state, latest, TTL, metrics, clock=lambda: NOW)
    assert asyncio.run(sweeper.sweep()) == 7
    assert set(state.data._dbs[0]) == {b"new0", OFFSET_KEY}

    state.data._dbs[0].update({f"idle{i}".encode(): _state(0.0) for i in range(6)})
    sent = state.send_changelog

    def rebalance_after_two(*args: object, **kwargs: object) -> None:
        sent(*args, **kwargs)
        if len(state.sent) == 9:
            app.rebalancing = True

    state.send_changelog = rebalance_after_two  # type: ignore[method-assign]
    assert asyncio.run(sweeper.sweep()) == 2  # the step's two, then no further step


def test_no_sweep_while_rebalancing_or_recovering() -> None:
    app, state, latest, metrics = _setup({0, 1})
    sweeper = TableSweeper(app, state, latest, TTL, metrics, clock=lambda: NOW)
    app.rebalancing = True
    assert asyncio.run(sweeper.sweep()) == 0
    app.rebalancing = False
    app.tables.recovery.completed.clear()
    assert asyncio.run(sweeper.sweep()) == 0
    assert state.sent == []


def test_a_failed_sweep_does_not_stop_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    app, state, latest, metrics = _setup({0})
    app.assignor = None  # anything that raises
    asyncio.run(TableSweeper(app, state, latest, TTL, metrics).run())
    assert "sweep failed" in caplog.text


def test_sweeps_come_every_tenth_of_the_ttl_within_bounds() -> None:
    assert sweep_interval(600) == 60
    assert sweep_interval(2) == 1
    assert sweep_interval(30 * 86_400) == 300
