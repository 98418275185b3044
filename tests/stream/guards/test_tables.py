"""ConfirmedTable: the agent can wait until the broker has a batch's changelog records.

StagedTable: the writes of several batches held in memory, then written once per key.
"""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any

import faust
import pytest
from faust.streams import current_event
from faust.types import TP, Message

from stream.guards.tables import ConfirmedTable, StagedTable


def test_confirm_waits_for_every_changelog_send_and_raises_its_error(monkeypatch) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        sends: list[asyncio.Future] = []

        def send_changelog(self, *args, **kwargs) -> asyncio.Future:
            sends.append(loop.create_future())
            return sends[-1]

        monkeypatch.setattr(faust.Table, "send_changelog", send_changelog)
        app = faust.App("confirm-test", broker="memory://", Table=ConfirmedTable)
        table = app.Table("state")
        assert isinstance(table, ConfirmedTable)
        table.send_changelog(0, b"u1", b"s1")
        table.send_changelog(1, b"u2", b"s2")
        confirm = asyncio.ensure_future(table.confirm())
        await asyncio.sleep(0.01)
        assert not confirm.done()  # the broker has not acknowledged yet
        sends[0].set_result("ok")
        await asyncio.sleep(0.01)
        assert not confirm.done()
        sends[1].set_result("ok")
        await asyncio.wait_for(confirm, 1)
        await table.confirm()  # nothing pending: returns at once

        table.send_changelog(0, b"u1", b"s3")
        sends[2].set_exception(RuntimeError("broker said no"))
        with pytest.raises(RuntimeError, match="broker said no"):
            await table.confirm()

    asyncio.run(scenario())


