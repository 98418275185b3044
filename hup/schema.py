"""The input event schema: the single source of truth for producers, training and the stream.

Every event is bounded (`InputLimits`): each string of an event ends up in records the
stream writes (the profile echoes ``user_id`` and ``event_id``, the state keeps the open
visit's ``item_id`` and categories), so an unbounded one makes unbounded records. The
shipped JSON Schema carries the default limits; a worker may be configured with others.

A message is decoded as I-JSON (RFC 7493): UTF-8, no duplicate member names (which JSON
parsers resolve differently, so a producer and the stream could read two different
events), and numbers taken at their exact decimal value. So an integer id is exact or
refused, never rounded through a float into another user's id.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from hup.exceptions import EventValidationError

__all__ = [
    "DEFAULT_LIMITS",
    "INT_ID_MAX",
    "INT_ID_MIN",
    "MAX_TS",
    "Behavior",
    "DwellEvent",
    "Event",
    "InputLimits",
    "MicroEvent",
    "decode_event_json",
    "event_json_schema",
    "parse_event",
    "parse_event_json",
    "write_event_schema",
]


@dataclass(frozen=True)
class InputLimits:
    """How large one event may be; an event beyond any bound is refused, naming the bound.

    The worker reads these from HUP_MAX_* variables (`stream.settings`); offline readers
    and the shipped JSON Schema use the defaults.
    """

    # Characters of user_id, item_id and each category (an integer id counts its digits).
    max_id_chars: int = 256
    # Characters of event_id.
    max_event_id_chars: int = 256
    # Entries of `categories`: the model uses its K levels, but the state keeps them all.
    max_category_levels: int = 16
    # Seconds of `dwell_s` (a day; the JD samples' longest dwell is under 22 hours).
    max_dwell_s: float = 86_400.0


DEFAULT_LIMITS = InputLimits()
# The latest `ts` accepted anywhere (9999-12-31T23:59:59Z): keeps times finite as doubles
# and out of float ranges where adding a gap leaves them unchanged. The stream also
# refuses times too far ahead of its own clock (HUP_MAX_FUTURE_S, `stream.processor`).
MAX_TS = 253_402_300_799.0
# Integer ids: the 64-bit range, signed or unsigned. Larger ids must be sent as strings.
INT_ID_MIN = -(2**63)
INT_ID_MAX = 2**64 - 1
# Error type of a bound of `InputLimits`; its context names the bound (`EventValidationError.limits`).
_LIMIT_ERROR = "input_limit"


def _limits(info: ValidationInfo) -> InputLimits:
    context = info.context
    if isinstance(context, dict):
        found = context.get("limits")
        if isinstance(found, InputLimits):
            return found
    return DEFAULT_LIMITS


def _over_limit(limit: str, detail: str) -> PydanticCustomError:
    return PydanticCustomError(_LIMIT_ERROR, "{detail}", {"detail": detail, "limit": limit})


def _exact_integer(value: Any, low: int, high: int) -> int | None:
    """The exact integer a JSON number denotes if it is one within low..high, else None.

    Decoded messages carry fractional numbers as `Decimal` (exact); a Python float is
    taken at its exact binary value. The range is checked before converting, so a
    number like 1e999999999 is never expanded into a huge integer.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if low <= value <= high else None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = Decimal(value)
    if isinstance(value, Decimal):
        if not value.is_finite() or not low <= value <= high:
            return None
        if value != value.to_integral_value():
            return None
        return int(value)
    return None


class Behavior(enum.IntEnum):
    """The ten JD micro-behaviour types, with the JD dataset's codes."""

    Home2Product = 1
    ShopList2Product = 2
    Sale2Product = 3
    Cart2Product = 4
    SearchList2Product = 5
    Detail_comments = 6
    Detail_specification = 7
    Detail_bottom = 8
    Cart = 9
    Order = 10


_BEHAVIOR_NAMES = {b.name.lower(): b for b in Behavior}


def _any_case(name: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in name)


