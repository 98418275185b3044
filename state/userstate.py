"""A user's stored state as the worker keeps it: the model's state plus the stream's bookkeeping.

`load_user_state` reads it from a store's bytes and `UserState.encode` writes it back;
`UserState.encoded_size` is its record size without encoding it. `StateCache` keeps the
states a worker wrote last, so the next batch of an active user skips decoding them.

The model's `ProfileState` counts the events it applied (``applied``) and carries the
stream's idempotency record (the input position(s) of the last applied event). The
profile sequence number must survive a model rollout, but ``applied`` cannot be carried
into the new model's fresh state: `hup.incremental.step` reads ``applied > 0`` as "this
user has an open entry". So the stream stores one more array beside the model's, the
events counted before the state was last reset (`SEQ_BASE_ARRAY`, int64, 0-d, present
only when non-zero): ``seq = seq_base + applied``. `ProfileState.from_arrays` ignores
arrays it does not know, so a reader without `SEQ_BASE_ARRAY` reads these states too.

A state written by another model version is reset to the new model's initial state
and keeps its sequence count and idempotency record, so ``seq`` keeps increasing and
redelivered events are still skipped. An unreadable state (corrupt bytes, or a layout
this build cannot read) keeps nothing: that user's ``seq`` restarts at 1.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, fields, replace

import numpy as np

from hup.exceptions import StateError
from hup.incremental import ProfileState
from hup.runtime import Profiler
from state.codec import decode_state, encode_state, encoded_size_of, peek_model_version
from state.errors import StateDecodeError

__all__ = [
    "MODEL_FIELDS",
    "SEQ_BASE_ARRAY",
    "StateCache",
    "UserState",
    "carry_over",
    "load_user_state",
]

logger = logging.getLogger(__name__)

SEQ_BASE_ARRAY = "stream_seq_base"
# `ProfileState` fields a model computes: after a reset they come from the new model's
# initial state. Every other field but `applied` is the stream's idempotency record and
# is carried over (a test fails when `ProfileState` gains a field, to classify it).
MODEL_FIELDS = frozenset({"features", "hidden", "open_signal", "windows", "window_count"})


@dataclass(frozen=True)
class UserState:
    """One user's state and the events counted before its last reset."""

    state: ProfileState
    seq_base: int = 0
    # Loaded by resetting a stored state: write it back even if no event changes it, or
    # every later batch would reset (and count) it again.
    reset: bool = False

    @property
    def seq(self) -> int:
        """The sequence number of the user's last profile: events applied, resets included."""
        return self.seq_base + self.state.applied

    def arrays(self) -> dict[str, np.ndarray]:
        """What is stored: the model's arrays, plus `SEQ_BASE_ARRAY` when non-zero."""
        arrays = self.state.to_arrays()
        if self.seq_base:
            arrays[SEQ_BASE_ARRAY] = np.array(self.seq_base, dtype=np.int64)
        return arrays

    def encode(self, model_version: str) -> bytes:
        """The stored bytes (`state.codec`)."""
        return encode_state(self.arrays(), model_version)

    def encoded_size(self, model_version: str) -> int:
        """``len(self.encode(model_version))``, without building or encoding the arrays."""
        sizes = self.state.array_sizes()
        if self.seq_base:
            sizes.append((SEQ_BASE_ARRAY, 0, 8))
        return encoded_size_of(sizes, model_version)


def carry_over(fresh: ProfileState, old: ProfileState) -> ProfileState:
    """``fresh`` (a new model's initial state) with ``old``'s idempotency record."""
    carried = {
        f.name: getattr(old, f.name)
        for f in fields(ProfileState)
        if f.name not in MODEL_FIELDS and f.name != "applied"
    }
    return replace(fresh, **carried)


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
        arrays = decode_state(raw, copy=False)
        stored = ProfileState.from_arrays(arrays)
        seq_base = int(arrays[SEQ_BASE_ARRAY]) if SEQ_BASE_ARRAY in arrays else 0
        version = peek_model_version(raw)
    except (StateDecodeError, StateError, ValueError, TypeError) as exc:
        outcomes["state_reset_corrupt"] += 1
        logger.warning(
            "user %r: state unreadable, reset; nothing carried over, so the user's profile "
            "seq restarts at 1 and events before it are not recognised as applied: %s",
            key[:200],
            exc,
        )
        return UserState(profiler.new_state(), reset=True)
    if version == profiler.version:
        return UserState(stored, seq_base)
    outcomes["state_reset_version"] += 1
    logger.debug("user %r: state of model %s reset for %s", key[:200], version, profiler.version)
    fresh = carry_over(profiler.new_state(), stored)
    return UserState(fresh, seq_base + stored.applied, reset=True)


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
        self._entries[key] = (raw, UserState(state, user.seq_base), size)
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
