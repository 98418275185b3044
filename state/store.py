"""Key-value stores holding one encoded state per user id: the `Store` protocol and two backends.

Values are persisted only by an explicit ``put``. ``get`` returns immutable
``bytes``; decoding them yields fresh arrays, and mutating those arrays (or
anything else derived from a value) never changes what is stored. The agent
therefore always does load -> step -> ``put`` (the Faust changelog rule).
"""

import logging
from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import Protocol, cast, runtime_checkable

from rocksdict import Options, Rdict

__all__ = ["KeyValue", "MemoryStore", "RocksDBStore", "Store"]

logger = logging.getLogger(__name__)

# RocksDB keeps an info LOG per open by default (up to 1000 LOG.old.* files);
# the stream reopens a partition's DB on every rebalance, so cap them.
_KEEP_LOG_FILES = 3


class KeyValue(Protocol):
    """What stepping users needs of a store: bytes in, bytes out (the processor's view)."""

    def get(self, key: bytes) -> bytes | None:
        """Return the value stored under ``key``, or ``None`` if there is none."""
        ...

    def put(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        ...


@runtime_checkable
class Store(KeyValue, Protocol):
    """Byte store keyed by user id (one instance per partition)."""

    def delete(self, key: bytes) -> None:
        """Remove ``key``; deleting a missing key is not an error."""
        ...

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Iterate over a snapshot of all pairs; writes during iteration are allowed and unseen."""
        ...

    def __len__(self) -> int:
        """Return the exact number of stored keys."""
        ...

    def close(self) -> None:
        """Release the store's resources; idempotent. Callers must not use the store afterwards."""
        ...


class MemoryStore:
    """Dict-backed `Store` for unit tests and single-process runs; nothing survives the process."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        """Return the value stored under ``key``, or ``None`` if there is none."""
        return self._data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        self._data[key] = value

    def delete(self, key: bytes) -> None:
        """Remove ``key``; deleting a missing key is not an error."""
        self._data.pop(key, None)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Iterate over a snapshot of all pairs (copies references, not values)."""
        # The snapshot matches RocksDB iterator semantics and lets callers delete while iterating.
        return iter(list(self._data.items()))

    def __len__(self) -> int:
        """Return the number of stored keys."""
        return len(self._data)

    def close(self) -> None:
        """Release nothing: contents stay readable so tests can inspect them after a run."""


class RocksDBStore:
    """`Store` on a RocksDB database in one directory (the stream uses one per partition).

    Writes go to RocksDB's write-ahead log without fsync: they survive a
    process crash but not necessarily a machine crash.
    """

    def __init__(self, path: str | PathLike[str]) -> None:
        """Open or create the database in ``path`` (missing parent directories are created).

        Args:
            path: Directory of this partition's database. RocksDB locks it, so a
                second open of the same directory, even in the same process,
                fails until this store is closed.
        """
        self._path = Path(path)
        options = Options(raw_mode=True)  # plain bytes in and out, no pickling
        options.set_keep_log_file_num(_KEEP_LOG_FILES)
        self._db = Rdict(str(self._path), options=options)
        self._closed = False
        logger.debug("opened RocksDB state store at %s", self._path)

    def get(self, key: bytes) -> bytes | None:
        """Return the value stored under ``key``, or ``None`` if there is none."""
        return cast(bytes | None, self._db.get(key))

    def put(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key``; both must be ``bytes`` (raw mode rejects bytearray)."""
        self._db.put(key, value)

    def delete(self, key: bytes) -> None:
        """Remove ``key``; deleting a missing key is not an error."""
        self._db.delete(key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Iterate in key order over the snapshot RocksDB pins when iteration starts."""
        return cast(Iterator[tuple[bytes, bytes]], self._db.items())

    def __len__(self) -> int:
        """Count the keys by a full scan: O(n), meant for tests and metrics, not the hot path."""
        # Rdict has no len() and "rocksdb.estimate-num-keys" is only an estimate.
        return sum(1 for _ in self._db.keys())

    def close(self) -> None:
        """Close the database and release its directory lock; idempotent."""
        # Rdict.close() raises DbClosedError on a second call.
        if not self._closed:
            self._db.close()
            self._closed = True
            logger.debug("closed RocksDB state store at %s", self._path)
