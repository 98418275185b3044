"""The worker's faust tables: writes awaited until the broker has them, accessed a batch at a time."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import faust
from faust.streams import _current_event  # faust 0.15.3 has no public setter (broker notes F3)
from faust.types import TP, EventT, FutureMessage

from state.store import KeyValue

__all__ = ["BatchStore", "ChangelogProducer", "ConfirmedTable", "TableKeyValue"]


class ChangelogProducer(Protocol):
    """Sends a record to one partition; the future gives its offset once the broker has it."""

    def send_now(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int
    ) -> asyncio.Future[int]:
        """Queue the record (`stream.publish.OutputProducer.send_now`)."""
        ...


@dataclass(frozen=True)
class _Sent:
    """What faust's ``on_key_set`` reads of a changelog send: ``.message.partition``."""

    message: _SentRecord


@dataclass(frozen=True)
class _SentRecord:
    partition: int


class ConfirmedTable(faust.Table):
    """A faust Table whose changelog writes can be awaited until the broker has them.

    faust sends a table write's changelog record through its producer buffer and,
    before committing offsets, "flushes" that buffer with a 0.1 s wait that gives up
    silently (faust 0.15.3 ``ProducerBuffer.flush_atmost``). On a slow broker or a
    loaded machine the consumer offset is then committed while the state it covers
    is still in the worker's memory: a SIGKILL, or the next owner of the partition
    recovering from the changelog during a rebalance, loses that state while its
    events count as consumed (broker notes F5). The agent therefore awaits
    `confirm()` before it acks a batch.

    With `write_through`, the records go through the worker's librdkafka producer
    instead of faust's buffer and aiokafka, whose Python produce path costs more than
    the writes' encoding: the same bytes (faust's serializers), to the partition faust
    picks, in order per partition (an idempotent producer). `confirm()` then records
    each partition's last offset as the local store's persisted one, as faust's send
    callback does, so a restart reads the changelog only past it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As `faust.Table`, plus the list of changelog sends not confirmed yet."""
        super().__init__(*args, **kwargs)
        self._unconfirmed: list[FutureMessage] = []
        self._producer: ChangelogProducer | None = None
        self._sent: list[tuple[int, asyncio.Future[int]]] = []

    def write_through(self, producer: ChangelogProducer) -> None:
        """Send the changelog records through ``producer`` from now on."""
        self._producer = producer

    def send_changelog(
        self,
        partition: int | None,
        key: Any,
        value: Any,
        key_serializer: Any = None,
        value_serializer: Any = None,
    ) -> Any:
        """Send as faust does, or through the `write_through` producer; remember the send."""
        if self._producer is not None and partition is not None and not self.app.in_transaction:
            topic = self.changelog_topic
            raw_key, key_headers = topic.prepare_key(key, key_serializer or self.key_serializer)
            raw_value, value_headers = (
                (None, None)
                if value is None
                else topic.prepare_value(value, value_serializer or self.value_serializer)
            )
            if not key_headers and not value_headers:
                sent = self._producer.send_now(
                    topic.get_topic_name(), raw_key, raw_value, partition
                )
                self._sent.append((partition, sent))
                return _Sent(_SentRecord(partition))
        faust_sent = super().send_changelog(partition, key, value, key_serializer, value_serializer)
        self._unconfirmed.append(faust_sent)
        return faust_sent

    async def confirm(self) -> None:
        """Wait until the broker acknowledged every changelog record sent so far.

        Raises the send's error if one failed, so the batch is not acked.
        """
        pending, self._unconfirmed = self._unconfirmed, []
        sent, self._sent = self._sent, []
        await asyncio.gather(*pending)
        offsets = await asyncio.gather(*(future for _, future in sent))
        last: dict[int, int] = {}
        for (partition, _), offset in zip(sent, offsets, strict=True):
            last[partition] = max(offset, last.get(partition, -1))
        topic = self.changelog_topic.get_topic_name()
        for partition, offset in last.items():
            self.data.set_persisted_offset(TP(topic, partition), offset)


class TableKeyValue:
    """`KeyValue` on a faust Table, each access made under the event of the key's user.

    faust picks the RocksDB partition database and the changelog partition of a
    table access from the *current event*, which `take`-style batches leave unset
    (broker notes F3). Reads and writes of a key therefore run with the current
    event set to the batch's last event with that Kafka key: the processor only
    touches state of users whose events are keyed by their user id, so that event
    came from the partition owning the user's state.
    """

    def __init__(self, table: MutableMapping[bytes, bytes], events: Sequence[EventT]) -> None:
        """Bind the table and the batch whose events scope the accesses."""
        self._table = table
        self._events: dict[bytes, EventT] = {}
        for event in events:
            if isinstance(event.key, bytes):
                self._events[event.key] = event

    def get(self, key: bytes) -> bytes | None:
        """The user's stored state, read from the user's partition."""
        with self._under_event_of(key):
            return self._table.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        """Write the user's state to the user's partition (and its changelog)."""
        with self._under_event_of(key):
            self._table[key] = value

    @contextmanager
    def _under_event_of(self, key: bytes) -> Iterator[None]:
        event = self._events.get(key)
        if event is None:
            # The processor reads/writes only users it has events of: this is a bug.
            raise LookupError(f"user key {key!r}: no event of this key in the batch")
        token = _current_event.set(weakref.ref(event))
        try:
            yield
        finally:
            _current_event.reset(token)


class BatchStore:
    """Reads through to ``backing``; holds writes until `commit()`.

    The agent commits only after the batch's profiles are delivered. A crash in
    between leaves the old state, so the redelivered events are processed again
    and their profiles re-published, instead of being skipped as already applied
    while their profiles were never sent.
    """

    def __init__(self, backing: KeyValue) -> None:
        """Wrap the store that `commit()` writes to."""
        self._backing = backing
        self._pending: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        """The pending value if this batch wrote one, else the stored one."""
        pending = self._pending.get(key)
        return pending if pending is not None else self._backing.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        """Hold a write for `commit()`."""
        self._pending[key] = value

    @property
    def pending(self) -> int:
        """Writes not committed yet."""
        return len(self._pending)

    def commit(self) -> None:
        """Write every held value to the backing store."""
        for key, value in self._pending.items():
            self._backing.put(key, value)
        self._pending.clear()
