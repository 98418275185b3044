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
