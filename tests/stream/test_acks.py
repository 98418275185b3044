"""AckGuard: offsets of the agent's topic are acked only once the agent processed them."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from stream.acks import AckGuard


@dataclass
class FakeConsumer:
    acked: list[tuple[str, int, int]] = field(default_factory=list)
    _unacked_messages: set = field(default_factory=set)

    def ack(self, message: Any) -> bool:
        self.acked.append((message.topic, message.partition, message.offset))
        return True


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
    guard.processed(event("events", 1, 3))  # type: ignore[arg-type]
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
