"""The guarded batch loop: how an agent takes its events, each acked only once handled.

`consume_guarded` puts the guards of faust's at-least-once holes (docs/broker-notes.md,
F5) around an agent's batches: the stream's queue survives the resume after a rebalance
(`stream.guards.acks.keep_queue_on_resume`), offsets count as committable only once
handled (`stream.guards.acks.AckGuard`), events fetched before a revoke are released
rather than handled (`stream.guards.fence.RebalanceFence`), and events behind a hole in
a partition's offsets are released and the partition read again from the hole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Protocol, cast

import faust
from faust.types import TP, EventT
from prometheus_client import Counter, Gauge

from stream.guards.acks import AckGuard, PersistentHoleError, keep_queue_on_resume
from stream.guards.fence import RebalanceFence
from stream.guards.take import take_flowing

__all__ = [
    "BatchHandler",
    "BatchSettings",
    "GuardCounters",
    "Handler",
    "Take",
    "acked_per_batch",
    "consume_guarded",
]

logger = logging.getLogger(__name__)

# Handles one batch: ``handle(events, still_owned)`` returns whether it finished it.
Handler = Callable[[list[EventT], Callable[[], bool]], Awaitable[bool]]
# Takes batches of a stream: ``take(stream, max_, within, idle)`` (`take_flowing`).
Take = Callable[[faust.Stream[bytes], int, float, float], AsyncIterator[list[EventT]]]


class BatchHandler(Protocol):
    """An agent's work in two steps: each batch handled, then what batches staged saved.

    The events of handled batches are acked only after the save that follows them, so a
    handler may keep their results in memory (staged) and make them durable once for
    several batches. A save runs beside the next batches.
    """

    async def handle(self, events: list[EventT], still_owned: Callable[[], bool]) -> bool:
        """Handle a batch and stage its results; False: dropped, nothing of it staged."""
        ...

    def due(self) -> bool:
        """Whether what is staged should be saved now."""
        ...

    def save(self, still_owned: Callable[[], bool]) -> Awaitable[bool]:
        """Take what is staged now; the awaitable saves it and says whether it did.

        False: dropped unwritten, and with it everything staged since (the partitions
        are not this worker's any more, or it is stopping).
        """
        ...

    def hurry(self) -> None:
        """Finish the running save as fast as it can: something waits for it."""
        ...

    def drop(self) -> None:
        """Forget everything staged and any save's unwritten part: their events are released."""
        ...


class _EachBatch:
    """A `Handler` as a `BatchHandler` that stages nothing: its events are acked at once."""

    def __init__(self, handle: Handler) -> None:
        self._handle = handle

    async def handle(self, events: list[EventT], still_owned: Callable[[], bool]) -> bool:
        return await self._handle(events, still_owned)

    def due(self) -> bool:
        return True

    def save(self, still_owned: Callable[[], bool]) -> Awaitable[bool]:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        done.set_result(True)  # nothing to save: the events are acked right away
        return done

    def hurry(self) -> None:
        return

    def drop(self) -> None:
        return


def acked_per_batch(handle: Handler) -> BatchHandler:
    """``handle`` as a `BatchHandler` whose events are acked as soon as it finishes a batch."""
    return _EachBatch(handle)


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
    events_unsaved: Gauge  # events handled and not acked yet (held or being saved)


async def consume_guarded(
    app: faust.App,
    source: faust.Stream[bytes],
    settings: BatchSettings,
    handler: BatchHandler,
    *,
    metrics: GuardCounters | None = None,
    transactional: bool = False,
    take: Take = take_flowing,
) -> None:
    """Feed ``source``'s batches to ``handler``; ack each event only once it is saved.

    ``handler.handle(events, still_owned)`` returns whether it took the batch; False leaves
    the events unacked for the partitions' next owner (``still_owned()`` tells it whether
    this worker still owns them). Handled events are held, unacked, until a save of what
    they staged succeeds. A save starts when ``handler.due()`` says so after a batch or
    while the input is quiet (and no save runs), and runs beside the next batches; its
    events are acked, in order, at the first batch after it finished. Before this
    worker gives partitions up (within the fence's wait), and before a failing batch's
    error stops the agent, the running save is finished and what is held is saved (the
    batches before the failing one stand). A save that is dropped releases its events
    and every event held since, unacked. A hole is read again unless the topic is
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
    saves = _Saves(
        guard, source, handler, fence, metrics.events_unsaved if metrics is not None else None
    )
    fence.before_revoke(saves.drain_before_revoke)
    # Events, never acked by the take (faust's take_events acks a batch even when the
    # body raises, broker notes F4): here a batch is acked only once it is saved.
    batches = take(source, settings.batch_size, settings.batch_within_s, settings.batch_idle_s)
    try:
        async for taken in batches:
            async with fence.batch() as epoch:
                await saves.settle()
                if saves.held and saves.epoch != epoch:
                    await saves.drain()  # staged before a revoke that did not wait: dropped
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
                if events:
                    owned = partial(fence.may_write, epoch, {e.message.tp for e in events})
                    try:
                        taken_ok = await handler.handle(events, owned)
                    except Exception:
                        await saves.drain()  # the batches before the failing one stand
                        raise
                    if not taken_ok:
                        for event in events:
                            guard.abandon(event)
                        continue
                    saves.hold(events, epoch)
                if saves.held and handler.due():
                    await saves.start()
    finally:
        saves.cancel()


class _Saves:
    """Events handled but not acked yet: held until a save takes them, then the save's."""

    def __init__(
        self,
        guard: AckGuard,
        source: faust.Stream[bytes],
        handler: BatchHandler,
        fence: RebalanceFence,
        unsaved: Gauge | None = None,
    ) -> None:
        self._guard = guard
        self._unsaved = unsaved
        self._source = source
        self._handler = handler
        self._fence = fence
        self.held: list[EventT] = []
        self.epoch = fence.epoch  # the epoch the held events were taken in
        self._tps: set[TP] = set()
        self._running: tuple[asyncio.Future[bool], list[EventT]] | None = None

    def hold(self, events: list[EventT], epoch: int) -> None:
        """Hold a handled batch's events (all held events share the epoch they began in)."""
        self.held += events
        self._tps.update(e.message.tp for e in events)
        if self._unsaved is not None:
            self._unsaved.inc(len(events))
        self.epoch = epoch

    async def start(self) -> None:
        """Start saving what the held events staged, unless a save runs."""
        if self._running is None and self.held:
            events, tps = self.held, self._tps
            self.held, self._tps = [], set()
            owned = partial(self._fence.may_write, self.epoch, tps)
            self._running = (asyncio.ensure_future(self._handler.save(owned)), events)
            await self.settle()  # a save with nothing to write is done already

    async def settle(self) -> None:
        """Ack the events of a save that finished, or release them; raise its error."""
        if self._running is None or not self._running[0].done():
            return
        save, events = self._running
        self._running = None
        try:
            saved = save.result()
        except BaseException:
            self._drop(events)
            raise
        if saved:
            for event in events:
                await self._guard.processed(event)
                await self._source.ack(event)
            if self._unsaved is not None:
                self._unsaved.dec(len(events))
        else:
            self._drop(events)

    async def drain(self) -> None:
        """Finish the running save, then save what is held and finish that too."""
        if self._running is not None:
            self._handler.hurry()
            await asyncio.wait([self._running[0]])
            await self.settle()
        if self.held:
            await self.start()
            if self._running is not None:
                self._handler.hurry()
                await asyncio.wait([self._running[0]])
                await self.settle()

    async def drain_before_revoke(self, seconds: float) -> None:
        """`drain`, bounded by ``seconds``; the fence runs it when partitions are revoked."""
        try:
            await asyncio.wait_for(self.drain(), seconds)
        except Exception:  # the revoke must go on: the events are released, not lost
            logger.exception(
                "saving before a revoke failed; its events are consumed again from the "
                "committed offsets"
            )
            self.cancel()

    def cancel(self) -> None:
        """Stop a running save and release every event not acked (the agent stops)."""
        events: list[EventT] = []
        if self._running is not None:
            save, events = self._running
            self._running = None
            save.cancel()
        self._drop(events)

    def _drop(self, events: list[EventT]) -> None:
        """Release ``events`` and every held event: a dropped save drops all staged since."""
        self._handler.drop()
        released = [*events, *self.held]
        for event in released:
            self._guard.abandon(event)
        if self._unsaved is not None:
            self._unsaved.dec(len(released))
        self.held, self._tps = [], set()
