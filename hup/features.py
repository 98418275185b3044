"""The causal featurizer: one event plus what is known about the user so far -> model inputs.

Training and the stream call the same `Featurizer.apply`, event by event, so that the
features of an event never depend on anything that arrives after it.

Definitions (all times in seconds, every negative difference clamped to 0 and flagged):

* *run*: a maximal stretch of consecutive micro events on one item; its categories are
  those of its first event. A *visit* is the part of a run on one product page; a dwell
  event closes it, and a later micro event on the same item opens a new visit of the
  same run.
* micro gap: time since the user's previous micro event (0 for the first).
* run dwell: the dwell values of the run's closed visits plus the time elapsed in its
  open visit so far. A dwell event replaces the elapsed time with the reported value.
* item gap (the time input of the item layer): time from the start of the previous run
  to the start of the current one, i.e. the time since that layer's previous update.
  It is fixed for the whole run, so the provisional steps of an open run agree.
* category gap of level k: the same between the starts of the last two category runs
  of that level. Category dwell of level k: the final run dwell of the closed item runs
  of the current category run plus the current run dwell.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, replace
from typing import NamedTuple

from hup.repeat import RecentItem, remember
from hup.schema import Event, MicroEvent
from hup.vocab import Vocabularies, normalize_categories

__all__ = [
    "DEFAULT_DWELL_EDGES",
    "DEFAULT_GAP_EDGES",
    "EventFeatures",
    "FeatureFlags",
    "FeatureSpec",
    "FeatureState",
    "Featurizer",
]

DEFAULT_GAP_EDGES = (1.0, 15.0, 40.0, 90.0)
"""The paper's interval buckets: 0-1, 1-15, 15-40, 40-90, 90+ s."""
DEFAULT_DWELL_EDGES = (15.0, 40.0, 100.0, 600.0)
"""The paper's dwell buckets: 0-15, 15-40, 40-100, 100-600, 600+ s."""


@dataclass(frozen=True)
class FeatureSpec:
    """How raw times become bucket ids; saved in the checkpoint with the model."""

    n_levels: int = 1
    gap_edges: tuple[float, ...] = DEFAULT_GAP_EDGES
    dwell_edges: tuple[float, ...] = DEFAULT_DWELL_EDGES

    @property
    def n_gap_buckets(self) -> int:
        """Number of gap bucket ids."""
        return len(self.gap_edges) + 1

    @property
    def n_dwell_buckets(self) -> int:
        """Number of dwell bucket ids."""
        return len(self.dwell_edges) + 1

    def gap_bucket(self, seconds: float) -> int:
        """Bucket id of a gap; edges are left-closed (1 s falls in 1-15)."""
        return bisect_right(self.gap_edges, seconds)

    def dwell_bucket(self, seconds: float) -> int:
        """Bucket id of a dwell time."""
        return bisect_right(self.dwell_edges, seconds)


class EventFeatures(NamedTuple):
    """Integer model inputs of one event (category tuples are coarse..fine)."""

    is_micro: int
    item: int
    categories: tuple[int, ...]
    behavior: int
    gap: int
    dwell: int
    item_change: int
    item_gap: int
    category_change: tuple[int, ...]
    category_gap: tuple[int, ...]
    category_dwell: tuple[int, ...]


class FeatureFlags(NamedTuple):
    """What the featurizer had to repair or could not place; the stream counts these."""

    dropped: str | None = None
    gap_clamped: bool = False
    item_oov: bool = False
    category_oov: bool = False


@dataclass(frozen=True)
class FeatureState:
    """What the featurizer remembers about one user between events (plain values)."""

    has_open: bool = False
    item: str = ""
    categories: tuple[str, ...] = ()
    item_id: int = 0
    category_ids: tuple[int, ...] = ()
    last_micro_ts: float = 0.0
    last_ts: float = 0.0
    last_behavior: int = 0
    last_gap: int = 0
    run_start_ts: float = 0.0
    item_gap: int = 0
    visit_start_ts: float = math.nan
    run_dwell_closed: float = 0.0
    run_dwell: float = 0.0
    category_start_ts: tuple[float, ...] = ()
    category_gap: tuple[int, ...] = ()
    category_dwell_closed: tuple[float, ...] = ()
    recent: tuple[RecentItem, ...] = ()  # the repeat memory (`hup.repeat`), most recent first


def _elapsed(later: float, earlier: float) -> tuple[float, bool]:
    diff = later - earlier
    return (0.0, True) if diff < 0 else (diff, False)


