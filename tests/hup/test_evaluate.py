from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import orjson
import pytest

from hup.baselines import POP, ItemKNN, LastCategory, SPop, TrainingPopularity
from hup.evaluate import (
    MODES,
    ResultRow,
    evaluate,
    folded_json,
    folded_markdown,
    pool,
    score_points,
    summarize_folds,
    to_json,
    to_markdown,
)
from hup.points import PredictionPoint
from hup.recommender_contract import Rankings
from hup.schema import DwellEvent, Event, MicroEvent
from hup.sessions import Dataset, Session, with_category_paths
from hup.splits import protocol_splits
from hup.vocab import OOV_TOKEN, Taxonomy

JD_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "jd"


def make_session(sid: str, visits: list[tuple[str, list[str]]]) -> Session:
    events: list[Event] = []
    for item, categories in visits:
        events.append(
            MicroEvent(user_id=sid, ts=0.0, item_id=item, categories=categories, behavior=1)
        )
        events.append(DwellEvent(kind="dwell", user_id=sid, ts=0.0, item_id=item, dwell_s=1.0))
    return Session(session_id=sid, user_id=sid, events=tuple(events))


def synthetic(n: int, seed: int) -> list[Session]:
    """Sessions that browse a few skus of one category back and forth (S-POP's strength)."""
    rng = random.Random(seed)
    sessions = []
    for s in range(n):
        cat = f"c{rng.randrange(4)}"
        pool = [f"{cat}-{rng.randrange(12)}" for _ in range(4)]
        visits = [(rng.choice(pool), [cat]) for _ in range(rng.randrange(2, 12))]
        sessions.append(make_session(f"s{s}", visits))
    return sessions


def test_hand_checked_figures() -> None:
    def sess(sid: str, *items: str) -> Session:
        return make_session(sid, [(i, ["other" if i == "E" else "root", i.lower()]) for i in items])

    train = [
        sess("s1", "A", "B", "C"),
        sess("s2", "B", "A", "B"),
        sess("s3", "C", "D"),
        sess("s4", "B"),
    ]
    test = [sess("t1", "A", "C", "E", "D")]
    report = evaluate([POP()], train, [], test, n_resamples=50)
    every, last = (
        {r.mode: r for r in report.rows}["every"],
        {r.mode: r for r in report.rows}["last"],
    )
    assert (every.n_points, every.n_sessions, last.n_points) == (3, 1, 1)
    # POP = B, A, C, D (A before C on a tie). Targets C (rank 2), E (unseen: miss), D (rank 4).
    assert every.metrics["item Recall@20"].mean == pytest.approx(2 / 3)
    assert every.metrics["item MRR@20"].mean == pytest.approx((1 / 2 + 1 / 4) / 3)
    assert last.metrics["item MRR@20"].mean == pytest.approx(1 / 4)
    # Two levels: L1 root (rank 1) / other (unseen); L2 b, a before c, d: POP order b, a, c, d.
    assert report.metric_names == (
        "item Recall@20",
        "item MRR@20",
        "category L1 Recall@5",
        "category L1 MRR@5",
        "category L2 Recall@5",
        "category L2 MRR@5",
    )
    assert every.metrics["category L1 MRR@5"].mean == pytest.approx(2 / 3)
    assert every.metrics["category L2 MRR@5"].mean == pytest.approx((1 / 3 + 1 / 4) / 3)
    # A single test session: every resample is that session, so the interval collapses.
    m = every.metrics["item Recall@20"]
    assert m.lo == pytest.approx(m.mean) and m.hi == pytest.approx(m.mean)


LEAF_TAXONOMY = Taxonomy(
    {"a1": ("A", "Aa", "a1"), "a2": ("A", "Aa", "a2"), "b1": ("B", "Bb", "b1")}
)


def leaf_only(sid: str, *items: str) -> Session:
    """A session whose events carry the leaf category only, as JD's do."""
    leaves = {"p": "a1", "q": "a2", "r": "b1", "u": "unknown-leaf"}
    return make_session(sid, [(item, [leaves[item]]) for item in items])


def test_sessions_are_expanded_through_the_taxonomy() -> None:
    (expanded,) = with_category_paths([leaf_only("s", "p", "r", "u")], LEAF_TAXONOMY)
    micro = [e for e in expanded.events if isinstance(e, MicroEvent)]
    assert [e.categories for e in micro] == [
        ["A", "Aa", "a1"],
        ["B", "Bb", "b1"],
        [OOV_TOKEN, OOV_TOKEN, "unknown-leaf"],  # the featurizer's padding for an unknown leaf
    ]
    assert with_category_paths([expanded], None) == [expanded]
    # The padding is not a category: popularity never ranks it.
    pop = TrainingPopularity.from_sessions([expanded])
    assert pop.category_orders == (("A", "B"), ("Aa", "Bb"), ("a1", "b1", "unknown-leaf"))