# The JSON Schema's patterns, used as they are by the validators below, so that both
# accept the same strings. Whitespace is JSON's own four characters and digits are ASCII:
# a fullwidth "１" or a no-break space is not a behaviour, in the schema nor here.
_BEHAVIOR_PATTERN = (
    "^[ \\t\\n\\r]*(0*(?:10|[1-9])|"
    + "|".join(_any_case(b.name) for b in Behavior)
    + ")[ \\t\\n\\r]*$"
)
_BEHAVIOR_RE = re.compile(_BEHAVIOR_PATTERN)
# Whitespace in either regex dialect (ECMA-262's \\s, which JSON Schema uses, and Python's
# differ on U+0085 and U+FEFF), spelled out so that both read the pattern alike.
_BLANK = "\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
# No control characters, and one character that is neither blank nor control. No "$":
# Python's matches before a final newline, ECMA-262's does not.
_ID_PATTERN = (
    "^(?![\\s\\S]*[\\u0000-\\u001f\\u007f])[\\s\\S]*?[^" + _BLANK + "\\u0000-\\u001f\\u007f]"
)
_ID_RE = re.compile(_ID_PATTERN)
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def _coerce_behavior(value: Any) -> Behavior:
    # Producers send either the JD code or the name; accept both, case-insensitively,
    # but never a bool (True == 1 in Python) or a fractional code such as 1.5.
    if isinstance(value, Behavior):
        return value
    if isinstance(value, str):
        match = _BEHAVIOR_RE.search(value)
        if match is None:
            names = ", ".join(b.name for b in Behavior)
            raise ValueError(
                f"unknown behaviour {value!r}; expected one of {names} or a code 1..10"
            )
        text = match.group(1)
        return Behavior(int(text)) if text.isdigit() else _BEHAVIOR_NAMES[text.lower()]
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError(f"behaviour must be a name or a code 1..10, got {type(value).__name__}")
    # JSON has one number type: `9.0` is the code 9, as JSON Schema's "integer" agrees.
    code = _exact_integer(value, 1, len(Behavior))
    if code is None:
        raise ValueError(f"behaviour code {value} is not an integer in 1..{len(Behavior)}")
    return Behavior(code)


def _coerce_id(value: Any, info: ValidationInfo) -> str:
    # JD ids are integers; everything downstream keys on strings.
    if isinstance(value, bool):
        raise ValueError("an id must be a string or an integer, got a boolean")
    if isinstance(value, int | float | Decimal):
        number = _exact_integer(value, INT_ID_MIN, INT_ID_MAX)
        if number is None:
            raise ValueError(
                f"a numeric id must be an integer in -2^63..2^64-1, got {value}; "
                "send other ids as strings"
            )
        value = str(number)
    if not isinstance(value, str):
        raise ValueError(f"an id must be a string or an integer, got {type(value).__name__}")
    limit = _limits(info).max_id_chars
    if len(value) > limit:
        raise _over_limit(
            "id_chars",
            f"an id of {len(value)} characters is longer than the limit of {limit} "
            "(HUP_MAX_ID_CHARS)",
        )
    if _ID_RE.search(value) is None:
        if _CONTROL_CHARACTER.search(value):
            # Ids are stored joined by a control character (hup.incremental): one inside an
            # id would split it when the state is read back.
            raise ValueError(f"an id must not contain control characters, got {value!r}")
        raise ValueError("an id must not be empty")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    if isinstance(value, int) and value > MAX_TS:
        # Beyond every bound (and float() of a huge integer would overflow).
        raise ValueError(f"expected a number up to {MAX_TS:.0f}, got {value}")
    number = float(value)  # a Decimal beyond the double range becomes +-inf
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"expected a finite number >= 0, got {value!r}")
    return number


def _timestamp(value: Any) -> float:
    number = _number(value)
    if number > MAX_TS:
        raise ValueError(f"ts {value} is after 9999-12-31 ({MAX_TS:.0f})")
    return number


def _dwell(value: Any, info: ValidationInfo) -> float:
    number = _number(value)
    limit = _limits(info).max_dwell_s
    if number > limit:
        raise _over_limit(
            "dwell_s", f"dwell_s {value} is over the limit of {limit:g} s (HUP_MAX_DWELL_S)"
        )
    return number


def _check_levels(categories: list[str], info: ValidationInfo) -> list[str]:
    limit = _limits(info).max_category_levels
    if len(categories) > limit:
        raise _over_limit(
            "category_levels",
            f"{len(categories)} category levels, over the limit of {limit} "
            "(HUP_MAX_CATEGORY_LEVELS)",
        )
    return categories


def _check_event_id(value: str, info: ValidationInfo) -> str:
    limit = _limits(info).max_event_id_chars
    if len(value) > limit:
        raise _over_limit(
            "event_id_chars",
            f"an event_id of {len(value)} characters is longer than the limit of {limit} "
            "(HUP_MAX_EVENT_ID_CHARS)",
        )
    return value


Id = Annotated[
    str,
    BeforeValidator(_coerce_id),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "pattern": _ID_PATTERN,
                    "maxLength": DEFAULT_LIMITS.max_id_chars,
                },
                {"type": "integer", "minimum": INT_ID_MIN, "maximum": INT_ID_MAX},
            ]
        }
    ),
]
Timestamp = Annotated[
    float,
    BeforeValidator(_timestamp),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": MAX_TS}),
]
DwellSeconds = Annotated[
    float,
    BeforeValidator(_dwell),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": DEFAULT_LIMITS.max_dwell_s}),
]
EventId = Annotated[
    str,
    AfterValidator(_check_event_id),
    WithJsonSchema({"type": "string", "maxLength": DEFAULT_LIMITS.max_event_id_chars}),
]
Categories = Annotated[list[Id], AfterValidator(_check_levels)]
BehaviorField = Annotated[
    Behavior,
    BeforeValidator(_coerce_behavior),
    WithJsonSchema(
        {
            "description": "JD behaviour name (case-insensitive) or code 1..10",
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": len(Behavior)},
                {"type": "string", "pattern": _BEHAVIOR_PATTERN},
            ],
        }
    ),
]


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: Id = Field(description="The user the event belongs to; also the Kafka key.")
    ts: Timestamp = Field(description="Event time, epoch seconds (float).")
    item_id: Id = Field(description="The product (sku).")
    event_id: EventId | None = Field(default=None, description="Optional producer-side id.")


