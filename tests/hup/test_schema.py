"""Event validation (`parse_event`) and the JSON Schema that documents it for producers."""

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

import hup.schema
from hup.exceptions import EventValidationError
from hup.schema import (
    Behavior,
    DwellEvent,
    MicroEvent,
    event_json_schema,
    parse_event,
    parse_event_json,
)

DictFactory = Callable[..., dict[str, Any]]

SHIPPED_SCHEMA = Path(hup.schema.__file__).parent / "schemas" / "events.schema.json"


def _without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


# --- valid events -------------------------------------------------------------------------


def test_valid_micro_event(make_micro_dict: DictFactory) -> None:
    event = parse_event(make_micro_dict(event_id="e-1"))
    assert isinstance(event, MicroEvent)
    assert event.kind == "micro"
    assert (event.user_id, event.ts, event.item_id) == ("u1", 1_700_000_000.5, "sku-1")
    assert event.categories == ["c1", "c1a", "c1a1"]
    assert event.behavior is Behavior.Cart
    assert event.event_id == "e-1"


@pytest.mark.parametrize("value", [
    "Cart", "cart", "CART", " cArT ", 9, "9", " 9 ", Behavior.Cart,
])  # fmt: skip
def test_behavior_by_name_or_code(make_micro_dict: DictFactory, value: object) -> None:
    event = parse_event(make_micro_dict(behavior=value))
    assert isinstance(event, MicroEvent)
    assert event.behavior is Behavior.Cart


@pytest.mark.parametrize("behavior", list(Behavior))
def test_every_behavior_round_trips_by_name_and_code(
    make_micro_dict: DictFactory, behavior: Behavior
) -> None:
    for value in (behavior.name, behavior.name.lower(), int(behavior), str(int(behavior))):
        event = parse_event(make_micro_dict(behavior=value))
        assert isinstance(event, MicroEvent)
        assert event.behavior is behavior


def test_kind_defaults_to_micro(make_micro_dict: DictFactory) -> None:
    raw = make_micro_dict()
    assert "kind" not in raw
    event = parse_event(raw)
    assert isinstance(event, MicroEvent)
    assert event.kind == "micro"
    assert parse_event(make_micro_dict(kind="micro")) == event
    assert "kind" not in raw  # the caller's dict is not modified


def test_integer_ids_become_strings(make_micro_dict: DictFactory) -> None:
    event = parse_event(make_micro_dict(user_id=7, item_id=123, categories=[1, 2]))
    assert isinstance(event, MicroEvent)
    assert (event.user_id, event.item_id, event.categories) == ("7", "123", ["1", "2"])


def test_valid_dwell_event(make_dwell_dict: DictFactory) -> None:
    event = parse_event(make_dwell_dict())
    assert isinstance(event, DwellEvent)
    assert (event.kind, event.item_id, event.dwell_s) == ("dwell", "sku-1", 9.5)


def test_parse_event_json_accepts_bytes_and_str(make_micro_dict: DictFactory) -> None:
    raw = orjson.dumps(make_micro_dict())
    assert parse_event_json(raw) == parse_event_json(raw.decode()) == parse_event(make_micro_dict())


# --- invalid events -----------------------------------------------------------------------

# (name, how to break the valid micro dict, text the message must contain)
INVALID_MICRO: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], str]] = [
    ("missing user_id", lambda d: _without(d, "user_id"), "user_id"),
    ("missing ts", lambda d: _without(d, "ts"), "'ts'"),
    ("missing behavior", lambda d: _without(d, "behavior"), "behavior"),
    ("missing categories", lambda d: _without(d, "categories"), "categories"),
    ("empty user_id", lambda d: {**d, "user_id": "  "}, "user_id"),
    ("bool user_id", lambda d: {**d, "user_id": True}, "user_id"),
    ("float item_id", lambda d: {**d, "item_id": 1.5}, "item_id"),
    ("negative ts", lambda d: {**d, "ts": -1.0}, "'ts'"),
    ("nan ts", lambda d: {**d, "ts": math.nan}, "'ts'"),
    ("inf ts", lambda d: {**d, "ts": math.inf}, "'ts'"),
    ("bool ts", lambda d: {**d, "ts": True}, "'ts'"),
    ("string ts", lambda d: {**d, "ts": "12"}, "'ts'"),
    ("empty categories", lambda d: {**d, "categories": []}, "categories"),
    ("empty category name", lambda d: {**d, "categories": ["c1", ""]}, "categories"),
    ("control character in item_id", lambda d: {**d, "item_id": "a\x1fb"}, "item_id"),
    ("newline in category", lambda d: {**d, "categories": ["c1\n"]}, "categories"),
    ("behavior 0", lambda d: {**d, "behavior": 0}, "behavior"),
    ("behavior 11", lambda d: {**d, "behavior": 11}, "behavior"),
    ("behavior foo", lambda d: {**d, "behavior": "foo"}, "behavior"),
    ("behavior True", lambda d: {**d, "behavior": True}, "behavior"),
    ("behavior 1.5", lambda d: {**d, "behavior": 1.5}, "behavior"),
    ("behavior None", lambda d: {**d, "behavior": None}, "behavior"),
    ("unknown kind", lambda d: {**d, "kind": "click"}, "kind"),
    ("extra field", lambda d: {**d, "price": 3}, "price"),
    ("dwell_s on micro", lambda d: {**d, "dwell_s": 3.0}, "dwell_s"),
]

