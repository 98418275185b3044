"""AckGuard: offsets of the agent's topic are acked only once the agent processed them."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.types import TP

from stream.acks import AckGuard, keep_queue_on_resume


@dataclass
class FakeConsumer:
    acked: list[tuple[str, int, int]] = field(default_factory=list)
    gaps: list[tuple[str, int, int, int]] = field(default_factory=list)
    _unacked_messages: set = field(default_factory=set)

    def ack(self, message: Any) -> bool:
        self.acked.append((message.topic, message.partition, message.offset))
        return True

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        self.gaps.append((tp.topic, tp.partition, offset_from, offset_to))


def message(topic: str, partition: int, offset: int) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, tp=TP(topic, partition))


def event(topic: str, partition: int, offset: int) -> SimpleNamespace:
    return SimpleNamespace(message=message(topic, partition, offset))


def test_an_unprocessed_message_of_the_guarded_topic_is_not_acked() -> None:
    consumer = FakeConsumer()
    guard = AckGuard(consumer, ["events"])  # type: ignore[arg-type]
    assert consumer.ack(message("events", 0, 7)) is False  # what faust does with a skipped one
    assert consumer.acked == []
    assert guard.refused == 1


def test_a_processed_message_is_acked_once_and_other_topics_pass() -> None:
    consumer = FakeConsumer()
    guard = AckGuard(consumer, ["events"])  # type: ignore[arg-type]
    asyncio.run(guard.processed(event("events", 1, 3)))  # type: ignore[arg-type]
    assert consumer.ack(message("events", 1, 3)) is True
    assert consumer.ack(message("events", 2, 3)) is False  # same offset, other partition
    assert consumer.ack(message("events", 1, 3)) is False  # the mark is used up
    assert consumer.ack(message("changelog", 0, 0)) is True
    assert consumer.acked == [("events", 1, 3), ("changelog", 0, 0)]
    assert guard.refused == 2


class Message:
    """Hashable by identity, like faust's messages in its set of unacked ones."""

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.tp = TP(topic, partition)


def test_an_abandoned_event_is_released_without_being_acked() -> None:
    consumer = FakeConsumer()
    guard = AckGuard(consumer, ["events"])  # type: ignore[arg-type]
    held, other = Message("events", 0, 9), Message("events", 0, 10)
    consumer._unacked_messages = {held, other}
    guard.abandon(SimpleNamespace(message=held))  # type: ignore[arg-type]
    assert consumer._unacked_messages == {other}  # a rebalance no longer waits for it
    assert consumer.acked == []  # and its offset never becomes committable


def test_faust_gaps_on_the_guarded_topic_are_ignored_and_others_pass() -> None:
    consumer = FakeConsumer()
    AckGuard(consumer, ["events"])  # type: ignore[arg-type]
    # What faust's fetch loop does when the offsets it reads jump, e.g. after its read
    # position was reset by a seek while records were still being handed over.
    asyncio.run(consumer._add_gap(TP("events", 0), 5, 40))
    asyncio.run(consumer._add_gap(TP("changelog", 0), 5, 6))
    assert consumer.gaps == [("changelog", 0, 5, 6)]


def test_a_hole_between_processed_offsets_is_marked_as_a_gap_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = FakeConsumer()
    guard = AckGuard(consumer, ["events"])  # type: ignore[arg-type]

    async def process(*offsets: int) -> None:
        for offset in offsets:
            await guard.processed(event("events", 0, offset))  # type: ignore[arg-type]

    with caplog.at_level(logging.WARNING, logger="stream.acks"):
        asyncio.run(process(10, 11, 14, 12, 15))  # 12: a redelivery, not a new hole
    assert consumer.gaps == [("events", 0, 12, 13)]
    assert guard.holes == 1
    assert "events[0]@12..13 never reached the agent" in caplog.text
    # Partition 0 away and back: others processed 16..99 meanwhile, which is no hole.
    asyncio.run(guard.on_partitions_revoked(None, {TP("events", 0)}))
    asyncio.run(process(100))
    assert guard.holes == 1


def test_the_stream_queue_survives_the_resume_that_ends_a_rebalance() -> None:
    app = faust.App("acks-test", broker="kafka://127.0.0.1:1")  # never connects
    kept, other = app.topic("kept").stream(), app.topic("other").stream()
    keep_queue_on_resume(app, kept)
    for stream in (kept, other):
        stream.channel.queue.put_nowait("handed over")  # type: ignore[attr-defined]
    app.flow_control.resume()
    assert kept.channel.queue.qsize() == 1  # type: ignore[attr-defined]
    assert other.channel.queue.qsize() == 0  # what faust does to every queue
