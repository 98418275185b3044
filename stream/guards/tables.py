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

__all__ = ["BatchStore", "ChangelogProducer", "ConfirmedTable", "StagedTable", "TableKeyValue"]


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

    def event_of(self, key: bytes) -> EventT:
        """The batch's last event keyed ``key``: its partition owns the key's state."""
        event = self._events.get(key)
        if event is None:
            # The processor reads/writes only users it has events of: this is a bug.
            raise LookupError(f"user key {key!r}: no event of this key in the batch")
        return event

    @contextmanager
    def _under_event_of(self, key: bytes) -> Iterator[None]:
        event = self.event_of(key)
        token = _current_event.set(weakref.ref(event))
        try:
            yield
        finally:
            _current_event.reset(token)


class BatchStore:
    """Reads through to ``backing``; holds writes until `commit()`.

    The agent commits a batch's writes (to the staged tables) only once the batch was
    processed and its outputs sent: a batch that fails halfway stages nothing, so the
    save that runs before the worker stops keeps the earlier batches' states only.
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


class StagedTable:
    """A table's writes held in memory between saves: read back first, written once each.

    The worker writes a user's state (and latest profile) once per save instead of once
    per event: between saves each user's newest value waits here, so a user with k
    events in a save interval costs one table write and one changelog record instead
    of k. Nothing staged is durable. The agent acks events only after the save that
    wrote their state (`stream.agents.ProfileBatches`), so a crash loses staged values
    together with the acks of their events, which are then consumed again.

    A save takes what is staged at once (`begin_save`) and writes it in parts
    (`write_saving`), so that batches go on between the parts: they stage anew, and
    read a key's staged value first, then its value being saved, then the table's.
    """

    def __init__(self, table: MutableMapping[bytes, bytes]) -> None:
        """Stage writes to ``table`` (keyed by user id; see `TableKeyValue` for the routing)."""
        self._table = table
        # Per key: the newest value and the event whose partition owns the key.
        self._values: dict[bytes, tuple[bytes, EventT]] = {}
        self.bytes = 0
        # The save in progress: the values it has still to write, and their order.
        self._saving: dict[bytes, tuple[bytes, EventT]] = {}
        self._saving_order: list[bytes] = []

    def __len__(self) -> int:
        """Keys staged or being saved."""
        return len(self._values) + len(self._saving)

    def get(self, key: bytes) -> bytes | None:
        """The staged value of ``key``, else the value being saved, else None (not the table's)."""
        staged = self._values.get(key) or self._saving.get(key)
        return None if staged is None else staged[0]

    def stage(self, key: bytes, value: bytes, event: EventT) -> None:
        """Hold ``value`` for ``key`` until a save; ``event`` is one of the key's events."""
        old = self._values.get(key)
        self.bytes += len(value) - (0 if old is None else len(old[0]))
        self._values[key] = (value, event)

    def store(self, events: Sequence[EventT]) -> KeyValue:
        """A batch's view: reads the staged value, else the table; writes are staged."""
        return _StagedKeyValue(self, TableKeyValue(self._table, events))

    def begin_save(self) -> int:
        """Take everything staged into a new save; return how many values it holds.

        Raises:
            RuntimeError: The last save has not written everything yet.
        """
        if self._saving:
            raise RuntimeError("a save is still being written")
        self._saving, self._values = self._values, {}
        self._saving_order = list(self._saving)
        self.bytes = 0
        return len(self._saving)

    def write_saving(self, limit: int) -> int:
        """Write up to ``limit`` values of the save to the table; return how many remain."""
        if not self._saving:
            return 0
        keys = self._saving_order[:limit]
        del self._saving_order[:limit]
        writer = TableKeyValue(self._table, [self._saving[key][1] for key in keys])
        for key in keys:
            writer.put(key, self._saving[key][0])
            del self._saving[key]
        return len(self._saving)

    def discard(self) -> int:
        """Drop every staged value and the save's unwritten ones; return how many."""
        count = len(self)
        self._values.clear()
        self._saving.clear()
        self._saving_order.clear()
        self.bytes = 0
        return count


class _StagedKeyValue:
    """`KeyValue` of one batch over a `StagedTable`: staged values first, then the table."""

    def __init__(self, staged: StagedTable, table: TableKeyValue) -> None:
        self._staged = staged
        self._table = table

    def get(self, key: bytes) -> bytes | None:
        staged = self._staged.get(key)
        return staged if staged is not None else self._table.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._staged.stage(key, value, self._table.event_of(key))