class MicroEvent(_EventBase):
    """One micro-behaviour of a user on a product page."""

    kind: Literal["micro"] = "micro"
    categories: Categories = Field(
        min_length=1,
        json_schema_extra={"maxItems": DEFAULT_LIMITS.max_category_levels},
        description="Categories of the item, coarse to fine (1..K levels; leaf only is fine).",
    )
    behavior: BehaviorField


class DwellEvent(_EventBase):
    """Sent when the user leaves a product page: the time spent on it."""

    kind: Literal["dwell"]
    dwell_s: DwellSeconds = Field(description="Seconds spent on the product page.")


Event = MicroEvent | DwellEvent

_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(
    Annotated[MicroEvent | DwellEvent, Field(discriminator="kind")]
)


def _describe(exc: ValidationError) -> EventValidationError:
    parts = []
    limits = set()
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"] if p not in ("micro", "dwell")) or "event"
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"field '{where}': {message}")
        if err["type"] == _LIMIT_ERROR:
            limits.add(str(err.get("ctx", {}).get("limit")))
    return EventValidationError("; ".join(parts), limits=frozenset(limits))


def parse_event(data: Any, limits: InputLimits = DEFAULT_LIMITS) -> Event:
    """Validate one decoded event (a dict); raise `EventValidationError` naming field and problem.

    Args:
        data: The decoded message.
        limits: The bounds to hold the event to; an event beyond one is refused and the
            error's ``limits`` names it.
    """
    if not isinstance(data, dict):
        raise EventValidationError(f"an event must be a JSON object, got {type(data).__name__}")
    if "kind" not in data:
        data = {**data, "kind": "micro"}
    kind = data["kind"]
    if kind not in ("micro", "dwell"):
        raise EventValidationError(f"field 'kind': unknown kind {kind!r}; expected micro or dwell")
    try:
        return _EVENT_ADAPTER.validate_python(data, context={"limits": limits})
    except ValidationError as exc:
        raise _describe(exc) from exc


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return members


def decode_event_json(raw: bytes | str) -> Any:
    """Decode one message as I-JSON: strict UTF-8, unique member names, exact numbers.

    orjson checks the syntax first (valid UTF-8 without lone surrogates, no NaN or
    Infinity, numbers within the double range, nesting at most 1024 deep); the standard
    library then decodes the same text with every object's members checked for
    duplicates and every fractional number as an exact `Decimal` (integers are exact
    Python ints). Both are C parsers: together about 15 us for an event.

    Raises:
        EventValidationError: "malformed JSON: ..." or "duplicate key ...".
    """
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventValidationError(f"malformed JSON: {exc}") from exc
    text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray | memoryview) else raw
    try:
        return json.loads(text, object_pairs_hook=_unique_members, parse_float=Decimal)
    except _DuplicateKeyError as exc:
        key = exc.key if len(exc.key) <= 100 else exc.key[:100] + "..."
        raise EventValidationError(
            f"duplicate key {key!r}: each member of a JSON object must be named once"
        ) from None
    except (ValueError, RecursionError) as exc:  # e.g. nested too deeply for this parser
        raise EventValidationError(f"malformed JSON: {exc}") from exc


def parse_event_json(raw: bytes | str, limits: InputLimits = DEFAULT_LIMITS) -> Event:
    """Decode (`decode_event_json`) and validate (`parse_event`) one JSON event."""
    return parse_event(decode_event_json(raw), limits)


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of both event kinds, generated from the models above."""
    schema = _EVENT_ADAPTER.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "HUP micro-behaviour event"
    schema["description"] = (
        "A micro-behaviour (kind 'micro', the default when kind is absent) or a dwell event "
        "(kind 'dwell'), keyed by user_id on the micro-behaviors topic. Messages are I-JSON "
        "(RFC 7493): UTF-8, each member named once. The length and size bounds are the "
        "defaults; a worker may be configured with others (HUP_MAX_* variables)."
    )
    return schema


def write_event_schema(out: Path) -> Path:
    """Write ``events.schema.json`` into directory ``out`` (created if missing); return it."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / "events.schema.json"
    target.write_bytes(
        orjson.dumps(event_json_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    )
    return target
