"""`hup compare`: fit the chosen models on one split (or on each of K folds), evaluate, write the table.

Every model sees the same split, vocabularies and prediction points, and one summary
bootstraps them over the same resampled test sessions, so intervals and the paired
differences (HUP minus each other model, when HUP is in the run) are comparable. With K
folds every model is trained once per fold, and the main table pools the test points of
all folds (per-fold tables follow). The output
directory gets ``compare.md`` (tables with 95 % intervals, fit and ranking times, the paper's
Table 3 beside ours), ``compare.json`` and ``compare.png`` (bar chart with error bars).
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from hup.evaluate import (
    NOT_APPLICABLE,
    Estimate,
    EvaluationReport,
    ResultRow,
    score_points,
    summarize,
    summarize_folds,
    to_json,
)
from hup.extras import require
from hup.folds import fold_data
from hup.points import PredictionPoint
from hup.recommender_contract import Rankings, Recommender
from hup.report import difference_tables
from hup.sessions import Dataset, Session
from hup.splits import protocol_splits
from hup.vocab import Taxonomy
from hup.zoo.fit import FitOptions
from hup.zoo.paper import PAPER_COLUMNS, PAPER_TABLE3, paper_markdown
from hup.zoo.registry import DISPLAY_NAMES, MODELS, ZOO_CLASSES, kind_of

__all__ = [
    "Comparison",
    "run_comparison",
    "to_comparison_json",
    "to_comparison_markdown",
    "write_comparison",
]


@dataclass(frozen=True)
class FoldRun:
    """One fold of a folded comparison: its own report and costs."""

    report: EvaluationReport
    fit_seconds: dict[str, float]
    rank_seconds: dict[str, float]


@dataclass(frozen=True)
class Comparison:
    """One comparison run: the evaluation report plus what it cost and how it was set up."""

    report: EvaluationReport  # pooled over the folds when there are several
    names: tuple[str, ...]  # CLI names, in table order
    fit_seconds: dict[str, float]  # CLI name -> seconds in fit (training), summed over folds
    rank_seconds: dict[str, float]  # CLI name -> seconds ranking the test points, likewise
    options: FitOptions
    dataset: str
    folds: tuple[FoldRun, ...] = ()  # per fold, when K >= 2


class _Timed:
    """A recommender that records how long its `fit` and `rank` take."""

    def __init__(self, inner: Recommender, on_fit: Callable[[str], None] | None) -> None:
        self.inner, self.name, self._on_fit = inner, inner.name, on_fit
        self.fit_seconds = self.rank_seconds = math.nan

    def fit(self, train: Sequence[Session], valid: Sequence[Session]) -> None:
        if self._on_fit is not None:
            self._on_fit(self.name)
        started = time.perf_counter()
        self.inner.fit(train, valid)
        self.fit_seconds = time.perf_counter() - started

    def rank(
        self,
        sessions: Sequence[Session],
        points: Sequence[PredictionPoint],
        k_items: int,
        k_categories: int,
    ) -> Rankings:
        started = time.perf_counter()
        rankings = self.inner.rank(sessions, points, k_items, k_categories)
        self.rank_seconds = time.perf_counter() - started
        return rankings


def _suffixed(on_fit: Callable[[str], None], suffix: str) -> Callable[[str], None]:
    def announce(name: str) -> None:
        on_fit(name + suffix)

    return announce


def run_comparison(
    names: Sequence[str],
    dataset: Dataset,
    options: FitOptions,
    taxonomy: Taxonomy | None = None,
    seed: int = 0,
    n_resamples: int = 1000,
    command: str | None = None,
    on_fit: Callable[[str], None] | None = None,
    folds: int | None = None,
) -> Comparison:
    """Fit and evaluate ``names`` (keys of `MODELS`) on the protocol's split(s) of ``dataset``.

    HUP (or else the first HUP variant) goes first, so the paired differences are HUP minus
    each other model; the rest keep the registry's order. With ``folds`` K >= 2, every model
    is fitted on each fold (`hup.splits.protocol_splits`), and the report pools all folds.

    Raises:
        ValueError: ``folds`` is below 1 or above the number of sessions.
    """
    ordered = [n for n in MODELS if n in names]
    reference = next((n for n in ordered if kind_of(n) == "hup"), None)
    if reference is not None:
        ordered = [reference, *(n for n in ordered if n != reference)]
    splits = protocol_splits(dataset, folds)
    parts, runs = [], []
    for split in splits:
        fold_options, announce = options, on_fit
        if len(splits) > 1:
            label = fold_data(options.data, split.fold, split.n_folds)
            fold_options = dataclasses.replace(options, data=label)
            if on_fit is not None:
                announce = _suffixed(on_fit, f" (fold {split.fold} of {split.n_folds})")
        timed = [_Timed(MODELS[n](fold_options, taxonomy), announce) for n in ordered]
        parts.append(
            score_points(
                timed,
                split.train,
                split.valid,
                split.test,
                taxonomy=taxonomy,
                test_start=split.test_start,
            )
        )
        runs.append(
            (
                {n: t.fit_seconds for n, t in zip(ordered, timed, strict=True)},
                {n: t.rank_seconds for n, t in zip(ordered, timed, strict=True)},
            )
        )
    fold_runs: tuple[FoldRun, ...] = ()
    if len(parts) == 1:
        report = summarize(parts[0], seed, n_resamples, command)
    else:
        folded = summarize_folds(parts, seed, n_resamples, command)
        report = folded.pooled
        fold_runs = tuple(
            FoldRun(r, fit, rank) for r, (fit, rank) in zip(folded.folds, runs, strict=True)
        )
    return Comparison(
        report=report,
        names=tuple(ordered),
        fit_seconds={n: sum(fit[n] for fit, _ in runs) for n in ordered},
        rank_seconds={n: sum(rank[n] for _, rank in runs) for n in ordered},
        options=options,
        dataset=dataset.name,
        folds=fold_runs,
    )


def _rows(comparison: Comparison) -> dict[tuple[str, str], ResultRow]:
    return {(row.method, row.mode): row for row in comparison.report.rows}


def _cell(row: ResultRow | None, metric: str) -> str:
    if row is not None and metric not in row.metrics:
        return NOT_APPLICABLE  # a method without that ranking ("last category" has no items)
    if row is None or math.isnan(row.metrics[metric].mean):
        return "n/a"
    e = row.metrics[metric]
    return f"{100 * e.mean:.2f} [{100 * e.lo:.2f}, {100 * e.hi:.2f}]"


def _metric_groups(report: EvaluationReport) -> tuple[list[str], list[list[str]]]:
    """Item metrics, and the category metrics per level (finest last)."""
    items = [m for m in report.metric_names if m.startswith("item ")]
    levels: dict[str, list[str]] = {}
    for m in report.metric_names:
        if not m.startswith("item "):
            levels.setdefault(m.rsplit(" ", 1)[0], []).append(m)
    return items, list(levels.values())


def to_comparison_markdown(comparison: Comparison) -> str:
    """The comparison as markdown: our table, paired differences, per-fold tables, the paper's Table 3."""
    report = comparison.report
    every = next((r for r in report.rows if r.mode == "every"), None)
    last = next((r for r in report.rows if r.mode == "last"), None)
    o = comparison.options
    if comparison.folds:
        split = (
            f"Pooled over {len(comparison.folds)} folds (each session is a test session once; "
            f"per-fold tables below): {report.n_test} test sessions"
        )
    else:
        split = f"Split {report.n_train}/{report.n_valid}/{report.n_test} sessions"
    lines = [
        f"# Model comparison on {comparison.dataset}",
        "",
        f"Protocol: docs/evaluation.md. {split}; {every.n_points if every else 0} `every` points, "
        f"{last.n_points if last else 0} `last` points. Figures in %, mean [95 % interval] by "
        f"bootstrap over whole test sessions ({report.n_resamples} resamples, seed {report.seed}). "
        f"Budget for every learned model: at most {o.epochs} epochs, patience {o.patience}, "
        f"{o.batch_size} sessions per batch, seed {o.seed}"
        + (f", overrides {o.overrides}" if o.overrides else "")
        + ". Fit = training time (s), rank = ranking the test points (s).",
        "",
        *_tables(comparison),
    ]
    for fold, run in enumerate(comparison.folds, start=1):
        r = run.report
        lines += [
            "",
            f"## Fold {fold} of {len(comparison.folds)} (split {r.n_train}/{r.n_valid}/"
            f"{r.n_test} sessions)",
            "",
        ]
        lines += _tables(
            dataclasses.replace(
                comparison,
                report=r,
                fit_seconds=run.fit_seconds,
                rank_seconds=run.rank_seconds,
                folds=(),
            )
        )
    lines += ["", *paper_markdown([DISPLAY_NAMES[n] for n in comparison.names])]
    if report.command:
        lines += ["", f"Command: `{report.command}`"]
    return "\n".join(lines) + "\n"


