"""Contract tests run against every Store backend, plus RocksDB persistence."""

from pathlib import Path

import numpy as np
import pytest

from state.codec import decode_state, encode_state
from state.store import MemoryStore, RocksDBStore, Store


def test_backends_satisfy_the_protocol(store: Store) -> None:
    assert isinstance(store, Store)


def test_get_missing_key_returns_none(store: Store) -> None:
    assert store.get(b"nobody") is None
    assert len(store) == 0
    assert list(store.items()) == []


def test_put_get_overwrite(store: Store) -> None:
    store.put(b"user-1", b"first")
    assert store.get(b"user-1") == b"first"
    store.put(b"user-1", b"second")
    assert store.get(b"user-1") == b"second"
    assert len(store) == 1


def test_binary_keys_and_empty_values(store: Store) -> None:
    store.put(b"\x00\xff", b"")
    assert store.get(b"\x00\xff") == b""
    assert store.get(b"\x00") is None


def test_delete_and_delete_missing(store: Store) -> None:
    store.put(b"a", b"1")
    store.put(b"b", b"2")
    store.delete(b"a")
    store.delete(b"never-stored")
    assert store.get(b"a") is None
    assert store.get(b"b") == b"2"
    assert len(store) == 1


def test_items_lists_every_pair_as_bytes(store: Store) -> None:
    expected = {f"user-{i}".encode(): bytes([i]) * i for i in range(20)}
    for key, value in expected.items():
        store.put(key, value)
    pairs = list(store.items())
    assert dict(pairs) == expected
    assert len(pairs) == len(store) == 20
    assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in pairs)


def test_items_is_a_snapshot_that_allows_writes(store: Store) -> None:
    for i in range(5):
        store.put(bytes([i]), b"v")
    seen = []
    for key, _ in store.items():
        seen.append(key)
        store.delete(key)
        store.put(b"new-" + key, b"w")
    assert sorted(seen) == [bytes([i]) for i in range(5)]
    assert sorted(k for k, _ in store.items()) == [b"new-" + bytes([i]) for i in range(5)]


def test_mutating_decoded_state_does_not_persist(store: Store) -> None:
    store.put(b"u", encode_state({"x": np.zeros(3)}, "v1"))
    state = decode_state(store.get(b"u") or b"")
    state["x"] += 1.0
    assert not decode_state(store.get(b"u") or b"")["x"].any()
    store.put(b"u", encode_state(state, "v1"))  # only an explicit put persists
    assert decode_state(store.get(b"u") or b"")["x"].tolist() == [1.0, 1.0, 1.0]


def test_close_is_idempotent(store: Store) -> None:
    store.put(b"a", b"1")
    store.close()
    store.close()


def test_rocksdb_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "partition-3"
    first = RocksDBStore(path)
    first.put(b"kept", b"value")
    first.put(b"gone", b"value")
    first.delete(b"gone")
    first.close()

    reopened = RocksDBStore(path)
    try:
        assert reopened.get(b"kept") == b"value"
        assert reopened.get(b"gone") is None
        assert len(reopened) == 1
    finally:
        reopened.close()


def test_rocksdb_partitions_are_independent_directories(tmp_path: Path) -> None:
    p0, p1 = RocksDBStore(tmp_path / "p0"), RocksDBStore(tmp_path / "p1")
    try:
        p0.put(b"user", b"in-p0")
        assert p1.get(b"user") is None
    finally:
        p0.close()
        p1.close()


def test_rocksdb_directory_is_locked_while_open(tmp_path: Path) -> None:
    first = RocksDBStore(tmp_path / "p0")
    try:
        with pytest.raises(Exception, match="lock"):  # rocksdict raises a bare Exception
            RocksDBStore(tmp_path / "p0")
    finally:
        first.close()
    RocksDBStore(tmp_path / "p0").close()  # the lock is released by close()


def test_memory_store_stays_readable_after_close() -> None:
    store = MemoryStore()
    store.put(b"a", b"1")
    store.close()
    assert store.get(b"a") == b"1"
