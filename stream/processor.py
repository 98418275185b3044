"""The per-batch logic of the worker, free of faust: records in, profiles and dead letters out.

`Processor.process` takes a batch of input records (from any partitions, in arrival
order) and a key-value view of the per-user state. It decodes and validates each record,
loads each user's state once, skips events already applied (by input offset), steps the
model in waves (the k-th event of every user in the batch together, so a user's events
are never reordered and each model call is batched across users), writes each user's
state once, and returns the profiles to publish and the dead letters.
"""

from __future__ import annotations

import base64
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import orjson

from hup.exceptions import EventValidationError, StateError
from hup.incremental import ProfileState
from hup.runtime import Applied, Profiler
from hup.schema import Event, parse_event_json
from state.codec import decode_state, encode_state
from state.exceptions import StateDecodeError, StateVersionError

__all__ = ["BatchResult", "DeadLetter", "InputRecord", "Origin", "OutputProfile", "Processor"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Origin:
    """Where a re-keyed record was first consumed: its input topic position and key."""

    topic: str
    partition: int
    offset: int
    key: bytes | None


@dataclass(frozen=True)
class InputRecord:
    """One consumed message, with where it came from."""

    value: bytes | None
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    received_ts: float = 0.0  # when the worker consumed it (processing latency)
    # Set when the record was re-keyed (HUP_REPARTITION): its position in the input
    # topic, which identifies the event across copies forwarded more than once.
    origin: Origin | None = None


@dataclass(frozen=True)
class OutputProfile:
    """A profile message for `user-profiles`."""

    key: bytes
    value: bytes
    event_ts: float
    received_ts: float


@dataclass(frozen=True)
class DeadLetter:
    """A message for the dead-letter topic: the original bytes, where they were, and why."""

    key: bytes | None
    value: bytes
    reason: str


@dataclass
class BatchResult:
    """What one batch produced; `outcomes` feeds the metrics."""

    profiles: list[OutputProfile] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    step_seconds: float = 0.0
    model_calls: int = 0


def dead_letter(record: InputRecord, reason: str) -> DeadLetter:
    """Wrap a bad record: base64 of its original bytes, topic, partition, offset, reason.

    A re-keyed record is reported where its producer wrote it (``record.origin``).
    """
    where = record.origin or record
    payload = {
        "reason": reason,
        "topic": where.topic,
        "partition": where.partition,
        "offset": where.offset,
        "key": None if where.key is None else base64.b64encode(where.key).decode(),
        "value": None if record.value is None else base64.b64encode(record.value).decode(),
    }
    return DeadLetter(where.key, orjson.dumps(payload), reason)


class KeyValue(Protocol):
    """The part of a state store the processor uses."""

    def get(self, key: bytes) -> bytes | None:
        """The stored value, or None."""
        ...

    def put(self, key: bytes, value: bytes) -> None:
        """Store a value (persisted only by this call)."""
        ...


class Processor:
    """Applies batches of records to per-user state with one HUP model."""

    def __init__(
        self,
        profiler: Profiler,
        coalesce: bool = False,
        clock: Callable[[], float] = time.time,
        require_user_key: bool = False,
    ) -> None:
        """Bind a model.

        Args:
            profiler: the loaded model.
            coalesce: publish only each user's last profile of a batch (default: every event).
            clock: wall clock for `published_ts` (injectable for tests).
            require_user_key: dead-letter records whose Kafka key is not their user_id. A
                user's state lives in the partition its key maps to; an event that arrives
                elsewhere would fork that state. (Repartitioning makes every key right.)
        """
        self.profiler = profiler
        self.coalesce = coalesce
        self.clock = clock
        self.require_user_key = require_user_key

    def load_state(self, store: KeyValue, key: bytes, outcomes: Counter[str]) -> ProfileState:
        """The user's state, or a fresh one when absent, foreign (other model) or corrupt."""
        raw = store.get(key)
        if raw is None:
            return self.profiler.new_state()
        try:
            return ProfileState.from_arrays(decode_state(raw, self.profiler.version))
        except StateVersionError:
            outcomes["state_reset_version"] += 1
        except (StateDecodeError, StateError) as exc:
            outcomes["state_reset_corrupt"] += 1
            logger.warning("user %r: state unreadable, reset: %s", key, exc)
        return self.profiler.new_state()

    def process(self, records: Sequence[InputRecord], store: KeyValue) -> BatchResult:
        """Apply a batch; see the module docstring for the guarantees."""
        result = BatchResult()
        per_user: dict[str, list[tuple[InputRecord, Event]]] = defaultdict(list)
        for record in records:
            result.outcomes["consumed"] += 1
            if record.value is None:
                result.dead_letters.append(dead_letter(record, "empty message (no value)"))
                continue
            try:
                event = parse_event_json(record.value)
            except EventValidationError as exc:
                logger.info("%s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
                result.dead_letters.append(dead_letter(record, str(exc)))
                continue
            if self.require_user_key and record.key != event.user_id.encode():
                reason = (
                    f"message key {record.key!r} is not the event's user_id {event.user_id!r}; "
                    "key events by user_id or enable repartitioning (HUP_REPARTITION=1)"
                )
                result.dead_letters.append(dead_letter(record, reason))
                continue
            per_user[event.user_id].append((record, event))
        result.outcomes["dlq"] += len(result.dead_letters)

        states: dict[str, ProfileState] = {}
        for user in per_user:
            state = self.load_state(store, user.encode(), result.outcomes)
            seen = _Applied(state)
            fresh = []
            for record, event in per_user[user]:
                if seen.check_and_add(record):
                    result.outcomes["skipped_duplicate"] += 1
                else:
                    fresh.append((record, event))
            per_user[user] = fresh
            states[user] = state

        latest: dict[str, OutputProfile] = {}
        wave = 0
        while True:
            users = [u for u, items in per_user.items() if wave < len(items)]
            if not users:
                break
            started = time.perf_counter()
            applied = self.profiler.apply(
                [states[u] for u in users], [per_user[u][wave][1] for u in users]
            )
            result.step_seconds += time.perf_counter() - started
            result.model_calls += 1
            for user, outcome in zip(users, applied, strict=True):
                record, event = per_user[user][wave]
                states[user] = _with_input(outcome.state, record)
                self._count(outcome, result.outcomes)
                if outcome.profile is not None:
                    out = self._profile_message(user, event, record, outcome)
                    if self.coalesce:
                        latest[user] = out
                    else:
                        result.profiles.append(out)
            wave += 1
        result.profiles.extend(latest.values())
        for user, state in states.items():
            if per_user[user]:
                store.put(user.encode(), encode_state(state.to_arrays(), self.profiler.version))
        return result

    @staticmethod
    def _count(outcome: Applied, outcomes: Counter[str]) -> None:
        flags = outcome.flags
        if flags.dropped:
            outcomes[f"dropped_{flags.dropped}"] += 1
            return
        outcomes["applied"] += 1
        outcomes["oov_item"] += flags.item_oov
        outcomes["oov_category"] += flags.category_oov
        outcomes["clamped_gap"] += flags.gap_clamped

    def _profile_message(
        self, user: str, event: Event, record: InputRecord, outcome: Applied
    ) -> OutputProfile:
        profile = outcome.profile
        assert profile is not None  # noqa: S101 - callers check
        vectors = profile.vectors
        n_levels = self.profiler.checkpoint.spec.n_levels
        body = {
            "user_id": user,
            "event_ts": event.ts,
            "published_ts": self.clock(),
            "model_version": self.profiler.version,
            "seq": outcome.state.applied,
            "event_id": event.event_id,
            "profile": {
                "micro": vectors.get("micro"),
                "item": vectors["item"],
                "category": [vectors[f"category{k}"] for k in range(n_levels)],
            },
            "top_categories": [{"id": c, "score": s} for c, s in profile.top_categories],
        }
        value = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        return OutputProfile(user.encode(), value, event.ts, record.received_ts)


class _Applied:
    """Which of a user's records were applied already: the state's record, then the batch's.

    A record is identified by its input position: the consumed partition and offset or,
    for a re-keyed record, its original one (a re-keying stage that crashes before its
    commit forwards a record again, under a new offset, possibly into the same batch).
    """

    def __init__(self, state: ProfileState) -> None:
        self._consumed = (state.input_partition, state.input_offset)
        self._origins = dict(state.source_offsets)

    def check_and_add(self, record: InputRecord) -> bool:
        """Whether ``record`` was applied; if not, count it as applied from now on."""
        if record.origin is not None:
            partition, offset = record.origin.partition, record.origin.offset
            if offset <= self._origins.get(partition, -1):
                return True
            self._origins[partition] = offset
            return False
        partition, last = self._consumed
        if record.partition == partition and record.offset <= last:
            return True
        self._consumed = (record.partition, record.offset)
        return False


def _with_input(state: ProfileState, record: InputRecord) -> ProfileState:
    state = replace(state, input_partition=record.partition, input_offset=record.offset)
    if record.origin is not None:
        state = state.with_source(record.origin.partition, record.origin.offset)
    return state
