"""The repeat memory: what a user has done with each of their recent distinct items.

Users return to items they have viewed: in the JD samples about half of the next items
are revisits, and "the session's items, most recent first" ranks three quarters of those
in the top 20. A single profile vector ranked by cosine cannot reproduce that order, so
the featurizer also keeps, per user, the last `REPEAT_SLOTS` distinct items with what the
user did on them, and the model scores those items with a repeat channel beside the
profile's explore channel (`hup.model.RepeatHeads`).

The memory is part of the featurizer's state and updated by `Featurizer.apply`, so
training and the stream read the same values after the same events. `repeat_inputs`
turns it into the fixed-size arrays the model reads; it uses only what the causal rule
allows: counts, behaviours and times of events already seen, the full dwell of closed
runs and, for the open run, the dwell so far.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import numpy as np

__all__ = [
    "CATEGORY_FEATURES",
    "ITEM_FEATURES",
    "REPEAT_SLOTS",
    "RecentItem",
    "RepeatInputs",
    "RepeatState",
    "remember",
    "repeat_inputs",
]

REPEAT_SLOTS = 30
"""Distinct items remembered per user (median JD session: 20 distinct skus)."""

_ITEM_RANK_ONE_HOT = 6
_CATEGORY_RANK_ONE_HOT = 4
_N_BEHAVIORS = 10
ITEM_FEATURES = _ITEM_RANK_ONE_HOT + 7 + _N_BEHAVIORS
"""Width of one item candidate's feature row (see `repeat_inputs`)."""
CATEGORY_FEATURES = _CATEGORY_RANK_ONE_HOT + 7
"""Width of one category candidate's feature row."""


class RecentItem(NamedTuple):
    """One remembered item (plain values: the state codec stores them as numbers)."""

    item: str  # the sku as the events name it (distinct entries are distinct skus)
    item_id: int  # its vocabulary id (0 = outside the training vocabulary)
    category_ids: tuple[int, ...]  # of its latest run, coarse..fine
    runs: int  # runs (visits of consecutive micro events) on it so far
    micro: int  # micro events on it so far
    behaviors: int  # bit b-1 set when behaviour code b was seen on it
    dwell_closed: float  # seconds: the final dwell of its runs that have ended
    last_ts: float  # time of its latest micro event


class RepeatInputs(NamedTuple):
    """The repeat channel's inputs after one event (numpy, one user).

    Attributes:
        items: [R] vocabulary ids of the remembered items, most recent first (0 = empty).
        item_features: [R, ITEM_FEATURES] float32.
        categories: [K, R] per level, the distinct category ids of those items in order of
            their most recent item (0 = empty).
        category_features: [K, R, CATEGORY_FEATURES] float32.
        open_item: the vocabulary id of the open run's sku (0 = none): never recommended.
    """

    items: np.ndarray
    item_features: np.ndarray
    categories: np.ndarray
    category_features: np.ndarray
    open_item: int


def remember(
    recent: tuple[RecentItem, ...],
    item: str,
    item_id: int,
    category_ids: tuple[int, ...],
    behavior: int,
    ts: float,
    new_run: bool,
    ended_run_dwell: float | None,
) -> tuple[RecentItem, ...]:
    """The memory after a micro event.

    Args:
        recent: the memory before it, most recent first; ``recent[0]`` is the open run's item.
        item, item_id, category_ids, behavior, ts: the micro event.
        new_run: the event starts a new run (another sku than the open run's).
        ended_run_dwell: when a run ends here, its final dwell (added to its item).
    """
    bit = 1 << (behavior - 1) if 1 <= behavior <= _N_BEHAVIORS else 0
    if not new_run:
        head = recent[0]
        return (
            head._replace(micro=head.micro + 1, behaviors=head.behaviors | bit, last_ts=ts),
            *recent[1:],
        )
    entries = list(recent)
    if entries and ended_run_dwell is not None:
        entries[0] = entries[0]._replace(dwell_closed=entries[0].dwell_closed + ended_run_dwell)
    previous = next((e for e in entries if e.item == item), None)
    if previous is not None:
        entries.remove(previous)
        entry = previous._replace(
            item_id=item_id,
            category_ids=category_ids,
            runs=previous.runs + 1,
            micro=previous.micro + 1,
            behaviors=previous.behaviors | bit,
            last_ts=ts,
        )
    else:
        entry = RecentItem(item, item_id, category_ids, 1, 1, bit, 0.0, ts)
    return (entry, *entries[: REPEAT_SLOTS - 1])


