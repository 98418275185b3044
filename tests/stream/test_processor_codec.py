"""The processor decodes and encodes each user's state once per batch, whatever its events."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

import state.userstate
from hup.runtime import Profiler
from hup.sessions import Dataset
from state.store import MemoryStore
from stream.processor import InputRecord, Processor


def _batch(traffic: Dataset, users: int, per_user: int, offset: int = 0) -> list[InputRecord]:
    """``per_user`` micro events of each of ``users`` users, interleaved as a topic delivers."""
    sessions = [
        s for s in traffic.sessions if sum(e.kind == "micro" for e in s.events) > 2 * per_user
    ]
    records = []
    for k in range(per_user):
        for session in sessions[:users]:
            event = [e for e in session.events if e.kind == "micro"][offset + k]
            value = orjson.dumps(event.model_dump(mode="json", exclude_none=True))
            records.append(
                InputRecord(
                    value, "micro-behaviors", 0, len(records) + 100 * offset, event.user_id.encode()
                )
            )
    return records


def test_one_decode_and_one_encode_per_user_per_batch(
    profiler: Profiler, traffic: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()
    decode, encode = state.userstate.decode_state, state.userstate.encode_state

    def counted_decode(*args: Any, **kwargs: Any) -> Any:
        calls["decode"] += 1
        return decode(*args, **kwargs)

    def counted_encode(*args: Any, **kwargs: Any) -> Any:
        calls["encode"] += 1
        return encode(*args, **kwargs)

    monkeypatch.setattr(state.userstate, "decode_state", counted_decode)
    monkeypatch.setattr(state.userstate, "encode_state", counted_encode)
    processor, store = Processor(profiler), MemoryStore()
    processor.process(_batch(traffic, users=3, per_user=2), store)
    assert calls == Counter(encode=3)  # new users: nothing to decode
    calls.clear()
    result = processor.process(_batch(traffic, users=3, per_user=2, offset=2), store)
    assert result.outcomes["applied"] == 6
    assert calls == Counter(decode=3, encode=3)


def test_the_per_event_size_check_is_the_encoded_size(profiler: Profiler, traffic: Dataset) -> None:
    processor, store = Processor(profiler), MemoryStore()
    processor.process(_batch(traffic, users=2, per_user=3), store)
    for key, value in store.items():
        loaded = processor.load_user(store, key, Counter())
        assert loaded.encoded_size(profiler.version) == len(value)
