"""The framework-free batch processor: parity, idempotency, dead letters, state resets."""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import replace

import orjson
import torch

from hup.model import collate_features
from hup.runtime import Profiler
from hup.sequences import featurize_session
from hup.sessions import Dataset, iter_events
from state.store import MemoryStore
from state.userstate import UserState
from stream.processor import BatchResult, InputRecord, Origin, Processor


def _records(events, partitions: int = 3) -> list[InputRecord]:
    """Events as a keyed topic would deliver them: per-user partition, per-partition offsets."""
    offsets = [0] * partitions
    records = []
    for event in events:
        partition = sum(event.user_id.encode()) % partitions
        value = orjson.dumps(event.model_dump(mode="json", exclude_none=True))
        records.append(
            InputRecord(
                value, "micro-behaviors", partition, offsets[partition], event.user_id.encode()
            )
        )
        offsets[partition] += 1
    return records


def _offline_profiles(profiler: Profiler, traffic: Dataset) -> dict[str, list[dict]]:
    expected = {}
    for session in traffic.sessions:
        feats = featurize_session(profiler.featurizer, session).features
        batch = collate_features([feats])
        positions = torch.nonzero(batch["valid"])
        with torch.no_grad():
            out = profiler.model(batch, positions)
        expected[session.user_id] = [{k: v[n] for k, v in out.items()} for n in range(len(feats))]
    return expected


def test_every_event_yields_the_offline_profile_in_order(
    profiler: Profiler, traffic: Dataset
) -> None:
    records = _records(iter_events(traffic.sessions))
    store = MemoryStore()
    processor = Processor(profiler)
    published = []
    for start in range(0, len(records), 97):  # batches cut across users
        result = processor.process(records[start : start + 97], store)
        published.extend(orjson.loads(p.value) for p in result.profiles)
    expected = _offline_profiles(profiler, traffic)
    by_user: dict[str, list[dict]] = {}
    for message in published:
        by_user.setdefault(message["user_id"], []).append(message)
    assert set(by_user) == set(expected)
    worst = 0.0
    for user, messages in by_user.items():
        assert [m["seq"] for m in messages] == list(range(1, len(expected[user]) + 1))
        for message, reference in zip(messages, expected[user], strict=True):
            got = message["profile"]
            pairs = [("item", got["item"]), ("micro", got["micro"])] + [
                (f"category{k}", v) for k, v in enumerate(got["category"])
            ]
            for head, vector in pairs:
                diff = (torch.tensor(vector) - reference[head]).abs().max().item()
                worst = max(worst, diff)
        assert message["model_version"] == profiler.version
    assert worst < 1e-5


