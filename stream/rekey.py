"""Re-keying by ``user_id`` for producers that do not key by it (``HUP_REPARTITION=1``).

The first of two stages: each input record is forwarded, unchanged, to the worker's
repartition topic under the key ``user_id``, so every user's events meet in one
partition before any state is touched. The record's input position and key travel in a
header, because the second stage needs them twice: a forward that is repeated (this
stage crashed or lost a partition before committing) lands under a new offset, and only
the original position tells the copies apart; and a dead letter must name where the
producer wrote the record, not where this stage put it. Records without a valid event
are dead-lettered here, with that position, and never forwarded.

faust's own ``group_by`` does neither: it forwards with nothing of the origin.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from hup.exceptions import EventValidationError
from hup.schema import DEFAULT_LIMITS, InputLimits, parse_event_json
from stream.processor import ORIGIN_HEADER, DeadLetter, InputRecord, Origin, dead_letter
from stream.publish import DEFAULT_MAX_RECORD_BYTES

__all__ = ["ORIGIN_HEADER", "Forward", "origin_from_headers", "rekey"]


@dataclass(frozen=True)
class Forward:
    """A record for the repartition topic: keyed by user, with its origin in a header."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]

    def size(self) -> int:
        """Bytes of key, value and headers: what counts against the producer's limit."""
        return (
            len(self.key)
            + len(self.value)
            + sum(len(name.encode()) + len(value) for name, value in self.headers)
        )


def rekey(
    record: InputRecord,
    max_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    limits: InputLimits = DEFAULT_LIMITS,
) -> Forward | DeadLetter:
    """The record re-keyed by its event's ``user_id``, or its dead letter.

    Dead-lettered: a record without a valid event (held to ``limits``, as the processor
    holds it), and one whose forward (value, user id and origin header, which holds the
    original key in base64) would exceed ``max_bytes``, since the producer would refuse
    it and stop the worker (`stream.publish`).
    """
    if record.value is None:
        return dead_letter(record, "empty message (no value)", max_bytes)
    try:
        event = parse_event_json(record.value, limits)
    except EventValidationError as exc:
        return dead_letter(record, str(exc), max_bytes, exc.limits)
    origin = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": None if record.key is None else base64.b64encode(record.key).decode(),
    }
    forward = Forward(event.user_id.encode(), record.value, [(ORIGIN_HEADER, orjson.dumps(origin))])
    size = forward.size()
    if size > max_bytes:
        reason = (
            f"the re-keyed record would be {size} bytes, over the limit of {max_bytes} "
            f"(HUP_PRODUCER_MAX_REQUEST_SIZE less framing): value {len(record.value)} bytes, "
            f"key {len(record.key or b'')} bytes, user_id {len(forward.key)} bytes"
        )
        return dead_letter(record, reason, max_bytes)
    return forward


def origin_from_headers(headers: Iterable[tuple[str, bytes]] | None) -> Origin | None:
    """The origin a forwarded record carries, or None for a record this stage did not write.

    Raises:
        ValueError: the header is there but unreadable (not written by `rekey`).
    """
    for name, value in headers or ():
        if name != ORIGIN_HEADER:
            continue
        try:
            origin = orjson.loads(value)
            key = origin["key"]
            return Origin(
                topic=str(origin["topic"]),
                partition=int(origin["partition"]),
                offset=int(origin["offset"]),
                key=None if key is None else base64.b64decode(key),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unreadable {ORIGIN_HEADER} header {value!r}: {exc}") from exc
    return None
