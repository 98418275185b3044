"""The contract of `user-profiles` messages: a pydantic model and the JSON Schema made from it.

The worker builds these messages as plain dicts (`stream.processor.Processor`); this model
documents and checks them, and `stream/schemas/profile.schema.json` is generated from it
(`hup-stream schema --out stream/schemas`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "SHIPPED_PROFILE_SCHEMA",
    "ProfileMessage",
    "ProfileVectors",
    "TopCategory",
    "TopItem",
    "profile_json_schema",
    "write_profile_schema",
]

SHIPPED_PROFILE_SCHEMA = Path(__file__).parent / "schemas" / "profile.schema.json"
_FILE_NAME = SHIPPED_PROFILE_SCHEMA.name


class TopCategory(BaseModel):
    """A finest-level category the user is likely to turn to next."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Category id, as in the events.")
    score: float = Field(
        description=(
            "The model's probability of this category next, 0..1 (the default "
            "repeat-aware model), or the category's cosine to the profile, -1..1 (hup-paper)."
        )
    )


class TopItem(BaseModel):
    """An item (sku) the user is likely to view next."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Item id (sku), as in the events.")
    score: float = Field(
        description=(
            "The model's probability of this item next, 0..1 (the default repeat-aware "
            "model), or the item's cosine to the item profile, -1..1 (hup-paper)."
        )
    )


class ProfileVectors(BaseModel):
    """The hierarchical profile: one vector per level of the pyramid."""

    model_config = ConfigDict(extra="forbid")

    micro: list[float] | None = Field(
        description="Micro-behaviour level; null for model variants without it."
    )
    item: list[float] = Field(min_length=1, description="Item level.")
    category: list[list[float]] = Field(
        min_length=1, description="One vector per category level, coarse to fine."
    )


class ProfileMessage(BaseModel):
    """One message on `user-profiles`: a user's profile right after one of their events.

    Keyed by user_id, like the input.
    """

    model_config = ConfigDict(extra="forbid", title="HUP user profile")

    user_id: str = Field(description="The user; also the Kafka key.")
    event_ts: float = Field(ge=0, description="Time of the event applied, epoch seconds.")
    published_ts: float = Field(ge=0, description="When the worker built this, epoch seconds.")
    model_version: str = Field(min_length=1, description="Content hash of the model used.")
    seq: int = Field(
        ge=1,
        description=(
            "Events applied to this user so far, across model rollouts; a repeated "
            "profile has the same seq. Restarts at 1 only after the user's stored state "
            "was unreadable."
        ),
    )
    event_id: str | None = Field(
        description=(
            "The event's event_id, if it had one. An event whose profile would exceed "
            "the worker's record size limit (HUP_PRODUCER_MAX_REQUEST_SIZE) is "
            "dead-lettered instead."
        )
    )
    profile: ProfileVectors
    top_categories: list[TopCategory] = Field(
        description="Finest-level categories the user is likely to turn to next, best first."
    )
    top_items: list[TopItem] = Field(
        description=(
            "Items the user is likely to view next, best first (HUP_TOP_ITEMS of them): "
            "revisits of the user's recent items and new items, never the item of the "
            "open visit. The same ranking as the offline evaluation."
        )
    )


def profile_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of `user-profiles` messages."""
    schema = ProfileMessage.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def write_profile_schema(out: Path) -> Path:
    """Write ``profile.schema.json`` into directory ``out`` (created if missing); return it."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / _FILE_NAME
    target.write_bytes(
        orjson.dumps(profile_json_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        + b"\n"
    )
    return target
