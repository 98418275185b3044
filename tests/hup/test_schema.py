"""Event validation (`parse_event`) and the JSON Schema that documents it for producers."""

import json
import math
from collections.abc import Callable
from decimal import Decimal
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


# --- bounds, exact numbers and strict JSON ------------------------------------------------

_MICRO = {
    "user_id": "u1",
    "ts": 1_700_000_000.5,
    "item_id": "sku-1",
    "categories": ["c1", "c1a", "c1a1"],
    "behavior": "Cart",
}
_DWELL = {"kind": "dwell", "user_id": "u1", "ts": 1_700_000_000.5, "item_id": "sku-1", "dwell_s": 3}


def _micro_json(**changes: str) -> str:
    """The valid micro event as JSON text, with some members replaced by raw JSON text."""
    members = {k: json.dumps(v) for k, v in _MICRO.items()}
    members.update(changes)
    return "{" + ", ".join(f'"{k}": {v}' for k, v in members.items()) + "}"


def _dwell_json(**changes: str) -> str:
    members = {k: json.dumps(v) for k, v in _DWELL.items()}
    members.update(changes)
    return "{" + ", ".join(f'"{k}": {v}' for k, v in members.items()) + "}"


_LIMITS = hup.schema.DEFAULT_LIMITS
_ID_MAX = _LIMITS.max_id_chars
_LEVELS_MAX = _LIMITS.max_category_levels

# (name, raw message, valid?): every one goes through parse_event_json and through the
# shipped schema after a strict decode; both must agree, and agree with the expectation.
RAW_CORPUS: list[tuple[str, str, bool]] = [
    ("valid micro", _micro_json(), True),
    ("valid dwell", _dwell_json(), True),
    ("kind absent is micro", _micro_json(), True),
    ("user_id at the length limit", _micro_json(user_id=json.dumps("u" * _ID_MAX)), True),
    ("user_id over the length limit", _micro_json(user_id=json.dumps("u" * (_ID_MAX + 1))), False),
    ("item_id over the length limit", _micro_json(item_id=json.dumps("i" * 100_000)), False),
    ("category over the length limit", _micro_json(categories=json.dumps(["c" * 300])), False),
    ("event_id at the limit", _micro_json(event_id=json.dumps("e" * 256)), True),
    ("event_id over the limit", _micro_json(event_id=json.dumps("e" * 257)), False),
    ("event_id of 900 KB", _micro_json(event_id=json.dumps("e" * 900_000)), False),
    ("levels at the limit", _micro_json(categories=json.dumps(["c"] * _LEVELS_MAX)), True),
    ("levels over the limit", _micro_json(categories=json.dumps(["c"] * (_LEVELS_MAX + 1))), False),
    ("dwell at the limit", _dwell_json(dwell_s="86400"), True),
    ("dwell over the limit", _dwell_json(dwell_s="86400.5"), False),
    ("dwell 1e308", _dwell_json(dwell_s="1e308"), False),
    ("ts at the maximum", _micro_json(ts="253402300799"), True),
    ("ts after 9999", _micro_json(ts="253402300800"), False),
    ("ts 1e308", _micro_json(ts="1e308"), False),
    ("ts 1e400", _micro_json(ts="1e400"), False),
    ("ts a huge integer", _micro_json(ts="1" + "0" * 400), False),
    ("ts NaN", _micro_json(ts="NaN"), False),
    ("ts Infinity", _micro_json(ts="Infinity"), False),
    ("integer id 2^64-1", _micro_json(user_id=str(2**64 - 1)), True),
    ("integer id 2^64", _micro_json(user_id=str(2**64)), False),
    ("integer id 2^64+1", _micro_json(user_id=str(2**64 + 1)), False),
    ("integer id -2^63", _micro_json(user_id=str(-(2**63))), True),
    ("integer id -2^63-1", _micro_json(user_id=str(-(2**63) - 1)), False),
    ("integer id of 400 digits", _micro_json(item_id="9" * 400), False),
    ("id 1.0", _micro_json(user_id="1.0"), True),
    ("id 1e3", _micro_json(user_id="1e3"), True),
    ("id 1e19", _micro_json(user_id="1e19"), True),
    ("id 2^64-1 written with .0", _micro_json(user_id="18446744073709551615.0"), True),
    ("id 2^64 written with .0", _micro_json(user_id="18446744073709551616.0"), False),
    ("id 1.5", _micro_json(user_id="1.5"), False),
    (
        "id a fraction a double rounds to an integer",
        _micro_json(user_id="4503599627370496.4"),
        False,
    ),
    ("category id 1e999999999", _micro_json(categories="[1e999999999]"), False),
    ("behaviour fullwidth digit", _micro_json(behavior=json.dumps("１")), False),
    ("behaviour arabic-indic digit", _micro_json(behavior=json.dumps("٩")), False),
    ("behaviour no-break space", _micro_json(behavior=json.dumps("\u00a0Cart")), False),
    ("behaviour JSON whitespace", _micro_json(behavior=json.dumps(" Cart\n")), True),
    ("behaviour leading zeros", _micro_json(behavior=json.dumps("009")), True),
    ("behaviour 9.0", _micro_json(behavior="9.0"), True),
    ("behaviour 9e0", _micro_json(behavior="9e0"), True),
    ("behaviour 9.5", _micro_json(behavior="9.5"), False),
    ("behaviour upper case", _micro_json(behavior=json.dumps("CART")), True),
    ("behaviour Kelvin sign", _micro_json(behavior=json.dumps("\u212aart")), False),
    ("id with a final newline", _micro_json(categories=json.dumps(["c1\n"])), False),
    ("id ideographic space only", _micro_json(user_id=json.dumps("\u3000")), False),
    ("id U+0085 only", _micro_json(user_id=json.dumps("\u0085")), False),
    ("id U+FEFF only", _micro_json(user_id=json.dumps("\ufeff")), False),
    ("id with a no-break space", _micro_json(user_id=json.dumps("\u00a0x")), True),
    ("id with a lone surrogate", _micro_json(user_id='"\\ud800"'), False),
    ("duplicate ts", _micro_json()[:-1] + ', "ts": 5}', False),
    ("duplicate user_id, same value", _micro_json()[:-1] + ', "user_id": "u1"}', False),
    ("deep nesting", _micro_json(categories="[" * 1000 + "]" * 1000), False),
    ("not an object", "[1, 2]", False),
    ("empty object", "{}", False),
    ("not JSON", "{", False),
]


