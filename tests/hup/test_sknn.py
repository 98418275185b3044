"""V-SKNN and STAN scores on tiny hand-built sessions, computed by hand from the formulas."""

from __future__ import annotations

import math

import pytest

from hup.repeat_score import SessionInput
from hup.schema import MicroEvent
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


def session(*skus: str, sid: str = "s") -> Session:
    events = tuple(
        MicroEvent(user_id=sid, ts=float(t), item_id=sku, categories=["c"], behavior=5)
        for t, sku in enumerate(skus)
    )
    return Session(sid, sid, events)


# Runs of the training sessions, oldest first (n0 .. n3). n0's "A A" is one run.
TRAIN = [
    session("A", "A", "B", "C", sid="n0"),
    session("B", "D", sid="n1"),
    session("C", "E", "A", "F", sid="n2"),
    session("D", "B", "E", "B", sid="n3"),
]
ITEMS = ("A", "B", "C", "D", "E", "F")
E1 = math.exp(-1)


def scores(fn, params, *queries: list[str]) -> list[dict[str, float]]:
    index = SessionIndex(TRAIN, ITEMS)
    inputs = [SessionInput.read(session(*q).events) for q in queries]
    batch = QueryBatch.build(inputs, index)
    matrix = fn(batch, Candidates.build(batch, index), index, params).toarray()
    return [{sku: v for sku, v in zip(ITEMS, row, strict=True) if v} for row in matrix]


def approx(expected: dict[str, float]) -> dict[str, object]:
    return {sku: pytest.approx(v) for sku, v in expected.items()}


def test_index_holds_runs_distinct_counts_and_idf() -> None:
    index = SessionIndex(TRAIN, ITEMS)
    assert [r.tolist() for r in index.runs] == [[0, 1, 2], [1, 3], [2, 4, 0, 5], [3, 1, 4, 1]]
    assert index.n_distinct.tolist() == [3, 2, 4, 3]
    # df: A 2, B 3, C 2, D 2, E 2, F 1 of 4 sessions.
    assert index.idf.tolist() == pytest.approx([math.log(4 / d) for d in (2, 3, 2, 2, 2, 1)])


def test_vsknn_sums_linearly_decayed_dot_products_of_the_k_nearest() -> None:
    # Query runs A, B (L = 2): w(A) = 1/2, w(B) = 2/2.
    # dot: n0 {A, B} 1.5, n1 {B} 1, n2 {A} 0.5, n3 {B} 1 (ties: the more recent n3 first).
    params = VSknnParams(k=2, sample=10, idf_weight=0.0)
    # Neighbours n0 (1.5) and n3 (1.0, more recent than n1).
    expected = {"A": 1.5, "B": 1.5 + 1.0, "C": 1.5, "D": 1.0, "E": 1.0}
    assert scores(vsknn_scores, params, ["A", "B"]) == [approx(expected)]
    params = VSknnParams(k=4, sample=10, idf_weight=0.0)
    expected = {"A": 2.0, "B": 3.5, "C": 2.0, "D": 2.0, "E": 1.5, "F": 0.5}
    assert scores(vsknn_scores, params, ["A", "B"]) == [approx(expected)]


def test_vsknn_samples_the_most_recent_sessions_sharing_a_sku() -> None:
    # sample=2: only n3 (1.0) and n2 (0.5) are candidates, whatever k.
    params = VSknnParams(k=4, sample=2, idf_weight=0.0)
    expected = {"D": 1.0, "B": 1.0, "E": 1.5, "C": 0.5, "A": 0.5, "F": 0.5}
    assert scores(vsknn_scores, params, ["A", "B"]) == [approx(expected)]


def test_vsknn_cosine_and_idf_weighting() -> None:
    params = VSknnParams(k=1, sample=10, idf_weight=2.0, cosine=True)
    # Cosine: dot / sqrt(|n|): n0 1.5/sqrt(3) = 0.866 beats n1 1/sqrt(2), n3 1/sqrt(3).
    sim = 1.5 / math.sqrt(3)
    idf = {"A": math.log(2), "B": math.log(4 / 3), "C": math.log(2)}
    expected = {sku: sim * (1 + 2.0 * idf[sku]) for sku in "ABC"}
    assert scores(vsknn_scores, params, ["A", "B"]) == [approx(expected)]


