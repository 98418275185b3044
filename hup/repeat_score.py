"""The repeat score: which of its own skus a session returns to next, read causally from its input.

About 40 % (Appliances) and 20 % (Computers) of the JD `every` targets are skus already in the
input, and S-POP's "most recent first" ranks three quarters of them in the top 20
(../shared/docs/quality-notes.md). The repeat score keeps recency as its backbone and lets
three more signals of the input move a sku up or down, each with a weight tuned on the
validation split:

    score(i) = -log(age_i) + w_visits * log(visits_i) + w_behaviour * level_i
               + w_dwell * log(1 + dwell_i)

* ``age_i``: runs since the latest run of i (1 = the run before the last one). With every
  weight 0 the order is exactly S-POP's.
* ``visits_i``: the runs of i in the input (returns to its page).
* ``level_i``: the strongest behaviour on i so far (`BEHAVIOUR_LEVEL`: arriving 0, reading
  the page bottom 1, comments or specification 2, cart or order 3).
* ``dwell_i``: seconds on i's page so far: the reported dwell of its closed visits plus, for
  the visit still open at the end of the input, only the time elapsed in it (the causal rule of
  docs/evaluation.md; the dwell event closing the last visit is not part of a point's input).

Ties (equal scores) go to the more recent sku. The last input sku is never ranked.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hup.points import PredictionPoint
from hup.schema import Behavior, Event, MicroEvent
from hup.sessions import Session

__all__ = [
    "BEHAVIOUR_LEVEL",
    "REPEAT_GRID",
    "RepeatWeights",
    "SessionInput",
    "SessionReader",
    "repeat_orders",
    "tune_repeat",
]

BEHAVIOUR_LEVEL: dict[Behavior, int] = {
    Behavior.Home2Product: 0,
    Behavior.ShopList2Product: 0,
    Behavior.Sale2Product: 0,
    Behavior.SearchList2Product: 0,
    Behavior.Detail_bottom: 1,
    Behavior.Detail_comments: 2,
    Behavior.Detail_specification: 2,
    # Arriving from the cart means the sku is in it: as strong a sign as putting it there.
    Behavior.Cart2Product: 3,
    Behavior.Cart: 3,
    Behavior.Order: 3,
}
"""How strongly a micro-behaviour says "this sku matters": arriving < reading < cart/order."""

REPEAT_GRID: dict[str, tuple[float, ...]] = {
    "visits": (0.0, 0.5, 1.0, 2.0),
    "behaviour": (0.0, 0.25, 0.5, 1.0),
    "dwell": (0.0, 0.1, 0.25, 0.5),
}
"""Weights `tune_repeat` tries (every combination; 64 cheap vectorised evaluations)."""


@dataclass
class SessionInput:
    """What a ranker may read of one point's input, per sku (built by `read`)."""

    runs: list[str] = field(default_factory=list)  # the sku of each run, in order
    last_run: dict[str, int] = field(default_factory=dict)  # sku -> index of its latest run
    visits: dict[str, int] = field(default_factory=dict)  # sku -> runs of it
    level: dict[str, int] = field(default_factory=dict)  # sku -> strongest behaviour level
    dwell: dict[str, float] = field(default_factory=dict)  # sku -> seconds on its page so far

    @classmethod
    def read(cls, events: Iterable[Event]) -> SessionInput:
        """Read the input events of a point (``session.events[:point.n_input]``)."""
        reader = SessionReader()
        for event in events:
            reader.feed(event)
        return reader.snapshot()

    @classmethod
    def read_points(
        cls, sessions: Sequence[Session], points: Sequence[PredictionPoint]
    ) -> list[SessionInput]:
        """``read`` of every point's input, reading each session once when points allow.

        Consecutive points of one session with growing inputs (as `prediction_points` lists
        them) share one reader; each snapshot has seen exactly ``events[:n_input]``.
        """
        out: list[SessionInput] = []
        reader, where, done = SessionReader(), -1, 0
        for point in points:
            if point.session_index != where or point.n_input < done:
                reader, where, done = SessionReader(), point.session_index, 0
            for event in sessions[where].events[done : point.n_input]:
                reader.feed(event)
            done = point.n_input
            out.append(reader.snapshot())
        return out

    @property
    def last_item(self) -> str | None:
        """The sku of the last input run (never ranked)."""
        return self.runs[-1] if self.runs else None

    def own_items(self, known: Container[str]) -> list[str]:
        """The input's skus in ``known`` except the last one, most recent first."""
        last = self.last_item
        ordered = sorted(self.last_run, key=lambda sku: -self.last_run[sku])
        return [sku for sku in ordered if sku != last and sku in known]

    def features(self, sku: str) -> tuple[float, float, float, float]:
        """(age, visits, level, dwell) of one of the input's skus, as the score reads them."""
        age = len(self.runs) - 1 - self.last_run[sku]
        return age, self.visits[sku], self.level.get(sku, 0), self.dwell.get(sku, 0.0)


