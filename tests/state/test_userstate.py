"""The stored user state across resets: seq and the idempotency record survive a model change."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import fields, replace

import numpy as np
import orjson
import pytest

from hup.incremental import ProfileState
from hup.runtime import Profiler
from hup.sessions import Dataset
from state.codec import decode_state, encode_state
from state.store import MemoryStore
from state.userstate import SEQ_BASE_ARRAY, UserState, load_user_state
from stream.processor import InputRecord, Processor

OLD = "hup-oldmodel0000"


def _records(traffic: Dataset, partition: int = 1) -> list[InputRecord]:
    """One user's micro events (each makes a profile), as a keyed topic would deliver them."""
    session = max(traffic.sessions, key=lambda s: len(s.events))
    events = [e for e in session.events if e.kind == "micro"]
    return [
        InputRecord(
            orjson.dumps(e.model_dump(mode="json", exclude_none=True)),
            "micro-behaviors",
            partition,
            offset,
            e.user_id.encode(),
        )
        for offset, e in enumerate(events)
    ]


def _one_user(
    profiler: Profiler, traffic: Dataset
) -> tuple[list[InputRecord], bytes, MemoryStore, Processor]:
    """The user's records and key, an empty store and a processor of ``profiler``."""
    records = _records(traffic)
    key = records[0].key
    assert key is not None
    return records, key, MemoryStore(), Processor(profiler)


def _restamp(store: MemoryStore, key: bytes, version: str = OLD) -> None:
    """Make the stored state look written by another model version (arrays unchanged)."""
    raw = store.get(key)
    assert raw is not None
    store.put(key, encode_state(decode_state(raw), version))


def _published(result) -> list[dict]:
    return [orjson.loads(p.value) for p in result.profiles]


def test_a_model_change_keeps_seq_and_skips_redelivered_events(
    profiler: Profiler, traffic: Dataset
) -> None:
    records, key, store, processor = _one_user(profiler, traffic)
    half = len(records) // 2
    before = _published(processor.process(records[:half], store))
    last_seq = before[-1]["seq"]
    _restamp(store, key)  # as if the worker restarted on another checkpoint

    # Redelivered events (not committed before the restart) are still skipped...
    again = processor.process(records[half - 3 :], store)
    assert again.outcomes["state_reset_version"] == 1
    assert again.outcomes["skipped_duplicate"] == 3
    after = _published(again)
    # ...and seq carries on from the old state's count.
    assert [m["seq"] for m in after] == list(range(last_seq + 1, last_seq + 1 + len(after)))
    # The profiles are the new model's from its initial state: the same as for a user
    # who never had a state (only seq differs).
    fresh = _published(Processor(profiler).process(records[half:], MemoryStore()))
    assert [m["profile"] for m in after] == [m["profile"] for m in fresh]
    assert [m["seq"] for m in fresh] == list(range(1, len(fresh) + 1))

    # The carried count is stored: the next batch, under the same model, continues.
    loaded = load_user_state(store.get(key), profiler, Counter())
    assert loaded.seq == after[-1]["seq"] and loaded.seq_base == last_seq
    assert decode_state(store.get(key) or b"")[SEQ_BASE_ARRAY] == last_seq


def test_a_reset_state_is_written_even_when_every_event_was_redelivered(
    profiler: Profiler, traffic: Dataset
) -> None:
    records, key, store, processor = _one_user(profiler, traffic)
    processor.process(records[:4], store)
    _restamp(store, key)
    first = processor.process(records[:4], store)  # nothing new: all skipped
    assert first.outcomes["state_reset_version"] == 1 and not first.profiles
    # The reset was saved: the next batch neither resets nor counts the user again.
    second = processor.process(records[:5], store)
    assert second.outcomes["state_reset_version"] == 0
    assert second.outcomes["skipped_duplicate"] == 4
    assert [m["seq"] for m in _published(second)] == [5]


def test_resets_accumulate(profiler: Profiler, traffic: Dataset) -> None:
    records, key, store, processor = _one_user(profiler, traffic)
    processor.process(records[:2], store)
    _restamp(store, key)
    processor.process(records[2:3], store)
    _restamp(store, key, "hup-another00000")
    [message] = _published(processor.process(records[3:4], store))
    assert message["seq"] == 4


def test_an_unreadable_state_restarts_seq_and_says_so(
    profiler: Profiler, traffic: Dataset, caplog: pytest.LogCaptureFixture
) -> None:
    records, key, store, processor = _one_user(profiler, traffic)
    processor.process(records[:3], store)
    raw = store.get(key) or b""
    store.put(key, raw[:-1] + bytes([raw[-1] ^ 1]))  # checksum no longer matches
    with caplog.at_level(logging.WARNING, logger="state.userstate"):
        result = processor.process(records[3:4], store)
    assert result.outcomes["state_reset_corrupt"] == 1
    assert [m["seq"] for m in _published(result)] == [1]
    assert any("seq restarts at 1" in r.getMessage() for r in caplog.records)


def test_a_foreign_state_this_build_cannot_read_counts_as_unreadable(
    profiler: Profiler,
) -> None:
    outcomes: Counter[str] = Counter()
    raw = encode_state({"something": np.zeros(3)}, OLD)  # valid bytes, not a ProfileState
    loaded = load_user_state(raw, profiler, outcomes)
    assert outcomes == Counter({"state_reset_corrupt": 1})
    assert loaded.seq == 0 and loaded.sources == () and loaded.last_input == (-1, -1)


def test_a_version_reset_keeps_the_stream_record_and_resets_the_model_state(
    profiler: Profiler,
) -> None:
    old = UserState(
        replace(profiler.new_state(), applied=41),
        seq_base=5,
        sources=((0, 12), (3, 40)),
        last_input=(3, 40),
    )
    outcomes: Counter[str] = Counter()
    loaded = load_user_state(old.encode(OLD), profiler, outcomes)
    assert outcomes == Counter({"state_reset_version": 1})
    assert loaded.sources == ((0, 12), (3, 40)) and loaded.last_input == (3, 40)
    assert loaded.seq == 46 and loaded.reset
    assert loaded.state.applied == 0  # the model reads applied > 0 as "has an open entry"


def test_the_model_state_holds_model_fields_only() -> None:
    names = {f.name for f in fields(ProfileState)}
    assert names == {"features", "hidden", "open_signal", "windows", "window_count", "applied"}


def test_the_stored_meta_is_the_model_s_with_the_last_input_after_its_first_value(
    profiler: Profiler,
) -> None:
    state = profiler.new_state()
    stored = UserState(state, 7, sources=((1, 5), (4, 2)), last_input=(1, 5))
    raw = stored.encode(profiler.version)
    arrays = decode_state(raw)
    model_meta = state.to_arrays()["meta"].tolist()
    assert arrays["meta"].tolist() == [model_meta[0], 1, 5, *model_meta[1:]]
    assert arrays["sources"].tolist() == [[1, 5], [4, 2]]
    assert stored.encoded_size(profiler.version) == len(raw)
    back = load_user_state(raw, profiler, Counter())
    assert (back.seq_base, back.sources, back.last_input) == (7, stored.sources, (1, 5))
    assert back.state.applied == 0 and not back.reset
    model_arrays = {**state.to_arrays(), "meta": np.array([model_meta[0], -1, -1, *model_meta[1:]])}
    assert UserState(state).encode(profiler.version) == encode_state(model_arrays, profiler.version)
