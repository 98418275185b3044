"""The offline evaluation protocol (docs/evaluation.md): fit, rank and score on test points."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from hup.baselines import TrainingPopularity
from hup.points import PredictionPoint, prediction_points, revisits
from hup.ranking_metrics import hits_at_k, reciprocal_ranks_at_k
from hup.recommender_contract import Rankings, Recommender
from hup.report import (
    ALPHA,
    NOT_APPLICABLE,
    Estimate,
    EvaluationReport,
    FoldedReport,
    PairedDifference,
    ResultRow,
    folded_json,
    folded_markdown,
    to_json,
    to_markdown,
)
from hup.sequences import count_clamped_gaps
from hup.sessions import Session, with_category_paths
from hup.summary import MODES, FloatArray, ScoredPoints, pool, summarize, summarize_folds
from hup.vocab import Taxonomy

# The report types and renderers (hup.report) and the summaries (hup.summary) are
# re-exported: `hup.evaluate` is the one entry point of the protocol.
__all__ = [
    "ALPHA",
    "MODES",
    "NOT_APPLICABLE",
    "Estimate",
    "EvaluationReport",
    "FoldedReport",
    "PairedDifference",
    "ResultRow",
    "ScoredPoints",
    "evaluate",
    "folded_json",
    "folded_markdown",
    "pool",
    "score_points",
    "summarize",
    "summarize_folds",
    "to_json",
    "to_markdown",
]

logger = logging.getLogger(__name__)


def _category_labels(n_levels: int) -> list[str]:
    if n_levels == 1:
        return ["category"]
    return [f"category L{level + 1}" for level in range(n_levels)]


def _rank_of(target: str | None, ranking: Sequence[str]) -> int:
    # 0 = not ranked; a target outside the training vocabulary is passed as None (a miss).
    if target is None:
        return 0
    try:
        return ranking.index(target) + 1
    except ValueError:
        return 0


def _check(
    name: str,
    rankings: Rankings,
    points: Sequence[PredictionPoint],
    pop: TrainingPopularity,
    k_items: int,
    k_categories: int,
) -> None:
    """Hold every method to the same protocol: training skus only, last input sku removed."""
    item_rankings = rankings.items
    n_items = len(points) if item_rankings is None else len(item_rankings)
    if n_items != len(points) or len(rankings.categories) != len(points):
        raise ValueError(
            f"{name}: rank() returned {n_items} item and "
            f"{len(rankings.categories)} category rankings for {len(points)} points"
        )
    vocabulary = set(pop.item_order)
    no_items: list[list[str]] = [[] for _ in points]
    for index, (point, items, levels) in enumerate(
        zip(points, item_rankings or no_items, rankings.categories, strict=True)
    ):
        where = f"{name}: point {index} (test session {point.session_index})"
        if len(items) > k_items or point.last_input_item in items:
            raise ValueError(
                f"{where}: item ranking is longer than {k_items} or holds the last input sku"
            )
        if not vocabulary.issuperset(items):
            raise ValueError(f"{where}: item ranking holds skus outside the training vocabulary")
        if len(levels) != pop.n_levels or any(len(level) > k_categories for level in levels):
            raise ValueError(
                f"{where}: expected {pop.n_levels} category rankings of at most {k_categories}"
            )


def _score(
    rankings: Rankings,
    points: Sequence[PredictionPoint],
    pop: TrainingPopularity,
    k_items: int,
    k_categories: int,
) -> dict[str, npt.NDArray[np.float64]]:
    """Per-point hit and reciprocal-rank arrays of every metric, in table order.

    A method that ranks no items (``rankings.items`` None) has no item metrics at all.
    """
    scores: dict[str, npt.NDArray[np.float64]] = {}
    if rankings.items is not None:
        items = set(pop.item_order)
        item_ranks = [
            _rank_of(p.target_item if p.target_item in items else None, ranking)
            for p, ranking in zip(points, rankings.items, strict=True)
        ]
        scores[f"item Recall@{k_items}"] = hits_at_k(item_ranks, k_items)
        scores[f"item MRR@{k_items}"] = reciprocal_ranks_at_k(item_ranks, k_items)
    for level, label in enumerate(_category_labels(pop.n_levels)):
        known = set(pop.category_orders[level])
        ranks = []
        for point, levels in zip(points, rankings.categories, strict=True):
            cats = point.target_categories
            target = cats[level] if level < len(cats) and cats[level] in known else None
            ranks.append(_rank_of(target, levels[level]))
        scores[f"{label} Recall@{k_categories}"] = hits_at_k(ranks, k_categories)
        scores[f"{label} MRR@{k_categories}"] = reciprocal_ranks_at_k(ranks, k_categories)
    return scores


def score_points(
    recommenders: Sequence[Recommender],
    train: Sequence[Session],
    valid: Sequence[Session],
    test: Sequence[Session],
    k_items: int = 20,
    k_categories: int = 5,
    taxonomy: Taxonomy | None = None,
    test_start: int = 0,
) -> ScoredPoints:
    """Fit each recommender on train (+valid), rank every test prediction point, and score it.

    Each method is ranked once on the `every` points; `last` is the subset ``is_last``, and
    the target kinds split `every` into revisits (the target sku is in the input) and new
    items.

    Args:
        recommenders: Models to compare; the first is the reference of the paired differences.
        train: Training sessions; the only source of vocabularies and fitted statistics.
        valid: Validation sessions, passed to `fit` for tuning.
        test: Test sessions; prediction points are built from them.
        k_items: Item cut-off (Recall@k, MRR@k).
        k_categories: Category cut-off.
        taxonomy: The taxonomy the models were trained with (the checkpoint's). Every
            session is expanded through it before anything else, so targets, baselines and
            models all see the same K category levels (`with_category_paths`).
        test_start: Position of ``test[0]`` in the dataset (`hup.splits.Split.test_start`),
            so the session labels of the bootstrap stay distinct when folds are pooled.

    Returns:
        The per-point figures; `summarize` turns them into a report.
    """
    train = with_category_paths(train, taxonomy)
    valid = with_category_paths(valid, taxonomy)
    test = with_category_paths(test, taxonomy)
    pop = TrainingPopularity.from_sessions(train)
    points = prediction_points(test)
    clamped = count_clamped_gaps(test, max(pop.n_levels, 1), taxonomy)
    if clamped:
        logger.warning(
            "%d test micro events have out-of-order timestamps; their gaps are clamped to 0",
            clamped,
        )
    groups = np.asarray([test_start + p.session_index for p in points], dtype=np.int64)
    revisit = np.asarray(revisits(test, points), dtype=bool)
    masks = {
        "last": np.asarray([p.is_last for p in points], dtype=bool),
        "every": np.ones(len(points), dtype=bool),
        "every:revisit": revisit,
        "every:new": ~revisit,
    }
    logger.info(
        "%d test sessions: %d every (%d revisit) / %d last points",
        len(test),
        len(points),
        revisit.sum(),
        masks["last"].sum(),
    )
    per_method: list[dict[str, FloatArray]] = []
    for recommender in recommenders:
        started = time.perf_counter()
        recommender.fit(train, valid)
        rankings = recommender.rank(test, points, k_items, k_categories)
        _check(recommender.name, rankings, points, pop, k_items, k_categories)
        per_method.append(_score(rankings, points, pop, k_items, k_categories))
        logger.info(
            "%s fitted and ranked in %.1f s", recommender.name, time.perf_counter() - started
        )
    metric_names = (
        f"item Recall@{k_items}",
        f"item MRR@{k_items}",
        *(
            f"{label} {metric}@{k_categories}"
            for label in _category_labels(pop.n_levels)
            for metric in ("Recall", "MRR")
        ),
    )
    return ScoredPoints(
        methods=tuple(r.name for r in recommenders),
        scores=tuple(per_method),
        groups=groups,
        masks=masks,
        metric_names=metric_names,
        k_items=k_items,
        k_categories=k_categories,
        n_train=len(train),
        n_valid=len(valid),
        n_test=len(test),
        clamped_gaps=clamped,
    )


def evaluate(
    recommenders: Sequence[Recommender],
    train: Sequence[Session],
    valid: Sequence[Session],
    test: Sequence[Session],
    k_items: int = 20,
    k_categories: int = 5,
    seed: int = 0,
    n_resamples: int = 1000,
    command: str | None = None,
    taxonomy: Taxonomy | None = None,
) -> EvaluationReport:
    """Fit, rank and score every recommender on one split, and summarize (`score_points`).

    Args:
        recommenders: Models to compare; the first is the reference of the paired differences.
        train: Training sessions; the only source of vocabularies and fitted statistics.
        valid: Validation sessions, passed to `fit` for tuning.
        test: Test sessions; prediction points are built from them.
        k_items: Item cut-off (Recall@k, MRR@k).
        k_categories: Category cut-off.
        seed: Bootstrap seed.
        n_resamples: Bootstrap replicates.
        command: The command line that produced the run, recorded in the report.
        taxonomy: The taxonomy the models were trained with (see `score_points`).

    Returns:
        The report; render it with `to_markdown` or `to_json`.
    """
    scored = score_points(
        recommenders, train, valid, test, k_items, k_categories, taxonomy=taxonomy
    )
    return summarize(scored, seed, n_resamples, command)