def test_redelivered_records_are_skipped(profiler: Profiler, traffic: Dataset) -> None:
    records = _records(iter_events(traffic.sessions[:5]))
    store = MemoryStore()
    processor = Processor(profiler)
    first = processor.process(records, store)
    snapshot = dict(store.items())
    again = processor.process(records[len(records) // 2 :], store)
    assert again.profiles == []
    assert again.outcomes["skipped_duplicate"] == len(records) - len(records) // 2
    assert again.outcomes["applied"] == 0
    assert dict(store.items()) == snapshot
    assert first.outcomes["applied"] > 0


def test_bad_messages_go_to_the_dead_letter_queue_with_reasons(
    profiler: Profiler, traffic: Dataset
) -> None:
    good = _records(iter_events(traffic.sessions[:3]))
    bad_values = [
        b"{not json",
        orjson.dumps({"user_id": "u", "ts": 1, "item_id": "i", "categories": ["c"]}),
        orjson.dumps(
            {"user_id": "u", "ts": 1, "item_id": "i", "categories": ["c"], "behavior": "Fly"}
        ),
        orjson.dumps([1, 2]),
        None,
    ]
    bad = [InputRecord(v, "micro-behaviors", 7, 100 + n) for n, v in enumerate(bad_values)]
    mixed = good[:10] + bad + good[10:]
    result = Processor(profiler).process(mixed, MemoryStore())
    assert result.outcomes["dlq"] == len(bad)
    reasons = [orjson.loads(d.value) for d in result.dead_letters]
    assert [r["offset"] for r in reasons] == [100, 101, 102, 103, 104]
    assert "malformed JSON" in reasons[0]["reason"]
    assert "behavior" in reasons[1]["reason"] and "Field required" in reasons[1]["reason"]
    assert "unknown behaviour 'Fly'" in reasons[2]["reason"]
    assert "JSON object" in reasons[3]["reason"]
    assert "no value" in reasons[4]["reason"]
    assert base64.b64decode(reasons[0]["value"]) == b"{not json"
    assert reasons[0]["topic"] == "micro-behaviors" and reasons[0]["partition"] == 7
    accepted = sum(1 for r in good if orjson.loads(r.value).get("kind", "micro") == "micro")
    assert result.outcomes["applied"] >= accepted


def test_foreign_or_corrupt_state_is_reset_and_counted(
    profiler: Profiler, traffic: Dataset
) -> None:
    session = traffic.sessions[0]
    records = _records(session.events)
    store = MemoryStore()
    key = session.user_id.encode()
    store.put(key, UserState(profiler.new_state()).encode("another-model"))
    result = Processor(profiler).process(records[:1], store)
    assert result.outcomes["state_reset_version"] == 1
    store.put(key, b"HUPS\x01garbage")
    result = Processor(profiler).process(records[1:2], store)
    assert result.outcomes["state_reset_corrupt"] == 1
    assert len(result.profiles) == 1


def test_coalescing_publishes_each_users_last_profile_once(
    profiler: Profiler, traffic: Dataset
) -> None:
    records = _records(iter_events(traffic.sessions[:6]))
    every = Processor(profiler).process(records, MemoryStore())
    coalesced = Processor(profiler, coalesce=True).process(records, MemoryStore())
    last_by_user = {}
    for p in every.profiles:
        last_by_user[p.key] = orjson.loads(p.value)
    got = {p.key: orjson.loads(p.value) for p in coalesced.profiles}
    assert len(coalesced.profiles) == len(got) == 6
    for key, message in got.items():
        assert message["seq"] == last_by_user[key]["seq"]
        assert message["profile"] == last_by_user[key]["profile"]


def test_stale_dwell_event_is_dropped_and_counted(profiler: Profiler, traffic: Dataset) -> None:
    first = traffic.sessions[0].events[0]
    stale = {
        "kind": "dwell",
        "user_id": first.user_id,
        "ts": first.ts + 1,
        "item_id": "elsewhere",
        "dwell_s": 3,
    }
    records = _records([first]) + [
        InputRecord(orjson.dumps(stale), "micro-behaviors", 0, 99, first.user_id.encode())
    ]
    result = Processor(profiler).process(records, MemoryStore())
    assert result.outcomes["dropped_dwell_not_open_item"] == 1
    assert len(result.profiles) == 1


def test_records_keyed_by_something_else_are_dead_lettered_when_keys_are_required(
    profiler: Profiler, traffic: Dataset
) -> None:
    good = _records(traffic.sessions[0].events[:3])
    wrong = InputRecord(good[0].value, "micro-behaviors", 0, 50, b"someone-else")
    unkeyed = InputRecord(good[0].value, "micro-behaviors", 0, 51, None)
    result = Processor(profiler, require_user_key=True).process(
        [wrong, unkeyed, *good], MemoryStore()
    )
    assert [orjson.loads(d.value)["offset"] for d in result.dead_letters] == [50, 51]
    assert "HUP_REPARTITION" in result.dead_letters[0].reason
    assert result.outcomes["applied"] + result.outcomes.get("dropped_dwell_not_open_item", 0) == 3


def _rekeyed(records: list[InputRecord], partitions: int = 3) -> list[InputRecord]:
    """``records`` as the re-keying stage forwards them: new positions, origin kept."""
    offsets = [0] * partitions
    forwarded = []
    for record in records:
        partition = (record.partition + 1) % partitions  # any other layout
        origin = Origin(record.topic, record.partition, record.offset, b"device")
        forwarded.append(
            replace(
                record,
                topic="by-user",
                partition=partition,
                offset=offsets[partition],
                origin=origin,
            )
        )
        offsets[partition] += 1
    return forwarded


def test_a_rekeyed_event_forwarded_twice_is_applied_once(
    profiler: Profiler, traffic: Dataset
) -> None:
    """A re-keying stage that crashes before its commit forwards records again."""
    records = _rekeyed(_records(iter_events(traffic.sessions[:6])))
    half = len(records) // 2
    # Forwarded again under new offsets: the repeat of the first half lands in the same
    # batch as its originals' tail, and again in a later batch.
    copies = [replace(r, offset=r.offset + 10_000) for r in records[:half]]
    once = Processor(profiler).process(records, MemoryStore())
    store = MemoryStore()
    processor = Processor(profiler)
    first = processor.process(records[:half] + copies, store)
    second = processor.process(copies + records[half:], store)
    assert first.outcomes["skipped_duplicate"] == second.outcomes["skipped_duplicate"] == half
    published = [orjson.loads(p.value) for p in first.profiles + second.profiles]
    expected = {
        (m["user_id"], m["seq"]): m for m in map(orjson.loads, (p.value for p in once.profiles))
    }
    assert sorted((m["user_id"], m["seq"]) for m in published) == sorted(expected)
    for message in published:  # other batches, other waves: equal to float rounding
        reference = expected[(message["user_id"], message["seq"])]
        assert message["event_ts"] == reference["event_ts"]
        got, want = message["profile"], reference["profile"]
        for head in ("micro", "item"):
            assert torch.allclose(torch.tensor(got[head]), torch.tensor(want[head]), atol=1e-5)


def test_a_rekeyed_state_keeps_its_origins_through_the_codec(
    profiler: Profiler, traffic: Dataset
) -> None:
    records = _rekeyed(_records(iter_events(traffic.sessions[:1])))
    store = MemoryStore()
    Processor(profiler).process(records, store)
    (key,) = [k for k, _ in store.items()]
    user = Processor(profiler).load_user(store, key, Counter())
    last = records[-1].origin
    assert last is not None and dict(user.sources)[last.partition] == last.offset
    assert user.last_input == (last.partition, last.offset)
    assert 99 not in dict(user.sources)


def test_a_bad_rekeyed_record_is_dead_lettered_at_its_origin(profiler: Profiler) -> None:
    origin = Origin("micro-behaviors", 2, 40, b"device-7")
    record = InputRecord(b'{"user_id": "u"}', "by-user", 0, 3, b"u", origin=origin)
    (dead,) = Processor(profiler).process([record], MemoryStore()).dead_letters
    letter = orjson.loads(dead.value)
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("micro-behaviors", 2, 40)
    assert base64.b64decode(letter["key"]) == b"device-7"
    assert dead.where == "micro-behaviors[2]@40"  # what the worker logs


def _spread(records: list[InputRecord], partitions: int = 3) -> list[InputRecord]:
    """``records`` as a producer that does not key by user writes them: round-robin."""
    offsets = [0] * partitions
    spread = []
    for n, record in enumerate(records):
        partition = n % partitions
        spread.append(replace(record, partition=partition, offset=offsets[partition], key=b"d"))
        offsets[partition] += 1
    return spread


def _seqs(result: BatchResult) -> list[tuple[str, int]]:
    return [(m["user_id"], m["seq"]) for m in map(orjson.loads, (p.value for p in result.profiles))]


def test_one_users_events_from_several_input_partitions_are_each_applied_once(
    profiler: Profiler, traffic: Dataset
) -> None:
    """Re-keyed from three input partitions; then one partition's records forwarded again."""
    originals = _spread(_records(iter_events(traffic.sessions[:1])))
    forwarded = _rekeyed(originals)
    store = MemoryStore()
    processor = Processor(profiler, require_origin=True)
    first = processor.process(forwarded, store)
    assert first.outcomes["applied"] == len(forwarded)
    # The re-keying stage lost partition 0 before committing: its records come again,
    # after the other partitions' later records were applied.
    again = [replace(r, offset=r.offset + 1000) for r in forwarded if r.origin.partition == 0]
    second = processor.process(again, store)
    assert second.outcomes["skipped_duplicate"] == len(again) and not second.profiles


def test_turning_repartitioning_on_or_off_neither_repeats_nor_skips_events(
    profiler: Profiler, traffic: Dataset
) -> None:
    records = _records(iter_events(traffic.sessions[:4]))
    half = len(records) // 2
    every_seq = sorted(_seqs(Processor(profiler).process(records, MemoryStore())))
    rekeying = Processor(profiler, require_origin=True)
    direct = Processor(profiler)
    # On: applied as consumed, then the re-keying stage forwards every input record.
    store = MemoryStore()
    before = direct.process(records[:half], store)
    after = rekeying.process(_rekeyed(records), store)
    assert after.outcomes["skipped_duplicate"] == half
    assert sorted(_seqs(before) + _seqs(after)) == every_seq
    # Off: applied re-keyed, then every input record consumed directly.
    store = MemoryStore()
    before = rekeying.process(_rekeyed(records[:half]), store)
    after = direct.process(records, store)
    assert after.outcomes["skipped_duplicate"] == half
    assert sorted(_seqs(before) + _seqs(after)) == every_seq


def test_a_state_written_before_per_partition_offsets_is_deduplicated_by_its_last_position(
    profiler: Profiler, traffic: Dataset
) -> None:
    records = _records(iter_events(traffic.sessions[:1]))
    store = MemoryStore()
    processor = Processor(profiler)
    processor.process(records, store)
    (key,) = [k for k, _ in store.items()]
    user = processor.load_user(store, key, Counter())
    legacy = replace(user, sources=())  # what an older build wrote
    store.put(key, legacy.encode(profiler.version))
    again = processor.process(records, store)
    assert again.outcomes["skipped_duplicate"] == len(records)


def test_a_record_on_the_rekeyed_topic_without_an_origin_is_dead_lettered(
    profiler: Profiler, traffic: Dataset
) -> None:
    (record,) = _records(iter_events(traffic.sessions[:1]))[:1]
    result = Processor(profiler, require_origin=True).process([record], MemoryStore())
    (dead,) = result.dead_letters
    assert "not forwarded by the re-keying stage" in dead.reason
    assert result.outcomes["applied"] == 0
