"""Batches that close when the events stop flowing: quick at light load, full under load.

faust's ``noack_take(max_, within)`` waits the whole of ``within`` for every batch that
does not fill: under light load each event then waits up to ``within`` before the model
sees it, and since the buffer takes no event while a batch is processed, the wait comes
again after every batch. A shorter ``within`` cuts the wait but also cuts batches under
load, when events reach the buffer one by one through faust's stream (tens of
microseconds each) and fewer of them make it in time.

`take_flowing` takes batches the same way (a processor on the stream fills a buffer the
stream drains passively; events, not values; acks left to the caller) and closes one
when it is full, when ``within`` has passed since it was opened, or when no event came
for ``idle`` seconds. A backlog arrives without pauses, so batches under load fill as
before; at light load a batch closes as soon as what had arrived is in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import faust
from faust.types import EventT
from mode.utils.aiter import aiter

__all__ = ["take_flowing"]

logger = logging.getLogger(__name__)


async def take_flowing(
    stream: faust.Stream[Any], max_: int, within: float, idle: float
) -> AsyncIterator[list[EventT]]:
    """Yield the stream's events in batches of at most ``max_``; the caller acks them.

    A batch is yielded once it holds ``max_`` events, once ``within`` seconds have passed
    since its first event, or once no event has arrived for ``idle`` seconds. While the
    caller handles a batch, the stream takes no further event into the next one. When
    no event comes for ``within`` seconds an empty batch is yielded, so that a caller
    holding work back (`stream.guards.batches`) gets a turn while the input is quiet.
    """
    loop = asyncio.get_running_loop()
    buffer: list[EventT] = []
    arrived = asyncio.Event()
    consumed = asyncio.Event()
    # Set while a batch is handled: the passive drainer waits on it before adding.
    handling: asyncio.Future[None] | None = None

    async def add_to_buffer(value: Any) -> Any:
        nonlocal handling
        try:
            if handling is not None:
                try:
                    await handling
                finally:
                    handling = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("the take buffer found no current event")
            buffer.append(event)
            arrived.set()
            if len(buffer) >= max_:
                # Strictly at most max_ per batch: wait until this one is handled.
                consumed.clear()
                await stream.wait(consumed)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("error adding to the take buffer: %r", exc)
            await stream.crash(exc)
        return value

    enable_acks = stream.enable_acks
    stream.enable_acks = False  # the caller acks each event once it is handled
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))  # type: ignore[arg-type]  # noqa: SLF001
    try:
        while not stream.should_stop:
            if not buffer:
                arrived.clear()
                await stream.wait_for_stopped(arrived, timeout=within)  # type: ignore[arg-type]
                if not buffer:
                    # An empty batch: the caller's turn to commit what it holds.
                    yield []
                    continue
            closes_at = loop.time() + within
            while len(buffer) < max_ and not stream.should_stop:
                remaining = closes_at - loop.time()
                if remaining <= 0:
                    break
                arrived.clear()
                await stream.wait_for_stopped(
                    arrived,  # type: ignore[arg-type]
                    timeout=min(idle, remaining),
                )
                if not arrived.is_set():
                    break  # nothing came for `idle` seconds
            handling = loop.create_future()
            try:
                yield list(buffer)
            finally:
                buffer.clear()
                if not handling.done():
                    handling.set_result(None)
                consumed.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)  # noqa: SLF001
