"""Fuzz: generated hostile messages through the processor; each is applied or dead-lettered.

Framework-free (`stream.processor`, no broker): every message either becomes a profile
or a dead letter with a reason, every record the worker would write fits in one Kafka
record, and nothing raises. Run with ``-o log_cli=true --log-cli-level=INFO`` to see
the summary line.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter

import orjson
import pytest

from hup.runtime import Profiler
from hup.sessions import Dataset
from state.store import MemoryStore
from stream.processor import InputRecord, Processor
from stream.publish import DEFAULT_MAX_RECORD_BYTES

logger = logging.getLogger(__name__)

MESSAGES = 10_240
BATCH = 256
NOW = 1_700_100_000.0

Message = tuple[bytes | None, bytes | None]  # (key, value)

_NASTY_STRINGS = [
    "",
    " ",
    "\u3000",
    "\x00",
    "a\nb",
    "\u202e" + "u1",
    "１",
    "\ufeff",
    "é" * 300,
    "𝔘" * 200,
    "u" * 257,
    "x" * 70_000,
    "Cart",
    "cart ",
    "\\ud800",
]
_NASTY_NUMBERS = [
    "0",
    "-0",
    "-1",
    "1e308",
    "1e400",
    "-1e400",
    "1e-400",
    "NaN",
    "Infinity",
    "18446744073709551616",
    "-9223372036854775809",
    "9" * 30,
    "1." + "0" * 500,
    "4503599627370496.4",
    "253402300800",
    str(NOW + 3 * 86_400),
    str(NOW),
    "86400.5",
    "true",
    "null",
    "[]",
    "{}",
]


def _valid(rng: random.Random, traffic: Dataset) -> dict[str, object]:
    session = rng.choice(traffic.sessions)
    event = rng.choice(session.events)
    return event.model_dump(mode="json", exclude_none=True)


def _raw(members: dict[str, str]) -> bytes:
    return ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in members.items()) + "}").encode(
        "utf-8", "surrogatepass"
    )


def _hostile(rng: random.Random, traffic: Dataset) -> Message:
    """One message from one of a dozen families of broken input (or a valid one)."""
    event = _valid(rng, traffic)
    key: bytes | None = str(event["user_id"]).encode()
    members = {k: json.dumps(v) for k, v in event.items()}
    family = rng.randrange(13)
    if family == 0:  # random bytes
        value: bytes | None = rng.randbytes(rng.randrange(0, 200))
    elif family == 1:  # truncated JSON
        full = _raw(members)
        value = full[: rng.randrange(len(full))]
    elif family == 2:  # a field replaced by a nasty number
        members[rng.choice(list(members))] = rng.choice(_NASTY_NUMBERS)
        value = _raw(members)
    elif family == 3:  # a field replaced by a nasty string
        members[rng.choice(list(members))] = json.dumps(rng.choice(_NASTY_STRINGS))
        value = _raw(members).replace(b"\\\\ud800", b"\\ud800")
    elif family == 4:  # a field dropped
        members.pop(rng.choice(list(members)))
        value = _raw(members)
    elif family == 5:  # a duplicate member
        name = rng.choice(list(members))
        value = _raw(members)[:-1] + f",{json.dumps(name)}:{members[name]}}}".encode()
    elif family == 6:  # deep nesting, or a long list of categories
        depth = rng.choice([10, 1000, 5000])
        members["categories"] = rng.choice(["[" * depth + "]" * depth, json.dumps(["c"] * 40)])
        value = _raw(members)
    elif family == 7:  # not an object
        value = rng.choice([b"[]", b"null", b"1", b'"event"', b"", b" ", b"\xff\xfe{}"])
    elif family == 8:  # no value, no key, or the wrong key
        key, value = rng.choice(
            [(key, None), (None, _raw(members)), (b"someone-else", _raw(members))]
        )
    elif family == 9:  # an extra member, or a wrong kind
        members[rng.choice(["price", "kind", "__proto__"])] = rng.choice(
            ['"click"', "1", '"dwell"']
        )
        value = _raw(members)
    elif family == 10:  # the largest value the producer takes, mostly one string
        members["event_id"] = json.dumps("e" * rng.choice([256, 257, 70_000]))
        value = _raw(members)
    else:  # valid events (families 11, 12): some users get applied events
        value = _raw(members)
    return key, value


@pytest.mark.parametrize("seed", [20261202])
def test_hostile_messages_are_each_applied_or_dead_lettered(
    profiler: Profiler, traffic: Dataset, seed: int
) -> None:
    rng = random.Random(seed)
    messages = [_hostile(rng, traffic) for _ in range(MESSAGES)]
    processor = Processor(profiler, require_user_key=True, clock=lambda: NOW)
    store = MemoryStore()
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    started = time.perf_counter()
    for start in range(0, MESSAGES, BATCH):
        batch = [
            InputRecord(value, "micro-behaviors", 0, offset, key)
            for offset, (key, value) in enumerate(messages[start : start + BATCH], start)
        ]
        result = processor.process(batch, store)  # must not raise
        out = result.outcomes
        assert out["consumed"] == len(batch)
        settled = out["dlq"] + out["applied"] + out["skipped_duplicate"]
        settled += sum(n for name, n in out.items() if name.startswith("dropped_"))
        assert settled == len(batch), out
        for dead in result.dead_letters:
            assert dead.reason.strip(), dead
            assert len(dead.key or b"") + len(dead.value) <= DEFAULT_MAX_RECORD_BYTES
            reasons[dead.reason.split(":")[0][:40]] += 1
        for profile in result.profiles:
            assert len(profile.key) + len(profile.value) <= DEFAULT_MAX_RECORD_BYTES
            orjson.loads(profile.value)
        totals.update(out)
    elapsed = time.perf_counter() - started
    for key, value in store.items():
        assert len(key) + len(value) <= DEFAULT_MAX_RECORD_BYTES
    assert totals["consumed"] == MESSAGES
    assert totals["applied"] > 1000 and totals["dlq"] > MESSAGES / 2  # both paths exercised
    logger.info(
        "fuzz: %d messages in %.1f s: %d dead-lettered with a reason, %d applied, "
        "%d dropped, %d skipped as duplicates; over_limit %s; most common reasons %s",
        MESSAGES,
        elapsed,
        totals["dlq"],
        totals["applied"],
        sum(n for name, n in totals.items() if name.startswith("dropped_")),
        totals["skipped_duplicate"],
        {k: v for k, v in totals.items() if k.startswith("over_limit_")},
        reasons.most_common(6),
    )
