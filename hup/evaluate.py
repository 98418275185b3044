"""The offline evaluation protocol (docs/evaluation.md): rank, score, bootstrap, report."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hup.baselines import Rankings, Recommender, TrainingPopularity
from hup.data import Session, with_category_paths
from hup.metrics import (
    bootstrap_ci,
    hits_at_k,
    paired_bootstrap_diff,
    reciprocal_ranks_at_k,
)
from hup.points import PredictionPoint, prediction_points
from hup.sequences import count_clamped_gaps
from hup.vocab import Taxonomy

__all__ = [
    "MODES",
    "Estimate",
    "EvaluationReport",
    "PairedDifference",
    "ResultRow",
    "evaluate",
    "to_json",
    "to_markdown",
]

logger = logging.getLogger(__name__)

MODES = ("last", "every")
ALPHA = 0.05  # 95 % intervals, as the protocol asks


@dataclass(frozen=True)
class Estimate:
    """A mean over prediction points with its session-bootstrap interval (fractions, not %)."""

    mean: float
    lo: float
    hi: float


@dataclass(frozen=True)
class ResultRow:
    """One method on one mode: every metric of the table."""

    method: str
    mode: str
    n_points: int
    n_sessions: int
    # Metric name -> estimate, in `EvaluationReport.metric_names` order; a metric the method
    # does not have (the items of "last category") is absent, not zero.
    metrics: dict[str, Estimate]


@dataclass(frozen=True)
class PairedDifference:
    """``reference - other`` on the same points, with a paired session-bootstrap interval."""

    reference: str
    other: str
    mode: str
    metric: str
    estimate: Estimate


@dataclass(frozen=True)
class EvaluationReport:
    """Everything one `evaluate` run measured, plus what is needed to reproduce it."""

    rows: tuple[ResultRow, ...]
    differences: tuple[PairedDifference, ...]
    metric_names: tuple[str, ...]
    seed: int
    n_resamples: int
    k_items: int
    k_categories: int
    n_train: int
    n_valid: int
    n_test: int
    command: str | None = None
    # Micro events of the test sessions with out-of-order timestamps, whose negative gaps the
    # causal featurizer clamps to 0 (every model that featurizes sees them clamped).
    clamped_gaps: int = 0


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
    """Fit each recommender on train (+valid), rank every test prediction point, and score it.

    Each method is ranked once on the `every` points; `last` is the subset ``is_last``. All
    intervals use the same seed, so every metric and method is bootstrapped over the same
    resampled test sessions, and the paired differences (first recommender minus each other one,
    `every` item Recall/MRR) are paired by construction.

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
        taxonomy: The taxonomy the models were trained with (the checkpoint's). Every
            session is expanded through it before anything else, so targets, baselines and
            models all see the same K category levels (`with_category_paths`).

    Returns:
        The report; render it with `to_markdown` or `to_json`.
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
    groups = np.asarray([p.session_index for p in points], dtype=np.int64)
    last = np.asarray([p.is_last for p in points], dtype=bool)
    masks: dict[str, npt.NDArray[np.bool_] | None] = {"last": last, "every": None}
    logger.info("%d test sessions: %d every / %d last points", len(test), len(points), last.sum())

    rows: list[ResultRow] = []
    per_method: list[dict[str, npt.NDArray[np.float64]]] = []
    for recommender in recommenders:
        started = time.perf_counter()
        recommender.fit(train, valid)
        rankings = recommender.rank(test, points, k_items, k_categories)
        _check(recommender.name, rankings, points, pop, k_items, k_categories)
        scores = _score(rankings, points, pop, k_items, k_categories)
        per_method.append(scores)
        logger.info(
            "%s fitted and ranked in %.1f s", recommender.name, time.perf_counter() - started
        )
        for mode in MODES:
            mask = masks[mode]
            g = groups if mask is None else groups[mask]
            metrics = {}
            for metric, values in scores.items():
                v = values if mask is None else values[mask]
                metrics[metric] = Estimate(*bootstrap_ci(v, g, n_resamples, seed, ALPHA))
            rows.append(ResultRow(recommender.name, mode, len(g), len(np.unique(g)), metrics))

    differences: list[PairedDifference] = []
    item_metrics = (f"item Recall@{k_items}", f"item MRR@{k_items}")
    for recommender, scores in zip(recommenders[1:], per_method[1:], strict=True):
        for metric in item_metrics:
            if metric not in per_method[0] or metric not in scores:
                continue  # a method without item rankings ("last category")
            diff = paired_bootstrap_diff(
                per_method[0][metric], scores[metric], groups, n_resamples, seed, ALPHA
            )
            differences.append(
                PairedDifference(
                    recommenders[0].name, recommender.name, "every", metric, Estimate(*diff)
                )
            )
    metric_names = (
        *item_metrics,
        *(
            f"{label} {metric}@{k_categories}"
            for label in _category_labels(pop.n_levels)
            for metric in ("Recall", "MRR")
        ),
    )
    return EvaluationReport(
        rows=tuple(rows),
        differences=tuple(differences),
        metric_names=metric_names,
        seed=seed,
        n_resamples=n_resamples,
        k_items=k_items,
        k_categories=k_categories,
        n_train=len(train),
        n_valid=len(valid),
        n_test=len(test),
        command=command,
        clamped_gaps=clamped,
    )


NOT_APPLICABLE = "–"
"""Markdown cell of a metric a method does not have (items of "last category")."""


def _pct(estimate: Estimate | None) -> str:
    if estimate is None:
        return NOT_APPLICABLE
    if math.isnan(estimate.mean):
        return "n/a"
    return f"{100 * estimate.mean:.2f} [{100 * estimate.lo:.2f}, {100 * estimate.hi:.2f}]"


def to_markdown(report: EvaluationReport) -> str:
    """One markdown table (rows = method x mode, figures in %) with its provenance below."""
    header = ["method", "mode", "points", "sessions", *(f"{m} (%)" for m in report.metric_names)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report.rows:
        cells = [row.method, row.mode, str(row.n_points), str(row.n_sessions)]
        cells += [_pct(row.metrics.get(m)) for m in report.metric_names]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Mean [95 % interval]: percentile bootstrap resampling whole test sessions "
        f"({report.n_resamples} resamples, seed {report.seed}); "
        f"split {report.n_train}/{report.n_valid}/{report.n_test} sessions; "
        f"{report.clamped_gaps} test events with out-of-order timestamps (gaps clamped to 0)."
    )
    for d in report.differences:
        e = d.estimate
        lines.append(
            f"- {d.reference} - {d.other}, {d.mode} {d.metric}: {100 * e.mean:+.2f} pp "
            f"[{100 * e.lo:+.2f}, {100 * e.hi:+.2f}] (paired bootstrap)"
        )
    if report.command:
        lines.append(f"\nCommand: `{report.command}`")
    return "\n".join(lines) + "\n"


def _num(value: float) -> float | None:
    # JSON has no NaN; an empty mode is reported as null.
    return None if math.isnan(value) else value


def _estimate_json(estimate: Estimate) -> dict[str, float | None]:
    return {"mean": _num(estimate.mean), "lo": _num(estimate.lo), "hi": _num(estimate.hi)}


def to_json(report: EvaluationReport) -> dict[str, Any]:
    """The report as plain JSON types (fractions, not %), ready for `orjson.dumps`.

    A metric a method does not have (the items of "last category") is null; an empty mode
    has estimates whose mean, lo and hi are null.
    """
    return {
        "protocol": "docs/evaluation.md",
        "seed": report.seed,
        "n_resamples": report.n_resamples,
        "alpha": ALPHA,
        "k_items": report.k_items,
        "k_categories": report.k_categories,
        "command": report.command,
        "sessions": {"train": report.n_train, "valid": report.n_valid, "test": report.n_test},
        "clamped_gaps": {"test": report.clamped_gaps},
        "metric_names": list(report.metric_names),
        "results": [
            {
                "method": row.method,
                "mode": row.mode,
                "n_points": row.n_points,
                "n_sessions": row.n_sessions,
                "metrics": {
                    m: None if m not in row.metrics else _estimate_json(row.metrics[m])
                    for m in report.metric_names
                },
            }
            for row in report.rows
        ],
        "paired_differences": [
            {
                "reference": d.reference,
                "other": d.other,
                "mode": d.mode,
                "metric": d.metric,
                **_estimate_json(d.estimate),
            }
            for d in report.differences
        ],
    }
