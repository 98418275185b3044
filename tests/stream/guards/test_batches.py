"""The guarded batch loop (`stream.guards.consume_guarded`) against a model of faust's stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from stream.guards import consume_guarded
from stream.settings import Settings


class _Source:
    """faust's stream as `consume_guarded` uses it: stamped events in batches, acks."""

    def __init__(self, batches: list[list[SimpleNamespace]]) -> None:
        self.batches = batches
        self.processors: list[Any] = []
        self.current_event: Any = None
        self.acked: list[int] = []
        self.channel = SimpleNamespace(queue=object(), get_topic_name=lambda: "events")

    def add_processor(self, fun: Any) -> None:
        self.processors.append(fun)

    async def take(self, size: int, within: float, idle: float) -> Any:
        """`stream.guards.take.take_flowing` as the guard sees it: the batches, in order."""
        for batch in self.batches:
            for event in batch:
                self.current_event = event
                for processor in self.processors:
                    processor(event.value)
            yield batch

    async def ack(self, event: Any) -> None:
        self.acked.append(event.message.offset)


class _Message:
    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = "events", 0, offset
        self.tp = TP("events", 0)


def test_batches_taken_while_stopping_are_released_without_a_hole_or_a_re_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A SIGTERM during a batch's deliveries: its events and the next batch's wait for the restart."""
    seeks: list[tuple[TP, int]] = []

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
    app = SimpleNamespace(
        conf=SimpleNamespace(broker_session_timeout=6.0),
        consumer=consumer,
        should_stop=False,
        on_partitions_revoked=SimpleNamespace(connect=lambda fun: fun),
        on_partitions_assigned=SimpleNamespace(connect=lambda fun: fun),
        flow_control=SimpleNamespace(_queues=set()),
    )
    batches = [
        [SimpleNamespace(message=_Message(o), value=b"{}") for o in range(start, start + 3)]
        for start in (0, 3, 6)
    ]
    source = _Source(batches)
    handled: list[list[int]] = []

    async def handle(events: list[Any], still_owned: Callable[[], bool]) -> bool:
        handled.append([e.message.offset for e in events])
        if len(handled) == 2:
            app.should_stop = True  # SIGTERM while this batch's outputs were delivered
            return False
        return True

    with caplog.at_level(logging.INFO):
        take = _Source.take
        asyncio.run(consume_guarded(app, source, Settings(), handle, take=take))  # type: ignore[arg-type]
    assert handled == [[0, 1, 2], [3, 4, 5]]  # the third batch is not processed
    assert source.acked == [0, 1, 2]
    assert seeks == []
    assert not any("never reached the agent" in r.getMessage() for r in caplog.records)
