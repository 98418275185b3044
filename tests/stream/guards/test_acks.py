"""AckGuard: offsets of the agent's topic are acked only once the agent processed them."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.types import TP

from stream.guards.acks import (
    PERSISTENT_HOLE_S,
    AckGuard,
    PersistentHoleError,
    keep_queue_on_resume,
)


@dataclass
class FakeConsumer:
    acked: list[tuple[str, int, int]] = field(default_factory=list)
    gaps: list[tuple[str, int, int, int]] = field(default_factory=list)
    seeks: list[tuple[TP, int]] = field(default_factory=list)
    assigned: set[TP] = field(default_factory=lambda: {TP("events", 0), TP("events", 1)})
    _unacked_messages: set = field(default_factory=set)
    committed: dict[TP, int | None] = field(default_factory=dict)

    def ack(self, message: Any) -> bool:
        self.acked.append((message.topic, message.partition, message.offset))
        return True

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        self.gaps.append((tp.topic, tp.partition, offset_from, offset_to))

    def assignment(self) -> set[TP]:
        return self.assigned

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def seek_to_committed(self) -> dict[TP, int | None]:
        return self.committed


class Message:
    """Hashable by identity, like faust's messages in its set of unacked ones."""

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.tp = TP(topic, partition)


def message(topic: str, partition: int, offset: int) -> Message:
    return Message(topic, partition, offset)


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


def test_on_a_transactional_topic_a_hole_between_processed_offsets_is_marked_as_a_gap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = FakeConsumer()
    actions: list[str] = []
    guard = AckGuard(consumer, ["events"], transactional=True, on_hole=actions.append)  # type: ignore[arg-type]

    async def process(*offsets: int) -> None:
        for offset in offsets:
            await guard.processed(event("events", 0, offset))  # type: ignore[arg-type]

    with caplog.at_level(logging.WARNING, logger="stream.guards.acks"):
        asyncio.run(process(10, 11, 14, 12, 15))  # 12: a redelivery, not a new hole
    assert consumer.gaps == [("events", 0, 12, 13)]
    assert guard.holes == 1
    assert actions == ["committed"]
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


P0, P1 = TP("events", 0), TP("events", 1)


def _offsets(events: list) -> list[tuple[int, int]]:
    return [(e.message.partition, e.message.offset) for e in events]


def test_a_hole_holds_the_partition_back_and_reads_it_again_from_the_hole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = FakeConsumer()
    actions: list[str] = []
    guard = AckGuard(consumer, ["events"], on_hole=actions.append)  # type: ignore[arg-type]
    for offset in (10, 11):
        asyncio.run(guard.processed(event("events", 0, offset)))  # type: ignore[arg-type]

    held = Message("events", 0, 14)  # hashable, as faust's are in its set of unacked ones
    batch = [event("events", 0, 12), event("events", 1, 3), SimpleNamespace(message=held)]
    batch.append(event("events", 0, 15))
    ready, holes = guard.split(batch)  # type: ignore[arg-type]
    assert _offsets(ready) == [(0, 12), (1, 3)]  # up to the hole, and other partitions
    assert list(holes) == [P0] and holes[P0].start == 13
    assert _offsets(holes[P0].events) == [(0, 14), (0, 15)]

    consumer._unacked_messages = {held}
    with caplog.at_level(logging.WARNING, logger="stream.guards.acks"):
        asyncio.run(guard.reread(holes))
    assert consumer.seeks == [(P0, 13)]  # fetched again from the hole
    assert consumer._unacked_messages == set()  # released: a rebalance does not wait for it
    assert consumer.gaps == []  # never committed over
    assert actions == ["reread"] and guard.holes == 1
    assert "events[0]@13..13 never reached the agent; reading the partition again" in caplog.text
    assert consumer.ack(message("events", 0, 14)) is False  # held back, so never acked

    # The re-read brings 13 and 14: processed in order, nothing left open.
    asyncio.run(guard.processed(ready[0]))  # type: ignore[arg-type]
    again = [event("events", 0, 13), event("events", 0, 14)]
    ready, holes = guard.split(again)  # type: ignore[arg-type]
    assert _offsets(ready) == [(0, 13), (0, 14)] and holes == {}