def _tables(comparison: Comparison) -> list[str]:
    """The tables of one report: every metric, coarser levels, target kinds, differences."""
    report, rows = comparison.report, _rows(comparison)
    items, levels = _metric_groups(report)
    finest = levels[-1] if levels else []
    header = ["model"]
    header += [f"every {m}" for m in items + finest] + [f"last {m}" for m in items + finest]
    header += ["fit (s)", "rank (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in comparison.names:
        display = DISPLAY_NAMES[name]
        cells = [display]
        for mode in ("every", "last"):
            cells += [_cell(rows.get((display, mode)), m) for m in items + finest]
        cells += [f"{comparison.fit_seconds[name]:.1f}", f"{comparison.rank_seconds[name]:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for level in levels[:-1]:  # coarser category levels, when there is a taxonomy
        lines += [
            "",
            "| model | "
            + " | ".join(f"{mode} {m}" for mode in ("every", "last") for m in level)
            + " |",
        ]
        lines.append("|" + "---|" * (1 + 2 * len(level)))
        for name in comparison.names:
            display = DISPLAY_NAMES[name]
            cells = [
                _cell(rows.get((display, mode)), m) for mode in ("every", "last") for m in level
            ]
            lines.append(f"| {display} | " + " | ".join(cells) + " |")
    lines += _kind_table(comparison, items)
    fallback = [DISPLAY_NAMES[n] for n in comparison.names if _last_category(n)]
    if fallback:
        lines += [
            "",
            f'Categories by "last category" (the protocol\'s fallback): {", ".join(fallback)}.',
        ]
    lines += difference_tables(report.differences)
    return lines


def _kind_table(comparison: Comparison, items: list[str]) -> list[str]:
    """Item figures of `every` split by target kind: revisits (sku in the input) and new items."""
    rows = _rows(comparison)
    kinds = ("every:revisit", "every:new")
    first = rows.get((DISPLAY_NAMES[comparison.names[0]], kinds[0])) if comparison.names else None
    if not items or first is None:
        return []
    counts = {k: rows[(first.method, k)].n_points for k in kinds}
    header = [f"{k} {m}" for k in kinds for m in items]
    lines = [
        "",
        f"By target kind, `every` points: {counts[kinds[0]]} revisits (the target sku is in the "
        f"input), {counts[kinds[1]]} new items.",
        "",
        "| model | " + " | ".join(header) + " |",
        "|" + "---|" * (1 + len(header)),
    ]
    for name in comparison.names:
        display = DISPLAY_NAMES[name]
        cells = [_cell(rows.get((display, k)), m) for k in kinds for m in items]
        lines.append(f"| {display} | " + " | ".join(cells) + " |")
    return lines


def _last_category(name: str) -> bool:
    """Whether the model ranks categories by the protocol's "last category" rule."""
    if name in ZOO_CLASSES:
        return not ZOO_CLASSES[name].category_heads
    return name in ("s-pop", "item-knn", "v-sknn", "stan")


def to_comparison_json(comparison: Comparison) -> dict[str, Any]:
    """The comparison as plain JSON types (fractions, not %)."""
    return {
        "dataset": comparison.dataset,
        "budget": dataclasses.asdict(comparison.options),
        "models": [
            {
                "name": name,
                "display": DISPLAY_NAMES[name],
                "kind": kind_of(name),
                "fit_seconds": comparison.fit_seconds[name],
                "rank_seconds": comparison.rank_seconds[name],
            }
            for name in comparison.names
        ],
        "evaluation": to_json(comparison.report),
        "folds": [
            {
                "fold": fold,
                "evaluation": to_json(run.report),
                "fit_seconds": run.fit_seconds,
                "rank_seconds": run.rank_seconds,
            }
            for fold, run in enumerate(comparison.folds, start=1)
        ],
        "paper_table3": {
            "note": "the paper's figures (%), full JD data, last mode: not comparable in absolute terms",
            "columns": list(PAPER_COLUMNS),
            "values": {d: {m: list(v) for m, v in t.items()} for d, t in PAPER_TABLE3.items()},
        },
    }


def write_chart(comparison: Comparison, path: Path) -> None:
    """Bar chart with 95 % error bars of `every` item Recall/MRR and finest category Recall.

    Raises:
        MissingExtraError: matplotlib (extra ``train``) is not installed.
    """
    # Heavy, an extra, and only the chart needs it.
    figure_class = require("matplotlib.figure", "train", "the chart of hup compare").Figure

    report, rows = comparison.report, _rows(comparison)
    items, levels = _metric_groups(report)
    metrics = items + ([m for m in levels[-1] if "Recall" in m] if levels else [])
    names = [DISPLAY_NAMES[n] for n in comparison.names]
    colours = {"baseline": "#999999", "zoo": "#4c72b0", "hup": "#dd8452"}
    fig = figure_class(
        figsize=(max(8.0, 0.55 * len(names) + 2), 3.2 * len(metrics)), layout="constrained"
    )
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    for ax, metric in zip(axes, metrics, strict=True):
        missing = Estimate(math.nan, math.nan, math.nan)  # a bar of a metric a model lacks
        estimates = [rows[(n, "every")].metrics.get(metric, missing) for n in names]
        means = [100 * e.mean for e in estimates]
        errors = [
            [100 * (e.mean - e.lo) for e in estimates],
            [100 * (e.hi - e.mean) for e in estimates],
        ]
        ax.bar(
            names,
            means,
            yerr=errors,
            capsize=3,
            color=[colours[kind_of(n)] for n in comparison.names],
        )
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(axis="y", alpha=0.3)
    title = textwrap.fill(f"{comparison.dataset}: `every` points, mean and 95 % interval", 90)
    fig.suptitle(f"{title}\ngrey: count baselines, blue: zoo models, orange: HUP and its variants")
    axes[-1].tick_params(axis="x", labelrotation=60)
    fig.savefig(path, dpi=120)


def write_comparison(comparison: Comparison, out: Path) -> list[Path]:
    """Write compare.md, compare.json and compare.png into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = out / "compare.md", out / "compare.json", out / "compare.png"
    md.write_text(to_comparison_markdown(comparison))
    js.write_bytes(orjson.dumps(to_comparison_json(comparison), option=orjson.OPT_INDENT_2))
    write_chart(comparison, png)
    return [md, js, png]