class SessionReader:
    """Builds `SessionInput`s event by event, for every prefix of one session.

    Visits are tracked as the causal featurizer does (`hup.features`): a run opens a visit, a
    dwell event of the open sku closes it with the reported dwell, and a later micro event of
    the same run opens another one. A dwell event of any other sku is ignored, as the
    featurizer drops it. A snapshot adds the time elapsed in the visit still open.
    """

    def __init__(self) -> None:
        """Start before the session's first event."""
        self._state = SessionInput()
        self._visit_start: float | None = None  # start of the open visit; None when closed
        self._last_ts = 0.0

    def feed(self, event: Event) -> None:
        """Take the next event of the session."""
        state = self._state
        if not isinstance(event, MicroEvent):
            open_sku = state.runs[-1] if state.runs else None
            if event.item_id == open_sku and self._visit_start is not None:
                state.dwell[open_sku] = state.dwell.get(open_sku, 0.0) + event.dwell_s
                self._visit_start = None
            return
        sku = event.item_id
        if not state.runs or sku != state.runs[-1]:
            state.last_run[sku] = len(state.runs)
            state.runs.append(sku)
            state.visits[sku] = state.visits.get(sku, 0) + 1
            self._visit_start = event.ts
        elif self._visit_start is None:
            self._visit_start = event.ts
        self._last_ts = event.ts
        state.level[sku] = max(BEHAVIOUR_LEVEL[event.behavior], state.level.get(sku, 0))

    def snapshot(self) -> SessionInput:
        """The `SessionInput` of the events fed so far (an independent copy)."""
        state = self._state
        dwell = dict(state.dwell)
        if self._visit_start is not None:
            sku = state.runs[-1]
            dwell[sku] = dwell.get(sku, 0.0) + max(self._last_ts - self._visit_start, 0.0)
        return SessionInput(
            runs=list(state.runs),
            last_run=dict(state.last_run),
            visits=dict(state.visits),
            level=dict(state.level),
            dwell=dwell,
        )


@dataclass(frozen=True)
class RepeatWeights:
    """Weights of the repeat score (module docstring); all 0 is S-POP's order."""

    visits: float = 0.0
    behaviour: float = 0.0
    dwell: float = 0.0

    def score(
        self,
        age: npt.ArrayLike,
        visits: npt.ArrayLike,
        level: npt.ArrayLike,
        dwell: npt.ArrayLike,
    ) -> npt.NDArray[np.float64]:
        """The repeat score of skus with these features (arrays of one length, or scalars)."""
        return np.asarray(
            -np.log(np.asarray(age, dtype=np.float64))
            + self.visits * np.log(np.asarray(visits, dtype=np.float64))
            + self.behaviour * np.asarray(level, dtype=np.float64)
            + self.dwell * np.log1p(np.asarray(dwell, dtype=np.float64)),
            dtype=np.float64,
        )


def _own_features(
    sessions: Sequence[SessionInput], known: Container[str]
) -> tuple[list[list[str]], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Each input's own skus (most recent first), and their features [M, 4] and input [M]."""
    own = [session.own_items(known) for session in sessions]
    rows = [s.features(sku) for s, skus in zip(sessions, own, strict=True) for sku in skus]
    features = np.asarray(rows, dtype=np.float64).reshape(len(rows), 4)
    groups = np.repeat(np.arange(len(sessions), dtype=np.int64), [len(skus) for skus in own])
    return own, features, groups


def repeat_orders(
    sessions: Sequence[SessionInput], known: Container[str], weights: RepeatWeights
) -> list[list[str]]:
    """Per input, its training skus (``known``) but the last one, best repeat score first."""
    own, features, groups = _own_features(sessions, known)
    scores = weights.score(*features.T)
    # Within each input: score descending, then age ascending (the more recent sku first).
    order = np.lexsort((features[:, 0], -scores, groups))
    starts = np.concatenate(([0], np.cumsum([len(skus) for skus in own])))
    out = []
    for n, skus in enumerate(own):
        local = order[starts[n] : starts[n + 1]] - starts[n]
        out.append([skus[i] for i in local])
    return out


def _target_ranks(
    weights: RepeatWeights,
    features: npt.NDArray[np.float64],  # [M, 4] age, visits, level, dwell of every own sku
    groups: npt.NDArray[np.int64],  # [M] the point each row belongs to
    target_rows: npt.NDArray[np.int64],  # [P] the row of each point's target
) -> npt.NDArray[np.int64]:
    """1-based rank of each point's target among its point's own skus."""
    scores = weights.score(*features.T)
    target = scores[target_rows][groups]
    target_age = features[target_rows, 0][groups]
    ahead = (scores > target) | ((scores == target) & (features[:, 0] < target_age))
    return np.bincount(groups[ahead], minlength=len(target_rows)) + 1


def tune_repeat(
    sessions: Sequence[SessionInput],
    targets: Sequence[str],
    known: Container[str],
    k: int = 20,
) -> RepeatWeights:
    """The `REPEAT_GRID` weights with the best Recall@k + MRR@k on the revisit points given.

    Own skus always come first in the rankings of the peers that use this score, so it
    decides the rank of revisit targets alone, and only those points are needed to tune it.

    Args:
        sessions: The inputs of validation points.
        targets: Their target skus; points whose target is not one of their own training
            skus (other than the last input sku) are skipped.
        known: The training skus.
        k: The cut-off of the metrics.

    Returns:
        The best weights; all 0 (S-POP's order) when there is no revisit point or on a tie.
    """
    revisits = [(s, t) for s, t in zip(sessions, targets, strict=True) if t in s.own_items(known)]
    if not revisits:
        return RepeatWeights()
    own, features, groups = _own_features([s for s, _ in revisits], known)
    starts = np.concatenate(([0], np.cumsum([len(skus) for skus in own])))
    target_rows = np.asarray(
        [
            starts[n] + skus.index(t)
            for n, (skus, (_, t)) in enumerate(zip(own, revisits, strict=True))
        ],
        dtype=np.int64,
    )
    best, best_value = RepeatWeights(), -math.inf
    for values in itertools.product(*REPEAT_GRID.values()):
        weights = RepeatWeights(**dict(zip(REPEAT_GRID, values, strict=True)))
        ranks = _target_ranks(weights, features, groups, target_rows)
        inside = ranks <= k
        value = float(inside.sum() + (inside / ranks).sum())
        if value > best_value:  # strict: the first (simplest) of equal settings wins
            best, best_value = weights, value
    return best
