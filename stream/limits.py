"""How large a record the worker may produce, and dead letters that always fit in one.

The worker's producer refuses a record larger than its ``max_request_size``
(HUP_PRODUCER_MAX_REQUEST_SIZE, passed to faust's ``producer_max_request_size``)
before sending it, and the agent's crashing supervisor then stops the worker; the
restarted worker consumes the same input and fails again. So no input may lead to a
larger record: dead letters are fitted into the limit here, and the processor
dead-letters an event whose profile or state record would not fit.

What counts is what aiokafka counts: key plus value plus the framing of a one-record
batch (61 bytes of batch header, a record header of up to ~20 bytes, and any Kafka
headers). `max_record_bytes` leaves `FRAMING_RESERVE` for that.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

import orjson

__all__ = [
    "DEAD_LETTER_KEY_MAX_BYTES",
    "DEFAULT_MAX_RECORD_BYTES",
    "DEFAULT_MAX_REQUEST_SIZE",
    "FRAMING_RESERVE",
    "REASON_MAX_CHARS",
    "clip_text",
    "fit_dead_letter",
    "max_record_bytes",
]

# faust's (and Kafka's Java producer's) default producer max request size.
DEFAULT_MAX_REQUEST_SIZE = 1_000_000
# Bytes of a produced record that are neither key nor value (see the module docstring).
FRAMING_RESERVE = 1024
DEFAULT_MAX_RECORD_BYTES = DEFAULT_MAX_REQUEST_SIZE - FRAMING_RESERVE
# A reason can quote the input (a key, an unknown kind): at most this many characters.
REASON_MAX_CHARS = 1000
# A dead letter is keyed by the original key only up to this size (a user id is short).
DEAD_LETTER_KEY_MAX_BYTES = 1024


def max_record_bytes(max_request_size: int) -> int:
    """The most key plus value bytes one record may carry under ``max_request_size``."""
    return max_request_size - FRAMING_RESERVE


def clip_text(text: str, limit: int = REASON_MAX_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, saying so when cut."""
    if len(text) <= limit:
        return text
    marker = f"... [cut, {len(text)} characters in all]"
    return text[: max(0, limit - len(marker))] + marker


def fit_dead_letter(
    fields: Mapping[str, object], key: bytes | None, value: bytes | None, max_bytes: int
) -> tuple[bytes | None, bytes]:
    """The Kafka key and JSON value of a dead letter of at most ``max_bytes`` in all.

    The JSON holds ``fields`` (reason, topic, partition, offset; short), then the
    original ``key`` and ``value`` in base64, each with its original size (``key_size``,
    ``value_size``: null for a missing one) and whether it was cut (``key_truncated``,
    ``value_truncated``). When both do not fit, each keeps a prefix: the shorter one
    whole if it fits in half the room, the other the rest. The dead letter's own Kafka
    key is the original key when it is at most `DEAD_LETTER_KEY_MAX_BYTES`, else none.

    Raises:
        ValueError: ``fields`` alone do not fit (a limit far below any real broker's).
    """
    record_key = key if key is not None and len(key) <= DEAD_LETTER_KEY_MAX_BYTES else None

    def payload(key_b64: str | None, value_b64: str | None, cut: tuple[bool, bool]) -> bytes:
        return orjson.dumps(
            {
                **fields,
                "key": key_b64,
                "key_size": None if key is None else len(key),
                "key_truncated": cut[0],
                "value": value_b64,
                "value_size": None if value is None else len(value),
                "value_truncated": cut[1],
            }
        )

    # Measured with empty strings where there is data and null where there is none (as
    # written), and with "false", one character longer than "true": the room is a floor.
    absent_or_empty = (None if key is None else "", None if value is None else "")
    fixed = len(payload(*absent_or_empty, (False, False))) + len(record_key or b"")
    room = max_bytes - fixed
    if room < 0:
        raise ValueError(f"a dead letter needs {fixed} bytes before its key and value")
    key_full = _b64_length(key)
    value_full = _b64_length(value)
    key_room = min(key_full, max(room - value_full, room // 2))
    value_room = min(value_full, room - key_room)
    key_b64, key_cut = _b64_prefix(key, key_room)
    value_b64, value_cut = _b64_prefix(value, value_room)
    return record_key, payload(key_b64, value_b64, (key_cut, value_cut))


def _b64_length(data: bytes | None) -> int:
    return 0 if data is None else 4 * ((len(data) + 2) // 3)


def _b64_prefix(data: bytes | None, room: int) -> tuple[str | None, bool]:
    """Base64 of the longest prefix of ``data`` whose encoding takes at most ``room`` chars."""
    if data is None:
        return None, False
    if _b64_length(data) <= room:
        return base64.b64encode(data).decode(), False
    return base64.b64encode(data[: room // 4 * 3]).decode(), True