INVALID_DWELL: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], str]] = [
    ("missing dwell_s", lambda d: _without(d, "dwell_s"), "dwell_s"),
    ("negative dwell_s", lambda d: {**d, "dwell_s": -0.5}, "dwell_s"),
    ("nan dwell_s", lambda d: {**d, "dwell_s": math.nan}, "dwell_s"),
    ("behavior on dwell", lambda d: {**d, "behavior": 9}, "behavior"),
    ("missing item_id", lambda d: _without(d, "item_id"), "item_id"),
]


@pytest.mark.parametrize(
    ("breaker", "field"), [c[1:] for c in INVALID_MICRO], ids=[c[0] for c in INVALID_MICRO]
)
def test_invalid_micro_event_names_the_field(
    make_micro_dict: DictFactory,
    breaker: Callable[[dict[str, Any]], dict[str, Any]],
    field: str,
) -> None:
    with pytest.raises(EventValidationError, match="field") as info:
        parse_event(breaker(make_micro_dict()))
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("breaker", "field"), [c[1:] for c in INVALID_DWELL], ids=[c[0] for c in INVALID_DWELL]
)
def test_invalid_dwell_event_names_the_field(
    make_dwell_dict: DictFactory,
    breaker: Callable[[dict[str, Any]], dict[str, Any]],
    field: str,
) -> None:
    with pytest.raises(EventValidationError, match="field") as info:
        parse_event(breaker(make_dwell_dict()))
    assert field in str(info.value)


@pytest.mark.parametrize("data", [[1, 2], "event", 3, None])
def test_non_object_is_rejected(data: object) -> None:
    with pytest.raises(EventValidationError, match="must be a JSON object"):
        parse_event(data)
    with pytest.raises(EventValidationError, match="must be a JSON object"):
        parse_event_json(orjson.dumps(data))


@pytest.mark.parametrize("raw", [b"{", b"", b'{"user_id": "u1",}', b"\xff\xfe", b"NaN"])
def test_malformed_json_is_rejected(raw: bytes) -> None:
    with pytest.raises(EventValidationError, match="malformed JSON"):
        parse_event_json(raw)


def test_validation_error_chains_the_cause(make_micro_dict: DictFactory) -> None:
    with pytest.raises(EventValidationError) as info:
        parse_event(make_micro_dict(ts=-1))
    assert info.value.__cause__ is not None


# --- the JSON Schema ----------------------------------------------------------------------

# JSON-representable samples; parse_event and the schema must agree on every one.
SCHEMA_SAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("micro", {}),
    ("micro kind", {"kind": "micro"}),
    ("micro event_id", {"event_id": "e-1"}),
    ("micro null event_id", {"event_id": None}),
    ("behavior code", {"behavior": 4}),
    ("behavior name", {"behavior": "Detail_comments"}),
    ("behavior lowercase", {"behavior": "detail_comments"}),
    ("behavior digit string", {"behavior": "4"}),
    ("integer ids", {"user_id": 7, "item_id": 8, "categories": [1, 2]}),
    ("leaf only", {"categories": ["c1a1"]}),
    ("ts zero", {"ts": 0}),
    ("negative ts", {"ts": -1.0}),
    ("string ts", {"ts": "1"}),
    ("bool ts", {"ts": True}),
    ("empty user_id", {"user_id": ""}),
    ("control character in item_id", {"item_id": "a\x1fb"}),
    ("ids with spaces and non-ascii", {"item_id": "sku 9 é", "user_id": " u1 "}),
    ("empty categories", {"categories": []}),
    ("behavior 0", {"behavior": 0}),
    ("behavior 11", {"behavior": 11}),
    ("behavior foo", {"behavior": "foo"}),
    ("behavior True", {"behavior": True}),
    ("behavior 1.0", {"behavior": 1.0}),
    ("behavior 1.5", {"behavior": 1.5}),
    ("unknown kind", {"kind": "click"}),
    ("extra field", {"price": 3}),
    ("integer event_id", {"event_id": 5}),
    ("dwell", {"kind": "dwell", "dwell_s": 3.5}),
    ("dwell negative", {"kind": "dwell", "dwell_s": -3.5}),
    ("dwell missing dwell_s", {"kind": "dwell"}),
]


def _sample(data: dict[str, Any], make_micro_dict: DictFactory) -> dict[str, Any]:
    event = make_micro_dict(**data)
    if event.get("kind") == "dwell":  # a dwell event carries neither categories nor behaviour
        event.pop("categories")
        event.pop("behavior")
    return event


def _parses(data: dict[str, Any]) -> bool:
    try:
        parse_event(data)
    except EventValidationError:
        return False
    return True


def test_event_json_schema_is_valid_draft_2020_12() -> None:
    schema = event_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    json.dumps(schema)  # plain JSON, nothing Python-specific


@pytest.mark.parametrize("data", [s[1] for s in SCHEMA_SAMPLES], ids=[s[0] for s in SCHEMA_SAMPLES])
def test_event_json_schema_agrees_with_parse_event(
    make_micro_dict: DictFactory, data: dict[str, Any]
) -> None:
    validator = jsonschema.Draft202012Validator(event_json_schema())
    event = _sample(data, make_micro_dict)
    schema_ok = validator.is_valid(event)
    assert schema_ok == _parses(event), (
        f"schema {'accepts' if schema_ok else 'rejects'} {event!r}, parse_event does not"
    )


def test_shipped_schema_file_matches_the_models() -> None:
    # The file ships with the package (package data): its absence is a failure, not a skip.
    assert SHIPPED_SCHEMA.is_file(), f"{SHIPPED_SCHEMA} is missing"
    assert json.loads(SHIPPED_SCHEMA.read_text()) == event_json_schema()
