"""Factory fixtures for the state tests: model-like states and both store backends."""

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from state.store import MemoryStore, RocksDBStore, Store

StateFactory = Callable[..., dict[str, np.ndarray]]


@pytest.fixture
def make_state() -> StateFactory:
    """Build a state shaped like the model's: a growing [n, 100] window plus small arrays."""

    def factory(n_events: int = 3, last_ts: float = 1_700_000_000.0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(n_events)
        return {
            "window": rng.standard_normal((n_events, 100)).astype(np.float32),
            "hidden": rng.standard_normal((2, 64)),
            "category_counts": rng.integers(0, 1000, size=20, dtype=np.int64),
            "active": np.array(n_events > 0),
            "last_ts": np.array(last_ts, dtype=np.float64),
        }

    return factory


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each contract test runs once per backend; RocksDB gets its own partition directory."""
    backend: Store = (
        MemoryStore() if request.param == "memory" else RocksDBStore(tmp_path / "partition-0")
    )
    yield backend
    backend.close()
