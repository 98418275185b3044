"""What the worker reports: Prometheus metrics, and log lines a flood cannot multiply.

The metrics are built on an injected registry (never the global one). A producer gone
wrong can send thousands of bad records a second; one WARNING line per dead letter
would then bury every other line of the worker's log (and cost more than the dead
letters). The counts stay exact in the metrics (``hup_events_total{outcome="dlq"}`` and
``over_limit_*``); the log keeps examples and says how many it left out
(`RateLimitedLog`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import cast

import faust
from faust.transport.consumer import Consumer
from faust.types import TableT
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from state.store import KeyValue
from stream.processor import BatchResult, OutputProfile

__all__ = [
    "DEAD_LETTER_LINES",
    "DEAD_LETTER_WINDOW_S",
    "LAG_INTERVAL_S",
    "MeteredKeyValue",
    "Metrics",
    "RateLimitedLog",
    "consumer_lag",
    "install_metric_updates",
    "users_by_partition",
]

logger = logging.getLogger(__name__)

# Event time to publish spans producer delay, batching and the model step; the
# profile is "real time" when it lands in the sub-second buckets.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# An encoded HUP state is a few KiB (item/category windows of a few hundred floats).
_STATE_BUCKETS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
# How often the consumer lag is refreshed: cheap (no broker round trip), and a
# Prometheus scrape every 5-15 s sees a value at most this old.
LAG_INTERVAL_S = 5.0


class Metrics:
    """Every metric the worker exports. Labels never carry user ids, only partitions."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register the metrics on ``registry`` (one registry per app, so tests can make many)."""
        self.registry = registry
        self.events = Counter(
            "hup_events",
            "Input records by outcome: consumed, applied, skipped_duplicate, dlq, dropped_*, "
            "state_reset_*; oov_item, oov_category and clamped_gap flag applied events.",
            ["outcome"],
            registry=registry,
        )
        self.profiles_published = Counter(
            "hup_profiles_published", "Profiles delivered to the output topic.", registry=registry
        )
        self.output_records = Counter(
            "hup_output_records",
            "Records of the output producer (profiles, dead letters) by result: delivered, "
            "or failed (the batch is not acked and the worker stops).",
            ["result"],
            registry=registry,
        )
        self.event_to_profile = Histogram(
            "hup_event_to_profile_seconds",
            "From the event's own timestamp to the delivery of its profile.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.processing = Histogram(
            "hup_processing_seconds",
            "From consuming the event to the delivery of its profile.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.model_step = Histogram(
            "hup_model_step_seconds",
            "Model time per batch (featurize and step, all waves).",
            buckets=_STEP_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "hup_batch_size", "Records per batch.", buckets=_BATCH_BUCKETS, registry=registry
        )
        self.batch_stage = Histogram(
            "hup_batch_stage_seconds",
            "Time of each stage: process, per batch (validate, state, model, ranking, send "
            "the outputs); per save: deliver (wait for the outputs' delivery reports), write "
            "(the latest-profile and state tables), confirm (wait until the broker has the "
            "changelogs).",
            ["stage"],
            buckets=_STEP_BUCKETS,
            registry=registry,
        )
        self.model = Info("hup_model", "The loaded model checkpoint.", registry=registry)
        self.users_in_state = Gauge(
            "hup_users_in_state",
            "Users with a stored state in an assigned input partition: counted once per "
            "rebalance, then raised by each user seen for the first time.",
            ["partition"],
            registry=registry,
        )
        self.state_size = Histogram(
            "hup_state_size_bytes",
            "Encoded size of each user state written to the table (and its changelog).",
            buckets=_STATE_BUCKETS,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "hup_consumer_lag",
            "Input records of an assigned partition not committed yet: high watermark "
            "minus committed offset (under-reported on tansu, docs/operations.md).",
            ["partition"],
            registry=registry,
        )
        self.state_expired = Counter(
            "hup_state_expired",
            "Users removed from the state and latest-profile tables for being idle longer "
            "than HUP_STATE_TTL_S (by event time), each with a changelog tombstone.",
            registry=registry,
        )
        self.offset_gaps = Counter(
            "hup_offset_gaps",
            "Holes in the input offsets the agent received: action=reread, read again "
            "from the hole (a non-transactional topic is never committed over); "
            "action=committed, transaction markers committed over (HUP_INPUT_TRANSACTIONAL=1).",
            ["action"],
            registry=registry,
        )
        for action in ("reread", "committed"):  # exported at 0, so panels and alerts see them
            self.offset_gaps.labels(action)
        self.events_unsaved = Gauge(
            "hup_events_unsaved",
            "Input records handled whose state is not saved yet, so not acked either: the "
            "records a crash would make the worker consume again (at most about "
            "HUP_SAVE_INTERVAL_S of input).",
            registry=registry,
        )
        self.acks_refused = Counter(
            "hup_acks_refused",
            "Acks of input records the agent never processed, refused so their offsets stay "
            "uncommitted (faust skips records around rebalances and at shutdown).",
            registry=registry,
        )
        # Partitions that carry a label now, so a revoked partition's series is removed.
        self._labelled: dict[str, set[int]] = {"users": set(), "lag": set()}

    def set_model(self, version: str, path: str) -> None:
        """Record which checkpoint the worker runs."""
        self.model.info({"version": version, "path": path})

    def observe_batch(self, size: int, result: BatchResult) -> None:
        """Count a processed batch's outcomes and model time."""
        self.batch_size.observe(size)
        self.model_step.observe(result.step_seconds)
        for outcome, count in result.outcomes.items():
            if count:
                self.events.labels(outcome).inc(count)

    def observe_published(self, profiles: Iterable[OutputProfile], now: float) -> None:
        """Count profiles delivered at wall-clock ``now`` and their latencies."""
        n = 0
        for profile in profiles:
            n += 1
            self.event_to_profile.observe(max(0.0, now - profile.event_ts))
            if profile.received_ts:
                self.processing.observe(max(0.0, now - profile.received_ts))
        self.profiles_published.inc(n)

    def set_users_in_state(self, counts: Mapping[int, int]) -> None:
        """Replace the per-partition user counts (partitions not in ``counts`` are dropped)."""
        self._replace(self.users_in_state, "users", counts)

    def add_user(self, partition: int) -> None:
        """Count a user whose first state was just written to ``partition``."""
        self.users_in_state.labels(str(partition)).inc()
        self._labelled["users"].add(partition)

    def remove_user(self, partition: int) -> None:
        """Count a user whose state was removed from ``partition`` (expiry)."""
        if partition in self._labelled["users"]:
            self.users_in_state.labels(str(partition)).dec()

    def set_consumer_lag(self, lags: Mapping[int, int]) -> None:
        """Replace the per-partition lag (partitions not in ``lags`` are dropped)."""
        self._replace(self.consumer_lag, "lag", lags)

    def _replace(self, gauge: Gauge, name: str, values: Mapping[int, int]) -> None:
        for partition in self._labelled[name] - set(values):
            gauge.remove(str(partition))
        for partition, value in values.items():
            gauge.labels(str(partition)).set(value)
        self._labelled[name] = set(values)


