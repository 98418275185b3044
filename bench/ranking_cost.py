"""Cost of ranking `top_items` per event, exact vs candidates (hup.candidates), and recall@20.

For each vocabulary size, a repeat-aware model with the default sizes (`VARIANTS["hup"]`,
item_dim 30, 50 co-visitation neighbours per id) and clustered item embeddings
(`hup.synthetic_ranking`) ranks the same users' profiles twice through
`hup.hup_recommender.rank_profiles`: exactly over the whole vocabulary, and from the candidate
index. It prints and writes (JSON) microseconds per event for one event per call and for
calls of 64 events (a wave of the worker), the candidate path's recall of the exact
top-20, the largest score difference on the ids both list, and the index's build time.
One torch thread and one faiss thread, as the worker runs.

    PYTHONPATH=. .venv/bin/python bench/ranking_cost.py
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import orjson
import torch
import typer
from rich.console import Console
from rich.table import Table
from torch import Tensor

from hup.candidates import ItemIndex, RankingOptions, build_item_index
from hup.hup_recommender import rank_profiles
from hup.model import HupModel
from hup.recommender_contract import Ranked
from hup.synthetic_ranking import ranking_inputs, ranking_model

REPO = Path(__file__).resolve().parents[1]
K = 20
WAVE = 64
logger = logging.getLogger("bench.ranking_cost")


def _rows(inputs: dict[str, Tensor], start: int, end: int) -> dict[str, Tensor]:
    return {key: value[start:end] for key, value in inputs.items()}


def _rank(
    model: HupModel,
    inputs: dict[str, Tensor],
    batch: int,
    index: ItemIndex | None,
    repeats: int = 1,
) -> tuple[Ranked, float]:
    """Every point ranked in calls of `batch`: the rankings and microseconds per event.

    The time is the best of `repeats` passes: on a shared machine the other processes
    only ever add to it.
    """
    n_points = len(inputs["item"])
    best = float("inf")
    for _ in range(repeats):
        ranked: Ranked = []
        started = time.perf_counter()
        for start in range(0, n_points, batch):
            rows = _rows(inputs, start, start + batch)
            items, _ = rank_profiles(model, rows, K, 5, [None] * len(rows["item"]), index)
            ranked.extend(items)
        best = min(best, time.perf_counter() - started)
    return ranked, 1e6 * best / n_points


def _compare(exact: Ranked, approx: Ranked) -> tuple[float, float]:
    """Mean recall of the exact top-K, and the largest score gap on shared ids."""
    recall, gap = 0.0, 0.0
    for (exact_ids, exact_scores), (ids, scores) in zip(exact, approx, strict=True):
        recall += len(set(exact_ids) & set(ids)) / len(exact_ids)
        by_id = dict(zip(exact_ids, exact_scores, strict=True))
        for i, score in zip(ids, scores, strict=True):
            if i in by_id:
                gap = max(gap, abs(by_id[i] - score))
    return recall / len(exact), gap


def measure(
    n_items: int, points: int, single: int, repeats: int, options: RankingOptions
) -> dict[str, float]:
    """The figures of one vocabulary size."""
    started = time.perf_counter()
    model = ranking_model(n_items, seed=0)
    inputs = ranking_inputs(model, points, seed=0)
    logger.info("V=%d: model in %.1f s", n_items, time.perf_counter() - started)
    started = time.perf_counter()
    index = build_item_index(model, options)
    build_s = time.perf_counter() - started
    if index is None:
        raise SystemExit("faiss is not installed: pip install 'hup-stream[ann]'")
    few = _rows(inputs, 0, single)
    _rank(model, _rows(inputs, 0, 2), 1, index)  # warm up both paths
    _rank(model, _rows(inputs, 0, 2), 1, None)
    _, exact_one = _rank(model, few, 1, None, repeats)
    _, ann_one = _rank(model, few, 1, index, repeats)
    exact, exact_wave = _rank(model, inputs, WAVE, None, repeats)
    approx, ann_wave = _rank(model, inputs, WAVE, index, repeats)
    scale = model.state_dict()["repeat_heads.item_log_scale"].exp()
    search_wave = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, points, WAVE):
            index.search(torch.nn.functional.normalize(inputs["item"][start : start + WAVE]), scale)
        search_wave = min(search_wave, 1e6 * (time.perf_counter() - started) / points)
    recall, gap = _compare(exact, approx)
    return {
        "n_items": n_items,
        "item_dim": model.config.item_dim,
        "index_lists": index.lists,
        "index_build_s": round(build_s, 2),
        "exact_us_per_event_1": round(exact_one),
        "ann_us_per_event_1": round(ann_one),
        f"exact_us_per_event_{WAVE}": round(exact_wave),
        f"ann_us_per_event_{WAVE}": round(ann_wave),
        f"ann_search_us_per_event_{WAVE}": round(search_wave),
        f"recall_at_{K}": round(recall, 4),
        "max_score_gap": gap,
        "points": points,
        "repeats": repeats,
    }


def main(
    sizes: Annotated[str, typer.Option(help="Vocabulary sizes, comma-separated")] = (
        "10000,100000,1000000"
    ),
    points: Annotated[int, typer.Option(help="Users ranked per size (recall, waves)")] = 256,
    single: Annotated[int, typer.Option(help="Of them, ranked one per call")] = 32,
    repeats: Annotated[int, typer.Option(help="Timed passes; the best counts")] = 3,
    out: Annotated[Path, typer.Option(help="JSON output")] = REPO
    / "bench"
    / "results"
    / "ranking_cost.json",
) -> None:
    """Measure every size, print the table and write the JSON."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build it loads
    torch.set_num_threads(1)
    options = RankingOptions(min_items=1)  # every size through the index, for the comparison
    rows = [measure(int(n), points, single, repeats, options) for n in sizes.split(",")]
    table = Table(
        title=f"top-{K} items, microseconds per event, 1 or {WAVE} events per call",
        caption=f"torch 1 thread; M={options.ann_candidates}, P={options.prior_candidates}, "
        f"nprobe={options.nprobe}; search = the index's share of ANN",
    )
    columns = {
        "items": "n_items",
        "exact 1": "exact_us_per_event_1",
        "ANN 1": "ann_us_per_event_1",
        f"exact {WAVE}": f"exact_us_per_event_{WAVE}",
        f"ANN {WAVE}": f"ann_us_per_event_{WAVE}",
        f"search {WAVE}": f"ann_search_us_per_event_{WAVE}",
        f"recall@{K}": f"recall_at_{K}",
        "build s": "index_build_s",
    }
    for title in columns:
        table.add_column(title, justify="right")
    for row in rows:
        table.add_row(*(f"{row[key]:,}" for key in columns.values()))
    Console().print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(
        orjson.dumps({"options": options.__dict__, "sizes": rows}, option=orjson.OPT_INDENT_2)
    )
    logger.info("wrote %s", out)


if __name__ == "__main__":
    typer.run(main)
