"""The guarded batch loop (`stream.guards.consume_guarded`) against a model of faust's stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry

from stream.guards import acked_per_batch, consume_guarded
from stream.metrics import Metrics
from stream.settings import Settings


class _Source:
    """faust's stream as `consume_guarded` uses it: stamped events in batches, acks."""

    def __init__(self, batches: list[list[SimpleNamespace]]) -> None:
        self.batches = batches
        self.processors: list[Any] = []
        self.current_event: Any = None
        self.acked: list[int] = []
        self.taken = 0  # batches yielded so far
        self.channel = SimpleNamespace(queue=object(), get_topic_name=lambda: "events")

    def add_processor(self, fun: Any) -> None:
        self.processors.append(fun)

    async def take(self, size: int, within: float, idle: float) -> Any:
        """`stream.guards.take.take_flowing` as the guard sees it: the batches, in order.

        Each batch is awaited, as the take awaits events: a save running beside the
        batches gets a turn in between.
        """
        for batch in self.batches:
            await asyncio.sleep(0)
            for event in batch:
                self.current_event = event
                for processor in self.processors:
                    processor(event.value)
            self.taken += 1
            yield batch

    async def ack(self, event: Any) -> None:
        self.acked.append(event.message.offset)


class _Message:
    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = "events", 0, offset
        self.tp = TP("events", 0)


def _app(seeks: list[tuple[TP, int]]) -> SimpleNamespace:
    """The faust app and consumer as the guards use them: partition 0 of "events" assigned."""

    async def seek(tp: TP, offset: int) -> None:
        seeks.append((tp, offset))

    async def add_gap(*args: object) -> None:
        raise AssertionError("no gap may be marked")

    async def seek_to_committed() -> dict[TP, int]:
        return {}

    consumer = SimpleNamespace(
        ack=lambda message: True,
        _add_gap=add_gap,
        seek_to_committed=seek_to_committed,
        _unacked_messages=set(),
        _waiting_for_ack=None,
        assignment=lambda: {TP("events", 0)},
        seek=seek,
    )
    return SimpleNamespace(
        conf=SimpleNamespace(broker_session_timeout=6.0),
        consumer=consumer,
        should_stop=False,
        on_partitions_revoked=SimpleNamespace(connect=lambda fun: fun),
        on_partitions_assigned=SimpleNamespace(connect=lambda fun: fun),
        flow_control=SimpleNamespace(_queues=set()),
    )


def _batches(*starts: int | None) -> list[list[SimpleNamespace]]:
    """Batches of three offsets from each start; None: an empty batch (a quiet input)."""
    return [
        []
        if start is None
        else [SimpleNamespace(message=_Message(o), value=b"{}") for o in range(start, start + 3)]
        for start in starts
    ]


def test_batches_taken_while_stopping_are_released_without_a_hole_or_a_re_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A SIGTERM during a batch's deliveries: its events and the next batch's wait for the restart."""
    seeks: list[tuple[TP, int]] = []
    app = _app(seeks)
    source = _Source(_batches(0, 3, 6))
    handled: list[list[int]] = []

    async def handle(events: list[Any], still_owned: Callable[[], bool]) -> bool:
        handled.append([e.message.offset for e in events])
        if len(handled) == 2:
            app.should_stop = True  # SIGTERM while this batch's outputs were delivered
            return False
        return True

    with caplog.at_level(logging.INFO):
        take = _Source.take
        asyncio.run(
            consume_guarded(app, source, Settings(), acked_per_batch(handle), take=take)  # type: ignore[arg-type]
        )
    assert handled == [[0, 1, 2], [3, 4, 5]]  # the third batch is not processed
    assert source.acked == [0, 1, 2]
    assert seeks == []
    assert not any("never reached the agent" in r.getMessage() for r in caplog.records)


class _Staging:
    """A `BatchHandler` that stages each batch and saves once ``due`` says so.

    ``log`` lists what happened, in order: ``("handle", offsets, acked by then)`` and
    ``("save", offsets staged, acked by then)`` when a save takes what is staged. A save
    returns ``save_ok``; with ``save_done_at``, only once the batch taken that many
    batches in has been handled (it runs beside the batches until then).
    """

    def __init__(
        self,
        source: _Source,
        due: Callable[[], bool],
        *,
        save_ok: bool = True,
        save_done_at: int | None = None,
        fail_at: int | None = None,
    ) -> None:
        self.source = source
        self._due = due
        self.save_ok = save_ok
        self.save_done_at = save_done_at
        self.fail_at = fail_at  # the offset whose batch raises
        self._save_done = asyncio.Event()
        self.staged: list[int] = []
        self.log: list[tuple[str, list[int], list[int]]] = []
        self.owned_at_save: list[bool] = []
        self.hurried = 0  # saves a drain asked to finish at once
        self.dropped = 0  # times the held events were released with what they staged

    async def handle(self, events: list[Any], still_owned: Callable[[], bool]) -> bool:
        offsets = [e.message.offset for e in events]
        self.log.append(("handle", offsets, list(self.source.acked)))
        if self.fail_at in offsets:
            raise RuntimeError("a bug in the batch")
        self.staged += offsets
        if self.source.taken == self.save_done_at:
            self._save_done.set()
        return True

    def due(self) -> bool:
        return self._due()

    def hurry(self) -> None:
        self.hurried += 1

    def drop(self) -> None:
        self.dropped += 1
        self.staged = []

    def save(self, still_owned: Callable[[], bool]) -> Awaitable[bool]:
        self.log.append(("save", self.staged, list(self.source.acked)))
        self.staged = []

        async def write() -> bool:
            if self.save_done_at is not None:
                await self._save_done.wait()
            self.owned_at_save.append(still_owned())
            return self.save_ok

        return write()


def _consume(
    app: SimpleNamespace, source: _Source, handler: _Staging, metrics: Metrics | None = None
) -> None:
    take = _Source.take
    asyncio.run(
        consume_guarded(app, source, Settings(), handler, metrics=metrics, take=take)  # type: ignore[arg-type]
    )


def _held_by_faust(app: SimpleNamespace, source: _Source) -> None:
    """Every message in faust's set of unacked ones, where it stays until acked or released."""
    app.consumer._unacked_messages = {e.message for batch in source.batches for e in batch}


