"""The guarded batch loop: how an agent takes its events, each acked only once handled.

`consume_guarded` puts the guards of faust's at-least-once holes (docs/broker-notes.md,
F5) around an agent's batches: the stream's queue survives the resume after a rebalance
(`stream.guards.acks.keep_queue_on_resume`), offsets count as committable only once
handled (`stream.guards.acks.AckGuard`), events fetched before a revoke are released
rather than handled (`stream.guards.fence.RebalanceFence`), and events behind a hole in
a partition's offsets are released and the partition read again from the hole.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Protocol, cast

import faust
from faust.types import EventT
from prometheus_client import Counter

from stream.guards.acks import AckGuard, PersistentHoleError, keep_queue_on_resume
from stream.guards.fence import RebalanceFence
from stream.guards.take import take_flowing

__all__ = ["BatchSettings", "GuardCounters", "Handler", "Take", "consume_guarded"]

logger = logging.getLogger(__name__)

# Handles one batch: ``handle(events, still_owned)`` returns whether it finished it.
Handler = Callable[[list[EventT], Callable[[], bool]], Awaitable[bool]]
# Takes batches of a stream: ``take(stream, max_, within, idle)`` (`take_flowing`).
Take = Callable[[faust.Stream[bytes], int, float, float], AsyncIterator[list[EventT]]]


class BatchSettings(Protocol):
    """How batches are taken (`stream.settings.Settings` has these)."""

    @property
    def batch_size(self) -> int:
        """The most events of one batch."""
        ...

    @property
    def batch_within_s(self) -> float:
        """The longest a batch waits to fill, in seconds."""
        ...

    @property
    def batch_idle_s(self) -> float:
        """A batch closes once no event has arrived for this long, in seconds."""
        ...


class GuardCounters(Protocol):
    """The counters the guards feed (`stream.metrics.Metrics` has them)."""

    acks_refused: Counter  # acks of events faust skipped unprocessed
    offset_gaps: Counter  # holes found, by action: "reread" or "committed"


async def consume_guarded(
    app: faust.App,
    source: faust.Stream[bytes],
    settings: BatchSettings,
    handle: Handler,
    *,
    metrics: GuardCounters | None = None,
    transactional: bool = False,
    take: Take = take_flowing,
) -> None:
    """Feed ``source``'s batches to ``handle`` and ack each event only once it is handled.

    ``handle(events, still_owned)`` returns whether it finished the batch; False leaves
    the events unacked for the partitions' next owner (``still_owned()`` tells it whether
    this worker still owns them). A hole is read again unless the topic is
    ``transactional`` (`stream.guards.acks`). ``metrics`` counts refused acks and holes.
    ``take`` forms the batches (`stream.guards.take.take_flowing`).

    Raises:
        PersistentHoleError: A hole could not be read again (`stream.guards.acks`).
    """
    keep_queue_on_resume(app, source)
    topic = cast(faust.types.TopicT, source.channel).get_topic_name()
    guard = AckGuard(
        app.consumer,
        [topic],
        transactional=transactional,
        on_refused=metrics.acks_refused.inc if metrics is not None else None,
        on_hole=(lambda action: metrics.offset_gaps.labels(action).inc())
        if metrics is not None
        else None,
    )
    app.on_partitions_revoked.connect(guard.on_partitions_revoked)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(guard.on_partitions_assigned)  # type: ignore[arg-type]
    fence = RebalanceFence(app, source)
    # Events, never acked by the take (faust's take_events acks a batch even when the
    # body raises, broker notes F4): here a batch is acked only once it is done.
    batches = take(source, settings.batch_size, settings.batch_within_s, settings.batch_idle_s)
    async for taken in batches:
        async with fence.batch() as epoch:
            events: list[EventT] = []
            stale: list[EventT] = []
            for event in taken:
                (events if fence.current(event) else stale).append(event)
            if stale:
                # Fetched before this worker gave partitions up: the seek that ended
                # that rebalance fetches them again for the partitions' owner.
                for event in stale:
                    guard.abandon(event)
                logger.info(
                    "released %d events fetched before a rebalance; they are consumed "
                    "again from the committed offset",
                    len(stale),
                )
            if app.should_stop and events:
                # Nothing of this batch would be saved (`RebalanceFence.may_write`), and
                # its offsets follow those of a batch left unacked for the same reason,
                # which is no hole: release it for the next start without a re-read.
                for event in events:
                    guard.abandon(event)
                continue
            events, holes = guard.split(events)
            if holes:
                # Never processed past, never committed over: read again from the hole.
                try:
                    await guard.reread(holes)
                except PersistentHoleError as exc:
                    logger.error("%s; the worker stops", exc)
                    raise
            if not events:
                continue
            tps = {e.message.tp for e in events}
            if not await handle(events, partial(fence.may_write, epoch, tps)):
                for event in events:
                    guard.abandon(event)
                continue
            for event in events:
                await guard.processed(event)
                await source.ack(event)
