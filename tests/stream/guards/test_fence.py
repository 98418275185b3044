"""RebalanceFence: which taken events are still the worker's, and revokes wait for a batch."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP, Message

from stream.guards.fence import RebalanceFence

OURS, THEIRS = TP("events", 0), TP("events", 1)


@dataclass
class FakeSignal:
    receivers: list[Any] = field(default_factory=list)

    def connect(self, fun: Any) -> Any:
        self.receivers.append(fun)
        return fun

    async def send(self, revoked: set[TP]) -> None:
        for receiver in self.receivers:
            await receiver(None, revoked, signal=self)


@dataclass
class FakeStream:
    processors: list[Any] = field(default_factory=list)
    current_event: Any = None

    def add_processor(self, fun: Any) -> None:
        self.processors.append(fun)

    def passes(self, event: Any) -> None:
        """What faust's stream iterator does with an event it lets through."""
        self.current_event = event
        for processor in self.processors:
            processor(event.value)


def make_fence(session_timeout: float = 6.0) -> tuple[RebalanceFence, Any, FakeStream]:
    app = SimpleNamespace(
        conf=SimpleNamespace(broker_session_timeout=session_timeout),
        consumer=SimpleNamespace(assignment=lambda: {OURS}),
        should_stop=False,
        on_partitions_revoked=FakeSignal(),
    )
    stream = FakeStream()
    return RebalanceFence(app, stream), app, stream  # type: ignore[arg-type]


def event(tp: TP, offset: int) -> SimpleNamespace:
    message = Message(tp.topic, tp.partition, offset, 0.0, 0, [], b"u", b"{}", None)
    return SimpleNamespace(message=message, value=b"{}")


def test_an_event_fetched_in_this_epoch_of_an_assigned_partition_is_current() -> None:
    fence, _, stream = make_fence()
    ours, theirs, never_passed = event(OURS, 1), event(THEIRS, 1), event(OURS, 2)
    stream.passes(ours)
    stream.passes(theirs)
    assert fence.current(ours)  # type: ignore[arg-type]
    assert not fence.current(theirs)  # type: ignore[arg-type]
    assert not fence.current(never_passed)  # type: ignore[arg-type]


def test_a_revoke_makes_events_fetched_before_it_stale_but_not_those_after() -> None:
    fence, app, stream = make_fence()
    before, after = event(OURS, 1), event(OURS, 2)
    stream.passes(before)
    asyncio.run(app.on_partitions_revoked.send({OURS}))
    stream.passes(after)
    assert fence.epoch == 1
    assert not fence.current(before)  # type: ignore[arg-type]
    assert fence.current(after)  # type: ignore[arg-type]


def test_a_revoke_waits_for_the_batch_in_flight_which_may_still_write() -> None:
    fence, app, _ = make_fence()

    async def scenario() -> list[str]:
        steps: list[str] = []
        async with fence.batch() as epoch:
            revoke = asyncio.ensure_future(app.on_partitions_revoked.send({OURS}))
            await asyncio.sleep(0.05)
            steps.append(f"revoke done: {revoke.done()}")
            steps.append(f"may write: {fence.may_write(epoch, {OURS})}")
        await revoke
        steps.append(f"after: {fence.may_write(epoch, {OURS})}")
        return steps

    assert asyncio.run(scenario()) == ["revoke done: False", "may write: True", "after: False"]


def test_a_revoke_gives_up_waiting_and_the_slow_batch_may_not_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fence, app, _ = make_fence(session_timeout=0.1)  # waits 0.05 s

    async def scenario() -> bool:
        async with fence.batch() as epoch:
            await app.on_partitions_revoked.send({OURS})
            return fence.may_write(epoch, {OURS})

    with caplog.at_level(logging.WARNING, logger="stream.guards.fence"):
        assert asyncio.run(scenario()) is False
    assert "did not wait for the batch in flight" in caplog.text


def test_nothing_may_be_written_for_a_partition_not_assigned_or_while_stopping() -> None:
    fence, app, _ = make_fence()
    assert fence.may_write(0, {OURS})
    assert not fence.may_write(0, {OURS, THEIRS})
    app.should_stop = True
    assert not fence.may_write(0, {OURS})


def test_a_revoke_waits_for_every_streams_batch_at_once() -> None:
    """Two agent streams (re-keying and profiles): one wait for both, not one after the other.

    mode runs a signal's receivers in turn; a receiver per fence would wait up to half
    the session timeout per stream.
    """
    first, app, _ = make_fence()
    second = RebalanceFence(app, FakeStream())  # type: ignore[arg-type]
    assert len(app.on_partitions_revoked.receivers) == 1

    async def scenario() -> list[bool]:
        async with first.batch() as epoch_a, second.batch() as epoch_b:
            revoke = asyncio.ensure_future(app.on_partitions_revoked.send({OURS}))
            await asyncio.sleep(0.05)
            # Both fences are waiting for their batch at the same time.
            waiting = [bool(f._in_flight._waiters) for f in (first, second)]  # noqa: SLF001
        await revoke
        return [*waiting, first.may_write(epoch_a, {OURS}), second.may_write(epoch_b, {OURS})]

    assert asyncio.run(scenario()) == [True, True, False, False]


def test_a_revoke_runs_before_revoke_after_the_batch_and_before_the_epoch_moves() -> None:
    fence, app, _ = make_fence()  # waits up to 3 s
    steps: list[str] = []
    seen: list[tuple[list[str], int, float]] = []
    next_epochs: list[int] = []
    next_batches: list[asyncio.Future[None]] = []

    async def next_batch() -> None:
        async with fence.batch() as epoch:
            next_epochs.append(epoch)

    async def receiver(seconds_left: float) -> None:
        seen.append((list(steps), fence.epoch, seconds_left))
        # A batch taken while the receiver runs waits until the revoke is over.
        next_batches.append(asyncio.ensure_future(next_batch()))
        await asyncio.sleep(0.02)
        steps.append(f"next batch in during the receiver: {bool(next_epochs)}")

    fence.before_revoke(receiver)

    async def scenario() -> None:
        async with fence.batch():
            revoke = asyncio.ensure_future(app.on_partitions_revoked.send({OURS}))
            await asyncio.sleep(0.05)
            steps.append(f"receiver ran during the batch: {bool(seen)}")
        await revoke
        await asyncio.gather(*next_batches)

    asyncio.run(scenario())
    [(before, epoch, seconds_left)] = seen
    assert before == ["receiver ran during the batch: False"]
    assert epoch == 0  # the batch's epoch: what it staged may still be written
    assert 0 < seconds_left < 3.0  # what the wait for the batch left of its 3 s
    assert steps[-1] == "next batch in during the receiver: False"
    assert next_epochs == [1] and fence.epoch == 1


def test_a_revoke_that_gives_up_waiting_runs_no_before_revoke_receiver() -> None:
    fence, app, _ = make_fence(session_timeout=0.1)  # waits 0.05 s
    seen: list[int] = []

    async def receiver(seconds_left: float) -> None:
        seen.append(fence.epoch)

    fence.before_revoke(receiver)

    async def scenario() -> None:
        async with fence.batch():
            await app.on_partitions_revoked.send({OURS})
            assert seen == []  # the batch still runs: nothing of it may be committed
        await app.on_partitions_revoked.send({OURS})  # the next revoke, with no batch running

    asyncio.run(scenario())
    assert seen == [1] and fence.epoch == 2
