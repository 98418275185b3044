"""No input makes a record the producer refuses: bounded dead letters, oversized events rejected.

The oracle is aiokafka's own check (`DefaultRecordBatchBuilder.estimate_size_in_bytes`
against ``max_request_size``), which raised MessageSizeTooLargeError and crash-looped
the worker on a 760 KB malformed message before dead letters were bounded.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from prometheus_client import CollectorRegistry

from hup.runtime import Profiler
from hup.schema import InputLimits
from hup.sessions import Dataset
from state.store import MemoryStore
from stream.app import faust_options
from stream.metrics import Metrics
from stream.processor import BatchResult, InputRecord, Processor, dead_letter
from stream.publish import (
    DEAD_LETTER_KEY_MAX_BYTES,
    REASON_MAX_CHARS,
    clip_text,
    fit_dead_letter,
    max_record_bytes,
)
from stream.settings import DEFAULT_MAX_REQUEST_SIZE, Settings
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

# The input bounds (HUP_MAX_ID_CHARS, HUP_MAX_EVENT_ID_CHARS) refuse these events first with
# their defaults; raised this far, only the record size stops them, which is what is tested.
_UNBOUNDED = InputLimits(max_id_chars=10**7, max_event_id_chars=10**7)


def test_an_event_with_a_huge_event_id_is_dead_lettered_not_applied(
    profiler: Profiler,
) -> None:
    store = MemoryStore()
    processor = Processor(profiler, require_user_key=True, limits=_UNBOUNDED)
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
    processor = Processor(profiler, limits=_UNBOUNDED)
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
    result = Processor(profiler, limits=_UNBOUNDED).process([_record(huge)], store)
    _assert_all_sendable(result, store)
    assert "state would be a record of" in result.dead_letters[0].reason
    assert "item_id 997000 bytes" in result.dead_letters[0].reason
    assert not result.profiles and len(store) == 0


def test_a_huge_user_id_writes_no_state(profiler: Profiler) -> None:
    user = "u" * 600_000  # as key and user_id, the profile record is over 1.2 MB
    store = MemoryStore()
    record = _record(_event(user=user), key=user.encode())
    processor = Processor(profiler, require_user_key=True, limits=_UNBOUNDED)
    result = processor.process([record], store)
    _assert_all_sendable(result, store)
    assert "user_id 600000 bytes" in result.dead_letters[0].reason
    assert result.dead_letters[0].key is None  # too long to key the dead letter by
    assert not result.profiles and len(store) == 0


def test_the_limit_follows_the_max_request_size(profiler: Profiler, traffic: Dataset) -> None:
    small = 65_536
    processor = Processor(profiler, max_record_bytes=max_record_bytes(small), limits=_UNBOUNDED)
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


# --- input bounds ------------------------------------------------------------------------------

_NOW = 1_700_100_000.0  # the processor's clock in these tests


def _fixed_clock() -> float:
    return _NOW


@pytest.mark.parametrize(
    ("event", "bound"),
    [
        (_event(user="u" * 257), "id_chars"),
        (_event(item_id="i" * 100_000), "id_chars"),
        (_event(event_id="e" * 900_000), "event_id_chars"),
        (_event(categories=["c"] * 17), "category_levels"),
        (_event(kind="dwell", dwell_s=90_000.0, behavior=None, categories=None), "dwell_s"),
        (_event(ts=_NOW + 86_400 + 1), "future_ts"),
    ],
    ids=["user_id", "item_id", "event_id", "levels", "dwell", "future ts"],
)
def test_an_event_beyond_a_bound_is_dead_lettered_and_counted(
    profiler: Profiler, event: bytes, bound: str
) -> None:
    data = orjson.loads(event)
    value = orjson.dumps({k: v for k, v in data.items() if v is not None})
    record = _record(value, key=data["user_id"].encode())
    store = MemoryStore()
    result = Processor(profiler, require_user_key=True, clock=_fixed_clock).process([record], store)
    [dead] = result.dead_letters
    assert result.outcomes["dlq"] == 1 and result.outcomes[f"over_limit_{bound}"] == 1
    assert dead.limits == {bound}
    assert "HUP_MAX_" in dead.reason and not result.profiles and len(store) == 0
    _assert_all_sendable(result, store)


def test_a_ts_within_the_future_bound_is_applied(profiler: Profiler) -> None:
    processor = Processor(profiler, clock=_fixed_clock, max_future_s=3600.0)
    result = processor.process([_record(_event(ts=_NOW + 3599.0))], MemoryStore())
    assert result.outcomes["applied"] == 1 and not result.dead_letters
    result = processor.process([_record(_event(ts=_NOW + 3601.0), offset=1)], MemoryStore())
    assert "HUP_MAX_FUTURE_S" in result.dead_letters[0].reason


def test_a_duplicate_key_is_dead_lettered(profiler: Profiler) -> None:
    value = _event()[:-1] + b',"user_id":"u2"}'  # which user is it?
    result = Processor(profiler).process([_record(value)], MemoryStore())
    assert "duplicate key 'user_id'" in result.dead_letters[0].reason


def test_the_settings_reach_the_processor(checkpoint_dir: Path) -> None:
    settings = Settings(
        model=checkpoint_dir,
        max_id_chars=40,
        max_event_id_chars=10,
        max_category_levels=2,
        max_dwell_s=60,
        max_future_s=5,
    )
    context = WorkerContext(settings, Metrics(CollectorRegistry()), [])
    context.load_model()
    processor = context.processor
    assert processor.limits == InputLimits(40, 10, 2, 60.0) and processor.max_future_s == 5


@pytest.mark.parametrize("poison_ts", [1e308, _NOW + 2 * 86_400], ids=["1e308", "in two days"])
def test_a_poisoned_ts_leaves_the_user_as_a_twin_who_never_sent_it(
    profiler: Profiler, traffic: Dataset, poison_ts: float
) -> None:
    """User A gets a far-future ts among normal events; twin B gets the normal ones only."""
    session = traffic.sessions[0]
    events = [e.model_dump(mode="json", exclude_none=True) for e in session.events]
    assert len(events) >= 6

    def record(user: str, body: dict[str, object], offset: int) -> InputRecord:
        return InputRecord(orjson.dumps({**body, "user_id": user}), TOPIC, 0, offset, user.encode())

    poison = {**events[2], "ts": poison_ts}
    a = [record("A", e, i) for i, e in enumerate([*events[:2], poison, *events[2:]])]
    b = [record("B", e, i) for i, e in enumerate(events)]
    store = MemoryStore()
    processor = Processor(profiler, require_user_key=True, clock=_fixed_clock)
    # One event per batch, A's and B's k-th normal events side by side.
    results = [processor.process(a[:1] + b[:1], store), processor.process(a[1:2] + b[1:2], store)]
    results.append(processor.process(a[2:3], store))  # the poison, alone
    results += [processor.process([x, y], store) for x, y in zip(a[3:], b[2:], strict=True)]

    [dead] = [d for r in results for d in r.dead_letters]
    assert dead.where == f"{TOPIC}[0]@2" and "'ts'" in dead.reason
    profiles: dict[str, list[dict[str, object]]] = {"A": [], "B": []}
    for result in results:
        for profile in result.profiles:
            body = orjson.loads(profile.value)
            profiles[body.pop("user_id")].append(body)
    assert len(profiles["A"]) == len(profiles["B"]) > 0
    for got, want in zip(profiles["A"], profiles["B"], strict=True):
        vectors, twin = got.pop("profile"), want.pop("profile")
        for ranked in [k for k in want if k.startswith("top_")]:  # top_categories, ...
            top, twin_top = got.pop(ranked), want.pop(ranked)
            assert [c["id"] for c in top] == [c["id"] for c in twin_top], ranked
            scores = [c["score"] for c in top], [c["score"] for c in twin_top]
            assert np.allclose(*scores, atol=1e-5), ranked
        assert got == want  # seq, event_ts, event_id, model version, published_ts
        for level in ("micro", "item"):  # to float rounding: A and B are rows of one model call
            assert np.allclose(vectors[level], twin[level], rtol=0, atol=1e-6)
        assert np.allclose(vectors["category"], twin["category"], rtol=0, atol=1e-6)
