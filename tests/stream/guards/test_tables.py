"""ConfirmedTable: the agent can wait until the broker has a batch's changelog records."""

from __future__ import annotations

import asyncio

import faust
import pytest

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
