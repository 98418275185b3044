"""Removing idle users from the worker's tables (HUP_STATE_TTL_S), with changelog tombstones.

A user whose last event (by event time, the state's ``last_ts``) is older than the TTL
is removed from the state table and the latest-profile table: deleted from the local
RocksDB partition and written to both changelogs as a tombstone (a record with no
value), so a worker that restores the partition from the changelog does not bring the
user back, and compaction drops the user's records for good. A user who returns later
starts with a fresh state (``seq`` restarts at 1).

Each worker sweeps only the partitions it owns (not its standbys), never while a
rebalance or recovery runs, in steps of `SWEEP_STEP` users with the event loop free in
between, so a large table does not stall consumption or heartbeats. A batch in flight
is safe: the sweep deletes only what the table holds when it looks, and a state that a
batch writes back after the tombstone comes after it in the changelog, so it stays.

What expiry cannot see: events of an expired user redelivered after a crash (within
the commit interval, far shorter than any sensible TTL) are applied again to the new
state. Replaying old data with its original times (``hup-stream produce --keep-ts``)
into a worker with a TTL expires those users as soon as they are idle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any, cast

import faust
from faust.tables.manager import TableManager

from state.expiry import is_expired, last_seen_from_state
from stream.metrics import Metrics

if TYPE_CHECKING:
    from stream.topics import Topics

__all__ = ["SWEEP_STEP", "TableSweeper", "install_sweeper", "sweep_interval"]

logger = logging.getLogger(__name__)

# Users read per step of a sweep before the event loop gets a turn (~15 ms of decoding).
SWEEP_STEP = 500


def sweep_interval(ttl_s: float) -> float:
    """Seconds between sweeps: a tenth of the TTL, within 1 s .. 5 min.

    A user is therefore removed at most a tenth of the TTL (or 5 minutes) late.
    """
    return min(max(ttl_s / 10.0, 1.0), 300.0)


class TableSweeper:
    """Sweeps the state table's active partitions for users idle longer than ``ttl_s``."""

    def __init__(
        self,
        app: faust.App,
        state: faust.Table,
        latest: faust.Table,
        ttl_s: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Bind the app (assignment, rebalancing), the two tables, the TTL and the metrics."""
        self.app = app
        self.state = state
        self.latest = latest
        self.ttl_s = ttl_s
        self.metrics = metrics
        self.clock = clock

    def _quiet(self) -> bool:
        """Whether the tables may be swept now: no rebalance, recovery complete."""
        if self.app.rebalancing:
            return False
        # TableManagerT does not declare `recovery`; faust's one implementation has it.
        return cast(TableManager, self.app.tables).recovery.completed.is_set()

    def _active_partitions(self) -> set[int]:
        topic = self.state.changelog_topic.get_topic_name()
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    def _partition_db(self, partition: int) -> Any | None:
        # faust's RocksDB store keeps one database per partition, with no public accessor.
        dbs = getattr(self.state.data, "_dbs", None)
        return dbs.get(partition) if isinstance(dbs, Mapping) else None

    async def sweep(self) -> int:
        """Remove every idle user of the owned partitions; return how many were removed."""
        if not self._quiet():
            return 0
        cutoff = self.clock() - self.ttl_s
        removed = 0
        for partition in sorted(self._active_partitions()):
            after: bytes | None = None
            while True:
                if not self._quiet() or partition not in self._active_partitions():
                    # A rebalance began: the partition may be gone; the next sweep resumes.
                    logger.info("expiry: sweep stopped by a rebalance, %d users removed", removed)
                    return removed
                db = self._partition_db(partition)
                if db is None:
                    break
                step = list(islice(self._entries(db, after), SWEEP_STEP))
                for key, value in step:
                    if is_expired(key, value, cutoff, last_seen_from_state):
                        self._remove(partition, key)
                        self.metrics.remove_user(partition)
                        removed += 1
                if len(step) < SWEEP_STEP:
                    break
                after = step[-1][0]
                await asyncio.sleep(0)  # let the agent, heartbeats and the web server run
        if removed:
            logger.info("expiry: removed %d users idle for more than %g s", removed, self.ttl_s)
        return removed

    def _entries(self, db: Any, after: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """The partition's (user key, state) pairs in key order, after ``after``."""
        offset_key = getattr(self.state.data, "offset_key", None)  # faust's changelog offset
        for key, value in db.items(from_key=after) if after is not None else db.items():
            if key == after or key == offset_key:
                continue
            yield key, value

    def _remove(self, partition: int, key: bytes) -> None:
        """Delete ``key`` from both tables and write a tombstone to both changelogs."""
        for table in (self.state, self.latest):
            store = table.data
            if key in store:
                del store[key]
            # The send is awaited by the agent's next `ConfirmedTable.confirm`; a tombstone
            # lost in a crash leaves the user in the changelog, and the next sweep of the
            # restored partition removes it again.
            table.send_changelog(partition, key, None, value_serializer="raw")

    async def run(self) -> None:
        """One timer tick: sweep, and never let a failed sweep stop the worker."""
        try:
            removed = await self.sweep()
        except Exception:  # expiry is housekeeping: log it, the next tick tries again
            logger.warning("expiry: sweep failed; retrying at the next interval", exc_info=True)
            return
        self.metrics.state_expired.inc(removed)


def install_sweeper(app: faust.App, topics: Topics, ttl_s: float, metrics: Metrics) -> TableSweeper:
    """Sweep ``topics.state`` (and ``topics.latest``) every `sweep_interval` seconds."""
    sweeper = TableSweeper(app, topics.state, topics.latest, ttl_s, metrics)
    app.timer(sweep_interval(ttl_s))(sweeper.run)
    logger.info(
        "expiry: users idle for %g s are removed (sweep every %g s)", ttl_s, sweep_interval(ttl_s)
    )
    return sweeper
