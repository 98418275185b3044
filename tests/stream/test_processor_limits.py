"""No input makes a record the producer refuses: bounded dead letters, oversized events rejected.

The oracle is aiokafka's own check (`DefaultRecordBatchBuilder.estimate_size_in_bytes`
against ``max_request_size``), which raised MessageSizeTooLargeError and crash-looped
the worker on a 760 KB malformed message before dead letters were bounded.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path

import orjson
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from prometheus_client import CollectorRegistry

from hup.data import Dataset
from hup.runtime import Profiler
from state.store import MemoryStore
from stream.app import faust_options
from stream.limits import (
    DEAD_LETTER_KEY_MAX_BYTES,
    DEFAULT_MAX_REQUEST_SIZE,
    REASON_MAX_CHARS,
    clip_text,
    fit_dead_letter,
    max_record_bytes,
)
from stream.metrics import Metrics
from stream.processor import BatchResult, InputRecord, Processor, dead_letter
from stream.settings import Settings
from stream.startup import WorkerContext

TOPIC = "micro-behaviors"


def _producer_accepts(key: bytes | None, value: bytes, max_request_size: int) -> bool:
    """What aiokafka's producer checks before it sends (its MessageSizeTooLargeError)."""
    return DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, []) <= max_request_size


def _assert_all_sendable(
    result: BatchResult, store: MemoryStore, max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
) -> None:
    outputs: Iterable[tuple[bytes | None, bytes]] = [
        *((p.key, p.value) for p in result.profiles),
        *((d.key, d.value) for d in result.dead_letters),
        *store.items(),  # the state changelog records
    ]
    for key, value in outputs:
        assert _producer_accepts(key, value, max_request_size), (len(key or b""), len(value))


def _event(user: str = "u1", **fields: object) -> bytes:
    body = {
        "user_id": user,
        "ts": 1_700_000_000.0,
        "item_id": "i1",
        "categories": ["c1"],
        "behavior": "Home2Product",
    }
    return orjson.dumps({**body, **fields})


def _record(value: bytes | None, offset: int = 0, key: bytes | None = b"u1") -> InputRecord:
    return InputRecord(value, TOPIC, 0, offset, key)


# --- dead letters ----------------------------------------------------------------------------


def test_a_760_kb_malformed_message_makes_a_sendable_dead_letter(profiler: Profiler) -> None:
    original = b"{" + b"x" * 760_000  # base64 alone would be 1,013,336 bytes
    store = MemoryStore()
    result = Processor(profiler, require_user_key=True).process([_record(original)], store)
    assert result.outcomes["dlq"] == 1 and not result.profiles and len(store) == 0
    [dead] = result.dead_letters
    _assert_all_sendable(result, store)
    assert len(dead.value) <= max_record_bytes(DEFAULT_MAX_REQUEST_SIZE)
    letter = orjson.loads(dead.value)
    assert "malformed JSON" in letter["reason"]
    assert letter["value_size"] == len(original) and letter["value_truncated"] is True
    kept = base64.b64decode(letter["value"])
    assert len(kept) > 700_000 and original.startswith(kept)
    assert letter["key"] == base64.b64encode(b"u1").decode() and letter["key_truncated"] is False
    assert dead.key == b"u1"


def test_a_small_bad_message_is_kept_whole(profiler: Profiler) -> None:
    result = Processor(profiler).process([_record(b"{not json", offset=7)], MemoryStore())
    letter = orjson.loads(result.dead_letters[0].value)
    assert base64.b64decode(letter["value"]) == b"{not json"
    assert letter["value_size"] == 9 and letter["value_truncated"] is False
    assert letter["key_size"] == 2 and letter["key_truncated"] is False
    assert letter["offset"] == 7 and letter["topic"] == TOPIC


def test_an_empty_message_says_so(profiler: Profiler) -> None:
    letter = orjson.loads(
        Processor(profiler).process([_record(None)], MemoryStore()).dead_letters[0].value
    )
    assert letter["value"] is None and letter["value_size"] is None
    assert letter["value_truncated"] is False


@pytest.mark.parametrize(
    ("key_size", "value_size"),
    [(600_000, 390_000), (990_000, 100), (10, 999_000), (0, 0), (2_000, 2_000)],
)
def test_key_and_value_share_the_room(key_size: int, value_size: int) -> None:
    key, value = b"k" * key_size, b"v" * value_size
    limit = max_record_bytes(DEFAULT_MAX_REQUEST_SIZE)
    record_key, payload = fit_dead_letter({"reason": "r"}, key, value, limit)
    assert len(record_key or b"") + len(payload) <= limit
    assert _producer_accepts(record_key, payload, DEFAULT_MAX_REQUEST_SIZE)
    letter = orjson.loads(payload)
    kept_key, kept_value = base64.b64decode(letter["key"]), base64.b64decode(letter["value"])
    assert key.startswith(kept_key) and value.startswith(kept_value)
    assert letter["key_truncated"] is (len(kept_key) < key_size)
    assert letter["value_truncated"] is (len(kept_value) < value_size)
    assert (letter["key_size"], letter["value_size"]) == (key_size, value_size)
    # The shorter one is kept whole when it takes at most half the room.
    if min(key_size, value_size) * 4 / 3 < limit / 2:
        assert (len(kept_key) == key_size) or (len(kept_value) == value_size)
    assert record_key == (key if key_size <= DEAD_LETTER_KEY_MAX_BYTES else None)


def test_a_long_reason_is_cut(profiler: Profiler) -> None:
    kind = "k" * 300_000  # quoted in the reason: "unknown kind 'kkk...'"
    record = _record(orjson.dumps({"kind": kind, "user_id": "u1"}))
    result = Processor(profiler).process([record], MemoryStore())
    reason = result.dead_letters[0].reason
    assert len(reason) <= REASON_MAX_CHARS and "unknown kind" in reason
    assert reason.endswith("characters in all]")
    assert orjson.loads(result.dead_letters[0].value)["reason"] == reason