def test_leaf_only_sessions_are_scored_on_every_taxonomy_level() -> None:
    train = [leaf_only("s1", "p", "q", "r"), leaf_only("s2", "q", "p"), leaf_only("s3", "r", "p")]
    test = [leaf_only("t1", "p", "r", "q"), leaf_only("t2", "r", "u")]
    report = evaluate(
        [POP(), SPop(), ItemKNN()], train, [], test, n_resamples=20, taxonomy=LEAF_TAXONOMY
    )
    levels = [m for m in report.metric_names if m.startswith("category")]
    assert levels == [
        f"category L{k} {metric}@5" for k in (1, 2, 3) for metric in ("Recall", "MRR")
    ]
    every = {r.method: r for r in report.rows if r.mode == "every"}
    # POP ranks A before B at the coarsest level: targets r (B), q (A), u (padding: a miss).
    assert every["POP"].metrics["category L1 Recall@5"].mean == pytest.approx(2 / 3)
    assert every["POP"].metrics["category L1 MRR@5"].mean == pytest.approx((1 / 2 + 1) / 3)


def test_end_to_end_markdown_and_json() -> None:
    sessions = synthetic(200, seed=0)
    train, valid, test = sessions[:140], sessions[140:160], sessions[160:]
    recommenders = [SPop(), POP(), ItemKNN()]
    report = evaluate(recommenders, train, valid, test, seed=7, n_resamples=200, command="pytest")
    markdown = to_markdown(report)
    for name in ("POP", "S-POP", "Item-KNN"):
        for mode in ("last", "every", "every:revisit", "every:new"):
            assert f"| {name} | {mode} |" in markdown
    assert "category Recall@5" in markdown and "seed 7" in markdown
    payload = to_json(report)
    assert orjson.loads(orjson.dumps(payload)) == payload
    assert payload["seed"] == 7 and len(payload["results"]) == 12
    assert payload["folds"] == 1
    diffs = {(d["other"], d["metric"]): d for d in payload["paired_differences"]}
    assert set(diffs) == {
        (other, metric)
        for other in ("POP", "Item-KNN")
        for metric in ("item Recall@20", "item MRR@20", "category Recall@5", "category MRR@5")
    }
    rows = {(r.method, r.mode): r for r in report.rows}
    spop, pop = rows["S-POP", "every"], rows["POP", "every"]
    assert spop.n_points == pop.n_points > rows["POP", "last"].n_points
    d = diffs["POP", "item Recall@20"]
    gap = spop.metrics["item Recall@20"].mean - pop.metrics["item Recall@20"].mean
    assert d["mean"] == pytest.approx(gap)
    assert d["lo"] <= d["mean"] <= d["hi"]
    for row in report.rows:
        for estimate in row.metrics.values():
            assert 0.0 <= estimate.lo <= estimate.mean <= estimate.hi <= 1.0


class Cheater(POP):
    name = "cheater"

    def rank(
        self,
        sessions: object,
        points: list[PredictionPoint],
        k_items: int,
        k_categories: int,
    ) -> Rankings:
        r = super().rank(sessions, points, k_items, k_categories)  # type: ignore[arg-type]
        return Rankings(
            [[p.last_input_item, *items[:-1]] for p, items in zip(points, r.items, strict=True)],
            r.categories,
        )


