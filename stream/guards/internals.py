"""The faust internals the worker's guards patch or read, checked before it starts.

faust-streaming 0.15 breaks at-least-once in seven ways (docs/broker-notes.md, F5), and
the work-arounds reach into its private parts: `stream.guards.acks` replaces the consumer's
``ack`` and ``_add_gap`` and empties ``FlowControlEvent._queues``, `stream.guards.tables`
sets ``faust.streams._current_event``, `stream.guards.highwater` replaces ``highwaters``,
`stream.guards.fetchwait` wraps the consumer thread's ``_create_worker_consumer``,
`stream.guards.take` fills batches through the stream's ``_enable_passive`` and
``_processors``, `stream.guards.localstore` wraps the RocksDB store's
``_open_for_partition``, `stream.metrics` reads ``_committed_offset`` and the store's
``_dbs`` (as `stream.sweeper` does). Another
faust release may rename any of them, and a guard that silently patches nothing would
lose events. So the worker checks each one before it imports the modules that use
them (`stream.worker.main`) and again when faust prepares the worker
(`stream.startup.WorkerContext.prepare`), and refuses to start with one line that
names the faust version and what is missing.

The tested versions are pinned in ``constraints.txt``; `TESTED` repeats them for the
message (a test keeps the two equal).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

__all__ = ["REQUIRED", "TESTED", "FaustInternalsError", "Internal", "check", "missing"]

# The versions the guards are tested against (constraints.txt pins them).
TESTED = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}


class FaustInternalsError(RuntimeError):
    """faust lacks an internal the worker patches; the message is one line for the operator."""


@dataclass(frozen=True)
class Internal:
    """One attribute of faust (or mode) that a guard patches or reads.

    ``owner`` is ``"module"`` or ``"module:Class"``. On a class, an attribute counts as
    present when the class (or a base) defines it or declares it in its annotations:
    faust declares the consumer's bookkeeping (``_unacked_messages``, ...) in the class
    body and assigns it in ``__init__``.
    """

    owner: str
    name: str
    used_by: str

    def __str__(self) -> str:
        """``Class.attribute`` or ``module.attribute``."""
        return f"{self.owner.rpartition(':')[2] or self.owner}.{self.name}"


_CONSUMER = "faust.transport.drivers.aiokafka:Consumer"  # the consumer class faust's kafka:// uses

# Every private (or patched public) attribute the stream package touches; keep in step
# with `grep -rn "noqa: SLF001\|faust 0.15" stream`.
REQUIRED: tuple[Internal, ...] = (
    Internal(_CONSUMER, "ack", "stream.guards.acks replaces it on the consumer"),
    Internal(_CONSUMER, "_add_gap", "stream.guards.acks replaces it on the consumer"),
    Internal(_CONSUMER, "_unacked_messages", "stream.guards.acks releases abandoned events"),
    Internal(_CONSUMER, "_waiting_for_ack", "stream.guards.acks wakes a waiting rebalance"),
    Internal(_CONSUMER, "seek", "stream.guards.acks re-reads an input gap"),
    Internal(_CONSUMER, "seek_to_committed", "stream.guards.acks wraps it on the consumer"),
    Internal(_CONSUMER, "highwaters", "stream.guards.highwater replaces it on the consumer"),
    Internal(_CONSUMER, "highwater", "stream.metrics reads the lag"),
    Internal(_CONSUMER, "_committed_offset", "stream.metrics reads the lag"),
    Internal("mode.utils.queues:FlowControlEvent", "_queues", "stream.guards.acks keeps the queue"),
    Internal("faust.streams", "_current_event", "stream.guards.tables scopes table access"),
    Internal("faust.streams:Stream", "current_event", "stream.guards.fence stamps events"),
    Internal("faust.streams:Stream", "_enable_passive", "stream.guards.take fills batches"),
    Internal("faust.streams:Stream", "_processors", "stream.guards.take fills batches"),
    Internal("faust.tables.base:Collection", "send_changelog", "stream.guards.tables confirms"),
    Internal("faust.stores.rocksdb:Store", "_dbs", "stream.metrics counts users"),
    Internal(
        "faust.stores.rocksdb:Store",
        "_open_for_partition",
        "stream.guards.localstore opens stores without RocksDB's log",
    ),
    Internal("faust.stores.rocksdb:Store", "offset_key", "stream.metrics counts users"),
    Internal(
        "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread",
        "_create_worker_consumer",
        "stream.guards.fetchwait sets the input fetch wait",
    ),
    Internal(
        "faust.transport.drivers.aiokafka",
        "credentials_to_aiokafka_auth",
        "stream.guards.highwater reads end offsets",
    ),
)


def _present(internal: Internal) -> bool:
    module_name, _, class_name = internal.owner.partition(":")
    try:
        owner = importlib.import_module(module_name)
    except ImportError:
        return False
    if class_name:
        cls = getattr(owner, class_name, None)
        if not isinstance(cls, type):
            return False
        if hasattr(cls, internal.name):
            return True
        return any(internal.name in vars(base).get("__annotations__", {}) for base in cls.__mro__)
    return hasattr(owner, internal.name)


def missing(required: Iterable[Internal] = REQUIRED) -> list[Internal]:
    """The internals of ``required`` that the installed faust does not have."""
    return [internal for internal in required if not _present(internal)]


def _installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


def describe(absent: Sequence[Internal]) -> str:
    """One line: the faust version, what it lacks and who needs it, the tested version."""
    what = ", ".join(f"{internal} ({internal.used_by})" for internal in absent)
    return (
        f"faust-streaming {_installed('faust-streaming')} (mode-streaming "
        f"{_installed('mode-streaming')}) lacks internals the worker patches: {what}; "
        f"install the tested versions with `pip install -c constraints.txt` "
        f"(faust-streaming=={TESTED['faust-streaming']})"
    )


def check(required: Iterable[Internal] = REQUIRED) -> None:
    """Raise `FaustInternalsError` (one line) unless every internal is there.

    Raises:
        FaustInternalsError: The installed faust lacks at least one of ``required``.
    """
    absent = missing(required)
    if absent:
        raise FaustInternalsError(describe(absent))
