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
  next record marks them as a gap, committable as if processed. The SIGKILL test,
  repeated under load, lost one or two events this way in half of its runs.

The guard refuses the ack of any message on the guarded topics that the agent did
not mark as processed, and ignores faust's gaps on those topics. A refused offset
stays uncommitted; the rebalance that caused the skip seeks the partition back to
the committed offset, so the event is fetched again and processed (or skipped by
its offset if its state already has it). Genuine gaps (a transactional producer's
commit markers) are marked once the agent has processed the records on both sides
of one: a hole between two processed offsets of a partition, which the worker logs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import faust
from faust.channels import Channel
from faust.types import TP, ConsumerT, EventT, Message

__all__ = ["AckGuard", "keep_queue_on_resume"]

logger = logging.getLogger(__name__)

# faust's consumer method that marks offsets [start, end] as a gap to commit over.
AddGap = Callable[[TP, int, int], Awaitable[None]]


class AckGuard:
    """Wraps ``consumer.ack`` and faust's gap marking so unprocessed messages of ``topics`` never count."""

    def __init__(self, consumer: ConsumerT, topics: Iterable[str]) -> None:
        """Install the guard on ``consumer`` (replacing ``ack`` and ``_add_gap`` on the instance)."""
        self._consumer = consumer
        self.topics = frozenset(topics)
        self.refused = 0
        self.holes = 0
        self._processed: set[tuple[TP, int]] = set()
        self._last_processed: dict[TP, int] = {}
        self._ack: Callable[[Message], bool] = consumer.ack
        consumer.ack = self._guarded_ack  # type: ignore[method-assign]
        # faust 0.15 internals: the fetch loop looks the method up on the instance.
        self._add_gap: AddGap = consumer._add_gap  # type: ignore[attr-defined]  # noqa: SLF001
        consumer._add_gap = self._guarded_add_gap  # type: ignore[attr-defined]  # noqa: SLF001

    async def processed(self, event: EventT) -> None:
        """Mark ``event`` as processed: its ack, which should follow, is let through.

        Call it in each partition's offset order. Offsets skipped since the partition's
        previous processed event are marked as a gap, so commits can pass them.
        """
        message = event.message
        tp, offset = message.tp, message.offset
        last = self._last_processed.get(tp)
        if last is not None and offset > last + 1:
            self.holes += 1
            logger.warning(
                "%s[%d]@%d..%d never reached the agent; committing over them as a gap "
                "(transaction markers, or records the consumer dropped)",
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
        agent must not process (its partition is being moved) is never acked, so it is
        taken out of faust's set of unacked messages instead; the seek after the
        rebalance fetches it again for whoever owns the partition then.
        """
        unacked = getattr(self._consumer, "_unacked_messages", None)  # faust 0.15 internals
        if unacked is not None:
            unacked.discard(event.message)
        waiter = getattr(self._consumer, "_waiting_for_ack", None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def on_partitions_revoked(self, sender: Any, revoked: Iterable[TP], **_: Any) -> None:
        """Forget where processing stood in partitions given up (a faust signal receiver).

        Another worker may process a partition while it is away; when it comes back,
        the offsets in between are no hole.
        """
        for tp in revoked:
            self._last_processed.pop(tp, None)

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
    counted as read were thrown away (see the module docstring). Left in the queue,
    records of an earlier consumer generation are still skipped by the stream (and
    their acks refused above), and those of the current one are processed in order.
    """
    queue = cast(Channel, stream.channel).queue
    # mode's FlowControlEvent has no public way to stop managing a queue.
    app.flow_control._queues.discard(queue)  # noqa: SLF001
