"""The per-batch logic of the worker, free of faust: records in, profiles and dead letters out.

`Processor.process` takes a batch of input records (from any partitions, in arrival
order) and a key-value view of the per-user state. It decodes and validates each record,
loads each user's state once, skips events already applied (by input offset), steps the
model in waves (the k-th event of every user in the batch together, so a user's events
are never reordered and each model call is batched across users), writes each user's
state once, and returns the profiles to publish and the dead letters.

No input yields a record the producer would refuse (HUP_PRODUCER_MAX_REQUEST_SIZE,
`stream.publish`): a dead letter keeps a prefix of the original bytes, and an event whose
profile or state record would be too large (a very long user_id, event_id, item_id or
category) is dead-lettered instead of applied, leaving the user's state as it was.

Each event is held to the input bounds (`hup.schema.InputLimits`, HUP_MAX_* settings)
and its ``ts`` to at most ``max_future_s`` ahead of the processor's clock: one event far
in the future would otherwise leave every later gap of its user clamped to zero for
good. An event beyond a bound is dead-lettered and counted as ``over_limit_<bound>``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hup.exceptions import EventValidationError
from hup.runtime import Applied, Profiler
from hup.schema import DEFAULT_LIMITS, Event, InputLimits, parse_event_json
from state.store import KeyValue
from state.userstate import StateCache, UserState, load_user_state
from stream.profile import ProfileBody, encode_latest, profile_body, render_profile
from stream.publish import DEFAULT_MAX_RECORD_BYTES, FRAMING_RESERVE, clip_text, fit_dead_letter

__all__ = [
    "DEFAULT_MAX_FUTURE_S",
    "ORIGIN_HEADER",
    "BatchResult",
    "DeadLetter",
    "InputRecord",
    "Origin",
    "OutputProfile",
    "Processor",
    "input_position",
]

logger = logging.getLogger(__name__)


# The header in which the re-keying stage (`stream.rekey`) sends a record's `Origin`.
ORIGIN_HEADER = "hup-origin"
# How far ahead of the clock an event's ts may be (HUP_MAX_FUTURE_S's default): a day.
DEFAULT_MAX_FUTURE_S = 86_400.0


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
    # The message's typed fields (`stream.profile.profile_body`), from which the compact
    # latest-profile record is built; None for a profile made elsewhere.
    body: ProfileBody | None = field(default=None, compare=False, repr=False)

    def latest_record(self) -> bytes:
        """What the latest-profile table stores for this profile (`stream.profile`)."""
        return self.value if self.body is None else encode_latest(self.body)


@dataclass(frozen=True)
class DeadLetter:
    """A message for the dead-letter topic: the original bytes, where they were, and why."""

    key: bytes | None
    value: bytes
    reason: str
    where: str = ""  # the original record's ``topic[partition]@offset``, for logs
    # The input bounds (`hup.schema.InputLimits`) the event exceeded, for the metrics.
    limits: frozenset[str] = frozenset()


@dataclass
class BatchResult:
    """What one batch produced; `outcomes` feeds the metrics."""

    profiles: list[OutputProfile] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    step_seconds: float = 0.0
    model_calls: int = 0


def dead_letter(
    record: InputRecord,
    reason: str,
    max_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    limits: frozenset[str] = frozenset(),
) -> DeadLetter:
    """Wrap a bad record: base64 of its original bytes, topic, partition, offset, reason.

    A re-keyed record is reported where its producer wrote it (``record.origin``). The
    dead letter's key and value take at most ``max_bytes`` together: the reason is cut
    to `stream.publish.REASON_MAX_CHARS` characters and the original key and value to
    what fits, with their sizes and ``key_truncated``/``value_truncated`` flags
    (`stream.publish.fit_dead_letter`). Base64 takes 4/3 of the bytes, so without the
    cut a malformed record of 3/4 of the limit would make an unsendable dead letter.
    """
    where = record.origin or record
    reason = clip_text(reason)
    fields = {
        "reason": reason,
        "topic": where.topic,
        "partition": where.partition,
        "offset": where.offset,
    }
    key, value = fit_dead_letter(fields, where.key, record.value, max_bytes)
    where_text = f"{where.topic}[{where.partition}]@{where.offset}"
    return DeadLetter(key, value, reason, where_text, limits)


class Processor:
    """Applies batches of records to per-user state with one HUP model."""

    def __init__(
        self,
        profiler: Profiler,
        coalesce: bool = False,
        clock: Callable[[], float] = time.time,
        require_user_key: bool = False,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        require_origin: bool = False,
        limits: InputLimits = DEFAULT_LIMITS,
        max_future_s: float = DEFAULT_MAX_FUTURE_S,
        state_cache: StateCache | None = None,
    ) -> None:
        """Bind a model.

        Args:
            profiler: the loaded model.
            coalesce: publish only each user's last profile of a batch (default: every event).
            clock: wall clock for `published_ts` (injectable for tests).
            require_user_key: dead-letter records whose Kafka key is not their user_id. A
                user's state lives in the partition its key maps to; an event that arrives
                elsewhere would fork that state. (Repartitioning makes every key right.)
            max_record_bytes: the most key plus value bytes of any record the worker
                produces (`stream.publish.max_record_bytes` of HUP_PRODUCER_MAX_REQUEST_SIZE).
            require_origin: dead-letter records without an origin (the re-keying stage's
                topic, HUP_REPARTITION=1: a record it did not write has no input position
                to be de-duplicated by).
            limits: the bounds each event is held to (HUP_MAX_* settings).
            max_future_s: dead-letter events whose ts is further ahead of ``clock`` than this.
            state_cache: the states this processor wrote last (HUP_STATE_CACHE_MB), so that
                a user's next batch skips decoding the bytes it reads back.
        """
        self.profiler = profiler
        self.coalesce = coalesce
        self.clock = clock
        self.require_user_key = require_user_key
        self.max_record_bytes = max_record_bytes
        self.require_origin = require_origin
        self.limits = limits
        self.max_future_s = max_future_s
        self.state_cache = state_cache

    def load_user(self, store: KeyValue, key: bytes, outcomes: Counter[str]) -> UserState:
        """The user's state, or a fresh one when absent, foreign (other model) or corrupt.

        A state of another model version keeps its sequence count and idempotency record
        (`state.userstate`); an unreadable one keeps nothing.
        """
        raw = store.get(key)
        if raw is not None and self.state_cache is not None:
            cached = self.state_cache.lookup(key, raw)
            if cached is not None:
                return cached
        return load_user_state(raw, self.profiler, outcomes, key)

    def process(self, records: Sequence[InputRecord], store: KeyValue) -> BatchResult:
        """Apply a batch; see the module docstring for the guarantees."""
        result = BatchResult()
        per_user: dict[str, list[tuple[InputRecord, Event]]] = defaultdict(list)
        now = self.clock()
        for record in records:
            result.outcomes["consumed"] += 1
            if self.require_origin and record.origin is None:
                reason = (
                    f"no valid {ORIGIN_HEADER} header: not forwarded by the re-keying stage, "
                    "so its input position is unknown"
                )
                result.dead_letters.append(self._dead_letter(record, reason))
                continue
            if record.value is None:
                result.dead_letters.append(self._dead_letter(record, "empty message (no value)"))
                continue
            try:
                event = parse_event_json(record.value, self.limits)
            except EventValidationError as exc:
                result.outcomes.update(f"over_limit_{bound}" for bound in exc.limits)
                result.dead_letters.append(self._dead_letter(record, str(exc), exc.limits))
                continue
            if self.require_user_key and record.key != event.user_id.encode():
                reason = (
                    f"message key {record.key!r} is not the event's user_id {event.user_id!r}; "
                    "key events by user_id or enable repartitioning (HUP_REPARTITION=1)"
                )
                result.dead_letters.append(self._dead_letter(record, reason))
                continue
            if event.ts > now + self.max_future_s:
                result.outcomes["over_limit_future_ts"] += 1
                reason = (
                    f"field 'ts': {event.ts!r} is {event.ts - now:.0f} s ahead of the worker's "
                    f"clock, over the limit of {self.max_future_s:g} s (HUP_MAX_FUTURE_S)"
                )
                result.dead_letters.append(
                    self._dead_letter(record, reason, frozenset({"future_ts"}))
                )
                continue
            per_user[event.user_id].append((record, event))
        result.outcomes["dlq"] += len(result.dead_letters)

        states: dict[str, UserState] = {}
        changed: set[str] = set()  # users whose state is written at the end
        for user in per_user:
            loaded = self.load_user(store, user.encode(), result.outcomes)
            if loaded.reset and self._fits(user, loaded):
                changed.add(user)
            seen = _Applied(loaded)
            fresh = []
            for record, event in per_user[user]:
                if seen.check_and_add(record):
                    result.outcomes["skipped_duplicate"] += 1
                else:
                    fresh.append((record, event))
            per_user[user] = fresh
            states[user] = loaded

        latest: dict[str, OutputProfile] = {}
        wave = 0
        while True:
            users = [u for u, items in per_user.items() if wave < len(items)]
            if not users:
                break
            started = time.perf_counter()
            applied = self.profiler.apply(
                [states[u].state for u in users], [per_user[u][wave][1] for u in users]
            )
            result.step_seconds += time.perf_counter() - started
            result.model_calls += 1
            for user, outcome in zip(users, applied, strict=True):
                record, event = per_user[user][wave]
                new_state = states[user].after(outcome.state, *input_position(record))
                out = None
                if outcome.profile is not None:
                    out = self._profile_message(user, event, record, outcome, new_state.seq)
                too_large = self._too_large(user, event, new_state, out)
                if too_large is not None:
                    # As if the event had never come: the state stays as it was.
                    result.dead_letters.append(self._dead_letter(record, too_large))
                    result.outcomes["dlq"] += 1
                    continue
                states[user] = new_state
                changed.add(user)
                self._count(outcome, result.outcomes)
                if out is not None:
                    if self.coalesce:
                        latest[user] = out
                    else:
                        result.profiles.append(out)
            wave += 1
        result.profiles.extend(latest.values())
        for user in changed:
            stored = states[user]
            key, raw = user.encode(), stored.encode(self.profiler.version)
            store.put(key, raw)
            if self.state_cache is not None:
                self.state_cache.remember(key, raw, stored)
        return result

    def _fits(self, user: str, stored: UserState) -> bool:
        return self._state_record_size(user, stored) <= self.max_record_bytes

    def _state_record_size(self, user: str, stored: UserState) -> int:
        """Key plus value bytes of the user's state record in the table's changelog."""
        return len(user.encode()) + stored.encoded_size(self.profiler.version)

    def _dead_letter(
        self, record: InputRecord, reason: str, limits: frozenset[str] = frozenset()
    ) -> DeadLetter:
        return dead_letter(record, reason, self.max_record_bytes, limits)

    def _too_large(
        self, user: str, event: Event, stored: UserState, profile: OutputProfile | None
    ) -> str | None:
        """Why the event's profile or state record would exceed the limit, or None if neither.

        Both hold input strings without a length limit in the schema: the profile echoes
        user_id (also the key of it, of the state and of the latest-profile record) and
        event_id; the state keeps the open visit's item_id and categories.
        """
        limit = self.max_record_bytes
        key = len(user.encode())
        sizes = f"user_id {key} bytes"
        if profile is not None and key + len(profile.value) > limit:
            event_id = len((event.event_id or "").encode())
            return self._over(
                "profile", key + len(profile.value), f"{sizes}, event_id {event_id} bytes"
            )
        state_size = self._state_record_size(user, stored)
        if state_size > limit:
            features = stored.state.features
            item = len(features.item.encode())
            categories = sum(len(c.encode()) for c in features.categories)
            return self._over(
                "state", state_size, f"{sizes}, item_id {item} bytes, categories {categories} bytes"
            )
        return None

    def _over(self, what: str, size: int, sizes: str) -> str:
        return (
            f"event not applied: the user's {what} would be a record of {size} bytes, over the "
            f"{self.max_record_bytes} one record may take (HUP_PRODUCER_MAX_REQUEST_SIZE less "
            f"{FRAMING_RESERVE} bytes of framing); {sizes}"
        )

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
        self, user: str, event: Event, record: InputRecord, outcome: Applied, seq: int
    ) -> OutputProfile:
        profile = outcome.profile
        assert profile is not None  # noqa: S101 - callers check
        vectors = profile.vectors
        n_levels = self.profiler.checkpoint.spec.n_levels
        body = profile_body(
            user_id=user,
            event_ts=event.ts,
            published_ts=self.clock(),
            model_version=self.profiler.version,
            seq=seq,
            event_id=event.event_id,
            micro=vectors.get("micro"),
            item=vectors["item"],
            categories=[vectors[f"category{k}"] for k in range(n_levels)],
            top_categories=profile.top_categories,
            top_items=profile.top_items,
        )
        value = render_profile(body)
        return OutputProfile(user.encode(), value, event.ts, record.received_ts, body)


class _Applied:
    """Which of a user's records were applied already: the state's record, then the batch's.

    A record is identified by its position in the input topic: where it was consumed or,
    for a re-keyed record, where its producer wrote it (a re-keying stage that crashes
    before its commit forwards a record again, under a new offset, possibly into the same
    batch). The state keeps, per input partition, the offset of the last event applied
    from it; so the record is the same whether the worker re-keys or not, and turning
    HUP_REPARTITION on or off neither re-applies nor skips an event. A state written
    without them has only the last consumed position, which is used instead.
    """

    def __init__(self, user: UserState) -> None:
        self._applied = user.applied_offsets()

    def check_and_add(self, record: InputRecord) -> bool:
        """Whether ``record`` was applied; if not, count it as applied from now on."""
        partition, offset = input_position(record)
        if offset <= self._applied.get(partition, -1):
            return True
        self._applied[partition] = offset
        return False


def input_position(record: InputRecord) -> tuple[int, int]:
    """The record's (partition, offset) in the input topic."""
    where = record.origin or record
    return where.partition, where.offset
