"""Only offsets the agent processed may be committed: a guard on faust's consumer acks.

faust 0.15.3 skips a message that reaches a stream while flow control is suspended
or that was fetched in an earlier consumer generation, which happens around every
rebalance and during shutdown, and *acks* it anyway (``Stream._py_aiter``: "ack the
filtered out message otherwise the lag would increase"). The ack makes the offset
committable, so the next owner of the partition starts after an event that no one
processed: the event is lost, and every later profile of that user is off by one.
We saw it as missing profiles after a graceful leave in the scale-out test and
after SIGKILL in the fault test (docs/broker-notes.md, F5).

The guard refuses the ack of any message on the guarded topics that the agent did
not mark as processed. A refused offset stays uncommitted; the rebalance that
caused the skip seeks the partition back to the committed offset, so the event is
fetched again and processed (or skipped by its offset if its state already has it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from faust.types import TP, ConsumerT, EventT, Message

__all__ = ["AckGuard"]

logger = logging.getLogger(__name__)


class AckGuard:
    """Wraps ``consumer.ack`` so that unprocessed messages of ``topics`` are never acked."""

    def __init__(self, consumer: ConsumerT, topics: Iterable[str]) -> None:
        """Install the guard on ``consumer`` (replacing its ``ack`` on the instance)."""
        self._consumer = consumer
        self.topics = frozenset(topics)
        self.refused = 0
        self._processed: set[tuple[TP, int]] = set()
        self._ack: Callable[[Message], bool] = consumer.ack
        consumer.ack = self._guarded_ack  # type: ignore[method-assign]

    def processed(self, event: EventT) -> None:
        """Mark ``event`` as processed: its ack, which should follow, is let through."""
        message = event.message
        self._processed.add((message.tp, message.offset))

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
