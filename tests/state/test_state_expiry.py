"""Tests for TTL expiry of user states."""

import logging

import numpy as np
import pytest

from state.codec import encode_state
from state.expiry import expire, last_seen_from_state
from state.store import Store

NOW = 1_700_000_000.0
DAY = 86_400.0


def _put_user(store: Store, key: bytes, last_ts: float, make_state) -> None:
    store.put(key, encode_state(make_state(2, last_ts=last_ts), "v1"))


def test_last_seen_reads_the_last_ts_array(make_state) -> None:
    assert last_seen_from_state(encode_state(make_state(4, last_ts=123.5), "any")) == 123.5


def test_expire_deletes_only_users_older_than_the_ttl(store: Store, make_state) -> None:
    _put_user(store, b"fresh", NOW - 60, make_state)
    _put_user(store, b"on-the-edge", NOW - DAY, make_state)  # not strictly older: kept
    _put_user(store, b"stale", NOW - DAY - 1, make_state)
    _put_user(store, b"ancient", 0.0, make_state)

    assert expire(store, NOW, DAY, last_seen_from_state) == 2
    assert sorted(k for k, _ in store.items()) == [b"fresh", b"on-the-edge"]
    assert expire(store, NOW, DAY, last_seen_from_state) == 0


def test_expire_accepts_any_last_seen_reader(store: Store) -> None:
    store.put(b"a", b"10")
    store.put(b"b", b"99")
    assert expire(store, now=100.0, ttl_s=50.0, last_seen=lambda value: float(value)) == 1
    assert store.get(b"b") == b"99"


def test_expire_drops_undecodable_states_and_logs(
    store: Store, make_state, caplog: pytest.LogCaptureFixture
) -> None:
    _put_user(store, b"fresh", NOW, make_state)
    store.put(b"corrupt", b"not a state")
    with caplog.at_level(logging.WARNING, logger="state.expiry"):
        assert expire(store, NOW, DAY, last_seen_from_state) == 1
    assert store.get(b"corrupt") is None
    assert store.get(b"fresh") is not None
    assert "b'corrupt'" in caplog.text and "bad magic" in caplog.text


def test_state_without_last_ts_is_a_bug_not_expiry(store: Store) -> None:
    store.put(b"u", encode_state({"window": np.zeros((0, 100), np.float32)}, "v1"))
    with pytest.raises(KeyError, match="last_ts"):
        expire(store, NOW, DAY, last_seen_from_state)
    assert store.get(b"u") is not None


def test_last_ts_must_be_a_float64_scalar() -> None:
    value = encode_state({"last_ts": np.array([1.0, 2.0])}, "v1")
    with pytest.raises(ValueError, match="must be 0-d float64"):
        last_seen_from_state(value)
