"""The re-keying stage: records forwarded by user_id with their origin, bad ones dead-lettered."""

from __future__ import annotations

import base64

import orjson
import pytest

from stream.processor import DeadLetter, InputRecord, Origin
from stream.rekey import ORIGIN_HEADER, Forward, origin_from_headers, rekey

EVENT = orjson.dumps({"user_id": 42, "ts": 1, "item_id": "i", "categories": ["c"], "behavior": 1})


def test_an_event_is_forwarded_unchanged_under_its_user_id_with_its_origin() -> None:
    record = InputRecord(EVENT, "micro-behaviors", 2, 17, b"device-9")
    out = rekey(record)
    assert isinstance(out, Forward)
    assert (out.key, out.value) == (b"42", EVENT)
    assert origin_from_headers(out.headers) == Origin("micro-behaviors", 2, 17, b"device-9")


def test_an_unkeyed_event_keeps_no_key_in_its_origin() -> None:
    out = rekey(InputRecord(EVENT, "micro-behaviors", 0, 3, None))
    assert isinstance(out, Forward)
    assert origin_from_headers(out.headers) == Origin("micro-behaviors", 0, 3, None)


@pytest.mark.parametrize(
    ("value", "reason"),
    [(b"{not json", "malformed JSON"), (None, "empty message"), (b'{"ts": 1}', "user_id")],
)
def test_a_bad_record_is_dead_lettered_where_its_producer_wrote_it(
    value: bytes | None, reason: str
) -> None:
    out = rekey(InputRecord(value, "micro-behaviors", 1, 99, b"device-3"))
    assert isinstance(out, DeadLetter)
    letter = orjson.loads(out.value)
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("micro-behaviors", 1, 99)
    assert base64.b64decode(letter["key"]) == b"device-3" and out.key == b"device-3"
    assert reason in letter["reason"]


def test_headers_without_an_origin_give_none_and_a_foreign_origin_is_an_error() -> None:
    assert origin_from_headers(None) is None
    assert origin_from_headers([("trace", b"x")]) is None
    with pytest.raises(ValueError, match=ORIGIN_HEADER):
        origin_from_headers([(ORIGIN_HEADER, b"{}")])
    with pytest.raises(ValueError, match=ORIGIN_HEADER):
        origin_from_headers([(ORIGIN_HEADER, b"not json")])


def test_a_forward_the_producer_would_refuse_is_dead_lettered_within_the_limit() -> None:
    huge_key = b"k" * 3000  # travels in the origin header, in base64
    record = InputRecord(EVENT, "micro-behaviors", 0, 5, huge_key)
    assert isinstance(rekey(record), Forward)  # fits the default limit
    out = rekey(record, max_bytes=2048)
    assert isinstance(out, DeadLetter)
    assert "re-keyed record would be" in out.reason and "key 3000 bytes" in out.reason
    assert len(out.value) + len(out.key or b"") <= 2048
    letter = orjson.loads(out.value)
    assert (letter["partition"], letter["offset"]) == (0, 5)
    assert base64.b64decode(letter["value"]) == EVENT
