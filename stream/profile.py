"""The profile message of `user-profiles`: its contract, its typed body, and its compact record.

Three views of one message:

- `ProfileMessage`, the pydantic contract: `stream/schemas/profile.schema.json` is
  generated from it (`hup-stream schema --out stream/schemas`);
- `ProfileBody`, the typed dict the processor builds (`profile_body`), with the vectors
  as float32 arrays, and `render_profile` prints as the message. Its fields are the
  contract's, in the contract's order (a test holds them equal). A typed dict costs
  nothing over a plain one on the hot path, and orjson prints the float32 arrays as
  float32: through the pydantic model they would be widened to float64 and print
  other digits;
- the compact latest-profile record, from which ``GET /profiles/{user_id}`` serves the
  message (`encode_latest`, `render_latest`).

A profile message is JSON whose bulk is the profile vectors, each float32 printed as
decimal text (about 11 bytes a number). The latest-profile table keeps, per user, the
last profile published, and its changelog is written once per user per batch, so a
second JSON copy of every profile would double what the worker writes to Kafka per
event. The table instead keeps a compact record: the vectors as raw float32 bytes and
the other fields as a small JSON array, from which `render_latest` rebuilds the
published message byte for byte (the same values, in the same types, through the same
`render_profile`). The user id is not stored in the record: it is the record's key.

Layout of a compact record (all integers little-endian)::

    MAGIC (3 bytes: NUL, "H", "L") | version u8 (1) | meta length u32 | meta (JSON) | float32 vectors

where meta is ``[event_ts, published_ts, model_version, seq, event_id,
[[category, score], ...], [[item, score], ...], micro_dim, item_dim, [category_dims]]``
(``micro_dim`` -1 when the model has no micro head) and the vectors follow in the order
micro, item, category0..K-1. A value that begins with ``{`` is a profile message stored
whole, and is served as it is.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "SHIPPED_PROFILE_SCHEMA",
    "LatestRecordError",
    "ProfileBody",
    "ProfileMessage",
    "ProfileVectors",
    "ProfileVectorsBody",
    "ScoredId",
    "TopCategory",
    "TopItem",
    "encode_latest",
    "profile_body",
    "profile_json_schema",
    "render_latest",
    "render_profile",
    "write_profile_schema",
]

SHIPPED_PROFILE_SCHEMA = Path(__file__).parent / "schemas" / "profile.schema.json"
_FILE_NAME = SHIPPED_PROFILE_SCHEMA.name

_MAGIC = b"\x00HL"
_VERSION = 1
_HEADER = struct.Struct("<3sBI")


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


class ScoredId(TypedDict):
    """A `TopCategory` or `TopItem` of a `ProfileBody`."""

    id: str
    score: float


class ProfileVectorsBody(TypedDict):
    """`ProfileVectors` as the processor holds them: float32 arrays."""

    micro: np.ndarray | None
    item: np.ndarray
    category: list[np.ndarray]


class ProfileBody(TypedDict):
    """A `ProfileMessage` before it is printed: its fields, in its order, vectors as arrays."""

    user_id: str
    event_ts: float
    published_ts: float
    model_version: str
    seq: int
    event_id: str | None
    profile: ProfileVectorsBody
    top_categories: list[ScoredId]
    top_items: list[ScoredId]


class LatestRecordError(ValueError):
    """A latest-profile record that is neither a compact record nor a profile message."""


def profile_body(
    *,
    user_id: str,
    event_ts: float,
    published_ts: float,
    model_version: str,
    seq: int,
    event_id: str | None,
    micro: np.ndarray | None,
    item: np.ndarray,
    categories: Sequence[np.ndarray],
    top_categories: Sequence[tuple[str, float]],
    top_items: Sequence[tuple[str, float]],
) -> ProfileBody:
    """The profile message's fields, in the contract's order (vectors as float32 arrays)."""
    return {
        "user_id": user_id,
        "event_ts": event_ts,
        "published_ts": published_ts,
        "model_version": model_version,
        "seq": seq,
        "event_id": event_id,
        "profile": {"micro": micro, "item": item, "category": list(categories)},
        "top_categories": [{"id": c, "score": s} for c, s in top_categories],
        "top_items": [{"id": i, "score": s} for i, s in top_items],
    }


def render_profile(body: ProfileBody) -> bytes:
    """The profile message of a `profile_body` (numpy vectors printed as float32)."""
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _float32(vector: Any) -> np.ndarray:
    array = np.asarray(vector)
    if array.dtype != np.float32:
        # The model's vectors are float32; anything else would not round-trip as bytes.
        raise TypeError(f"profile vector of dtype {array.dtype}, not float32")
    return array


def encode_latest(body: ProfileBody) -> bytes:
    """The compact latest-profile record of a `profile_body`."""
    profile = body["profile"]
    micro = None if profile["micro"] is None else _float32(profile["micro"])
    item = _float32(profile["item"])
    categories = [_float32(c) for c in profile["category"]]
    meta = orjson.dumps(
        [
            body["event_ts"],
            body["published_ts"],
            body["model_version"],
            body["seq"],
            body["event_id"],
            [[c["id"], c["score"]] for c in body["top_categories"]],
            [[i["id"], i["score"]] for i in body["top_items"]],
            -1 if micro is None else len(micro),
            len(item),
            [len(c) for c in categories],
        ]
    )
    vectors = ([] if micro is None else [micro]) + [item, *categories]
    blob = b"".join(np.ascontiguousarray(v).tobytes() for v in vectors)
    return _HEADER.pack(_MAGIC, _VERSION, len(meta)) + meta + blob


def render_latest(user_id: str, raw: bytes) -> bytes:
    """The profile message a latest-profile record stands for, exactly as published.

    Raises:
        LatestRecordError: ``raw`` is neither a compact record nor a JSON message.
    """
    if raw[:1] == b"{":
        return raw
    if len(raw) < _HEADER.size:
        raise LatestRecordError(f"latest-profile record of {len(raw)} bytes: too short")
    magic, version, meta_len = _HEADER.unpack_from(raw)
    if magic != _MAGIC or version != _VERSION:
        raise LatestRecordError(f"not a latest-profile record (header {raw[:4]!r})")
    start = _HEADER.size
    try:
        meta = orjson.loads(raw[start : start + meta_len])
        (
            event_ts,
            published_ts,
            model_version,
            seq,
            event_id,
            top_categories,
            top_items,
            micro_dim,
            item_dim,
            category_dims,
        ) = meta
        dims = ([] if micro_dim < 0 else [micro_dim]) + [item_dim, *category_dims]
        if not all(isinstance(d, int) and d >= 0 for d in dims):
            raise ValueError(f"vector sizes {dims}")
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise LatestRecordError(f"latest-profile record with unreadable fields: {exc}") from exc
    blob = raw[start + meta_len :]
    if len(blob) != 4 * sum(dims):
        raise LatestRecordError(
            f"latest-profile record with {len(blob)} bytes of vectors, {4 * sum(dims)} expected"
        )
    vectors, offset = [], 0
    for dim in dims:
        vectors.append(np.frombuffer(blob, dtype=np.float32, count=dim, offset=offset))
        offset += 4 * dim
    micro = None if micro_dim < 0 else vectors.pop(0)
    body = profile_body(
        user_id=user_id,
        event_ts=event_ts,
        published_ts=published_ts,
        model_version=model_version,
        seq=seq,
        event_id=event_id,
        micro=micro,
        item=vectors[0],
        categories=vectors[1:],
        top_categories=[(c, s) for c, s in top_categories],
        top_items=[(i, s) for i, s in top_items],
    )
    return render_profile(body)


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
