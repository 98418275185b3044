"""V-SKNN and STAN as `Recommender`s: the session's own skus by repeat score, then session-kNN.

The peers the literature finds hard to beat on session data (Ludewig et al., RecSys 2019),
in the form ../shared/docs/quality-notes.md measures them: a ranking opens with the input's
own training skus ordered by the repeat score (`hup.repeat_score`; revisits are 20-40 % of the JD
targets) and continues with the session-kNN scores of every other training sku (`hup.sknn`),
then training popularity. The last input sku is never ranked. Categories are "last
category", as S-POP's.

`fit` indexes the training sessions and tunes on the validation split only: the repeat
weights on its revisit points (`tune_repeat`), the kNN settings on its new-item points by a
coordinate search over a small grid (each setting in turn, the others held, until a round
changes nothing or the time budget ``HUP_PEER_TUNE_S`` is spent). The objective is Recall@20
+ MRR@20. Own skus always come first, so the two parts decide disjoint points and tuning them
apart optimises the whole.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt
from scipy import sparse

from hup.baselines import _Baseline, _fill, _micro
from hup.points import PredictionPoint, prediction_points
from hup.recommender_contract import Rankings, Recommender
from hup.repeat_score import RepeatWeights, SessionInput, repeat_orders, tune_repeat
from hup.sessions import Session
from hup.sknn import (
    Candidates,
    QueryBatch,
    SessionIndex,
    StanParams,
    VSknnParams,
    stan_scores,
    vsknn_scores,
)

__all__ = [
    "DEFAULT_TUNE_SECONDS",
    "STAN_GRID",
    "VSKNN_GRID",
    "Stan",
    "VSknn",
    "coordinate_search",
    "default_tune_seconds",
    "peer_baselines",
]

logger = logging.getLogger(__name__)

DEFAULT_TUNE_SECONDS = 120.0


def default_tune_seconds() -> float:
    """Time budget of one peer's kNN search in `fit`: env ``HUP_PEER_TUNE_S``, default 120 s.

    A value that is not a number of seconds >= 0 is reported in one warning line and the
    default applies: a tuning budget is no reason to stop an evaluation.
    """
    raw = os.environ.get("HUP_PEER_TUNE_S")
    if raw is None:
        return DEFAULT_TUNE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value >= 0:  # also catches NaN
        logger.warning(
            "HUP_PEER_TUNE_S=%r is not a number of seconds >= 0; using %.0f",
            raw, DEFAULT_TUNE_SECONDS,
        )  # fmt: skip
        return DEFAULT_TUNE_SECONDS
    return value


TUNE_K = 20  # the cut-off of the tuning objective (the protocol's item cut-off)
_CHUNK = 512  # queries scored at once: bounds the [chunk, V] score matrices

VSKNN_GRID: dict[str, tuple[Any, ...]] = {
    "k": (10, 25, 50, 100, 200),
    "sample": (250, 500, 1000, 2000),
    "idf_weight": (0.0, 1.0, 2.0, 5.0, 10.0),
    "cosine": (False, True),
}
STAN_GRID: dict[str, tuple[Any, ...]] = {
    "k": (10, 25, 50, 100, 200),
    "lambda1": (1.0, 2.0, 4.0, 8.0, 16.0),
    "lambda2": (100.0, 300.0, 1000.0, math.inf),
    "lambda3": (1.0, 2.0, 4.0, 8.0, 16.0),
}

P = TypeVar("P", VSknnParams, StanParams)


def coordinate_search(
    grid: Mapping[str, Sequence[Any]],
    start: dict[str, Any],
    objective: Callable[[dict[str, Any]], float],
    budget_s: float,
) -> tuple[dict[str, Any], float, int]:
    """Maximise ``objective`` one setting at a time over ``grid``, from ``start``.

    Each round tries every value of each setting with the others held at the best so far
    (a strictly better value replaces it); rounds repeat until one changes nothing. The
    search stops early, keeping the best so far, once ``budget_s`` seconds have passed.

    Returns:
        (best settings, their objective, number of settings evaluated).
    """
    started = time.perf_counter()
    seen: dict[tuple[Any, ...], float] = {}

    def value(settings: dict[str, Any]) -> float:
        key = tuple(settings[name] for name in grid)
        if key not in seen:
            seen[key] = objective(settings)
        return seen[key]

    best, best_value = dict(start), value(start)
    changed = True
    while changed:
        changed = False
        for name, values in grid.items():
            for candidate in values:
                if time.perf_counter() - started > budget_s:
                    logger.warning(
                        "tuning budget of %.0f s spent; keeping the best so far", budget_s
                    )
                    return best, best_value, len(seen)
                trial = {**best, name: candidate}
                if value(trial) > best_value:
                    best, best_value, changed = trial, value(trial), True
    return best, best_value, len(seen)


def _chunks(
    inputs: Sequence[SessionInput], index: SessionIndex
) -> Iterator[tuple[QueryBatch, Candidates]]:
    for start in range(0, len(inputs), _CHUNK):
        queries = QueryBatch.build(inputs[start : start + _CHUNK], index)
        yield queries, Candidates.build(queries, index)


def _without_own(
    scores: sparse.csr_matrix, queries: QueryBatch
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """(row, sku, score) of the scored skus that are not in their query's input."""
    own = queries.matrix(np.ones(len(queries.skus)))
    rest = sparse.csr_matrix(scores - scores.multiply(own))
    rest.eliminate_zeros()
    coo = rest.tocoo()
    keep = coo.data > 0
    rows = np.asarray(coo.row[keep], dtype=np.int64)
    return rows, np.asarray(coo.col[keep], dtype=np.int64), coo.data[keep]


