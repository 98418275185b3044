"""The tables' local stores without RocksDB's write-ahead log (`stream.guards.localstore`)."""

from __future__ import annotations

import os
from pathlib import Path

import faust

from stream.guards.localstore import install


def _log_bytes_after_writes(app: faust.App) -> int:
    """Bytes in the partition store's write-ahead log files after 100 writes of 16 KB."""
    store = app.Table("states", default=None).data
    db = store._open_for_partition(0)
    for n in range(100):
        db.put(b"user-%d" % n, os.urandom(16_000))
    return sum(f.stat().st_size for f in Path(store.partition_path(0)).glob("*.log"))


def test_an_installed_app_writes_its_stores_without_the_log(tmp_path: Path) -> None:
    app = faust.App("wal-off", broker="memory://", store="rocksdb://", datadir=tmp_path)
    install(app)
    assert _log_bytes_after_writes(app) == 0


def test_other_apps_keep_the_log(tmp_path: Path) -> None:
    install(faust.App("wal-off", broker="memory://", store="rocksdb://", datadir=tmp_path / "a"))
    other = faust.App("wal-on", broker="memory://", store="rocksdb://", datadir=tmp_path / "b")
    assert _log_bytes_after_writes(other) > 100 * 16_000
