"""`StateCache`: a hit is exactly the state the store's bytes decode to, and costs no decode."""

from __future__ import annotations

from collections import Counter
from dataclasses import fields
from typing import Any

import numpy as np
import orjson
import pytest

import state.userstate
from hup.incremental import ProfileState
from hup.runtime import Profiler
from hup.sessions import Dataset
from state.store import MemoryStore
from state.userstate import StateCache, UserState, load_user_state
from stream.processor import InputRecord, Processor


def _batches(traffic: Dataset, size: int) -> list[list[InputRecord]]:
    """Every event of every user, interleaved round-robin as a topic delivers, in batches."""
    queues = [list(s.events) for s in traffic.sessions]
    records: list[InputRecord] = []
    while any(queues):
        for queue in queues:
            if queue:
                event = queue.pop(0)
                value = orjson.dumps(event.model_dump(mode="json", exclude_none=True))
                records.append(InputRecord(value, "in", 0, len(records), event.user_id.encode()))
    return [records[i : i + size] for i in range(0, len(records), size)]


def _assert_same_state(a: UserState, b: UserState) -> None:
    assert a.seq_base == b.seq_base
    for f in fields(ProfileState):
        left, right = getattr(a.state, f.name), getattr(b.state, f.name)
        if f.name == "windows":
            assert len(left) == len(right)
            for x, y in zip(left, right, strict=True):
                np.testing.assert_array_equal(x, y, strict=True)
        elif isinstance(left, np.ndarray):
            np.testing.assert_array_equal(left, right, strict=True)
        elif f.name == "features":
            for g in fields(left):  # field by field: a float field may be NaN in both
                x, y = getattr(left, g.name), getattr(right, g.name)
                assert x == y or (x != x and y != y), g.name
        else:
            assert left == right, f.name


def test_every_cached_state_is_what_its_stored_bytes_decode_to(
    profiler: Profiler, traffic: Dataset
) -> None:
    cache = StateCache(1 << 30)
    processor, store = Processor(profiler, state_cache=cache), MemoryStore()
    for batch in _batches(traffic, 64):
        processor.process(batch, store)
    assert cache.hits > 0 and len(cache) == len(traffic.sessions)
    for key, raw in store.items():
        cached = cache.lookup(key, raw)
        assert cached is not None
        _assert_same_state(cached, load_user_state(raw, profiler, Counter(), key))


def test_a_worker_with_the_cache_writes_and_publishes_the_same_bytes(
    profiler: Profiler, traffic: Dataset
) -> None:
    plain, plain_store = Processor(profiler, clock=lambda: 2e9), MemoryStore()
    cache = StateCache(1 << 30)
    cached = Processor(profiler, clock=lambda: 2e9, state_cache=cache)
    cached_store = MemoryStore()
    for batch in _batches(traffic, 48):
        a, b = plain.process(batch, plain_store), cached.process(batch, cached_store)
        assert [p.value for p in a.profiles] == [p.value for p in b.profiles]
        assert a.outcomes == b.outcomes
        assert dict(plain_store.items()) == dict(cached_store.items())
    assert cache.hits > len(traffic.sessions)


def test_a_hit_skips_the_decode(
    profiler: Profiler, traffic: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = _batches(traffic, 64)
    processor = Processor(profiler, state_cache=StateCache(1 << 30))
    store = MemoryStore()
    processor.process(batches[0], store)
    decodes = Counter[str]()
    decode = state.userstate.decode_state

    def counted(*args: Any, **kwargs: Any) -> Any:
        decodes["decode"] += 1
        return decode(*args, **kwargs)

    monkeypatch.setattr(state.userstate, "decode_state", counted)
    processor.process(batches[1], store)
    assert decodes["decode"] == 0


def test_other_bytes_in_the_store_are_decoded_not_served_from_the_cache(
    profiler: Profiler,
) -> None:
    cache = StateCache(1 << 30)
    first = UserState(profiler.new_state())
    raw = first.encode(profiler.version)
    cache.remember(b"u", raw, first)
    assert cache.lookup(b"u", raw) is not None
    other = raw[:-1] + bytes([raw[-1] ^ 1])  # e.g. written by another worker
    assert cache.lookup(b"u", other) is None
    assert cache.lookup(b"v", raw) is None
    assert (cache.hits, cache.misses) == (1, 2)


def test_the_budget_evicts_the_least_recently_used(profiler: Profiler) -> None:
    user = UserState(profiler.new_state())
    raw = user.encode(profiler.version)
    cache = StateCache(1 << 30)
    cache.remember(b"probe", raw, user)
    entry = cache.bytes
    cache = StateCache(3 * entry)
    for key in (b"a", b"b", b"c"):
        cache.remember(key, raw, user)
    assert cache.lookup(b"a", raw) is not None  # a is now the most recent
    cache.remember(b"d", raw, user)
    assert len(cache) == 3 and cache.bytes <= 3 * entry
    assert cache.lookup(b"b", raw) is None
    assert all(cache.lookup(k, raw) is not None for k in (b"a", b"c", b"d"))
    assert len(StateCache(0)) == 0 and StateCache(entry - 1).bytes == 0
    off = StateCache(0)
    off.remember(b"a", raw, user)
    assert len(off) == 0
