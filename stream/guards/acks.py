"""Only offsets the agent processed may be committed: a guard on faust's consumer acks.

faust 0.15.3 makes offsets committable in two ways the agent does not control, and
each lost events (docs/broker-notes.md, F5):

- it *acks* a message it skips, one that reaches a stream while flow control is
  suspended or that was fetched in an earlier consumer generation (around every
  rebalance and at shutdown; ``Stream._py_aiter``: "ack the filtered out message
  otherwise the lag would increase"). The next owner of the partition then starts
  after an event that no one processed;
- its fetch loop marks every jump in the offsets it *reads* as a gap to commit over
  (meant for transaction markers). Its read position is reset by the seek that ends
  a rebalance while the fetch loop is still handing over records fetched before it,
  and resuming flow control then empties the stream's queue: records already handed
  over but not yet taken are dropped, and the jump from the reset position to the
  next record marks them as a gap, committable as if processed. Under load, a
  SIGKILL of the worker then loses events.

The guard refuses the ack of any message on the guarded topics that the agent did
not mark as processed (counted in ``hup_acks_refused_total``), and ignores faust's
gaps on those topics. A refused offset stays uncommitted; the rebalance that caused
the skip seeks the partition back to the committed offset, so the event is fetched
again and processed (or skipped by its offset if its state already has it).

A *hole*, an offset the agent never saw between two it did (or between the committed
offset a partition is read from after an assignment and the first event the agent
sees of it), is never committed over
on a non-transactional topic, where every offset holds a record: `AckGuard.split`
holds back the partition's events from the hole on, unprocessed and unacked, and
`AckGuard.reread` seeks the partition back to the hole, so its records are fetched
again (``hup_offset_gaps_total{action="reread"}``). Processing past the hole would
lose its events for good: the processor skips an event at or below its user's last
applied offset. A hole that is still there `PERSISTENT_HOLE_S` after it was first
re-read cannot be read (records removed by retention, or a transactional producer
on a topic configured as non-transactional); the worker stops with an error naming
the offsets (`PersistentHoleError`) rather than commit over them. On a
transactional topic (``HUP_INPUT_TRANSACTIONAL=1``) commit markers and aborted
records take offsets the consumer never returns, so a hole is marked as a gap once
the agent has processed the records on both sides of it, and logged
(``action="committed"``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import faust
from faust.channels import Channel
from faust.types import TP, ConsumerT, EventT, Message

__all__ = ["PERSISTENT_HOLE_S", "AckGuard", "Hole", "PersistentHoleError", "keep_queue_on_resume"]

logger = logging.getLogger(__name__)

# faust's consumer method that marks offsets [start, end] as a gap to commit over.
AddGap = Callable[[TP, int, int], Awaitable[None]]

# How long a hole may stay after its first re-read before the worker gives up on it.
# A re-read normally fills it within one fetch; records faust had already fetched
# past the hole can make it seek a few times more, for well under a second.
PERSISTENT_HOLE_S = 60.0


class PersistentHoleError(RuntimeError):
    """A hole in a non-transactional input partition could not be read again."""


@dataclass
class Hole:
    """A partition's events held back in one batch, and whether the partition must be read again.

    ``start`` is the partition's first offset not processed. ``reread`` is False when the
    batch's last event of the partition continued from the processed offsets: the held
    events were fetched before a re-read's seek, and the re-read in progress, which
    the batch already drew from, brings them again.
    """

    start: int
    events: list[EventT] = field(default_factory=list)
    reread: bool = True


class AckGuard:
    """Wraps ``consumer.ack`` and faust's gap marking so unprocessed messages of ``topics`` never count."""

    def __init__(
        self,
        consumer: ConsumerT,
        topics: Iterable[str],
        *,
        transactional: bool = False,
        on_refused: Callable[[], None] | None = None,
        on_hole: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Install the guard on ``consumer`` (replacing ``ack`` and ``_add_gap`` on the instance).

        Args:
            consumer: faust's consumer.
            topics: The agent's topics; messages of other topics pass untouched.
            transactional: The topics are written by transactional producers, whose
                markers leave holes that are committed over once both sides are processed.
            on_refused: Called for each refused ack (the metric).
            on_hole: Called once per hole found, with ``"reread"`` or ``"committed"``.
            clock: Monotonic seconds, for `PERSISTENT_HOLE_S`.
        """
        self._consumer = consumer
        self.topics = frozenset(topics)
        self.transactional = transactional
        self.refused = 0
        self.holes = 0
        self._on_refused = on_refused
        self._on_hole = on_hole
        self._clock = clock
        self._processed: set[tuple[TP, int]] = set()
        self._last_processed: dict[TP, int] = {}
        # The last offset per partition handed to the agent by `split`: events are
        # processed some batches before they are marked processed (at the commit).
        self._last_taken: dict[TP, int] = {}
        # Per partition with a hole being re-read: its first offset and when it was found.
        self._open_holes: dict[TP, tuple[int, float]] = {}
        # Partitions assigned at the last assignment and not revoked since.
        self._held: set[TP] = set()
        self._ack: Callable[[Message], bool] = consumer.ack
        consumer.ack = self._guarded_ack  # type: ignore[method-assign]
        # faust 0.15 internals (checked by stream.guards.internals): the fetch loop looks the
        # method up on the instance.
        self._add_gap: AddGap = consumer._add_gap  # type: ignore[attr-defined]  # noqa: SLF001
        consumer._add_gap = self._guarded_add_gap  # type: ignore[attr-defined]  # noqa: SLF001
        # faust's `perform_seek` (after every assignment's recovery) looks this up on the
        # instance too; its result says where each partition's next record must be.
        self._seek_to_committed: Callable[[], Awaitable[Mapping[Any, int | None]]] = (
            consumer.seek_to_committed  # type: ignore[attr-defined]
        )
        consumer.seek_to_committed = self._guarded_seek_to_committed  # type: ignore[attr-defined]

    def split(self, events: Sequence[EventT]) -> tuple[list[EventT], dict[TP, Hole]]:
        """Separate the events the agent may process from those behind a hole.

        ``events`` are in the order faust fetched them. An event is processed when it
        continues its partition (its offset is the next one: one past the last
        processed, or past the last event taken, in this batch or an earlier one whose
        commit is pending) or repeats an earlier offset (a
        redelivery, which the processor skips by offset). An event further on is held
        back, and the partition's later events of the batch are still taken when they
        continue it: after a re-read's seek the stream's queue holds, one after the
        other, the records fetched before the seek (further on, held back) and the
        records read again from the hole (continuing), often in one batch. Holding
        back every event after the first one further on would drop the re-read's
        first records with the stale ones, seek again, and never reach the hole.

        A partition needs a re-read (``Hole.reread``) when nothing after its last held
        event of the batch continued it (redeliveries do not). When a later event did,
        the held events come again with the re-read in progress. On a transactional
        topic nothing is held back.

        Returns:
            The events to process, in order, and the held-back events, per partition.
        """
        if self.transactional:
            return list(events), {}
        ready: list[EventT] = []
        holes: dict[TP, Hole] = {}
        expected: dict[TP, int] = {tp: last + 1 for tp, last in self._last_processed.items()}
        for tp, last in self._last_taken.items():
            expected[tp] = max(expected.get(tp, 0), last + 1)
        last_held: dict[TP, bool] = {}
        for event in events:
            message = event.message
            tp, offset = message.tp, message.offset
            if tp.topic not in self.topics:
                ready.append(event)
                continue
            nxt = expected.get(tp)
            if nxt is not None and offset > nxt:
                holes.setdefault(tp, Hole(nxt)).events.append(event)
                last_held[tp] = True
                continue
            ready.append(event)
            if nxt is None or offset >= nxt:  # continues it (not a redelivery)
                last_held[tp] = False
            expected[tp] = offset + 1 if nxt is None else max(offset + 1, nxt)
            open_hole = self._open_holes.get(tp)
            if open_hole is not None and offset >= open_hole[0]:
                del self._open_holes[tp]  # the re-read reached the hole
                logger.info(
                    "%s[%d]@%d read again after a hole", tp.topic, tp.partition, open_hole[0]
                )
        for tp, hole in holes.items():
            hole.start = expected[tp]
            hole.reread = last_held[tp]
        for tp, nxt in expected.items():
            self._last_taken[tp] = nxt - 1
        return ready, holes

    async def reread(self, holes: dict[TP, Hole]) -> None:
        """Release the events held back by ``holes``; seek back to the hole where needed.

        A partition whose re-read is in progress (``Hole.reread`` False) is not sought
        again: a seek makes faust fetch the partition's rest once more.

        Raises:
            PersistentHoleError: A hole is still there `PERSISTENT_HOLE_S` after its
                first re-read: the records cannot be fetched again.
        """
        now = self._clock()
        assigned = self._consumer.assignment()
        for tp, hole in holes.items():
            for event in hole.events:
                self.abandon(event)
            if not hole.reread:
                continue
            last = min(e.message.offset for e in hole.events if e.message.offset > hole.start) - 1
            seen = self._open_holes.get(tp)
            if seen is None or seen[0] != hole.start:
                self._open_holes[tp] = (hole.start, now)
                self._found_hole("reread")
                logger.warning(
                    "%s[%d]@%d..%d never reached the agent; reading the partition again "
                    "from %d (the records after the hole are not committed over)",
                    tp.topic,
                    tp.partition,
                    hole.start,
                    last,
                    hole.start,
                )
            elif now - seen[1] > PERSISTENT_HOLE_S:
                raise PersistentHoleError(
                    f"{tp.topic}[{tp.partition}]@{hole.start}..{last} could not be read "
                    f"again in {PERSISTENT_HOLE_S:.0f} s; the worker does not commit over "
                    "input it never processed. If the topic is written by transactional "
                    "producers set HUP_INPUT_TRANSACTIONAL=1; if retention removed the "
                    "records, move the group's offset past them (kafka-consumer-groups "
                    "--reset-offsets) and restart"
                )
            if tp in assigned:
                await self._consumer.seek(tp, hole.start)

    def read_from(self, offsets: Mapping[Any, int | None]) -> None:
        """The partitions are read from these (committed) offsets: the next record of each.

        Without it the first event of a partition after an assignment has nothing to
        continue, and records that never reach the agent between the committed offset
        and that event would be committed over unseen. A partition with no committed
        offset (``None`` or negative: the reset policy decides) has no known start;
        neither has a partition first assigned to this worker until then.
        """
        for key, offset in offsets.items():
            tp = TP(key.topic, key.partition)
            if tp.topic not in self.topics or offset is None or offset < 0:
                continue
            # Events this assignment already processed past it (faust resumes the
            # streams before it seeks) come again as redeliveries, not a hole.
            self._last_processed[tp] = max(offset - 1, self._last_processed.get(tp, -1))

    async def _guarded_seek_to_committed(self) -> Mapping[Any, int | None]:
        committed = await self._seek_to_committed()
        self.read_from(committed)
        return committed

    def _found_hole(self, action: str) -> None:
        self.holes += 1
        if self._on_hole is not None:
            self._on_hole(action)

    async def processed(self, event: EventT) -> None:
        """Mark ``event`` as processed: its ack, which should follow, is let through.

        Call it in each partition's offset order. On a transactional topic, offsets
        skipped since the partition's previous processed event (commit markers) are
        marked as a gap, so commits can pass them.
        """
        message = event.message
        tp, offset = message.tp, message.offset
        last = self._last_processed.get(tp)
        if self.transactional and last is not None and offset > last + 1:
            self._found_hole("committed")
            logger.warning(
                "%s[%d]@%d..%d never reached the agent; committing over them as a gap "
                "(transaction markers or aborted records: HUP_INPUT_TRANSACTIONAL=1)",
                tp.topic,
                tp.partition,
                last + 1,
                offset - 1,
            )
            await self._add_gap(tp, last + 1, offset - 1)
        if last is None or offset > last:
            self._last_processed[tp] = offset
        self._processed.add((tp, offset))

    def abandon(self, event: EventT) -> None:
        """Release ``event`` unprocessed: faust stops waiting for it, its offset stays uncommitted.

        A rebalance waits until every message handed to a stream is acked. An event the
        agent must not process (its partition is being moved, or it lies behind a
        hole) is never acked, so it is taken out of faust's set of unacked messages
        instead; the seek after the rebalance (or `reread`) fetches it again.
        """
        # faust 0.15 internals (checked by stream.guards.internals).
        unacked = getattr(self._consumer, "_unacked_messages", None)
        if unacked is not None:
            unacked.discard(event.message)
        waiter = getattr(self._consumer, "_waiting_for_ack", None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def on_partitions_revoked(self, sender: Any, revoked: Iterable[TP], **_: Any) -> None:
        """Forget where processing stood in partitions given up (a faust signal receiver).

        Another worker may process a partition while it is away; when it comes back,
        the offsets in between are no hole. A hole being re-read is its next owner's
        to read (from the committed offset, which is before it).
        """
        for tp in revoked:
            self._last_processed.pop(tp, None)
            self._last_taken.pop(tp, None)
            self._open_holes.pop(tp, None)
        self._held.difference_update(revoked)

    async def on_partitions_assigned(self, sender: Any, assigned: Iterable[TP], **_: Any) -> None:
        """Forget where processing stood in every partition not held since the last assignment.

        A batch in flight at a revoke may mark its events processed after the revoke's
        receivers ran, even after the next assignment's (mode runs a signal's receivers
        in no fixed order, and a slow batch outlives the fence's wait). Such a partition's
        next owner commits past those events; remembered, they would make this worker
        see the records in between as a hole when the partition comes back. Whatever is
        remembered of a partition that was not this worker's throughout is such a mark,
        so each newly assigned partition starts at its committed offset (`read_from`).
        """
        for tp in {*self._last_processed, *self._last_taken, *self._open_holes} - self._held:
            self._last_processed.pop(tp, None)
            self._last_taken.pop(tp, None)
            self._open_holes.pop(tp, None)
        self._held = set(assigned)

    async def _guarded_add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # faust's fetch loop calls this for every jump in the offsets it read, which
        # can cover records it handed over but that were dropped before processing.
        if tp.topic not in self.topics:
            await self._add_gap(tp, offset_from, offset_to)

    def _guarded_ack(self, message: Message, *args: Any) -> bool:
        if message.topic in self.topics:
            key = (message.tp, message.offset)
            if key not in self._processed:
                self.refused += 1
                if self._on_refused is not None:
                    self._on_refused()
                logger.info(
                    "not acking %s[%d]@%d: faust skipped it unprocessed (rebalance or "
                    "shutdown); it stays uncommitted and will be consumed again",
                    message.topic,
                    message.partition,
                    message.offset,
                )
                return False
            self._processed.discard(key)
        return self._ack(message, *args)


def keep_queue_on_resume(app: faust.App, stream: faust.Stream[Any]) -> None:
    """Stop faust from emptying ``stream``'s queue when it resumes flow control.

    faust registers each channel queue with the app's flow control, which clears the
    queue on every resume. The resume that ends a rebalance comes after the seek, and
    the fetch loop hands records over until then, so records the consumer has already
    counted as read would be thrown away (see the module docstring). Left in the queue,
    records of an earlier consumer generation are still skipped by the stream (and
    their acks refused above), and those of the current one are processed in order.
    """
    queue = cast(Channel, stream.channel).queue
    # mode's FlowControlEvent has no public way to stop managing a queue.
    app.flow_control._queues.discard(queue)  # noqa: SLF001