def test_a_hole_inside_one_batch_of_a_fresh_partition_is_found_too() -> None:
    guard = AckGuard(FakeConsumer(), ["events"])  # type: ignore[arg-type]
    batch = [event("events", 1, n) for n in (100, 101, 105, 106)]
    ready, holes = guard.split(batch)  # type: ignore[arg-type]
    assert _offsets(ready) == [(1, 100), (1, 101)]
    assert holes[P1].start == 102 and _offsets(holes[P1].events) == [(1, 105), (1, 106)]


def test_records_missing_between_the_committed_offset_and_the_first_event_are_read_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = FakeConsumer(committed={P0: 9, P1: None, TP("other", 0): 4})
    guard = AckGuard(consumer, ["events"])  # type: ignore[arg-type]
    # What faust's perform_seek calls at the end of each assignment's recovery.
    assert asyncio.run(consumer.seek_to_committed()) == consumer.committed

    batch = [event("events", 0, n) for n in (282, 283)] + [event("events", 1, 40)]
    batch.append(event("other", 0, 50))
    ready, holes = guard.split(batch)  # type: ignore[arg-type]
    # Partition 1 has no committed offset (the reset policy decides) and "other" is not
    # guarded: both go through. Partition 0 must go on at 9, so 282 is behind a hole.
    assert _offsets(ready) == [(1, 40), (0, 50)]
    assert holes[P0].start == 9 and _offsets(holes[P0].events) == [(0, 282), (0, 283)]
    with caplog.at_level(logging.WARNING, logger="stream.guards.acks"):
        asyncio.run(guard.reread(holes))
    assert consumer.seeks == [(P0, 9)]
    assert "events[0]@9..281 never reached the agent" in caplog.text

    ready, holes = guard.split([event("events", 0, n) for n in (9, 10)])  # type: ignore[arg-type]
    assert _offsets(ready) == [(0, 9), (0, 10)] and holes == {}


def test_events_processed_before_the_seek_to_committed_are_no_hole() -> None:
    """faust resumes the streams before it seeks: a batch may come before the seek."""
    consumer = FakeConsumer(committed={P0: 10})
    guard = AckGuard(consumer, ["events"])  # type: ignore[arg-type]
    for offset in (10, 11, 12):
        asyncio.run(guard.processed(event("events", 0, offset)))  # type: ignore[arg-type]
    asyncio.run(consumer.seek_to_committed())
    again = [event("events", 0, n) for n in (10, 11, 12, 13)]  # the seek fetches them again
    ready, holes = guard.split(again)  # type: ignore[arg-type]
    assert _offsets(ready) == [(0, 10), (0, 11), (0, 12), (0, 13)] and holes == {}
    ready, holes = guard.split([event("events", 0, 13)])  # type: ignore[arg-type]
    assert holes == {} and consumer.seeks == []


def test_a_partition_read_from_its_committed_offset_continues_from_it() -> None:
    consumer = FakeConsumer(committed={P0: 0})
    guard = AckGuard(consumer, ["events"])  # type: ignore[arg-type]
    asyncio.run(consumer.seek_to_committed())
    ready, holes = guard.split([event("events", 0, n) for n in (0, 1, 2)])  # type: ignore[arg-type]
    assert _offsets(ready) == [(0, 0), (0, 1), (0, 2)] and holes == {}


def test_redeliveries_and_other_topics_pass() -> None:
    guard = AckGuard(FakeConsumer(), ["events"])  # type: ignore[arg-type]
    asyncio.run(guard.processed(event("events", 0, 20)))  # type: ignore[arg-type]
    batch = [event("events", 0, 18), event("events", 0, 21), event("other", 0, 90)]
    ready, holes = guard.split(batch)  # type: ignore[arg-type]
    assert len(ready) == 3 and holes == {}