class Featurizer:
    """Turns events into `EventFeatures`, causally, with the training vocabularies."""

    def __init__(self, spec: FeatureSpec, vocabularies: Vocabularies) -> None:
        """Bind the bucket specification and vocabularies of one model."""
        if vocabularies.n_levels != spec.n_levels:
            raise ValueError(
                f"vocabularies have {vocabularies.n_levels} category levels, spec {spec.n_levels}"
            )
        self.spec = spec
        self.vocabularies = vocabularies

    def initial_state(self) -> FeatureState:
        """State of a user never seen before."""
        return FeatureState()

    def apply(
        self, state: FeatureState, event: Event
    ) -> tuple[FeatureState, EventFeatures | None, FeatureFlags]:
        """Features of `event` given `state`, and the state after it.

        Returns None features (and an unchanged state) for a dwell event that cannot be
        placed: no open visit of that item.
        """
        if isinstance(event, MicroEvent):
            return self._apply_micro(state, event)
        if not state.has_open or event.item_id != state.item:
            return state, None, FeatureFlags(dropped="dwell_not_open_item")
        if math.isnan(state.visit_start_ts):
            return state, None, FeatureFlags(dropped="dwell_visit_closed")
        run_dwell = state.run_dwell_closed + event.dwell_s
        new = replace(
            state,
            last_ts=max(state.last_ts, event.ts),
            visit_start_ts=math.nan,
            run_dwell_closed=run_dwell,
            run_dwell=run_dwell,
        )
        return new, self._features(new, is_micro=0, item_change=0, changes=None), FeatureFlags()

    def _apply_micro(
        self, state: FeatureState, event: MicroEvent
    ) -> tuple[FeatureState, EventFeatures, FeatureFlags]:
        spec = self.spec
        ts = event.ts
        had_open = state.has_open
        clamped = False
        if had_open:
            gap_s, clamped = _elapsed(ts, state.last_micro_ts)
            gap = spec.gap_bucket(gap_s)
        else:
            gap = 0
        item_change = not state.has_open or event.item_id != state.item
        category_oov = False
        ended_run_dwell = state.run_dwell if had_open and item_change else None
        if item_change:
            cats, category_oov = normalize_categories(
                event.categories, spec.n_levels, self.vocabularies.taxonomy
            )
            cat_ids = tuple(
                v.lookup(c) for v, c in zip(self.vocabularies.categories, cats, strict=True)
            )
            item_id = self.vocabularies.items.lookup(event.item_id)
            if state.has_open:
                item_gap_s, c = _elapsed(ts, state.run_start_ts)
                clamped |= c
                item_gap = spec.gap_bucket(item_gap_s)
            else:
                item_gap = 0
            starts, gaps, closed, changes = [], [], [], []
            for level, cat in enumerate(cats):
                changed = not state.has_open or cat != state.categories[level]
                changes.append(int(changed))
                if changed:
                    if state.has_open:
                        cat_gap_s, c = _elapsed(ts, state.category_start_ts[level])
                        clamped |= c
                        gaps.append(spec.gap_bucket(cat_gap_s))
                    else:
                        gaps.append(0)
                    starts.append(ts)
                    closed.append(0.0)
                else:
                    gaps.append(state.category_gap[level])
                    starts.append(state.category_start_ts[level])
                    # The item run that just ended belongs to this category run.
                    closed.append(state.category_dwell_closed[level] + state.run_dwell)
            state = replace(
                state,
                has_open=True,
                item=event.item_id,
                categories=cats,
                item_id=item_id,
                category_ids=cat_ids,
                run_start_ts=ts,
                item_gap=item_gap,
                visit_start_ts=ts,
                run_dwell_closed=0.0,
                category_start_ts=tuple(starts),
                category_gap=tuple(gaps),
                category_dwell_closed=tuple(closed),
            )
            category_changes: tuple[int, ...] | None = tuple(changes)
        else:
            category_changes = None
            if math.isnan(state.visit_start_ts):
                state = replace(state, visit_start_ts=ts)
        elapsed, c = _elapsed(ts, state.visit_start_ts)
        clamped |= c
        recent = remember(
            state.recent,
            event.item_id,
            state.item_id,
            state.category_ids,
            int(event.behavior),
            ts,
            item_change,
            ended_run_dwell,
        )
        state = replace(
            state,
            recent=recent,
            last_micro_ts=max(state.last_micro_ts, ts) if had_open else ts,
            last_ts=max(state.last_ts, ts),
            last_behavior=int(event.behavior),
            last_gap=gap,
            run_dwell=state.run_dwell_closed + elapsed,
        )
        features = self._features(
            state, is_micro=1, item_change=int(item_change), changes=category_changes
        )
        flags = FeatureFlags(
            gap_clamped=clamped,
            item_oov=state.item_id == 0,
            category_oov=category_oov or 0 in state.category_ids,
        )
        return state, features, flags

    def _features(
        self,
        state: FeatureState,
        is_micro: int,
        item_change: int,
        changes: tuple[int, ...] | None,
    ) -> EventFeatures:
        spec = self.spec
        return EventFeatures(
            is_micro=is_micro,
            item=state.item_id,
            categories=state.category_ids,
            behavior=state.last_behavior,
            gap=state.last_gap,
            dwell=spec.dwell_bucket(state.run_dwell),
            item_change=item_change,
            item_gap=state.item_gap,
            category_change=changes if changes is not None else (0,) * spec.n_levels,
            category_gap=state.category_gap,
            category_dwell=tuple(
                spec.dwell_bucket(closed + state.run_dwell)
                for closed in state.category_dwell_closed
            ),
        )