def test_unknown_skus_count_in_the_query_length_only() -> None:
    # Runs A, Q, B: L = 3, w(A) = 1/3, w(B) = 3/3; Q matches nothing.
    params = VSknnParams(k=1, sample=10, idf_weight=0.0)
    # n0: 1/3 + 1 = 4/3 is the nearest.
    expected = {"A": 4 / 3, "B": 4 / 3, "C": 4 / 3}
    assert scores(vsknn_scores, params, ["A", "Q", "B"]) == [approx(expected)]


def test_stan_decays_by_position_recency_and_distance_to_the_latest_shared_sku() -> None:
    # Query runs A, B (L = 2, |s| = 2), lambda1 = 1: w1(A) = e^-1, w1(B) = 1.
    sims = {
        "n0": (E1 + 1) / math.sqrt(2 * 3),
        "n1": 1 / math.sqrt(2 * 2),
        "n2": E1 / math.sqrt(2 * 4),
        "n3": 1 / math.sqrt(2 * 3),
    }
    # lambda3 = 1; reference: B in n0, n1, n3 (B is the query's latest sku), A in n2.
    # n0 = A B C: A 1, B 0, C 1.   n1 = B D: B 0, D 1.   n2 = C E A F: C 2, E 1, A 0, F 1.
    # n3 = D B E B: D 1, B 0, E 1 (closest of B's two runs).
    contributions = {
        "n0": {"A": E1, "B": 1, "C": E1},
        "n1": {"B": 1, "D": E1},
        "n2": {"C": math.exp(-2), "E": E1, "A": 1, "F": E1},
        "n3": {"D": E1, "B": 1, "E": E1},
    }

    def expected(weights: dict[str, float], neighbours: list[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        for n in neighbours:
            for sku, decay in contributions[n].items():
                out[sku] = out.get(sku, 0.0) + sims[n] * weights[n] * decay
        return out

    ones = dict.fromkeys(sims, 1.0)
    params = StanParams(k=4, lambda1=1.0, lambda2=math.inf, lambda3=1.0)
    assert scores(stan_scores, params, ["A", "B"]) == [approx(expected(ones, list(sims)))]
    # k = 2: n0 (0.558) and n1 (0.5) beat n3 (0.408) and n2 (0.130).
    params = StanParams(k=2, lambda1=1.0, lambda2=math.inf, lambda3=1.0)
    assert scores(stan_scores, params, ["A", "B"]) == [approx(expected(ones, ["n0", "n1"]))]
    # lambda2 = 1: ages n0 3, n1 2, n2 1, n3 0 sessions -> n3 and n1 are now the nearest.
    recency = {f"n{i}": math.exp(-(3 - i)) for i in range(4)}
    params = StanParams(k=2, lambda1=1.0, lambda2=1.0, lambda3=1.0)
    assert scores(stan_scores, params, ["A", "B"]) == [approx(expected(recency, ["n3", "n1"]))]


def test_queries_of_one_batch_are_scored_independently() -> None:
    params = StanParams(k=2, lambda1=2.0, lambda2=3.0, lambda3=2.0)
    together = scores(stan_scores, params, ["A", "B"], ["E"], ["F", "C", "Q"], ["Q"])
    alone = [scores(stan_scores, params, q)[0] for q in (["A", "B"], ["E"], ["F", "C", "Q"])]
    assert together[:3] == [approx(a) for a in alone]
    assert together[3] == {}  # nothing shared, nothing scored
    params_v = VSknnParams(k=2, sample=3, idf_weight=1.0)
    together = scores(vsknn_scores, params_v, ["A", "B"], ["E"], ["F", "C"])
    alone = [scores(vsknn_scores, params_v, q)[0] for q in (["A", "B"], ["E"], ["F", "C"])]
    assert together == [approx(a) for a in alone]