def test_a_hole_that_cannot_be_read_again_stops_the_worker_not_commits_over_it() -> None:
    now = [0.0]
    consumer = FakeConsumer()
    actions: list[str] = []
    guard = AckGuard(consumer, ["events"], on_hole=actions.append, clock=lambda: now[0])  # type: ignore[arg-type]
    asyncio.run(guard.processed(event("events", 0, 4)))  # type: ignore[arg-type]

    def arrives_again() -> None:
        _, holes = guard.split([event("events", 0, 9)])  # type: ignore[arg-type]
        asyncio.run(guard.reread(holes))

    arrives_again()
    now[0] = PERSISTENT_HOLE_S / 2
    arrives_again()  # records fetched before the seek: seek again, the same hole
    assert consumer.seeks == [(P0, 5), (P0, 5)] and actions == ["reread"]
    now[0] = PERSISTENT_HOLE_S + 1
    with pytest.raises(PersistentHoleError, match=r"events\[0\]@5..8 could not be read again"):
        arrives_again()
    assert consumer.gaps == []


def test_a_revoked_partition_forgets_its_hole_and_an_unassigned_one_is_not_sought() -> None:
    consumer = FakeConsumer(assigned={P1})
    guard = AckGuard(consumer, ["events"])  # type: ignore[arg-type]
    asyncio.run(guard.processed(event("events", 0, 1)))  # type: ignore[arg-type]
    _, holes = guard.split([event("events", 0, 3)])  # type: ignore[arg-type]
    asyncio.run(guard.reread(holes))
    assert consumer.seeks == []  # no longer ours: its next owner reads from the committed offset
    asyncio.run(guard.on_partitions_revoked(None, {P0}))
    ready, holes = guard.split([event("events", 0, 40)])  # type: ignore[arg-type]
    assert len(ready) == 1 and holes == {}


def test_on_a_transactional_topic_nothing_is_held_back() -> None:
    guard = AckGuard(FakeConsumer(), ["events"], transactional=True)  # type: ignore[arg-type]
    asyncio.run(guard.processed(event("events", 0, 1)))  # type: ignore[arg-type]
    ready, holes = guard.split([event("events", 0, 5)])  # type: ignore[arg-type]
    assert len(ready) == 1 and holes == {}


def test_refused_acks_are_counted() -> None:
    refused: list[None] = []
    consumer = FakeConsumer()
    AckGuard(consumer, ["events"], on_refused=lambda: refused.append(None))  # type: ignore[arg-type]
    consumer.ack(message("events", 0, 7))
    assert len(refused) == 1