def test_clip_text_keeps_short_text_and_cuts_to_the_limit() -> None:
    assert clip_text("short") == "short"
    cut = clip_text("x" * 5000, 100)
    assert len(cut) == 100 and cut.endswith("[cut, 5000 characters in all]")


def test_a_dead_letter_of_a_huge_key_has_no_kafka_key(profiler: Profiler) -> None:
    key = b"d" * (DEAD_LETTER_KEY_MAX_BYTES + 1)
    dead = dead_letter(_record(b"{", key=key), "bad")
    assert dead.key is None
    assert base64.b64decode(orjson.loads(dead.value)["key"]) == key


# --- events whose outputs would not fit ------------------------------------------------------


def test_an_event_with_a_huge_event_id_is_dead_lettered_not_applied(
    profiler: Profiler,
) -> None:
    store = MemoryStore()
    processor = Processor(profiler, require_user_key=True)
    first = processor.process([_record(_event(event_id="e1"), offset=0)], store)
    assert len(first.profiles) == 1
    before = store.get(b"u1")
    huge = _event(event_id="e" * 998_000, ts=1_700_000_001.0)
    assert _producer_accepts(b"u1", huge, DEFAULT_MAX_REQUEST_SIZE)  # a valid input record
    later = _event(event_id="e3", ts=1_700_000_002.0, item_id="i2")
    result = processor.process([_record(huge, offset=1), _record(later, offset=2)], store)
    _assert_all_sendable(result, store)
    [dead] = result.dead_letters
    assert "profile would be a record of" in dead.reason and "event_id 998000 bytes" in dead.reason
    assert "HUP_PRODUCER_MAX_REQUEST_SIZE" in dead.reason
    letter = orjson.loads(dead.value)
    assert letter["offset"] == 1 and letter["value_truncated"] is True
    assert result.outcomes["dlq"] == 1 and result.outcomes["applied"] == 1
    # The rejected event was never applied: the next one is the user's second.
    [profile] = [orjson.loads(p.value) for p in result.profiles]
    assert profile["event_id"] == "e3" and profile["seq"] == 2
    assert store.get(b"u1") != before


def test_a_rejected_event_alone_leaves_the_state_untouched(profiler: Profiler) -> None:
    store = MemoryStore()
    processor = Processor(profiler)
    processor.process([_record(_event(), offset=0)], store)
    before = store.get(b"u1")
    result = processor.process([_record(_event(event_id="e" * 998_000), offset=1)], store)
    assert result.outcomes["dlq"] == 1 and not result.profiles
    assert store.get(b"u1") == before


def test_an_event_with_a_huge_item_id_is_dead_lettered(profiler: Profiler) -> None:
    # Not echoed in the profile, but the state keeps the open visit's item_id.
    store = MemoryStore()
    huge = _event(item_id="i" * 997_000)
    assert _producer_accepts(b"u1", huge, DEFAULT_MAX_REQUEST_SIZE)
    result = Processor(profiler).process([_record(huge)], store)
    _assert_all_sendable(result, store)
    assert "state would be a record of" in result.dead_letters[0].reason
    assert "item_id 997000 bytes" in result.dead_letters[0].reason
    assert not result.profiles and len(store) == 0


def test_a_huge_user_id_writes_no_state(profiler: Profiler) -> None:
    user = "u" * 600_000  # as key and user_id, the profile record is over 1.2 MB
    store = MemoryStore()
    record = _record(_event(user=user), key=user.encode())
    result = Processor(profiler, require_user_key=True).process([record], store)
    _assert_all_sendable(result, store)
    assert "user_id 600000 bytes" in result.dead_letters[0].reason
    assert result.dead_letters[0].key is None  # too long to key the dead letter by
    assert not result.profiles and len(store) == 0


def test_the_limit_follows_the_max_request_size(profiler: Profiler, traffic: Dataset) -> None:
    small = 65_536
    processor = Processor(profiler, max_record_bytes=max_record_bytes(small))
    store = MemoryStore()
    records = [
        _record(b"{" + b"x" * 100_000, offset=0),
        _record(_event(event_id="e" * 70_000), offset=1),
        _record(_event(event_id="ok"), offset=2),
    ]
    result = processor.process(records, store)
    _assert_all_sendable(result, store, small)
    assert result.outcomes["dlq"] == 2 and len(result.profiles) == 1


def test_the_setting_reaches_faust_and_the_processor(
    checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUP_PRODUCER_MAX_REQUEST_SIZE", "2000000")
    settings = Settings(model=checkpoint_dir)
    assert faust_options(settings)["producer_max_request_size"] == 2_000_000
    context = WorkerContext(settings, Metrics(CollectorRegistry()), [])
    context.load_model()
    assert context.processor.max_record_bytes == max_record_bytes(2_000_000)
    assert Settings().producer_max_request_size == 2_000_000
    monkeypatch.delenv("HUP_PRODUCER_MAX_REQUEST_SIZE")
    assert Settings().producer_max_request_size == DEFAULT_MAX_REQUEST_SIZE


@pytest.mark.parametrize("missing", ["key", "value"])
def test_a_dead_letter_with_no_key_or_no_value_never_exceeds_the_limit(missing: str) -> None:
    fields = {"reason": "r", "topic": "t", "partition": 0, "offset": 1}
    for limit in range(400, 800):
        data = b"x" * 2000
        key, value = (None, data) if missing == "key" else (data, None)
        record_key, letter = fit_dead_letter(fields, key, value, limit)
        assert len(letter) + len(record_key or b"") <= limit, limit