def _new_item_ranks(
    scores: sparse.csr_matrix, queries: QueryBatch, targets: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Rank of each target among the non-own skus: kNN order (ties: popularity), then POP.

    Targets are training skus outside their query's input. This is the rank `rank` gives
    them after the own skus, computed without building the rankings.
    """
    n = len(queries)
    rows, cols, data = _without_own(scores, queries)
    target_of = targets[rows]
    at_target = cols == target_of
    target_score = np.zeros(n)
    target_score[rows[at_target]] = data[at_target]
    t = target_score[rows]
    ahead = (data > t) | ((data == t) & (cols < target_of))
    ranks = np.bincount(rows[ahead], minlength=n) + 1
    # Targets no neighbour holds come after every scored sku, in popularity order among the
    # skus not listed yet (own skus, the last input sku and the scored ones).
    unscored = target_score == 0
    listed_below = np.bincount(rows[cols < target_of], minlength=n)
    listed_below += np.bincount(queries.rows[queries.skus < targets[queries.rows]], minlength=n)
    fill = np.bincount(rows, minlength=n) + targets - listed_below + 1
    return np.where(unscored, fill, ranks)


def _best(
    skus: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], k: int
) -> npt.NDArray[np.int64]:
    """The ``k`` best skus by score, ties to the more popular (lower id), best first."""
    if len(scores) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]  # the k-th largest
        inside = scores >= kth
        skus, scores = skus[inside], scores[inside]
    return skus[np.lexsort((skus, -scores))[:k]]


class _SessionKnnPeer(_Baseline, Generic[P]):
    """Repeat score for the own skus, a session-kNN scorer for the rest (module docstring)."""

    grid: dict[str, tuple[Any, ...]]

    def __init__(self, params: P, tune: bool = True, tune_seconds: float | None = None) -> None:
        """Start from ``params``; ``tune`` searches the grid on the validation split in `fit`."""
        super().__init__()
        self.initial: P = params  # every `fit` starts its search here, so refits are alike
        self.params: P = params
        self.repeat = RepeatWeights()
        self.tune = tune
        self.tune_seconds = default_tune_seconds() if tune_seconds is None else tune_seconds
        self._index: SessionIndex | None = None

    def _score(
        self, queries: QueryBatch, candidates: Candidates, index: SessionIndex, params: P
    ) -> sparse.csr_matrix:
        raise NotImplementedError

    @property
    def index(self) -> SessionIndex:
        """The indexed training sessions; raises if `fit` was not called."""
        if self._index is None:
            raise RuntimeError(f"{self.name}: rank() called before fit()")
        return self._index

    def fit(self, train: Sequence[Session], valid: Sequence[Session]) -> None:
        """Index ``train`` (in time order); tune on ``valid`` when asked and it has points."""
        super().fit(train, valid)
        self._index = SessionIndex(train, self.popularity.item_order)
        self.params, self.repeat = self.initial, RepeatWeights()
        points = prediction_points(valid) if self.tune else []
        if not points:
            return
        started = time.perf_counter()
        inputs = SessionInput.read_points(valid, points)
        targets = [p.target_item for p in points]
        self.repeat = tune_repeat(inputs, targets, self._items, TUNE_K)
        self.params, value, tried = self._tune_knn(inputs, targets)
        logger.info(
            "%s tuned on %d validation points in %.1f s (%d kNN settings): repeat %s, kNN %s, "
            "new-item Recall@%d + MRR@%d %.4f",
            self.name, len(points), time.perf_counter() - started, tried, self.repeat,
            self.params, TUNE_K, TUNE_K, value,
        )  # fmt: skip

    def _tune_knn(
        self, inputs: Sequence[SessionInput], targets: Sequence[str]
    ) -> tuple[P, float, int]:
        index = self.index
        new = [
            (i, index.ids[t])
            for i, (s, t) in enumerate(zip(inputs, targets, strict=True))
            if t in index.ids and t not in s.last_run
        ]
        if not new:
            return self.initial, math.nan, 0
        chosen = [inputs[i] for i, _ in new]
        ids = np.asarray([j for _, j in new], dtype=np.int64)
        own = np.asarray([len(s.own_items(self._items)) for s in chosen], dtype=np.int64)
        chunks = list(_chunks(chosen, index))

        def objective(settings: dict[str, Any]) -> float:
            params = dataclasses.replace(self.initial, **settings)
            total = 0.0
            for n, (queries, candidates) in enumerate(chunks):
                part = slice(n * _CHUNK, n * _CHUNK + len(queries))
                scores = self._score(queries, candidates, index, params)
                ranks = own[part] + _new_item_ranks(scores, queries, ids[part])
                inside = ranks <= TUNE_K
                total += float(inside.sum() + (inside / ranks).sum())
            return total / len(targets)

        start = {name: getattr(self.initial, name) for name in self.grid}
        best, value, tried = coordinate_search(self.grid, start, objective, self.tune_seconds)
        return dataclasses.replace(self.initial, **best), value, tried

    def rank(
        self,
        sessions: Sequence[Session],
        points: Sequence[PredictionPoint],
        k_items: int,
        k_categories: int,
    ) -> Rankings:
        """Own skus by repeat score, then kNN scores (ties: popularity), then popularity."""
        pop, index = self.popularity, self.index
        inputs = SessionInput.read_points(sessions, points)
        heads = repeat_orders(inputs, self._items, self.repeat)
        items: list[list[str]] = []
        for n, (queries, candidates) in enumerate(_chunks(inputs, index)):
            scores = self._score(queries, candidates, index, self.params)
            rows, cols, data = _without_own(scores, queries)
            starts = np.searchsorted(rows, np.arange(len(queries) + 1))
            for row in range(len(queries)):
                point = n * _CHUNK + row
                part = slice(starts[row], starts[row + 1])
                top = _best(cols[part], data[part], k_items)
                head = heads[point] + [index.items[j] for j in top]
                items.append(_fill(head, pop.item_order, points[point].last_input_item, k_items))
        categories = []
        for p in points:
            micro = list(_micro(sessions[p.session_index].events[: p.n_input]))
            categories.append(
                [
                    _fill(self._recent_categories(micro, level), order, None, k_categories)
                    for level, order in enumerate(pop.category_orders)
                ]
            )
        return Rankings(items=items, categories=categories)


class VSknn(_SessionKnnPeer[VSknnParams]):
    """V-SKNN (Ludewig & Jannach 2018) after the session's own skus ranked by repeat score.

    The input's training skus come first, ordered by `hup.repeat_score`'s score (recency, visits,
    strongest behaviour, dwell so far); then every other sku by V-SKNN's score: the input as
    a vector with linear position decay, its dot product (or cosine) with each of the m most
    recent training sessions sharing a sku, the sum of the k nearest similarities per sku
    with IDF weighting (`hup.sknn`); then popularity. k, m, IDF weight and dot/cosine are
    tuned on the validation split (`VSKNN_GRID`).
    """

    name = "V-SKNN"
    grid = VSKNN_GRID

    def __init__(
        self,
        params: VSknnParams | None = None,
        tune: bool = True,
        tune_seconds: float | None = None,
    ) -> None:
        """Start from ``params`` (default `VSknnParams()`); see `_SessionKnnPeer`."""
        super().__init__(params or VSknnParams(), tune, tune_seconds)

    def _score(
        self,
        queries: QueryBatch,
        candidates: Candidates,
        index: SessionIndex,
        params: VSknnParams,
    ) -> sparse.csr_matrix:
        return vsknn_scores(queries, candidates, index, params)


class Stan(_SessionKnnPeer[StanParams]):
    """STAN (Garg et al., SIGIR 2019) after the session's own skus ranked by repeat score.

    The input's training skus come first, ordered by `hup.repeat_score`'s score; then every other
    sku by STAN's score: similarity of the input (exponential decay by position, lambda1) to
    each training session, times the neighbour's recency (lambda2, in training sessions:
    the JD timestamps are synthetic, so session order stands in for time), summed over the k
    nearest with each neighbour's skus decayed by their distance in runs to the input's most
    recent shared sku (lambda3) (`hup.sknn`); then popularity. k and the three lambdas are
    tuned on the validation split (`STAN_GRID`).
    """

    name = "STAN"
    grid = STAN_GRID

    def __init__(
        self,
        params: StanParams | None = None,
        tune: bool = True,
        tune_seconds: float | None = None,
    ) -> None:
        """Start from ``params`` (default `StanParams()`); see `_SessionKnnPeer`."""
        super().__init__(params or StanParams(), tune, tune_seconds)

    def _score(
        self,
        queries: QueryBatch,
        candidates: Candidates,
        index: SessionIndex,
        params: StanParams,
    ) -> sparse.csr_matrix:
        return stan_scores(queries, candidates, index, params)


def peer_baselines() -> list[Recommender]:
    """The session-kNN peers, V-SKNN and STAN, as `hup evaluate` adds them to its table."""
    return [VSknn(), Stan()]