def test_events_are_acked_in_order_only_once_the_save_of_their_batches_is_done() -> None:
    app = _app([])
    source = _Source(_batches(0, 3, 6, None, None))
    _held_by_faust(app, source)
    handler = _Staging(source, due=lambda: source.taken == 2, save_done_at=3)
    _consume(app, source, handler)
    assert handler.log == [
        ("handle", [0, 1, 2], []),
        ("handle", [3, 4, 5], []),  # the first batch held, not acked
        ("save", [0, 1, 2, 3, 4, 5], []),  # nothing acked before the save
        ("handle", [6, 7, 8], []),  # nor while it runs
    ]
    assert handler.owned_at_save == [True]
    assert source.acked == [0, 1, 2, 3, 4, 5]  # once it is done, in order; not the third batch
    third = {e.message for e in source.batches[2]}
    assert third.isdisjoint(app.consumer._unacked_messages)  # released when the stream ended


def test_a_dropped_save_releases_its_events_and_those_held_since_unacked() -> None:
    app = _app([])
    source = _Source(_batches(0, 3, 6, None, 9))
    _held_by_faust(app, source)
    first_three = {e.message for batch in source.batches[:3] for e in batch}
    released: list[bool] = []

    class Recording(_Staging):
        async def handle(self, events: list[Any], still_owned: Callable[[], bool]) -> bool:
            released.append(first_three.isdisjoint(app.consumer._unacked_messages))
            return await super().handle(events, still_owned)

    handler = Recording(source, due=lambda: source.taken == 2, save_ok=False, save_done_at=3)
    _consume(app, source, handler)
    assert [entry[0] for entry in handler.log] == ["handle", "handle", "save", "handle", "handle"]
    assert source.acked == []
    # Released once the save was dropped (before the next batch), the third batch's with
    # the save's: a rebalance does not wait for them, and their offsets stay uncommitted.
    assert released == [False, False, False, True]
    assert handler.dropped >= 1  # what the third batch staged went with the save


def test_a_failing_batch_saves_the_batches_before_it_then_raises() -> None:
    app = _app([])
    source = _Source(_batches(0, 3, 6, 9))
    handler = _Staging(source, due=lambda: False, fail_at=6)
    with pytest.raises(RuntimeError, match="a bug in the batch"):
        _consume(app, source, handler)
    assert handler.log == [
        ("handle", [0, 1, 2], []),
        ("handle", [3, 4, 5], []),
        ("handle", [6, 7, 8], []),
        ("save", [0, 1, 2, 3, 4, 5], []),  # the batches before the failing one stand
    ]
    assert source.acked == [0, 1, 2, 3, 4, 5]  # not the failing batch's, nor the next
    assert handler.hurried == 1  # the save the error waits for writes without pauses


def test_an_empty_batch_saves_what_is_held_once_it_is_due() -> None:
    """While the input is quiet the take yields empty batches: the held events are saved."""
    app = _app([])
    source = _Source(_batches(0, None, None))
    handler = _Staging(source, due=lambda: source.taken >= 2)
    _consume(app, source, handler)
    # The empty batches are not handled; the first, once due, starts the save, and the
    # second acks its events (nothing is held to save again).
    assert handler.log == [("handle", [0, 1, 2], []), ("save", [0, 1, 2], [])]
    assert source.acked == [0, 1, 2]


def test_held_events_are_not_acked_without_a_save() -> None:
    app = _app([])
    source = _Source(_batches(0, 3))
    handler = _Staging(source, due=lambda: False)
    _consume(app, source, handler)
    assert [entry[0] for entry in handler.log] == ["handle", "handle"]
    assert source.acked == []


def test_the_unsaved_gauge_counts_events_from_their_batch_until_their_save() -> None:
    app = _app([])
    source = _Source(_batches(0, 3, None, None))
    metrics = Metrics(CollectorRegistry())
    unsaved: list[float] = []

    class Watching(_Staging):
        async def handle(self, events: list[Any], still_owned: Callable[[], bool]) -> bool:
            unsaved.append(metrics.events_unsaved._value.get())
            return await super().handle(events, still_owned)

    handler = Watching(source, due=lambda: source.taken >= 3)
    _consume(app, source, handler, metrics)
    assert unsaved == [0.0, 3.0]  # the first batch's events wait for the save
    assert source.acked == [0, 1, 2, 3, 4, 5]
    assert metrics.events_unsaved._value.get() == 0.0
