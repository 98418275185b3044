"""A user's stored state as the worker keeps it: the model's state plus the stream's bookkeeping.

`load_user_state` reads it from a store's bytes and `UserState.encode` writes it back;
`UserState.encoded_size` is its record size without encoding it. `StateCache` keeps the
states a worker wrote last, so the next batch of an active user skips decoding them.

The model's `ProfileState` holds model fields only. Beside it a `UserState` keeps the
stream's idempotency record, the input position(s) of the events applied (``sources``:
per input partition the offset of the last event applied from it; ``last_input``: the
last applied event's partition and offset), and the events counted before the state was
last reset (``seq_base``). The profile sequence number must survive a model rollout,
but ``applied`` cannot be carried into the new model's fresh state: `hup.incremental.step`
reads ``applied > 0`` as "this user has an open entry". So ``seq = seq_base + applied``.

Stored, the model's arrays (`ProfileState.to_arrays`) carry the stream's fields too:
``meta`` holds ``last_input`` after its first value (events applied), ``sources`` is an
int64 [n, 2] array (absent when empty) and `SEQ_BASE_ARRAY` an int64 0-d one (present
only when non-zero). `ProfileState.from_arrays` ignores arrays it does not know.

A state written by another model version is reset to the new model's initial state
and keeps its sequence count and idempotency record, so ``seq`` keeps increasing and
redelivered events are still skipped. An unreadable state (corrupt bytes, or a layout
this build cannot read) keeps nothing: that user's ``seq`` restarts at 1.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, replace

import numpy as np

from hup.exceptions import StateError
from hup.incremental import ProfileState
from hup.runtime import Profiler
from state.codec import decode_state, encode_state, encoded_size_of, peek_model_version
from state.errors import StateDecodeError

__all__ = [
    "SEQ_BASE_ARRAY",
    "SOURCES_ARRAY",
    "StateCache",
    "UserState",
    "load_user_state",
]

logger = logging.getLogger(__name__)

SEQ_BASE_ARRAY = "stream_seq_base"
SOURCES_ARRAY = "sources"
# Where ``last_input`` sits in the stored ``meta``: after the model's first value.
_LAST_INPUT_AT = 1
_NO_INPUT = (-1, -1)


@dataclass(frozen=True)
class UserState:
    """One user's model state and the stream's record of what it applied."""

    state: ProfileState
    seq_base: int = 0
    # Per input partition, the offset of the last event applied from it (a re-keyed
    # event counts at its origin's position).
    sources: tuple[tuple[int, int], ...] = ()
    last_input: tuple[int, int] = _NO_INPUT  # (partition, offset) of the last applied event
    # Loaded by resetting a stored state: write it back even if no event changes it, or
    # every later batch would reset (and count) it again.
    reset: bool = False

    @property
    def seq(self) -> int:
        """The sequence number of the user's last profile: events applied, resets included."""
        return self.seq_base + self.state.applied

    def after(self, state: ProfileState, partition: int, offset: int) -> UserState:
        """This user after applying the event at ``offset`` of input ``partition``: ``state``."""
        offsets = dict(self.sources)
        offsets[partition] = offset
        return UserState(state, self.seq_base, tuple(sorted(offsets.items())), (partition, offset))

    def applied_offsets(self) -> dict[int, int]:
        """Per input partition, the offset of the last event applied from it.

        A record without ``sources`` has only the last applied event's position.
        """
        if self.sources:
            return dict(self.sources)
        partition, offset = self.last_input
        return {partition: offset} if partition >= 0 else {}

    def arrays(self) -> dict[str, np.ndarray]:
        """What is stored: the model's arrays with the stream's fields (module docstring)."""
        arrays = self.state.to_arrays()
        meta = arrays["meta"]
        arrays["meta"] = np.concatenate(
            (
                meta[:_LAST_INPUT_AT],
                np.array(self.last_input, dtype=np.int64),
                meta[_LAST_INPUT_AT:],
            )
        )
        if self.sources:
            arrays[SOURCES_ARRAY] = np.array(self.sources, dtype=np.int64)
        if self.seq_base:
            arrays[SEQ_BASE_ARRAY] = np.array(self.seq_base, dtype=np.int64)
        return arrays

    def encode(self, model_version: str) -> bytes:
        """The stored bytes (`state.codec`)."""
        return encode_state(self.arrays(), model_version)

    def encoded_size(self, model_version: str) -> int:
        """``len(self.encode(model_version))``, without building or encoding the arrays."""
        sizes = [
            (name, ndim, size + 16 if name == "meta" else size)
            for name, ndim, size in self.state.array_sizes()
        ]
        if self.sources:
            sizes.append((SOURCES_ARRAY, 2, 16 * len(self.sources)))
        if self.seq_base:
            sizes.append((SEQ_BASE_ARRAY, 0, 8))
        return encoded_size_of(sizes, model_version)


