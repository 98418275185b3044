"""What an evaluation measured (rows, paired differences, folds) and its markdown and JSON forms."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "ALPHA",
    "NOT_APPLICABLE",
    "Estimate",
    "EvaluationReport",
    "FoldedReport",
    "PairedDifference",
    "ResultRow",
    "difference_tables",
    "folded_json",
    "folded_markdown",
    "to_json",
    "to_markdown",
]

ALPHA = 0.05  # 95 % intervals, as the protocol asks

NOT_APPLICABLE = "–"
"""Markdown cell of a metric a method does not have (items of "last category")."""


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
    # Split sizes in sessions; for a report pooled over folds, totals over the folds.
    n_train: int
    n_valid: int
    n_test: int
    command: str | None = None
    # Micro events of the test sessions with out-of-order timestamps, whose negative gaps the
    # causal featurizer clamps to 0 (every model that featurizes sees them clamped).
    clamped_gaps: int = 0
    # How many folds' test points the report pools (1: a single split).
    n_folds: int = 1


@dataclass(frozen=True)
class FoldedReport:
    """K folds: one report per fold, and one over the test points of all of them."""

    folds: tuple[EvaluationReport, ...]
    pooled: EvaluationReport


def _pct(estimate: Estimate | None) -> str:
    if estimate is None:
        return NOT_APPLICABLE
    if math.isnan(estimate.mean):
        return "n/a"
    return f"{100 * estimate.mean:.2f} [{100 * estimate.lo:.2f}, {100 * estimate.hi:.2f}]"


def _signed(estimate: Estimate | None) -> str:
    """A difference in pp, marked ``>0`` / ``<0`` when its interval excludes zero."""
    if estimate is None:
        return NOT_APPLICABLE
    if math.isnan(estimate.mean):
        return "n/a"
    mark = " >0" if estimate.lo > 0 else " <0" if estimate.hi < 0 else ""
    return f"{100 * estimate.mean:+.2f} [{100 * estimate.lo:+.2f}, {100 * estimate.hi:+.2f}]{mark}"


def difference_tables(differences: tuple[PairedDifference, ...]) -> list[str]:
    """One table per reference and mode: a row per other method, a column per metric."""
    lines: list[str] = []
    groups: dict[tuple[str, str], list[PairedDifference]] = {}
    for d in differences:
        groups.setdefault((d.reference, d.mode), []).append(d)
    for (reference, mode), found in groups.items():
        metrics = list(dict.fromkeys(d.metric for d in found))
        others = list(dict.fromkeys(d.other for d in found))
        cells = {(d.other, d.metric): d.estimate for d in found}
        lines += [
            "",
            f"Paired differences, {reference} minus each method, `{mode}` points (pp, mean "
            "[95 % interval] by paired bootstrap over test sessions; >0 / <0: the interval "
            "excludes zero):",
            "",
            f"| {reference} minus | " + " | ".join(metrics) + " |",
            "|" + "---|" * (len(metrics) + 1),
        ]
        for other in others:
            row = [_signed(cells.get((other, m))) for m in metrics]
            lines.append(f"| {other} | " + " | ".join(row) + " |")
    return lines


def _table(report: EvaluationReport) -> list[str]:
    header = ["method", "mode", "points", "sessions", *(f"{m} (%)" for m in report.metric_names)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report.rows:
        cells = [row.method, row.mode, str(row.n_points), str(row.n_sessions)]
        cells += [_pct(row.metrics.get(m)) for m in report.metric_names]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(report: EvaluationReport) -> str:
    """One markdown table (rows = method x mode, figures in %), the paired differences and provenance.

    Modes: `last`, `every`, and `every` split by target kind (``every:revisit``: the target
    sku is in the input; ``every:new``: it is not).
    """
    lines = _table(report)
    lines.append("")
    if report.n_folds > 1:
        split = (
            f"pooled over {report.n_folds} folds, {report.n_test} test sessions "
            "(each session is a test session once)"
        )
    else:
        split = f"split {report.n_train}/{report.n_valid}/{report.n_test} sessions"
    lines.append(
        f"Mean [95 % interval]: percentile bootstrap resampling whole test sessions "
        f"({report.n_resamples} resamples, seed {report.seed}); {split}; "
        f"{report.clamped_gaps} test events with out-of-order timestamps (gaps clamped to 0)."
    )
    lines += difference_tables(report.differences)
    if report.command:
        lines.append(f"\nCommand: `{report.command}`")
    return "\n".join(lines) + "\n"


def folded_markdown(report: FoldedReport) -> str:
    """A section per fold (its table and differences), then the pooled one, then the command."""
    sections = []
    for fold, part in enumerate(report.folds, start=1):
        title = (
            f"## Fold {fold} of {len(report.folds)} (split {part.n_train}/{part.n_valid}/"
            f"{part.n_test} sessions)"
        )
        body = to_markdown(replace(part, command=None))  # the command is printed once, below
        sections.append(f"{title}\n\n{body}")
    sections.append(f"## Pooled over {len(report.folds)} folds\n\n{to_markdown(report.pooled)}")
    return "\n".join(sections)


def _num(value: float) -> float | None:
    # JSON has no NaN; an empty mode is reported as null.
    return None if math.isnan(value) else value


def _estimate_json(estimate: Estimate) -> dict[str, float | None]:
    return {"mean": _num(estimate.mean), "lo": _num(estimate.lo), "hi": _num(estimate.hi)}


def to_json(report: EvaluationReport) -> dict[str, Any]:
    """The report as plain JSON types (fractions, not %), ready for `orjson.dumps`.

    A metric a method does not have (the items of "last category") is null; an empty mode
    has estimates whose mean, lo and hi are null. ``folds`` is how many folds' test points
    the figures pool: 1 for a single split (or one fold's own report), K for a pooled report,
    whose session counts are totals over the folds.
    """
    return {
        "protocol": "docs/evaluation.md",
        "seed": report.seed,
        "n_resamples": report.n_resamples,
        "alpha": ALPHA,
        "k_items": report.k_items,
        "k_categories": report.k_categories,
        "command": report.command,
        "folds": report.n_folds,
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


def folded_json(report: FoldedReport) -> dict[str, Any]:
    """The pooled report's JSON (same keys as `to_json`) plus ``per_fold``: each fold's."""
    return {
        **to_json(report.pooled),
        "per_fold": [
            {"fold": fold, **to_json(part)} for fold, part in enumerate(report.folds, start=1)
        ],
    }
