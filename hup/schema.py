"""The input event schema: the single source of truth for producers, training and the stream."""

from __future__ import annotations

import enum
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

from hup.exceptions import EventValidationError

__all__ = [
    "Behavior",
    "DwellEvent",
    "Event",
    "MicroEvent",
    "event_json_schema",
    "parse_event",
    "write_event_schema",
    "parse_event_json",
]


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


def _coerce_behavior(value: Any) -> Behavior:
    # Producers send either the JD code or the name; accept both, case-insensitively,
    # but never a bool (True == 1 in Python) or a float code such as 1.5.
    if isinstance(value, Behavior):
        return value
    if isinstance(value, float) and value.is_integer():
        # JSON has one number type: `9.0` is the code 9, as JSON Schema's "integer" agrees.
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= len(Behavior):
            return Behavior(value)
        raise ValueError(f"behaviour code {value} is outside 1..{len(Behavior)}")
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return _coerce_behavior(int(text))
        found = _BEHAVIOR_NAMES.get(text.lower())
        if found is not None:
            return found
        names = ", ".join(b.name for b in Behavior)
        raise ValueError(f"unknown behaviour {value!r}; expected one of {names} or a code 1..10")
    raise ValueError(f"behaviour must be a name or a code 1..10, got {type(value).__name__}")


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def _coerce_id(value: Any) -> str:
    # JD ids are integers; everything downstream keys on strings.
    if isinstance(value, bool):
        raise ValueError("an id must be a string or an integer, got a boolean")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("an id must not be empty")
        if _CONTROL_CHARACTER.search(value):
            # Ids are stored joined by a control character (hup.incremental): one inside an
            # id would split it when the state is read back.
            raise ValueError(f"an id must not contain control characters, got {value!r}")
        return value
    raise ValueError(f"an id must be a string or an integer, got {type(value).__name__}")


def _finite_nonneg(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"expected a finite number >= 0, got {value!r}")
    return number


def _any_case(name: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in name)


Id = Annotated[
    str,
    BeforeValidator(_coerce_id),
    WithJsonSchema(
        {
            "anyOf": [
                # Not blank, no control characters.
                {
                    "type": "string",
                    "pattern": "^[^\\u0000-\\u001f\\u007f]*\\S[^\\u0000-\\u001f\\u007f]*$",
                },
                {"type": "integer"},
            ]
        }
    ),
]
Seconds = Annotated[
    float,
    BeforeValidator(_finite_nonneg),
    WithJsonSchema({"type": "number", "minimum": 0}),
]
BehaviorField = Annotated[
    Behavior,
    BeforeValidator(_coerce_behavior),
    WithJsonSchema(
        {
            "description": "JD behaviour name (case-insensitive) or code 1..10",
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": len(Behavior)},
                {
                    "type": "string",
                    "pattern": "^\\s*(0*(10|[1-9])|"
                    + "|".join(_any_case(b.name) for b in Behavior)
                    + ")\\s*$",
                },
            ],
        }
    ),
]


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: Id = Field(description="The user the event belongs to; also the Kafka key.")
    ts: Seconds = Field(description="Event time, epoch seconds (float).")
    item_id: Id = Field(description="The product (sku).")
    event_id: str | None = Field(default=None, description="Optional producer-side id.")


class MicroEvent(_EventBase):
    """One micro-behaviour of a user on a product page."""

    kind: Literal["micro"] = "micro"
    categories: list[Id] = Field(
        min_length=1,
        description="Categories of the item, coarse to fine (1..K levels; leaf only is fine).",
    )
    behavior: BehaviorField


class DwellEvent(_EventBase):
    """Sent when the user leaves a product page: the time spent on it."""

    kind: Literal["dwell"]
    dwell_s: Seconds = Field(description="Seconds spent on the product page.")


Event = MicroEvent | DwellEvent

_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(
    Annotated[MicroEvent | DwellEvent, Field(discriminator="kind")]
)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"] if p not in ("micro", "dwell")) or "event"
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"field '{where}': {message}")
    return "; ".join(parts)


def parse_event(data: Any) -> Event:
    """Validate one decoded event (a dict); raise `EventValidationError` naming field and problem."""
    if not isinstance(data, dict):
        raise EventValidationError(f"an event must be a JSON object, got {type(data).__name__}")
    if "kind" not in data:
        data = {**data, "kind": "micro"}
    kind = data["kind"]
    if kind not in ("micro", "dwell"):
        raise EventValidationError(f"field 'kind': unknown kind {kind!r}; expected micro or dwell")
    try:
        return _EVENT_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise EventValidationError(_describe(exc)) from exc


def parse_event_json(raw: bytes | str) -> Event:
    """Decode and validate one JSON event."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventValidationError(f"malformed JSON: {exc}") from exc
    return parse_event(data)


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of both event kinds, generated from the models above."""
    schema = _EVENT_ADAPTER.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "HUP micro-behaviour event"
    schema["description"] = (
        "A micro-behaviour (kind 'micro', the default when kind is absent) or a dwell event "
        "(kind 'dwell'), keyed by user_id on the micro-behaviors topic."
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