class MeteredKeyValue:
    """A `KeyValue` that meters the state writes going through it.

    Placed under the agent's `BatchStore`, it sees each user's read once per batch
    and only the writes that are committed. A user whose read found nothing and
    who is then written is new to its partition: `hup_users_in_state` rises by one,
    so the gauge stays current without scanning the table.
    """

    def __init__(
        self, backing: KeyValue, partitions: Mapping[bytes, int], metrics: Metrics
    ) -> None:
        """Wrap ``backing``; ``partitions`` maps each user key of the batch to its partition."""
        self._backing = backing
        self._partitions = partitions
        self._metrics = metrics
        self._absent: set[bytes] = set()

    def get(self, key: bytes) -> bytes | None:
        """The stored value, remembering keys that have none."""
        value = self._backing.get(key)
        if value is None:
            self._absent.add(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        """Write through, observing the state's size and counting a new user."""
        self._backing.put(key, value)
        self._metrics.state_size.observe(len(value))
        if key in self._absent:
            self._absent.discard(key)
            partition = self._partitions.get(key)
            if partition is not None:
                self._metrics.add_user(partition)


def users_by_partition(table: TableT) -> dict[int, int] | None:
    """Count the stored users of each active partition of ``table``, or None if unknown.

    Walks every key of the active partitions, so it is meant for once per rebalance
    (faust calls the table's recover callbacks with the input partitions still
    paused), not per event. Only faust's RocksDB store keeps one database per
    partition; on other stores the count is unknown.
    """
    store = table.data
    # faust's RocksDB store has no public per-partition view: read its DB map.
    dbs = getattr(store, "_dbs", None)
    if not isinstance(dbs, Mapping):
        return None
    topic = table.changelog_topic.get_topic_name()
    actives = {tp.partition for tp in table.app.assignor.assigned_actives() if tp.topic == topic}
    # The store keeps its changelog offset under this key in each partition DB.
    offset_key = getattr(store, "offset_key", None)
    counts = {}
    for partition in actives:
        db = dbs.get(partition)
        counts[partition] = 0 if db is None else sum(1 for k in db.keys() if k != offset_key)
    return counts


def consumer_lag(app: faust.App, topic: str) -> dict[int, int]:
    """Per assigned partition of ``topic``: high watermark minus committed offset.

    Both come from the consumer's own bookkeeping, without a broker round trip:
    the high watermark from the last fetch response, the committed offset from
    the group at each rebalance and from each commit since. A partition whose
    high watermark is not known yet (nothing fetched) is left out. On tansu the
    high watermark after a multi-record batch is too low (docs/broker-notes.md,
    T1), so the lag is under-reported there; it is clamped at 0, not corrected.
    """
    consumer = cast(Consumer, app.consumer)
    # The consumer's record, not app.monitor's: that one is stale after a rebalance.
    committed = consumer._committed_offset  # noqa: SLF001
    lags = {}
    for tp in consumer.assignment():
        if tp.topic != topic:
            continue
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        # None: the group has no committed offset (or it is 0); it reads from the start.
        lags[tp.partition] = max(0, highwater - (committed.get(tp) or 0))
    return lags


def install_metric_updates(app: faust.App, table: TableT, topic: str, metrics: Metrics) -> None:
    """Refresh the gauges faust knows: users per partition after recovery, lag on a timer."""

    @table.on_recover
    async def count_users() -> None:
        counts = users_by_partition(table)
        if counts is not None:
            metrics.set_users_in_state(counts)

    @app.timer(LAG_INTERVAL_S)
    async def refresh_lag() -> None:
        try:
            metrics.set_consumer_lag(consumer_lag(app, topic))
        except Exception as exc:  # a metric must never stop the worker
            # Mid-rebalance the consumer may refuse (partition not assigned, not started).
            logger.debug("consumer lag not refreshed: %r", exc)


# At most this many dead-letter lines per window, then one summary line per window.
DEAD_LETTER_LINES = 10
DEAD_LETTER_WINDOW_S = 60.0


class RateLimitedLog:
    """At most ``lines`` lines per ``window_s`` seconds on ``logger``; the rest are counted.

    When a window with left-out lines has passed, the next call first logs how many were
    left out, so a quiet period after a flood still reports it once the next line comes.
    """

    def __init__(
        self,
        logger: logging.Logger,
        level: int = logging.WARNING,
        *,
        lines: int = DEAD_LETTER_LINES,
        window_s: float = DEAD_LETTER_WINDOW_S,
        what: str = "lines",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Bind the logger; ``what`` names the left-out lines in the summary."""
        self._logger = logger
        self._level = level
        self._lines = lines
        self._window_s = window_s
        self._what = what
        self._clock = clock
        self._window_start = clock()
        self._logged = 0
        self.suppressed = 0  # left out in the current window

    def log(self, message: str, *args: object) -> None:
        """Log ``message % args`` unless this window has had its lines."""
        now = self._clock()
        if now - self._window_start >= self._window_s:
            if self.suppressed:
                self._logger.log(
                    self._level,
                    "%d more %s not logged in the last %.0f s (the metrics count them all)",
                    self.suppressed,
                    self._what,
                    now - self._window_start,
                )
            self._window_start, self._logged, self.suppressed = now, 0, 0
        if self._logged < self._lines:
            self._logged += 1
            self._logger.log(self._level, message, *args)
        else:
            self.suppressed += 1
