from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from hup.baselines import POP, ItemKNN, LastCategory, Rankings, SPop, TrainingPopularity
from hup.data import Session, with_category_paths
from hup.evaluate import evaluate, to_json, to_markdown
from hup.points import PredictionPoint
from hup.schema import DwellEvent, Event, MicroEvent
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
        for mode in ("last", "every"):
            assert f"| {name} | {mode} |" in markdown
    assert "category Recall@5" in markdown and "seed 7" in markdown
    payload = to_json(report)
    assert orjson.loads(orjson.dumps(payload)) == payload
    assert payload["seed"] == 7 and len(payload["results"]) == 6
    diffs = {(d["other"], d["metric"]): d for d in payload["paired_differences"]}
    assert set(diffs) == {
        (other, metric)
        for other in ("POP", "Item-KNN")
        for metric in ("item Recall@20", "item MRR@20")
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
        # Only item differences between methods that both rank items.
        assert all("Last category" not in (d.reference, d.other) for d in report.differences)
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
    from hup.data import split_sessions
    from hup.jd import read_jd

    train, valid, test = split_sessions(read_jd(JD_DIR / "JD_Appliances_sample.txt"))
    report = evaluate([SPop(), POP()], train, valid, test, n_resamples=100)
    rows = {(r.method, r.mode): r for r in report.rows}
    spop = rows["S-POP", "every"].metrics["item Recall@20"].mean
    pop = rows["POP", "every"].metrics["item Recall@20"].mean
    assert spop > pop
