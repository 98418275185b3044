"""Batches that close when the flow of events pauses (`stream.guards.take.take_flowing`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from stream.guards.take import take_flowing


class _Channel:
    """What faust's ``aiter`` accepts as a channel; the fake drainer never iterates it."""

    def __aiter__(self) -> _Channel:
        return self


class _Stream:
    """faust's stream as `take_flowing` uses it; the passive drainer runs ``feed``.

    ``feed`` is a list of (seconds to wait, value): each value then passes through the
    stream's processors as faust's passive drainer passes it, one at a time.
    """

    def __init__(self, feed: list[tuple[float, int]]) -> None:
        self.feed = feed
        self.channel = _Channel()
        self.enable_acks = True
        self.should_stop = False
        self.current_event: Any = None
        self._processors: list[Callable[[Any], Awaitable[Any]]] = []
        self.drainer: asyncio.Task[None] | None = None
        self.crashed: list[BaseException] = []

    def add_processor(self, processor: Callable[[Any], Awaitable[Any]]) -> None:
        self._processors.append(processor)

    def _enable_passive(self, channel: _Channel) -> None:
        self.drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        for pause, value in self.feed:
            if pause:
                await asyncio.sleep(pause)
            self.current_event = SimpleNamespace(value=value)
            for processor in list(self._processors):
                await processor(value)

    async def wait(self, event: asyncio.Event) -> None:
        await event.wait()

    async def wait_for_stopped(self, event: asyncio.Event, timeout: float) -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        return self.should_stop

    async def crash(self, exc: BaseException) -> None:
        self.crashed.append(exc)


def _take(
    feed: list[tuple[float, int]], max_: int, within: float, idle: float, total: int
) -> tuple[list[list[int]], list[float], list[float], _Stream]:
    """The batches taken until ``total`` events came, when each was yielded, and when
    each empty batch (no event for ``within``) was."""
    stream = _Stream(feed)
    batches: list[list[int]] = []
    yielded: list[float] = []
    empty: list[float] = []

    async def run() -> None:
        started = time.monotonic()
        batches_of = take_flowing(stream, max_, within, idle)  # type: ignore[arg-type]
        async for batch in batches_of:
            if not batch:
                empty.append(time.monotonic() - started)
                continue
            yielded.append(time.monotonic() - started)
            batches.append([event.value for event in batch])
            if sum(map(len, batches)) >= total:
                break
        await batches_of.aclose()

    asyncio.run(run())
    return batches, yielded, empty, stream


def test_a_batch_closes_when_it_is_full_and_when_the_events_pause() -> None:
    """A burst of five with four per batch: four, then the fifth alone as soon as the flow stops."""
    feed = [(0.0, n) for n in range(5)] + [(0.5, 5), (0.0, 6)]
    batches, yielded, empty, stream = _take(feed, max_=4, within=10.0, idle=0.05, total=7)
    assert batches == [[0, 1, 2, 3], [4], [5, 6]] and empty == []
    # The fifth event's batch closed on the pause, long before `within` (10 s) ran out,
    # and before the next events (0.5 s later) came.
    assert yielded[1] < 0.5
    assert stream.crashed == []


def test_a_steady_trickle_closes_a_batch_after_within() -> None:
    """Events closer together than ``idle`` never pause; ``within`` still closes the batch."""
    feed = [(0.01, n) for n in range(60)]
    batches, _, _, _ = _take(feed, max_=1000, within=0.1, idle=0.2, total=60)
    assert [n for batch in batches for n in batch] == list(range(60))  # in order, once each
    assert len(batches) > 1


def _handled_slowly(feed: list[tuple[float, int]], max_: int) -> tuple[list[list[int]], int]:
    """The batches of ``feed`` when the first takes 0.2 s to handle, and the value the
    stream's drainer was at when that handling ended."""
    stream = _Stream(feed)
    seen: list[list[int]] = []
    current = -1

    async def run() -> None:
        nonlocal current
        batches_of = take_flowing(stream, max_, 10.0, 0.05)  # type: ignore[arg-type]
        async for batch in batches_of:
            if not batch:
                continue
            seen.append([event.value for event in batch])
            if len(seen) == 1:
                await asyncio.sleep(0.2)
                current = stream.current_event.value
            if sum(map(len, seen)) == len(feed):
                break
        await batches_of.aclose()

    asyncio.run(run())
    return seen, current


def test_an_event_that_comes_while_a_batch_is_handled_goes_into_the_next() -> None:
    """The drainer holds it until the batch is handled: not lost with the buffer, not in it."""
    seen, current = _handled_slowly([(0.0, 0), (0.0, 1), (0.1, 2)], max_=3)
    assert current == 2  # it came during the handling
    assert seen == [[0, 1], [2]]


def test_a_full_batch_holds_the_drainer_until_it_is_handled() -> None:
    """At most ``max_`` per batch: the event after a full batch waits for the next one."""
    seen, current = _handled_slowly([(0.0, 0), (0.0, 1), (0.0, 2)], max_=2)
    assert current == 1  # the drainer is still adding the full batch's last event
    assert seen == [[0, 1], [2]]


def test_an_empty_batch_is_yielded_each_time_no_event_comes_for_within() -> None:
    """The caller gets a turn (to save what it holds) while the input is quiet."""
    feed = [(0.35, 0), (0.0, 1)]
    batches, yielded, empty, stream = _take(feed, max_=4, within=0.1, idle=0.02, total=2)
    assert batches == [[0, 1]]  # the quiet spell does not lose or split the events after it
    assert len(empty) >= 2  # at about 0.1, 0.2 and 0.3 s
    assert 0.09 <= empty[0] < 0.35
    assert all(later - earlier >= 0.09 for earlier, later in zip(empty, empty[1:], strict=False))
    assert empty[-1] < yielded[0]
    assert stream.crashed == []


def test_the_stream_gets_its_acks_and_processors_back() -> None:
    """Acks are off while batches are taken (the caller acks) and restored after."""
    feed = [(0.0, 0)]
    batches, _, _, stream = _take(feed, max_=4, within=10.0, idle=0.01, total=1)
    assert batches == [[0]]
    assert stream.enable_acks is True
    assert stream._processors == []


class _NoEventStream(_Stream):
    """A drainer that runs the processors without setting the stream's current event."""

    async def _drain(self) -> None:
        for processor in list(self._processors):
            await processor(0)


def test_a_value_without_its_event_crashes_the_stream() -> None:
    """Events are what the caller acks: a value without one is a faust bug, not a batch."""
    stream = _NoEventStream([])

    async def run() -> None:
        async def stop_soon() -> None:
            await asyncio.sleep(0.2)
            stream.should_stop = True

        stopper = asyncio.ensure_future(stop_soon())
        async for batch in take_flowing(stream, 4, 0.05, 0.01):  # type: ignore[arg-type]
            # Only the empty batches of a quiet input: the value never made one.
            assert batch == [], "a batch was yielded with a value but no event"
        await stopper

    asyncio.run(run())
    assert len(stream.crashed) == 1
    assert "no current event" in str(stream.crashed[0])