def _log_minutes(seconds: float) -> float:
    return math.log1p(max(seconds, 0.0) / 60.0)


def _log_dwell(seconds: float) -> float:
    return math.log1p(max(seconds, 0.0) / 10.0)


class RepeatState(Protocol):
    """What `repeat_inputs` reads of the featurizer's state (`hup.features.FeatureState`)."""

    @property
    def has_open(self) -> bool:
        """Whether a run is open (the user's latest event was a micro event)."""
        ...

    @property
    def item_id(self) -> int:
        """The open run's item id."""
        ...

    @property
    def category_ids(self) -> tuple[int, ...]:
        """The open run's category ids, coarse..fine."""
        ...

    @property
    def last_ts(self) -> float:
        """Time of the latest event."""
        ...

    @property
    def run_dwell(self) -> float:
        """Dwell of the open run so far."""
        ...

    @property
    def recent(self) -> tuple[RecentItem, ...]:
        """The repeat memory, most recent first."""
        ...


def repeat_inputs(state: RepeatState) -> RepeatInputs:
    """The repeat channel's arrays after the event that produced `state`.

    Item row (most recent first; rank 0 is the open run's item):
    rank one-hot (0..5), log(1 + rank), log(1 + minutes since its latest event), log(1 + runs),
    log(1 + micro events), log(1 + dwell / 10 s) (closed runs plus the open run so far),
    is the open item, shares the open item's finest category, behaviour bits 1..10.

    Category row per level (distinct categories of the remembered items, in order of their
    most recent item): rank one-hot (0..3), log(1 + rank), log(1 + items), log(1 + runs),
    log(1 + micro events), log(1 + dwell / 10 s), log(1 + minutes since), is the open
    run's category.
    """
    now = state.last_ts
    n_levels = len(state.category_ids)
    items = np.zeros(REPEAT_SLOTS, dtype=np.int64)
    item_features = np.zeros((REPEAT_SLOTS, ITEM_FEATURES), dtype=np.float32)
    categories = np.zeros((n_levels, REPEAT_SLOTS), dtype=np.int64)
    category_features = np.zeros((n_levels, REPEAT_SLOTS, CATEGORY_FEATURES), dtype=np.float32)
    open_finest = state.category_ids[-1] if state.has_open and n_levels else None
    totals: list[dict[int, list[float]]] = [{} for _ in range(n_levels)]
    for rank, entry in enumerate(state.recent):
        is_open = rank == 0 and state.has_open
        dwell = entry.dwell_closed + (state.run_dwell if is_open else 0.0)
        elapsed = now - entry.last_ts
        items[rank] = entry.item_id
        row = item_features[rank]
        if rank < _ITEM_RANK_ONE_HOT:
            row[rank] = 1.0
        base = _ITEM_RANK_ONE_HOT
        row[base] = math.log1p(rank)
        row[base + 1] = _log_minutes(elapsed)
        row[base + 2] = math.log1p(entry.runs)
        row[base + 3] = math.log1p(entry.micro)
        row[base + 4] = _log_dwell(dwell)
        row[base + 5] = float(is_open)
        same_category = bool(entry.category_ids) and entry.category_ids[-1] == open_finest
        row[base + 6] = float(open_finest is not None and same_category)
        for b in range(_N_BEHAVIORS):
            row[base + 7 + b] = float((entry.behaviors >> b) & 1)
        for level, category in enumerate(entry.category_ids[:n_levels]):
            total = totals[level].get(category)
            if total is None:
                totals[level][category] = [1.0, entry.runs, entry.micro, dwell, elapsed]
            else:
                total[0] += 1.0
                total[1] += entry.runs
                total[2] += entry.micro
                total[3] += dwell
    for level, per_category in enumerate(totals):
        current = state.category_ids[level] if state.has_open else None
        for rank, (category, (n_items, runs, micro, dwell, elapsed)) in enumerate(
            per_category.items()
        ):
            categories[level, rank] = category
            row = category_features[level, rank]
            if rank < _CATEGORY_RANK_ONE_HOT:
                row[rank] = 1.0
            base = _CATEGORY_RANK_ONE_HOT
            row[base] = math.log1p(rank)
            row[base + 1] = math.log1p(n_items)
            row[base + 2] = math.log1p(runs)
            row[base + 3] = math.log1p(micro)
            row[base + 4] = _log_dwell(dwell)
            row[base + 5] = _log_minutes(elapsed)
            row[base + 6] = float(category == current)
    open_item = state.item_id if state.has_open else 0
    return RepeatInputs(items, item_features, categories, category_features, open_item)
