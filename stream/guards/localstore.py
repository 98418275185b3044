"""The tables' local RocksDB stores without RocksDB's write-ahead log: the changelog is the log.

faust writes each table record to the partition's local RocksDB store and to the
table's changelog topic, and the store keeps the changelog offset it holds up to (its
persisted offset, which `stream.guards.tables.ConfirmedTable.confirm` sets once the
broker has the records). RocksDB's write-ahead log makes every put durable on its own:
a second copy of what the changelog already holds. For the worker's 16 KB state records
it was about two thirds of a put's cost (about 40 of 58 us on this machine).

Without it, a crash loses the store's writes since its last memtable flush, its
persisted offset among them: a table's store has one column family, whose flushes keep
the writes in order, so what survives is a prefix of them, and faust's recovery reads
the changelog from the older offset back to the end. Nothing is lost, only read again.
A graceful stop loses nothing: RocksDB flushes unpersisted memtables when it closes a
database written without a log. ``HUP_STORE_WAL=1`` keeps the log.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import rocksdict
from faust.stores.rocksdb import Store
from faust.types import AppT

__all__ = ["install"]

logger = logging.getLogger(__name__)

# The apps whose stores skip the log; other apps keep faust's.
_APPS: weakref.WeakSet[AppT] = weakref.WeakSet()
_faust_open_for_partition = Store._open_for_partition  # noqa: SLF001


def _open_for_partition(self: Store, partition: int) -> Any:
    """The partition's store as faust opens it, without RocksDB's log if the app asked."""
    db = _faust_open_for_partition(self, partition)
    if self.app in _APPS:
        if self.use_rocksdict:
            options = rocksdict.WriteOptions()
            # A property at run time (rocksdict 0.3); its stub declares a method.
            options.disable_wal = True  # type: ignore[method-assign, assignment]
            db.set_write_options(options)
        else:
            logger.warning(
                "table store of partition %d keeps RocksDB's write-ahead log: it is not "
                "opened with rocksdict",
                partition,
            )
    return db


def install(app: AppT) -> None:
    """Open ``app``'s table stores without RocksDB's write-ahead log from now on."""
    _APPS.add(app)
    Store._open_for_partition = _open_for_partition  # type: ignore[method-assign]  # noqa: SLF001
