"""V-SKNN and STAN as recommenders: ranking layout, protocol, causality and tuning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hup.baselines import SPop, TrainingPopularity
from hup.data import load_dataset
from hup.evaluate import _check, evaluate
from hup.peers import (
    DEFAULT_TUNE_SECONDS,
    STAN_GRID,
    VSKNN_GRID,
    Stan,
    VSknn,
    _chunks,
    _new_item_ranks,
    coordinate_search,
    default_tune_seconds,
    peer_baselines,
)
from hup.points import PredictionPoint, prediction_points
from hup.repeat_score import RepeatWeights, SessionInput
from hup.schema import MicroEvent
from hup.sessions import Session, split_sessions
from hup.sknn import StanParams, VSknnParams

JD_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "jd"
PEERS = [
    pytest.param(lambda **kw: VSknn(VSknnParams(k=3, sample=10, idf_weight=1.0), **kw), id="vsknn"),
    pytest.param(lambda **kw: Stan(StanParams(k=3, lambda2=5.0), **kw), id="stan"),
]


def session(*skus: str | tuple[str, int], sid: str = "s") -> Session:
    """One micro event per sku (``(sku, behaviour)`` sets the behaviour), a second apart."""
    events = []
    for t, sku in enumerate(skus):
        item, behavior = sku if isinstance(sku, tuple) else (sku, 5)
        events.append(
            MicroEvent(
                user_id=sid, ts=float(t), item_id=item, categories=[f"c{item}"], behavior=behavior
            )
        )
    return Session(sid, sid, tuple(events))


# POP (runs): B 3, A 2, C 2, D 2, E 1, F 1, G 1 -> ids B, A, C, D, E, F, G (ties: first seen).
TRAIN = [
    session("A", "B", "C", sid="n0"),
    session("B", "D", sid="n1"),
    session("C", "E", "A", "F", sid="n2"),
    session("D", "B", "G", sid="n3"),
]


@pytest.fixture(scope="module")
def synthetic() -> tuple[list[Session], list[Session], list[Session]]:
    dataset = load_dataset("synthetic:users=80,seed=5,min_events=8,max_events=40")
    train, valid, test = split_sessions(dataset.sessions)
    return train, valid, test


def test_rankings_are_own_skus_by_repeat_score_then_knn_then_pop() -> None:
    model = VSknn(VSknnParams(k=1, sample=10, idf_weight=0.0), tune=False)
    model.fit(TRAIN, [])
    # Input runs: C (carted), Q (not a training sku), E, A; A is the last input sku.
    test = [session(("C", 9), "Q", "E", "A", "D", sid="t")]
    point = prediction_points(test)[-1]
    assert (point.last_input_item, point.target_item) == ("A", "D")
    [items] = model.rank(test, [point], k_items=6, k_categories=2).items
    # Own skus most recent first (S-POP's order): E, C. Then kNN: linear weights C 1/4,
    # E 3/4, A 1; the nearest session is n2 (C, E, A: 2.0), whose only other sku is F. Then
    # POP among the rest: B, D, G.
    assert items == ["E", "C", "F", "B", "D", "G"]
    model.repeat = RepeatWeights(behaviour=1.0)  # C's cart outweighs E's recency
    assert model.rank(test, [point], 6, 2).items == [["C", "E", "F", "B", "D", "G"]]


@pytest.mark.parametrize("make", PEERS)
def test_rankings_follow_the_protocol(make, synthetic) -> None:
    train, valid, test = synthetic
    model = make(tune=False)
    model.fit(train, valid)
    points = prediction_points(test)
    rankings = model.rank(test, points, 20, 5)
    pop = TrainingPopularity.from_sessions(train)
    _check(model.name, rankings, points, pop, 20, 5)  # raises on any breach
    assert all(len(items) == 20 == len(set(items)) for items in rankings.items or [])


@pytest.mark.parametrize("make", PEERS)
def test_a_ranking_reads_nothing_after_its_point(make, synthetic) -> None:
    train, valid, test = synthetic
    model = make(tune=False)
    model.fit(train, valid)
    points = prediction_points(test)
    cut = [
        Session(f"cut{n}", "u", test[p.session_index].events[: p.n_input])
        for n, p in enumerate(points)
    ]
    cut_points = [
        PredictionPoint(
            n, p.n_input, p.target_item, p.target_categories, p.last_input_item, p.is_last
        )
        for n, p in enumerate(points)
    ]
    assert model.rank(test, points, 20, 5) == model.rank(cut, cut_points, 20, 5)


@pytest.mark.parametrize("make", PEERS)
def test_the_tuning_objective_ranks_targets_where_the_rankings_put_them(make, synthetic) -> None:
    train, valid, test = synthetic
    model = make(tune=False)
    model.fit(train, valid)
    points = prediction_points(test)
    inputs = SessionInput.read_points(test, points)
    index = model.index
    new = [
        n for n, (s, p) in enumerate(zip(inputs, points, strict=True))
        if p.target_item in index.ids and p.target_item not in s.last_run
    ]  # fmt: skip
    assert len(new) > 20
    chosen = [inputs[n] for n in new]
    targets = np.asarray([index.ids[points[n].target_item] for n in new])
    own = np.asarray([len(s.own_items(index.ids)) for s in chosen])
    ranks = []
    for c, (queries, candidates) in enumerate(_chunks(chosen, index)):
        scores = model._score(queries, candidates, index, model.params)
        part = slice(c * 512, c * 512 + len(queries))
        ranks += (own[part] + _new_item_ranks(scores, queries, targets[part])).tolist()
    rankings = model.rank(test, [points[n] for n in new], len(index.items), 5).items
    assert rankings is not None
    actual = [
        items.index(points[n].target_item) + 1 for n, items in zip(new, rankings, strict=True)
    ]
    assert ranks == actual


def test_coordinate_search_climbs_one_setting_at_a_time() -> None:
    grid = {"x": (0, 1, 2, 3), "y": (0, 1, 2)}
    calls = []

    def objective(s: dict[str, int]) -> float:
        calls.append((s["x"], s["y"]))
        return -((s["x"] - 2) ** 2) - (s["y"] - 1) ** 2

    best, value, tried = coordinate_search(grid, {"x": 0, "y": 0}, objective, budget_s=60)
    assert best == {"x": 2, "y": 1} and value == 0
    assert tried == len(set(calls)) == len(calls)  # each setting evaluated once
    best, _, tried = coordinate_search(grid, {"x": 0, "y": 0}, objective, budget_s=0)
    assert best == {"x": 0, "y": 0} and tried == 1  # out of time: the start only


def test_fit_tunes_on_validation_within_the_grids(synthetic) -> None:
    train, valid, _ = synthetic
    for model, grid in ((VSknn(), VSKNN_GRID), (Stan(), STAN_GRID)):
        model.fit(train, valid)
        for name, values in grid.items():
            assert getattr(model.params, name) in values
    # No validation points or no tuning: the given settings stay.
    start = VSknnParams(k=7, sample=9, idf_weight=0.5)
    model = VSknn(start)
    model.fit(train, [])
    assert model.params == start and model.repeat == RepeatWeights()
    model = VSknn(start, tune=False)
    model.fit(train, valid)
    assert model.params == start
    # A refit searches from the given settings again, so it repeats the first fit.
    model = Stan()
    model.fit(train, valid)
    first = (model.params, model.repeat)
    model.fit(train, valid)
    assert (model.params, model.repeat) == first
    model.fit(train, [])
    assert (model.params, model.repeat) == (StanParams(), RepeatWeights())


def test_the_tuning_budget_comes_from_the_environment(monkeypatch, caplog) -> None:
    monkeypatch.delenv("HUP_PEER_TUNE_S", raising=False)
    assert default_tune_seconds() == DEFAULT_TUNE_SECONDS
    monkeypatch.setenv("HUP_PEER_TUNE_S", "7.5")
    assert default_tune_seconds() == 7.5 and Stan().tune_seconds == 7.5
    assert VSknn(tune_seconds=3).tune_seconds == 3
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("HUP_PEER_TUNE_S", bad)
        caplog.clear()
        assert default_tune_seconds() == DEFAULT_TUNE_SECONDS
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "HUP_PEER_TUNE_S" in caplog.text


def test_rank_before_fit_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before fit"):
        Stan().rank([], [], 20, 5)


def test_the_peers_are_named_for_the_table() -> None:
    assert [p.name for p in peer_baselines()] == ["V-SKNN", "STAN"]


@pytest.mark.slow
@pytest.mark.skipif(not JD_DIR.is_dir(), reason=f"JD sample data not found at {JD_DIR}")
@pytest.mark.parametrize("name", ["JD_Appliances_sample.txt", "JD_Computers_sample.txt"])
def test_the_peers_beat_spop_on_the_jd_samples(name: str) -> None:
    """The quality notes' finding: both peers beat S-POP, the paired interval above zero."""
    train, valid, test = split_sessions(load_dataset(f"jd:{JD_DIR / name}").sessions)
    for peer in (VSknn(), Stan()):
        report = evaluate([peer, SPop()], train, valid, test, n_resamples=200)
        # peer - S-POP on item Recall@20 and MRR@20 (the categories are ranked alike).
        items = [d for d in report.differences if d.metric.startswith("item ")]
        assert [d.metric for d in items] == ["item Recall@20", "item MRR@20"]
        for d in items:
            assert d.estimate.lo > 0, (name, d)