class FakeChangelogProducer:
    """Records each send; the test completes the futures with offsets."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, int]] = []
        self.futures: list[asyncio.Future[int]] = []

    def send_now(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int
    ) -> asyncio.Future[int]:
        self.sent.append((topic, key, value, partition))
        self.futures.append(asyncio.get_running_loop().create_future())
        return self.futures[-1]


def test_written_through_a_producer_the_records_are_faust_s_and_set_the_persisted_offsets(
    tmp_path,
) -> None:
    async def scenario() -> None:
        app = faust.App(
            "through-test", broker="memory://", Table=ConfirmedTable, datadir=str(tmp_path)
        )
        table = app.Table("state", key_type=bytes, value_type=bytes, partitions=2)
        producer = FakeChangelogProducer()
        table.write_through(producer)
        persisted: dict[TP, int] = {}
        table.data.set_persisted_offset = lambda tp, offset: persisted.__setitem__(tp, offset)
        sent = table.send_changelog(1, b"u1", b"s1")
        assert sent.message.partition == 1  # what faust's on_key_set reads
        table.send_changelog(1, b"u2", b"s2")
        table.send_changelog(0, b"u3", None)  # a deletion: a tombstone
        topic = table.changelog_topic.get_topic_name()
        assert producer.sent == [
            (topic, b"u1", b"s1", 1),
            (topic, b"u2", b"s2", 1),
            (topic, b"u3", None, 0),
        ]
        confirm = asyncio.ensure_future(table.confirm())
        for future, offset in zip(producer.futures[:2], (7, 8), strict=True):
            future.set_result(offset)
        await asyncio.sleep(0.01)
        assert not confirm.done() and persisted == {}  # u3's record is not on the broker yet
        producer.futures[2].set_result(3)
        await asyncio.wait_for(confirm, 1)
        assert persisted == {TP(topic, 1): 8, TP(topic, 0): 3}

        table.send_changelog(0, b"u1", b"s4")
        producer.futures[3].set_exception(RuntimeError("delivery failed"))
        with pytest.raises(RuntimeError, match="delivery failed"):
            await table.confirm()
        assert persisted[TP(topic, 0)] == 3

    asyncio.run(scenario())


class _Table(dict[bytes, bytes]):
    """A table that records each access with the partition and offset of the current event."""

    def __init__(self, items: dict[bytes, bytes] | None = None) -> None:
        super().__init__(items or {})
        self.seen: list[tuple[str, bytes, int, int]] = []

    def get(self, key: bytes, default: Any = None) -> Any:
        event = current_event()
        assert event is not None, "a table read without the key's event"
        self.seen.append(("get", key, event.message.partition, event.message.offset))
        return super().get(key, default)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        event = current_event()
        assert event is not None, "a table write without the key's event"
        self.seen.append(("set", key, event.message.partition, event.message.offset))
        super().__setitem__(key, value)


@cache
def _app() -> faust.App:
    return faust.App("staged-test")


def _event(key: bytes, partition: int, offset: int) -> faust.Event:
    message = Message(
        topic="events",
        partition=partition,
        offset=offset,
        timestamp=0.0,
        timestamp_type=0,
        headers={},
        key=key,
        value=b"{}",
        checksum=None,
        tp=TP("events", partition),
    )
    return faust.Event(_app(), key, b"{}", {}, message)


def test_a_staged_value_is_read_back_but_not_the_tables() -> None:
    table = _Table({b"bob": b"stored"})
    staged = StagedTable(table)
    staged.stage(b"alice", b"new", _event(b"alice", 0, 1))
    assert staged.get(b"alice") == b"new"
    assert staged.get(b"bob") is None  # only what is staged
    assert len(staged) == 1 and table.seen == []


def test_a_batch_view_reads_the_staged_value_first_then_the_table() -> None:
    table = _Table({b"alice": b"old", b"bob": b"stored"})
    staged = StagedTable(table)
    staged.stage(b"alice", b"new", _event(b"alice", 0, 1))
    view = staged.store([_event(b"alice", 0, 2), _event(b"bob", 2, 7)])
    assert view.get(b"alice") == b"new"
    assert view.get(b"bob") == b"stored"
    assert table.seen == [("get", b"bob", 2, 7)]  # under the event of bob's partition
    assert current_event() is None


def test_a_put_is_staged_and_counted_in_bytes_not_written() -> None:
    table = _Table({b"alice": b"old"})
    staged = StagedTable(table)
    view = staged.store([_event(b"alice", 0, 1), _event(b"bob", 2, 7)])
    view.put(b"alice", b"x" * 10)
    view.put(b"bob", b"y" * 4)
    assert staged.bytes == 14
    view.put(b"alice", b"z" * 3)  # replaces alice's staged value
    assert staged.bytes == 7 and len(staged) == 2
    assert view.get(b"alice") == b"zzz"
    assert dict(table) == {b"alice": b"old"} and table.seen == []
    with pytest.raises(LookupError, match="carol"):
        view.put(b"carol", b"x")  # no event of carol in the batch: no partition to write to


def test_a_save_writes_each_key_once_under_its_latest_event_and_empties() -> None:
    table = _Table()
    staged = StagedTable(table)
    first = staged.store([_event(b"alice", 0, 1), _event(b"bob", 2, 7)])
    first.put(b"alice", b"a1")
    first.put(b"bob", b"b1")
    second = staged.store([_event(b"alice", 0, 2)])
    second.put(b"alice", b"a2")
    second.put(b"alice", b"a3")
    assert staged.begin_save() == 2 and staged.write_saving(2) == 0
    assert dict(table) == {b"alice": b"a3", b"bob": b"b1"}
    assert sorted(table.seen) == [("set", b"alice", 0, 2), ("set", b"bob", 2, 7)]
    assert current_event() is None
    assert len(staged) == 0 and staged.bytes == 0 and staged.get(b"alice") is None
    assert staged.begin_save() == 0 and staged.write_saving(2) == 0
    assert len(table.seen) == 2  # nothing left to write


def test_a_discard_drops_every_staged_value_unwritten() -> None:
    table = _Table({b"alice": b"old"})
    staged = StagedTable(table)
    view = staged.store([_event(b"alice", 0, 1), _event(b"bob", 2, 7)])
    view.put(b"alice", b"new")
    view.put(b"bob", b"new")
    assert staged.discard() == 2
    assert len(staged) == 0 and staged.bytes == 0
    assert view.get(b"alice") == b"old"  # the table's again
    assert staged.begin_save() == 0 and staged.write_saving(2) == 0
    assert dict(table) == {b"alice": b"old"} and [s[0] for s in table.seen] == ["get"]


def test_a_save_in_parts_lets_batches_stage_anew_and_read_the_newest_value() -> None:
    table = _Table({b"carol": b"c0"})
    staged = StagedTable(table)
    events = [_event(b"alice", 0, 1), _event(b"bob", 2, 7), _event(b"carol", 1, 3)]
    view = staged.store(events)
    view.put(b"alice", b"a1")
    view.put(b"bob", b"b1")
    assert staged.begin_save() == 2 and staged.bytes == 0  # the budget counts what is staged
    with pytest.raises(RuntimeError, match="still being written"):
        staged.begin_save()
    view.put(b"bob", b"b2")  # a batch between the save's parts
    assert staged.bytes == 2 and len(staged) == 3  # staged, and being saved
    assert view.get(b"alice") == b"a1"  # being saved
    assert view.get(b"bob") == b"b2"  # staged since: newer than the save's
    assert view.get(b"carol") == b"c0"  # the table's
    assert staged.write_saving(1) == 1  # alice, the first staged
    assert dict(table) == {b"carol": b"c0", b"alice": b"a1"}
    assert staged.write_saving(1) == 0
    assert table[b"bob"] == b"b1" and staged.get(b"bob") == b"b2"
    assert ("set", b"bob", 2, 7) in table.seen and current_event() is None
    assert staged.begin_save() == 1 and staged.write_saving(10) == 0
    assert table[b"bob"] == b"b2" and len(staged) == 0


def test_a_discard_drops_the_unwritten_part_of_a_save_too() -> None:
    table = _Table()
    staged = StagedTable(table)
    view = staged.store([_event(b"alice", 0, 1), _event(b"bob", 2, 7)])
    view.put(b"alice", b"a1")
    view.put(b"bob", b"b1")
    staged.begin_save()
    assert staged.write_saving(1) == 1
    view.put(b"alice", b"a2")
    assert staged.discard() == 2  # bob's unwritten saved value, alice's staged one
    assert len(staged) == 0 and staged.write_saving(10) == 0
    assert dict(table) == {b"alice": b"a1"}  # what was written stays
    assert staged.begin_save() == 0  # no save left open
