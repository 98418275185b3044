"""The profile message (`stream.profile`): its contract and schema, its typed body, its compact record."""

from __future__ import annotations

import itertools
import json
import typing
from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pytest

from hup.runtime import Profiler
from hup.sessions import Dataset, iter_events
from state.store import MemoryStore
from stream.processor import InputRecord, Processor
from stream.profile import (
    SHIPPED_PROFILE_SCHEMA,
    LatestRecordError,
    ProfileBody,
    ProfileMessage,
    ProfileVectors,
    ProfileVectorsBody,
    ScoredId,
    TopCategory,
    TopItem,
    encode_latest,
    profile_body,
    profile_json_schema,
    render_latest,
    render_profile,
)
from stream.views import UNREADABLE, lookup_profile


def _body(**changes: object) -> ProfileBody:
    fields: dict[str, object] = {
        "user_id": "u-1",
        "event_ts": 1_700_000_000.25,
        "published_ts": 1_796_195_034.3723342,
        "model_version": "hup-da22db3296e9",
        "seq": 49,
        "event_id": "u-1:29:dwell",
        "micro": np.array([0.1, -1e-8, 3.4e38], dtype=np.float32),
        "item": np.linspace(-1, 1, 7, dtype=np.float32),
        "categories": [np.full(4, 0.3, dtype=np.float32), np.arange(2, dtype=np.float32)],
        "top_categories": [("c0.1", 0.7), ("c0.2", 1e-06)],
        "top_items": [("sku-\u00e9", 0.123456), ("9", 0.0)],
    }
    fields.update(changes)
    return profile_body(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [{}, {"micro": None}, {"event_id": None}, {"top_items": [], "categories": []}, {"event_ts": 5}],
)
def test_a_record_renders_the_published_message_byte_for_byte(changes: dict[str, object]) -> None:
    body = _body(**changes)
    assert render_latest("u-1", encode_latest(body)) == render_profile(body)


def test_every_profile_of_a_batch_round_trips_and_takes_about_half_the_bytes(
    profiler: Profiler, traffic: Dataset
) -> None:
    records = [
        InputRecord(
            orjson.dumps(e.model_dump(mode="json", exclude_none=True)),
            "mb",
            0,
            i,
            e.user_id.encode(),
        )
        for i, e in enumerate(iter_events(traffic.sessions[:5]))
    ]
    result = Processor(profiler).process(records, MemoryStore())
    assert len(result.profiles) > 20
    for profile in result.profiles:
        record = profile.latest_record()
        assert render_latest(profile.key.decode(), record) == profile.value
        assert len(record) < 0.7 * len(profile.value)


def test_a_stored_message_is_served_as_it_is() -> None:
    assert render_latest("alice", b'{"user_id":"alice"}') == b'{"user_id":"alice"}'


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00HL",
        b"\x00HL\x02\x00\x00\x00\x00",
        b"garbage!",
        b"\x00HL\x01\x03\x00\x00\x00[1]",
        b'\x00HL\x01\x25\x00\x00\x00[0,0,"m",1,null,[],[],"x",1,[-2,"y"]]',
    ],
)
def test_an_unreadable_record_is_a_clear_error(raw: bytes) -> None:
    with pytest.raises(LatestRecordError):
        render_latest("u", raw)


def test_a_truncated_record_is_a_clear_error() -> None:
    record = encode_latest(_body())
    with pytest.raises(LatestRecordError, match="bytes of vectors"):
        render_latest("u-1", record[:-4])


def test_the_api_answers_500_for_an_unreadable_record() -> None:
    assert lookup_profile({b"u": b"garbage!"}, "u") == (500, UNREADABLE)


# --- the contract and its schema ---------------------------------------------------------

_MESSAGE = {
    "user_id": "u1",
    "event_ts": 1000.0,
    "published_ts": 1000.25,
    "model_version": "hup-0123456789ab",
    "seq": 1,
    "event_id": "u1:1",
    "profile": {"micro": None, "item": [0.5, -0.25], "category": [[1.0], [0.0, 1.0]]},
    "top_categories": [{"id": "c1.2", "score": 0.875}, {"id": "c0.1", "score": 0.5}],
    "top_items": [{"id": "sku-7", "score": 0.25}],
}


@pytest.mark.parametrize(
    ("body", "contract"),
    [
        (ProfileBody, ProfileMessage),
        (ProfileVectorsBody, ProfileVectors),
        (ScoredId, TopCategory),
        (ScoredId, TopItem),
    ],
)
def test_the_typed_body_has_the_contracts_fields_in_its_order(body: type, contract: type) -> None:
    # The message is printed from the body, so its keys and their order are the body's.
    assert list(typing.get_type_hints(body)) == list(contract.model_fields)


def test_a_rendered_body_is_a_message_of_the_contract() -> None:
    message = orjson.loads(render_profile(_body()))
    assert list(message) == list(ProfileMessage.model_fields)
    ProfileMessage.model_validate(message)


def test_shipped_profile_schema_matches_the_model() -> None:
    assert json.loads(SHIPPED_PROFILE_SCHEMA.read_text()) == profile_json_schema(), (
        "regenerate it: hup-stream schema --out stream/schemas"
    )


def test_processor_output_validates_against_the_schema(
    checkpoint_dir: Path, traffic: Dataset
) -> None:
    schema = profile_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)

    processor = Processor(Profiler.load(checkpoint_dir))
    events = list(itertools.islice(iter_events(traffic.sessions), 60))
    records = [
        InputRecord(orjson.dumps(e.model_dump(mode="json")), "t", 0, n, e.user_id.encode())
        for n, e in enumerate(events)
    ]
    result = processor.process(records, MemoryStore())
    assert result.profiles
    for profile in result.profiles:
        message = orjson.loads(profile.value)
        errors = [e.message for e in validator.iter_errors(message)]
        assert not errors, errors
        ProfileMessage.model_validate(message)  # the pydantic model agrees


@pytest.mark.parametrize(
    "broken",
    [
        {"seq": 0},
        {"model_version": ""},
        {"top_categories": [{"id": "c1"}]},
        {"top_items": [{"id": "sku-7"}]},
        {"top_items": None},
        {"profile": {"micro": None, "item": [], "category": [[1.0]]}},
        {"extra": 1},
    ],
)
def test_schema_rejects_broken_profiles(broken: dict) -> None:
    validator = jsonschema.Draft202012Validator(profile_json_schema())
    assert validator.is_valid(_MESSAGE)
    assert not validator.is_valid(_MESSAGE | broken)