def test_last_category_has_category_figures_and_no_item_figures() -> None:
    sessions = synthetic(60, seed=3)
    train, test = sessions[:40], sessions[40:]
    for order in ([POP(), SPop(), LastCategory()], [LastCategory(), POP()]):
        report = evaluate(order, train, [], test, n_resamples=20)
        assert report.metric_names == (
            "item Recall@20",
            "item MRR@20",
            "category Recall@5",
            "category MRR@5",
        )
        rows = {(r.method, r.mode): r for r in report.rows}
        for mode in ("last", "every"):
            last_category, pop = rows["Last category", mode], rows["POP", mode]
            assert set(last_category.metrics) == {"category Recall@5", "category MRR@5"}
            assert last_category.n_points == pop.n_points
        # Item differences only between methods that both rank items; "last category" has
        # category differences only.
        for d in report.differences:
            if "Last category" in (d.reference, d.other):
                assert d.metric.startswith("category "), d
    # Its category figures are S-POP's (S-POP ranks categories the same way).
    report = evaluate([SPop(), LastCategory()], train, [], test, n_resamples=20)
    rows = {(r.method, r.mode): r for r in report.rows}
    assert (
        rows["Last category", "every"].metrics["category Recall@5"]
        == (rows["S-POP", "every"].metrics["category Recall@5"])
    )
    line = next(x for x in to_markdown(report).splitlines() if x.startswith("| Last category"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4:6] == ["–", "–"] and cells[6] != "–"
    payload = to_json(report)
    (row,) = (
        r for r in payload["results"] if r["method"] == "Last category" and r["mode"] == "every"
    )
    assert row["metrics"]["item Recall@20"] is None and row["metrics"]["item MRR@20"] is None
    assert row["metrics"]["category Recall@5"]["mean"] > 0


def test_out_of_order_timestamps_in_test_sessions_are_counted_and_reported() -> None:
    sessions = synthetic(30, seed=2)
    train, test = sessions[:20], sessions[20:]
    report = evaluate([POP()], train, [], test, n_resamples=10)
    assert report.clamped_gaps == 0  # make_session's timestamps never go back
    late = [
        MicroEvent(user_id="late", ts=ts, item_id=item, categories=["c0"], behavior=1)
        for ts, item in ((50.0, "c0-1"), (40.0, "c0-2"), (45.0, "c0-1"), (60.0, "c0-3"))
    ]
    test = [*test, Session("late", "late", tuple(late))]
    report = evaluate([POP()], train, [], test, n_resamples=10)
    assert report.clamped_gaps == 2  # 40 after 50, 45 after 50
    assert to_json(report)["clamped_gaps"] == {"test": 2}
    assert "2 test events with out-of-order timestamps" in to_markdown(report)


def test_rankings_holding_the_last_input_sku_are_rejected() -> None:
    sessions = synthetic(40, seed=1)
    with pytest.raises(ValueError, match="cheater: point 0 .*last input sku"):
        evaluate([Cheater()], sessions[:30], [], sessions[30:], n_resamples=10)


@pytest.mark.skipif(not JD_DIR.is_dir(), reason=f"JD sample data not found at {JD_DIR}")
def test_spop_beats_pop_on_jd_appliances() -> None:
    from hup.jd import read_jd
    from hup.sessions import split_sessions

    train, valid, test = split_sessions(read_jd(JD_DIR / "JD_Appliances_sample.txt"))
    report = evaluate([SPop(), POP()], train, valid, test, n_resamples=100)
    rows = {(r.method, r.mode): r for r in report.rows}
    spop = rows["S-POP", "every"].metrics["item Recall@20"].mean
    pop = rows["POP", "every"].metrics["item Recall@20"].mean
    assert spop > pop


def test_every_points_are_split_into_revisit_and_new_targets() -> None:
    def sess(sid: str, *items: str) -> Session:
        return make_session(sid, [(item, ["c"]) for item in items])

    train = [sess("s1", "A", "B", "C", "D"), sess("s2", "B", "D")]
    # Points: B (new), A (a revisit: A is in the input), C (new); a second session: D, B (new).
    test = [sess("t1", "A", "B", "A", "C"), sess("t2", "D", "B")]
    report = evaluate([SPop(), POP()], train, [], test, n_resamples=20)
    assert MODES == ("last", "every", "every:revisit", "every:new")
    rows = {(r.method, r.mode): r for r in report.rows}
    for method in ("S-POP", "POP"):
        assert [rows[method, m].n_points for m in MODES] == [2, 4, 1, 3]
        assert [rows[method, m].n_sessions for m in MODES] == [2, 2, 1, 2]
    # S-POP puts the input's skus first (the last input sku, B, removed): A at rank 1.
    assert rows["S-POP", "every:revisit"].metrics["item MRR@20"].mean == 1.0
    every = rows["S-POP", "every"].metrics["item Recall@20"].mean
    parts = [
        rows["S-POP", m].metrics["item Recall@20"].mean for m in ("every:revisit", "every:new")
    ]
    assert every == pytest.approx((parts[0] * 1 + parts[1] * 3) / 4)
    payload = to_json(report)
    assert {r["mode"] for r in payload["results"]} == set(MODES)
    assert "| S-POP | every:revisit | 1 | 1 |" in to_markdown(report)


def test_paired_differences_cover_the_finest_category_level() -> None:
    train = [leaf_only("s1", "p", "q", "r"), leaf_only("s2", "q", "p"), leaf_only("s3", "r", "p")]
    test = [leaf_only("t1", "p", "r", "q"), leaf_only("t2", "r", "p", "q", "r")]
    report = evaluate(
        [POP(), LastCategory(), SPop()], train, [], test, n_resamples=50, taxonomy=LEAF_TAXONOMY
    )
    diffs = {(d.other, d.metric): d for d in report.differences}
    finest = ("category L3 Recall@5", "category L3 MRR@5")
    assert set(diffs) == {
        *(("Last category", m) for m in finest),
        *(("S-POP", m) for m in ("item Recall@20", "item MRR@20", *finest)),
    }
    assert {d.reference for d in report.differences} == {"POP"}
    rows = {(r.method, r.mode): r for r in report.rows}
    for other, metric in diffs:
        gap = rows["POP", "every"].metrics[metric].mean - rows[other, "every"].metrics[metric].mean
        assert diffs[other, metric].estimate.mean == pytest.approx(gap)
    payload = to_json(report)
    assert ("Last category", "category L3 Recall@5") in {
        (d["other"], d["metric"]) for d in payload["paired_differences"]
    }


def test_markdown_shows_the_differences_as_a_table_marking_intervals_off_zero() -> None:
    sessions = synthetic(200, seed=0)
    report = evaluate([SPop(), POP(), LastCategory()], sessions[:160], [], sessions[160:])
    lines = to_markdown(report).splitlines()
    header = "| S-POP minus | item Recall@20 | item MRR@20 | category Recall@5 | category MRR@5 |"
    start = lines.index(header)
    pop = lines[start + 2]
    recall = next(d for d in report.differences if d.other == "POP" and "Recall@20" in d.metric)
    assert recall.estimate.lo > 0  # S-POP's strength on these sessions
    assert pop.startswith("| POP | +") and pop.split("|")[2].strip().endswith(">0")
    assert lines[start + 3].startswith("| Last category | – | – | ")


def test_folds_pool_their_points_with_distinct_session_labels() -> None:
    dataset = Dataset(name="t", sessions=synthetic(120, seed=5), taxonomy=None)
    splits = protocol_splits(dataset, 3)
    parts = [
        score_points([SPop(), POP()], s.train, s.valid, s.test, test_start=s.test_start)
        for s in splits
    ]
    labels = [set(np.unique(part.groups).tolist()) for part in parts]
    assert all(a.isdisjoint(b) for a, b in itertools.combinations(labels, 2))
    assert set().union(*labels) <= set(range(120))
    folded = summarize_folds(parts, seed=1, n_resamples=200)
    pooled = {(r.method, r.mode): r for r in folded.pooled.rows}
    folds = [{(r.method, r.mode): r for r in f.rows} for f in folded.folds]
    for key, row in pooled.items():
        assert row.n_points == sum(f[key].n_points for f in folds)
        assert row.n_sessions == sum(f[key].n_sessions for f in folds)
    metric = "item Recall@20"
    expected = sum(
        f["S-POP", "every"].metrics[metric].mean * f["S-POP", "every"].n_points for f in folds
    )
    assert pooled["S-POP", "every"].metrics[metric].mean == pytest.approx(
        expected / pooled["S-POP", "every"].n_points
    )

    def width(row: ResultRow) -> float:
        return row.metrics[metric].hi - row.metrics[metric].lo

    # Three times the sessions: the pooled interval is narrower than any fold's.
    assert width(pooled["S-POP", "every"]) < min(width(f["S-POP", "every"]) for f in folds)
    # Pooled paired differences pair the same pooled points.
    (d,) = (x for x in folded.pooled.differences if x.metric == metric)
    gap = (
        pooled["S-POP", "every"].metrics[metric].mean - pooled["POP", "every"].metrics[metric].mean
    )
    assert d.estimate.mean == pytest.approx(gap)
    assert (folded.pooled.n_folds, folded.pooled.n_test) == (3, 120)
    # A session is a test session once: pooling a fold twice is refused.
    with pytest.raises(ValueError, match="share test sessions"):
        pool([parts[0], parts[0]])


def test_folded_markdown_and_json_have_every_fold_and_the_pooled_figures() -> None:
    dataset = Dataset(name="t", sessions=synthetic(60, seed=6), taxonomy=None)
    parts = [
        score_points([SPop(), POP()], s.train, s.valid, s.test, test_start=s.test_start)
        for s in protocol_splits(dataset, 2)
    ]
    folded = summarize_folds(parts, n_resamples=20, command="hup evaluate --folds 2")
    markdown = folded_markdown(folded)
    assert markdown.index("## Fold 1 of 2") < markdown.index("## Fold 2 of 2")
    assert markdown.index("## Fold 2 of 2") < markdown.index("## Pooled over 2 folds")
    assert markdown.count("Command: `hup evaluate --folds 2`") == 1
    assert "pooled over 2 folds, 60 test sessions" in markdown
    payload = folded_json(folded)
    assert orjson.loads(orjson.dumps(payload)) == payload
    assert payload["folds"] == 2 and payload["sessions"]["test"] == 60
    assert [f["fold"] for f in payload["per_fold"]] == [1, 2]
    assert [f["sessions"]["test"] for f in payload["per_fold"]] == [30, 30]