def _strict_json(raw: str) -> object:
    """JSON as RFC 8259 and 7493 read it: members named once, numbers exact, no lone surrogates."""

    def unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError("duplicate member")
        return dict(pairs)

    def refuse(name: str) -> object:
        raise ValueError(name)

    data = json.loads(raw, object_pairs_hook=unique, parse_float=Decimal, parse_constant=refuse)
    json.dumps(data, default=str, ensure_ascii=False).encode()  # lone surrogates raise
    return data


def _exact_schema_validator() -> jsonschema.protocols.Validator:
    """The shipped schema's validator, with JSON's exact numbers: 1.0 and 1e3 are integers."""
    base = jsonschema.Draft202012Validator

    def is_integer(checker: object, instance: object) -> bool:
        if isinstance(instance, Decimal):
            return instance.is_finite() and instance == instance.to_integral_value()
        return base.TYPE_CHECKER.is_type(instance, "integer")

    exact = jsonschema.validators.extend(
        base, type_checker=base.TYPE_CHECKER.redefine("integer", is_integer)
    )
    return exact(json.loads(SHIPPED_SCHEMA.read_text()))


def _schema_accepts(validator: jsonschema.protocols.Validator, raw: str) -> bool:
    try:
        data = _strict_json(raw)
    except (ValueError, RecursionError, UnicodeEncodeError):
        return False
    return validator.is_valid(data)


def _validator_accepts(raw: str) -> bool:
    try:
        parse_event_json(raw.encode("utf-8", "surrogatepass"))
    except EventValidationError:
        return False
    return True


def test_the_validator_and_the_shipped_schema_agree_on_one_corpus() -> None:
    validator = _exact_schema_validator()
    disagreements = []
    for name, raw, expected in RAW_CORPUS:
        by_schema, by_validator = _schema_accepts(validator, raw), _validator_accepts(raw)
        if not by_schema == by_validator == expected:
            disagreements.append(f"{name}: schema {by_schema}, validator {by_validator}")
    assert not disagreements, disagreements


def test_big_integer_ids_are_exact_or_refused() -> None:
    exact = parse_event_json(_micro_json(user_id=str(2**64 - 1), item_id="1e19"))
    assert (exact.user_id, exact.item_id) == (str(2**64 - 1), "10000000000000000000")
    for id_text in (str(2**64), str(2**64 + 1)):  # one double apart from each other
        with pytest.raises(EventValidationError, match="send other ids as strings"):
            parse_event_json(_micro_json(user_id=id_text))


def test_a_duplicate_key_is_refused_and_named() -> None:
    with pytest.raises(EventValidationError, match="duplicate key 'ts'"):
        parse_event_json(_micro_json()[:-1] + ', "ts": 5}')


def test_a_fullwidth_behaviour_code_is_refused() -> None:
    with pytest.raises(EventValidationError, match="unknown behaviour"):
        parse_event_json(_micro_json(behavior=json.dumps("１")))


@pytest.mark.parametrize(
    ("limits", "raw", "bound"),
    [
        (hup.schema.InputLimits(max_id_chars=4), _micro_json(item_id='"sku-1"'), "id_chars"),
        (hup.schema.InputLimits(max_id_chars=4), _micro_json(item_id="12345"), "id_chars"),
        (
            hup.schema.InputLimits(max_event_id_chars=2),
            _micro_json(event_id='"e-1"'),
            "event_id_chars",
        ),
        (hup.schema.InputLimits(max_category_levels=2), _micro_json(), "category_levels"),
        (hup.schema.InputLimits(max_dwell_s=2.5), _dwell_json(), "dwell_s"),
    ],
    ids=["string id", "integer id", "event_id", "levels", "dwell"],
)
def test_configured_limits_refuse_and_name_the_bound(
    limits: hup.schema.InputLimits, raw: str, bound: str
) -> None:
    parse_event_json(raw)  # within the defaults
    with pytest.raises(EventValidationError) as info:
        parse_event_json(raw, limits)
    assert info.value.limits == {bound}
    assert "HUP_MAX_" in str(info.value)


def test_an_error_other_than_a_bound_names_none() -> None:
    with pytest.raises(EventValidationError) as info:
        parse_event_json(_micro_json(ts="-1"))
    assert info.value.limits == frozenset()


def test_a_long_id_is_not_quoted_in_the_reason() -> None:
    with pytest.raises(EventValidationError) as info:
        parse_event_json(_micro_json(user_id=json.dumps("u" * 100_000)))
    assert len(str(info.value)) < 200
