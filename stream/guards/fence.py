"""Which taken events this worker may still process and save, across rebalances.

A batch must not write the state of a partition that another worker may already
have recovered (its older write would overwrite the new owner's newer state), and
an event the agent does not process must be fetched again later, or it is lost
(docs/broker-notes.md, F5). faust offers neither guarantee: its revoke handler
waits for the batch in flight only if the consumer still reports an assignment,
and a batch taken before a rebalance can be yielded after it.

The fence gives both with one counter, the *epoch*, which advances each time this
worker gives partitions up (the end of a revoke):

- every event is stamped with the epoch at the moment it passes faust's stream
  (a stream processor). faust drops events that arrive while a rebalance has
  flow control suspended, so an event stamped with the current epoch was fetched
  after the last seek and is still this worker's to process;
- an event with an older stamp was fetched before a revoke. It is released
  unacked: the seek that ends every rebalance goes back to the committed offset,
  which cannot be past an unacked event, so it is fetched again by whoever owns
  its partition then. (Releasing *current* events would lose them: no seek
  follows to fetch them again. So the fence does not go by ``app.rebalancing``:
  faust sets it False only after it has resumed fetching, and events fetched
  after the seek would be released, never processed, and their partition would
  stall.)
- the revoke waits (up to half the session timeout) for the batch in flight, so
  a batch started before a revoke is written while the partition is still ours;
  a batch still running when the wait gives up sees the epoch moved and writes
  nothing. Within the same wait it runs the receivers given to `before_revoke`
  (the agent's commit of the state its earlier batches staged), so whatever this
  worker wrote of a partition is on the broker before the partition moves.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import faust
from faust.types import TP, EventT, Message

__all__ = ["RebalanceFence"]

logger = logging.getLogger(__name__)


class RebalanceFence:
    """Stamps a stream's events and tells whether a batch of them is still this worker's."""

    def __init__(self, app: faust.App, stream: faust.Stream[Any]) -> None:
        """Stamp ``stream``'s events and make ``app``'s revokes wait for the batch in flight."""
        self._app = app
        self._stream = stream
        self.epoch = 0
        self._stamps: weakref.WeakKeyDictionary[Message, int] = weakref.WeakKeyDictionary()
        self._in_flight = asyncio.Lock()
        self._revoke_wait_s = float(app.conf.broker_session_timeout) / 2
        self._before_revoke: list[Callable[[float], Awaitable[None]]] = []
        stream.add_processor(self._stamp)
        _fences_of(app).append(self)

    def current(self, event: EventT) -> bool:
        """Whether ``event`` was fetched since this worker last gave partitions up, and is ours."""
        message = event.message
        if self._stamps.get(message) != self.epoch:
            return False
        return message.tp in self._app.consumer.assignment()

    def may_write(self, epoch: int, tps: Iterable[TP]) -> bool:
        """Whether a batch started at ``epoch`` may still save the state of ``tps``.

        False once a revoke has ended since the batch started (the revoke gave up
        waiting for it), or once the worker is stopping: its consumer may have left
        the group already, and the partitions' next owner may be recovering them.
        """
        if epoch != self.epoch or self._app.should_stop:
            return False
        assigned = self._app.consumer.assignment()
        return all(tp in assigned for tp in tps)

    def before_revoke(self, receiver: Callable[[float], Awaitable[None]]) -> None:
        """Run ``receiver(seconds_left)`` at each revoke, once no batch runs, before the epoch moves.

        Not run when the wait for the batch in flight gives up. ``seconds_left`` is what
        remains of the wait; the receiver must not take longer, nor raise.
        """
        self._before_revoke.append(receiver)

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[int]:
        """Hold off revokes while a batch runs; yields the epoch the batch started in."""
        async with self._in_flight:
            yield self.epoch

    def _stamp(self, value: Any) -> Any:
        # Runs in faust's stream iterator right after it checked flow control and the
        # consumer generation, with the event as the stream's current one.
        event = self._stream.current_event
        if event is not None:
            self._stamps[event.message] = self.epoch
        return value

    async def _wait_for_batch(self, revoked: set[TP]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._revoke_wait_s
        try:
            await asyncio.wait_for(self._in_flight.acquire(), self._revoke_wait_s)
        except TimeoutError:
            logger.warning(
                "revoke of %d partitions did not wait for the batch in flight (over %.1f s): "
                "that batch will not be saved and its events will be consumed again",
                len(revoked),
                self._revoke_wait_s,
            )
            self.epoch += 1  # the running batch sees it at its write and writes nothing
        else:
            try:
                for receiver in self._before_revoke:
                    await receiver(max(0.0, deadline - loop.time()))
            finally:
                self.epoch += 1
                self._in_flight.release()


# The attribute of an app that lists its fences (an app runs one per agent stream).
_FENCES_ATTRIBUTE = "_hup_rebalance_fences"


def _fences_of(app: faust.App) -> list[RebalanceFence]:
    """The fences of ``app``; the first one connects the revoke receiver they share.

    One receiver waits for every fence's batch at once: mode runs a signal's receivers
    one after the other, so a receiver per fence would let a revoke wait for half the
    session timeout once per agent stream, up to the whole of it with two.
    """
    fences: list[RebalanceFence] | None = getattr(app, _FENCES_ATTRIBUTE, None)
    if fences is None:
        fences = []
        setattr(app, _FENCES_ATTRIBUTE, fences)
        # mode types receivers as (sender, *args, signal=..., **kwargs); faust sends the set.
        app.on_partitions_revoked.connect(partial(_wait_for_batches, fences))  # type: ignore[arg-type]
    return fences


async def _wait_for_batches(
    fences: list[RebalanceFence], sender: Any, revoked: set[TP], **_: Any
) -> None:
    await asyncio.gather(*(fence._wait_for_batch(revoked) for fence in fences))  # noqa: SLF001
