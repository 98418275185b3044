"""ConfirmedTable: the agent can wait until the broker has a batch's changelog records."""

from __future__ import annotations

import asyncio

import faust
import pytest
from faust.types import TP

from stream.guards.tables import ConfirmedTable


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
