"""The faust guards: what the worker adds to faust 0.15 so that no event is lost.

faust-streaming breaks at-least-once in seven ways (docs/broker-notes.md, F5) and
misreads the embedded tansu broker in two (T1, T6). The guards work around each, and
most reach into faust's private parts:

- `acks`: only offsets the agent processed are committed; holes are read again;
- `fence`: a batch writes state only while its partitions are still this worker's;
- `tables`: table writes under the right event, staged between commits, awaited until the
  broker has them;
- `highwater`: true end offsets for table recovery on tansu;
- `fetchwait`: the input consumer's fetch wait;
- `localstore`: the tables' RocksDB stores without a write-ahead log (the changelog is one);
- `take`: batches that close when the events stop coming, not after a fixed wait;
- `internals`: the faust internals all of these need, checked before the worker starts.

The worker uses them through the names below only: `consume_guarded` is the one way
an agent takes its events. Each name loads its module on first use, so importing this
package imports nothing of faust's private parts: `stream.worker` checks them
(`check_internals`) before any guard module is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream.guards.acks import PersistentHoleError
    from stream.guards.batches import acked_per_batch, consume_guarded
    from stream.guards.fetchwait import install as set_fetch_wait
    from stream.guards.highwater import install as correct_highwaters
    from stream.guards.internals import FaustInternalsError
    from stream.guards.internals import check as check_internals
    from stream.guards.localstore import install as skip_store_wal
    from stream.guards.tables import BatchStore, ConfirmedTable, StagedTable, TableKeyValue

__all__ = [
    "BatchStore",
    "ConfirmedTable",
    "FaustInternalsError",
    "PersistentHoleError",
    "StagedTable",
    "TableKeyValue",
    "acked_per_batch",
    "check_internals",
    "consume_guarded",
    "correct_highwaters",
    "set_fetch_wait",
    "skip_store_wal",
]

# Each public name: (module, attribute).
_EXPORTS: dict[str, tuple[str, str]] = {
    "BatchStore": ("tables", "BatchStore"),
    "ConfirmedTable": ("tables", "ConfirmedTable"),
    "FaustInternalsError": ("internals", "FaustInternalsError"),
    "PersistentHoleError": ("acks", "PersistentHoleError"),
    "StagedTable": ("tables", "StagedTable"),
    "TableKeyValue": ("tables", "TableKeyValue"),
    "check_internals": ("internals", "check"),
    "acked_per_batch": ("batches", "acked_per_batch"),
    "consume_guarded": ("batches", "consume_guarded"),
    "correct_highwaters": ("highwater", "install"),
    "set_fetch_wait": ("fetchwait", "install"),
    "skip_store_wal": ("localstore", "install"),
}


def __getattr__(name: str) -> Any:
    """Import the module behind ``name`` (PEP 562) when it is first asked for."""
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