def test_a_re_read_behind_stale_records_in_the_same_batch_is_processed_without_a_new_seek(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = FakeConsumer()
    actions: list[str] = []
    guard = AckGuard(consumer, ["events"], on_hole=actions.append)  # type: ignore[arg-type]
    asyncio.run(guard.processed(event("events", 0, 99)))  # type: ignore[arg-type]
    _, holes = guard.split([event("events", 0, 102)])  # type: ignore[arg-type]
    asyncio.run(guard.reread(holes))
    assert consumer.seeks == [(P0, 100)] and actions == ["reread"]

    # The queue: records fetched before the seek, then the re-read from the hole.
    stale = [Message("events", 0, n) for n in (110, 111)]
    batch = [SimpleNamespace(message=m) for m in stale]
    batch += [event("events", 0, n) for n in (100, 101, 102)]
    consumer._unacked_messages = set(stale)
    with caplog.at_level(logging.INFO, logger="stream.guards.acks"):
        ready, holes = guard.split(batch)  # type: ignore[arg-type]
        asyncio.run(guard.reread(holes))
    assert _offsets(ready) == [(0, 100), (0, 101), (0, 102)]
    assert _offsets(holes[P0].events) == [(0, 110), (0, 111)]
    assert holes[P0].start == 103 and holes[P0].reread is False
    assert consumer.seeks == [(P0, 100)]  # the re-read in progress brings 110 and 111 again
    assert consumer._unacked_messages == set()  # the stale ones are released
    assert actions == ["reread"]  # no new hole
    assert "events[0]@100 read again after a hole" in caplog.text


def test_a_jump_after_the_re_read_in_one_batch_is_read_again_from_the_first_missing_offset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = FakeConsumer()
    actions: list[str] = []
    guard = AckGuard(consumer, ["events"], on_hole=actions.append)  # type: ignore[arg-type]
    asyncio.run(guard.processed(event("events", 0, 99)))  # type: ignore[arg-type]
    batch = [event("events", 0, n) for n in (320, *range(100, 109), 115, 116)]
    with caplog.at_level(logging.WARNING, logger="stream.guards.acks"):
        ready, holes = guard.split(batch)  # type: ignore[arg-type]
        asyncio.run(guard.reread(holes))
    assert _offsets(ready) == [(0, n) for n in range(100, 109)]
    assert holes[P0].start == 109 and holes[P0].reread is True
    assert _offsets(holes[P0].events) == [(0, 320), (0, 115), (0, 116)]
    assert consumer.seeks == [(P0, 109)] and actions == ["reread"]
    assert "events[0]@109..114 never reached the agent" in caplog.text


class FetchLoop:
    """faust 0.15's fetch loop (``Consumer._drain_messages``) over one partition, as a model.

    Records fetched before a seek are still handed to the stream after it; a record
    below faust's read offset is dropped as already read; a seek sets the fetch
    position and the read offset. ``drop`` offsets are lost the first time they are
    fetched (as faust lost records around rebalances).
    """

    def __init__(self, size: int, chunk: int, drop: set[int]) -> None:
        self.size, self.chunk, self.drop = size, chunk, set(drop)
        self.position, self.read = 0, -1
        self.in_flight: deque[int] = deque()
        self.queue: deque[int] = deque()

    async def seek(self, tp: TP, offset: int) -> None:
        self.position, self.read = offset, offset

    def hand_over(self, n: int) -> None:
        for _ in range(n):
            if not self.in_flight:
                if self.position >= self.size:
                    return
                end = min(self.position + self.chunk, self.size)
                self.in_flight.extend(range(self.position, end))
                self.position = end
            offset = self.in_flight.popleft()
            if offset in self.drop:
                self.drop.discard(offset)
            elif offset >= self.read:
                self.queue.append(offset)
                self.read = offset


@pytest.mark.parametrize("batch_size", [7, 13, 20])
@pytest.mark.parametrize("fetched_per_batch", [5, 30, 400])
def test_a_dropped_range_is_read_again_and_processed_however_batches_fall(
    batch_size: int, fetched_per_batch: int
) -> None:
    """The re-read's records are reached whether or not stale records share their batch."""
    size = 330
    loop = FetchLoop(size, chunk=500, drop={100, 101})
    consumer = FakeConsumer(assigned={P0})
    consumer.seek = loop.seek  # type: ignore[method-assign]
    guard = AckGuard(consumer, ["events"])  # type: ignore[arg-type]
    done = -1
    for _ in range(200):
        loop.hand_over(fetched_per_batch)
        taken = [loop.queue.popleft() for _ in range(min(batch_size, len(loop.queue)))]
        ready, holes = guard.split([event("events", 0, n) for n in taken])  # type: ignore[arg-type]
        asyncio.run(guard.reread(holes))
        for ev in ready:
            offset = ev.message.offset
            assert offset <= done + 1, (offset, done)  # never past a record not processed
            done = max(done, offset)
            asyncio.run(guard.processed(ev))  # type: ignore[arg-type]
        if done == size - 1:
            break
    assert done == size - 1
    assert guard.holes == 1


def test_redeliveries_after_a_held_event_do_not_count_as_a_re_read_in_progress() -> None:
    consumer = FakeConsumer()
    guard = AckGuard(consumer, ["events"])  # type: ignore[arg-type]
    asyncio.run(guard.processed(event("events", 0, 99)))  # type: ignore[arg-type]
    batch = [event("events", 0, n) for n in (110, 98, 99)]
    ready, holes = guard.split(batch)  # type: ignore[arg-type]
    asyncio.run(guard.reread(holes))
    assert _offsets(ready) == [(0, 98), (0, 99)]  # redelivered: the processor skips them
    assert holes[P0].start == 100 and holes[P0].reread is True
    assert consumer.seeks == [(P0, 100)]


def test_a_batch_finishing_after_the_revoke_leaves_no_hole_when_the_partition_comes_back() -> None:
    consumer = FakeConsumer()
    guard = AckGuard(consumer, ["events"])  # type: ignore[arg-type]
    asyncio.run(guard.on_partitions_revoked(None, {P0, P1}))
    # The batch in flight at the revoke finishes after the guard's receiver ran.
    asyncio.run(guard.processed(event("events", 0, 761)))  # type: ignore[arg-type]
    asyncio.run(guard.on_partitions_assigned(None, {P1}))
    # P0 was processed by another worker meanwhile, which committed past 761; back here
    # the stream may see its records before the seek to the committed offset.
    ready, holes = guard.split([event("events", 0, 1233)])  # type: ignore[arg-type]
    assert len(ready) == 1 and holes == {}
    asyncio.run(guard.on_partitions_assigned(None, {P0, P1}))  # nothing revoked since
    ready, holes = guard.split([event("events", 0, 1234)])  # type: ignore[arg-type]
    assert len(ready) == 1 and holes == {}


def test_a_batch_finishing_after_the_next_assignment_leaves_no_hole_either() -> None:
    """The late mark outlives one more generation without the partition: still no hole."""
    consumer = FakeConsumer()
    guard = AckGuard(consumer, ["events"])  # type: ignore[arg-type]
    asyncio.run(guard.on_partitions_assigned(None, {P0, P1}))
    asyncio.run(guard.on_partitions_revoked(None, {P0, P1}))
    asyncio.run(guard.on_partitions_assigned(None, {P1}))
    # The batch in flight at the revoke finishes only now, with P0 another worker's.
    asyncio.run(guard.processed(event("events", 0, 992)))  # type: ignore[arg-type]
    asyncio.run(guard.on_partitions_revoked(None, {P1}))  # eager: every rebalance revokes all
    asyncio.run(guard.on_partitions_assigned(None, {P1}))
    asyncio.run(guard.on_partitions_revoked(None, {P1}))
    asyncio.run(guard.on_partitions_assigned(None, {P0, P1}))
    # Another worker committed 1717; faust resumes the stream before its seek.
    ready, holes = guard.split([event("events", 0, 1717)])  # type: ignore[arg-type]
    assert len(ready) == 1 and holes == {}
    # A partition held throughout keeps its position: a jump there is a hole.
    asyncio.run(guard.processed(event("events", 1, 40)))  # type: ignore[arg-type]
    asyncio.run(guard.on_partitions_assigned(None, {P0, P1}))
    ready, holes = guard.split([event("events", 1, 45)])  # type: ignore[arg-type]
    assert ready == [] and holes[P1].start == 41


def test_a_batch_taken_before_the_previous_one_is_marked_processed_continues_it() -> None:
    """Events are marked processed only at the commit, some batches after they were taken."""
    consumer = FakeConsumer()
    guard = AckGuard(consumer, ["events"])  # type: ignore[arg-type]
    ready, holes = guard.split([event("events", 0, n) for n in (0, 1, 2)])  # type: ignore[arg-type]
    assert _offsets(ready) == [(0, 0), (0, 1), (0, 2)] and holes == {}
    # Not marked processed yet (their commit is pending): 3..5 continue them.
    ready, holes = guard.split([event("events", 0, n) for n in (3, 4, 5)])  # type: ignore[arg-type]
    assert _offsets(ready) == [(0, 3), (0, 4), (0, 5)] and holes == {}
    # A real gap after them is still a hole, read again from the first missing offset.
    ready, holes = guard.split([event("events", 0, 7)])  # type: ignore[arg-type]
    assert ready == [] and holes[P0].start == 6 and holes[P0].reread is True
    assert _offsets(holes[P0].events) == [(0, 7)]
