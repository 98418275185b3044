"""Time-to-live expiry: drop the state of users inactive for longer than a TTL."""

import logging
from collections.abc import Callable

import numpy as np

from state.codec import decode_state
from state.errors import StateDecodeError
from state.store import Store

__all__ = ["LAST_TS", "expire", "is_expired", "last_seen_from_state"]

logger = logging.getLogger(__name__)

LAST_TS = "last_ts"


def expire(store: Store, now: float, ttl_s: float, last_seen: Callable[[bytes], float]) -> int:
    """Delete every entry whose last event is older than ``now - ttl_s``.

    Entries whose value ``last_seen`` cannot decode (``StateDecodeError``,
    including ``StateVersionError``) are deleted too: the stream would reset
    them on the user's next event anyway, and a user who never returns would
    otherwise keep unreadable bytes forever. Other errors propagate.

    Args:
        store: Store to sweep; deleting while iterating its ``items()`` snapshot is allowed.
        now: Current time, in the same unit and epoch as ``last_seen`` (seconds).
        ttl_s: Inactivity allowed before a user's state is dropped, in seconds.
        last_seen: Reads the last event time from an encoded value, e.g.
            ``last_seen_from_state``.

    Returns:
        Number of deleted entries, the undecodable ones included.
    """
    cutoff = now - ttl_s
    deleted = 0
    for key, value in store.items():
        if is_expired(key, value, cutoff, last_seen):
            store.delete(key)
            deleted += 1
    logger.info("expiry: deleted %d states last seen before %.3f", deleted, cutoff)
    return deleted


def is_expired(
    key: bytes, value: bytes, cutoff: float, last_seen: Callable[[bytes], float]
) -> bool:
    """Whether the entry's last event is before ``cutoff``, or its value is undecodable.

    The rule of `expire`, for callers that sweep a store in steps (the stream worker).
    An undecodable value is logged as a warning naming ``key``.
    """
    try:
        return last_seen(value) < cutoff
    except StateDecodeError as exc:
        logger.warning("expiry: dropping undecodable state for user %r: %s", key[:200], exc)
        return True


def last_seen_from_state(value: bytes) -> float:
    """Read the last event time of a state encoded with `state.codec`.

    Contract: the model stores its last event timestamp as a 0-d float64
    array named ``"last_ts"`` (seconds since the epoch). A state without it is
    a model bug, not corruption, so it raises rather than being expired.

    Args:
        value: Bytes produced by ``encode_state``, of any model version.

    Returns:
        The stored timestamp in seconds.

    Raises:
        StateDecodeError: ``value`` is corrupt, truncated or of an unknown codec version.
        KeyError: The state has no ``"last_ts"`` array.
        ValueError: ``"last_ts"`` is not a 0-d float64 array.
    """
    last_ts = decode_state(value)[LAST_TS]
    if last_ts.shape != () or last_ts.dtype != np.float64:
        raise ValueError(
            f"state array {LAST_TS!r} must be 0-d float64, "
            f"got shape {last_ts.shape} dtype {last_ts.dtype}"
        )
    return float(last_ts)
