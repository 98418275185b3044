"""Sessions and datasets: the containers, the protocol's 70/10/20 split and session transforms."""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from hup.schema import Event, MicroEvent
from hup.vocab import Taxonomy, normalize_categories

__all__ = [
    "Dataset",
    "Session",
    "cut_session",
    "iter_events",
    "split_sessions",
    "with_category_paths",
]


@dataclass(frozen=True)
class Session:
    """One session of one user.

    Attributes:
        session_id: Unique within a dataset.
        user_id: The user (the Kafka key); a user may own several sessions.
        events: Micro and dwell events in arrival order, timestamps non-decreasing.
    """

    session_id: str
    user_id: str
    events: tuple[Event, ...]


@dataclass(frozen=True)
class Dataset:
    """Sessions from one source, in the order that stands in for time.

    Attributes:
        name: Where the sessions came from, e.g. the JD file stems.
        sessions: In file (time) order; `split_sessions` relies on it.
        taxonomy: Leaf category -> path coarse..leaf; None when the source gives leaves only.
        train_frac: Fraction of every training set that is kept (its first part): a property
            of the splits, so `hup.splits.protocol_splits` applies it wherever they are made.
    """

    name: str
    sessions: list[Session]
    taxonomy: dict[str, tuple[str, ...]] | None
    train_frac: float = 1.0


def split_sessions(
    sessions: Sequence[Session],
) -> tuple[list[Session], list[Session], list[Session]]:
    """Split sessions 70/10/20 into train/validation/test, keeping their order (the protocol).

    Integer arithmetic, so 1000 sessions give exactly 700/100/200.
    """
    n = len(sessions)
    train_end, valid_end = n * 7 // 10, n * 8 // 10
    return (
        list(sessions[:train_end]),
        list(sessions[train_end:valid_end]),
        list(sessions[valid_end:]),
    )


def cut_session(session: Session, max_len: int) -> Session:
    """The session cut to its first ``max_len`` micro events, as the stream saw it right then.

    The cut keeps every event up to and including the ``max_len``-th micro event. A dwell
    event arrives when its visit ends, i.e. after the visit's last micro event (at the next
    page, `hup.jd`), so the visit still open at the cut keeps no dwell event: one would carry
    time spent after the cut. A session with at most ``max_len`` micro events is unchanged.
    """
    seen, last_micro = 0, -1
    for index, event in enumerate(session.events):
        if isinstance(event, MicroEvent):
            seen += 1
            if seen > max_len:
                return dataclasses.replace(session, events=session.events[: last_micro + 1])
            last_micro = index
    return session


def with_category_paths(sessions: Sequence[Session], taxonomy: Taxonomy | None) -> list[Session]:
    """The sessions with every micro event's categories as the taxonomy's K levels, coarse..leaf.

    A model trained with a taxonomy sees K category levels (its featurizer expands each leaf);
    the evaluation must score targets and fit the baselines on the same K levels, or a
    leaf-only dataset (JD) would give the model K levels and everything else one. The
    expansion is the featurizer's (`normalize_categories`): a leaf the taxonomy does not know
    keeps the levels it carries, padded at the coarse end with `OOV_TOKEN`, which no ranking
    holds (so such a target is a miss at those levels). Without a taxonomy the sessions are
    returned unchanged.
    """
    if taxonomy is None:
        return list(sessions)
    n_levels = taxonomy.n_levels
    expanded = []
    for session in sessions:
        events: list[Event] = []
        for event in session.events:
            if isinstance(event, MicroEvent):
                path, _ = normalize_categories(event.categories, n_levels, taxonomy)
                if list(path) != event.categories:
                    event = event.model_copy(update={"categories": list(path)})
            events.append(event)
        expanded.append(dataclasses.replace(session, events=tuple(events)))
    return expanded


def iter_events(sessions: Iterable[Session]) -> Iterator[Event]:
    """Yield every event as one stream, for a producer.

    Users are interleaved by timestamp, as a live site would send them, while each user's own
    events (their sessions in list order) keep their order exactly: the merge only ever takes
    the next event of a user, so ties and clock quirks never reorder a user.
    """
    per_user: dict[str, list[Session]] = {}
    for session in sessions:
        per_user.setdefault(session.user_id, []).append(session)
    streams = ([e for s in user_sessions for e in s.events] for user_sessions in per_user.values())
    return heapq.merge(*streams, key=lambda event: event.ts)