def _split(arrays: dict[str, np.ndarray]) -> UserState:
    """The user's stored state from decoded arrays: the model's, then the stream's fields."""
    meta = arrays["meta"]
    end = _LAST_INPUT_AT + 2
    if meta.ndim != 1 or len(meta) < end:
        raise ValueError(f"meta has shape {meta.shape}, too short")
    partition, offset = meta[_LAST_INPUT_AT:end].tolist()
    model = dict(arrays)
    model["meta"] = np.concatenate((meta[:_LAST_INPUT_AT], meta[end:]))
    state = ProfileState.from_arrays(model)
    sources = arrays.get(SOURCES_ARRAY, np.zeros((0, 2), dtype=np.int64))
    if sources.ndim != 2 or sources.shape[1] != 2:
        raise ValueError(f"sources has shape {sources.shape}, expected [n, 2]")
    seq_base = int(arrays[SEQ_BASE_ARRAY]) if SEQ_BASE_ARRAY in arrays else 0
    return UserState(
        state,
        seq_base,
        tuple((int(p), int(o)) for p, o in sources.tolist()),
        (int(partition), int(offset)),
    )


def load_user_state(
    raw: bytes | None, profiler: Profiler, outcomes: Counter[str], key: bytes = b""
) -> UserState:
    """The stored user state, or a fresh one when absent, foreign (other model) or unreadable.

    Counts ``state_reset_version`` (carried over) or ``state_reset_corrupt`` (nothing
    carried; logged as a warning) in ``outcomes``.
    """
    if raw is None:
        return UserState(profiler.new_state())
    try:
        # Any model version: checksum and layout only. Views, not copies: `from_arrays`
        # converts what the model steps, and the step never writes into a state.
        record = _split(decode_state(raw, copy=False))
        version = peek_model_version(raw)
    except (StateDecodeError, StateError, KeyError, ValueError, TypeError) as exc:
        outcomes["state_reset_corrupt"] += 1
        logger.warning(
            "user %r: state unreadable, reset; nothing carried over, so the user's profile "
            "seq restarts at 1 and events before it are not recognised as applied: %s",
            key[:200],
            exc,
        )
        return UserState(profiler.new_state(), reset=True)
    if version == profiler.version:
        return record
    outcomes["state_reset_version"] += 1
    logger.debug("user %r: state of model %s reset for %s", key[:200], version, profiler.version)
    return replace(record, state=profiler.new_state(), seq_base=record.seq, reset=True)


class StateCache:
    """The decoded states a worker wrote last, by user key, within a byte budget (LRU).

    Decoding a stored state (`load_user_state`) is a large part of a batch's cost, and an
    active user's next batch reads back the very bytes this worker wrote. An entry keeps
    those bytes beside the state: `lookup` hands the state out only when the store's
    bytes are equal to them, so whatever else wrote the record (another worker after a
    rebalance, a restore, a batch whose writes were discarded, an expiry tombstone) the
    store's bytes decide, and a hit is exactly what decoding them would give.
    """

    def __init__(self, max_bytes: int) -> None:
        """Hold at most ``max_bytes`` of entries (stored bytes plus state arrays); 0: none."""
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, tuple[bytes, UserState, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: bytes, raw: bytes) -> UserState | None:
        """The cached state of ``key`` if it was stored as ``raw``, else None."""
        entry = self._entries.get(key)
        if entry is None or entry[0] != raw:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def remember(self, key: bytes, raw: bytes, user: UserState) -> None:
        """Keep ``user`` as the state ``raw`` decodes to (a compact copy of its arrays)."""
        self.forget(key)
        if self.max_bytes <= 0:
            return
        state = _compact(user.state)
        size = len(raw) + state.hidden.nbytes + sum(ring.nbytes for ring in state.windows) + 512
        if size > self.max_bytes:
            return
        self._entries[key] = (raw, replace(user, state=state, reset=False), size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, _, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted

    def forget(self, key: bytes) -> None:
        """Drop ``key``'s entry, if any."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry[2]


def _compact(state: ProfileState) -> ProfileState:
    """``state`` as `ProfileState.from_arrays` builds it from its stored arrays.

    The step's states may be views into the arrays of a whole batch, which an entry must
    not keep alive, and decoding leaves the ring slots past each window's count zero.
    """
    lengths = np.minimum(state.window_count, len(state.windows[0])).tolist()
    windows = []
    for ring, n in zip(state.windows, lengths, strict=True):
        compact = np.zeros(ring.shape, dtype=np.float32)
        compact[:n] = ring[:n]
        windows.append(compact)
    return replace(
        state,
        hidden=np.array(state.hidden, dtype=np.float32),
        open_signal=np.array(state.open_signal, dtype=np.int64),
        window_count=np.array(state.window_count, dtype=np.int64),
        windows=tuple(windows),
    )
