"""Session-bootstrap summaries of scored points: per-mode rows, paired differences, pooled folds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hup.ranking_metrics import bootstrap_ci, paired_bootstrap_diff
from hup.report import (
    ALPHA,
    Estimate,
    EvaluationReport,
    FoldedReport,
    PairedDifference,
    ResultRow,
)

__all__ = ["MODES", "ScoredPoints", "pool", "summarize", "summarize_folds"]

MODES = ("last", "every", "every:revisit", "every:new")
"""Row modes: the paper's `last`, `every`, and `every` split by target kind (revisit / new)."""

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ScoredPoints:
    """Per-point figures of every method on test points: what a report summarises.

    Folds are pooled by concatenating these (`pool`), so a pooled interval resamples whole
    test sessions across all folds, and a pooled paired difference pairs the same points.

    Attributes:
        methods: Method names, the first being the reference of the paired differences.
        scores: Per method: metric name -> per-point value ``[n_points]`` (hit or 1/rank).
        groups: Per point, its test session's label ``[n_points]``: the session's position
            in the dataset, unique across the folds of one dataset.
        masks: Mode -> the points it covers ``[n_points]`` (all of them for `every`).
        metric_names: Table order: item metrics, then each category level's, coarse first.
        k_items: Item cut-off.
        k_categories: Category cut-off.
        n_train: Training sessions (totals when pooled).
        n_valid: Validation sessions (totals when pooled).
        n_test: Test sessions (totals when pooled).
        clamped_gaps: Test micro events with out-of-order timestamps (totals when pooled).
        n_folds: How many folds' points these are.
    """

    methods: tuple[str, ...]
    scores: tuple[dict[str, FloatArray], ...]
    groups: npt.NDArray[np.int64]
    masks: dict[str, BoolArray]
    metric_names: tuple[str, ...]
    k_items: int
    k_categories: int
    n_train: int
    n_valid: int
    n_test: int
    clamped_gaps: int
    n_folds: int = 1


def _difference_metrics(scored: ScoredPoints) -> tuple[str, ...]:
    """Item Recall/MRR and the finest category level's Recall/MRR: the acceptance figures."""
    categories = [m for m in scored.metric_names if not m.startswith("item ")]
    return (*scored.metric_names[:2], *categories[-2:])


def summarize(
    scored: ScoredPoints,
    seed: int = 0,
    n_resamples: int = 1000,
    command: str | None = None,
) -> EvaluationReport:
    """Means with session-bootstrap intervals per method and mode, and paired differences.

    All intervals use the same seed and groups, so every metric and method is bootstrapped
    over the same resampled test sessions, and the paired differences (the first method minus
    each other one, `every` points: item Recall/MRR and the finest category level's
    Recall/MRR, where both methods have the metric) are paired by construction.
    """
    rows: list[ResultRow] = []
    for method, scores in zip(scored.methods, scored.scores, strict=True):
        for mode in MODES:
            mask = scored.masks[mode]
            g = scored.groups[mask]
            metrics = {
                metric: Estimate(*bootstrap_ci(values[mask], g, n_resamples, seed, ALPHA))
                for metric, values in scores.items()
            }
            rows.append(ResultRow(method, mode, len(g), len(np.unique(g)), metrics))
    differences: list[PairedDifference] = []
    reference = scored.scores[0] if scored.scores else {}
    for other, scores in zip(scored.methods[1:], scored.scores[1:], strict=True):
        for metric in _difference_metrics(scored):
            if metric not in reference or metric not in scores:
                continue  # a method without item rankings ("last category")
            diff = paired_bootstrap_diff(
                reference[metric], scores[metric], scored.groups, n_resamples, seed, ALPHA
            )
            differences.append(
                PairedDifference(scored.methods[0], other, "every", metric, Estimate(*diff))
            )
    return EvaluationReport(
        rows=tuple(rows),
        differences=tuple(differences),
        metric_names=scored.metric_names,
        seed=seed,
        n_resamples=n_resamples,
        k_items=scored.k_items,
        k_categories=scored.k_categories,
        n_train=scored.n_train,
        n_valid=scored.n_valid,
        n_test=scored.n_test,
        command=command,
        clamped_gaps=scored.clamped_gaps,
        n_folds=scored.n_folds,
    )


def pool(parts: Sequence[ScoredPoints]) -> ScoredPoints:
    """The points of several folds as one set, for pooled figures.

    Raises:
        ValueError: The parts disagree on methods, metrics or cut-offs, or share a test
            session (pooling assumes each session is a test session once).
    """
    if not parts:
        raise ValueError("nothing to pool")
    first = parts[0]
    for part in parts[1:]:
        if (part.methods, part.metric_names, part.k_items, part.k_categories) != (
            first.methods,
            first.metric_names,
            first.k_items,
            first.k_categories,
        ):
            raise ValueError("folds to pool must have the same methods, metrics and cut-offs")
    labels = [np.unique(part.groups) for part in parts]
    if sum(len(x) for x in labels) != len(np.unique(np.concatenate(labels))):
        raise ValueError("folds to pool share test sessions")
    return ScoredPoints(
        methods=first.methods,
        scores=tuple(
            {m: np.concatenate([part.scores[i][m] for part in parts]) for m in first.scores[i]}
            for i in range(len(first.methods))
        ),
        groups=np.concatenate([part.groups for part in parts]),
        masks={mode: np.concatenate([part.masks[mode] for part in parts]) for mode in MODES},
        metric_names=first.metric_names,
        k_items=first.k_items,
        k_categories=first.k_categories,
        n_train=sum(part.n_train for part in parts),
        n_valid=sum(part.n_valid for part in parts),
        n_test=sum(part.n_test for part in parts),
        clamped_gaps=sum(part.clamped_gaps for part in parts),
        n_folds=sum(part.n_folds for part in parts),
    )


def summarize_folds(
    parts: Sequence[ScoredPoints],
    seed: int = 0,
    n_resamples: int = 1000,
    command: str | None = None,
) -> FoldedReport:
    """A report per fold and one pooled over all their test points (same seed everywhere)."""
    folds = tuple(summarize(part, seed, n_resamples, command) for part in parts)
    return FoldedReport(folds=folds, pooled=summarize(pool(parts), seed, n_resamples, command))
