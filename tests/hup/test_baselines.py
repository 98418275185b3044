from __future__ import annotations

import math

import pytest

from hup.baselines import POP, ItemKNN, LastCategory, SPop, TrainingPopularity, protocol_baselines
from hup.points import prediction_points
from hup.recommender_contract import Rankings, Recommender
from hup.schema import DwellEvent, Event, MicroEvent
from hup.sessions import Session

CATEGORY = {"A": "x", "B": "x", "C": "y", "D": "y", "E": "z", "V": "v"}


def visit(item: str, n: int = 1) -> list[Event]:
    """n micro events on one sku, then the dwell event closing the visit."""
    root = "other" if item == "E" else "root"
    micro: list[Event] = [
        MicroEvent(user_id="u", ts=0.0, item_id=item, categories=[root, CATEGORY[item]], behavior=1)
        for _ in range(n)
    ]
    return [*micro, DwellEvent(kind="dwell", user_id="u", ts=0.0, item_id=item, dwell_s=3.0)]


def session(*visits: str | tuple[str, int], sid: str = "s") -> Session:
    events: list[Event] = []
    for v in visits:
        events += visit(v) if isinstance(v, str) else visit(*v)
    return Session(session_id=sid, user_id="u", events=tuple(events))


# Runs per sku: A 2, B 4, C 2, D 1 -> POP order B, A, C, D (A before C: seen first).
# Sessions containing: A 2, B 3, C 2, D 1; co-occurring: AB 2, AC 1, BC 1, CD 1.
TRAIN = [
    session(("A", 2), "B", "C", sid="s1"),
    session("B", "A", "B", sid="s2"),
    session("C", "D", sid="s3"),
    session("B", sid="s4"),
]
VALID = [session("V", "V", "A", sid="v1")]
# Points: C after [A]; E after [A, C, C]; D after [A, C, C, E] (E and its categories unseen).
TEST = [session("A", ("C", 2), "E", "D", sid="t1")]


def ranked(model: Recommender, k_items: int = 3, k_categories: int = 2) -> Rankings:
    model.fit(TRAIN, VALID)
    return model.rank(TEST, prediction_points(TEST), k_items, k_categories)


def test_training_popularity_counts_runs_and_keeps_file_order_on_ties() -> None:
    pop = TrainingPopularity.from_sessions(TRAIN)
    assert pop.item_order == ("B", "A", "C", "D")
    # root: 9 runs; x: A 2 + B 4 = 6, y: C 2 + D 1 = 3.
    assert pop.category_orders == (("root",), ("x", "y"))
    assert pop.n_levels == 2


def test_pop_ranks_by_popularity_without_the_last_input_sku() -> None:
    r = ranked(POP())
    assert r.items == [["B", "C", "D"], ["B", "A", "D"], ["B", "A", "C"]]
    assert r.categories == [[["root"], ["x", "y"]]] * 3


def test_spop_ranks_input_skus_most_recent_first_then_pop() -> None:
    r = ranked(SPop())
    # Point 2: input A, C -> C is the last input sku (removed) -> A, then POP B, D.
    # Point 3: input A, C, E -> E is not a training sku -> C, A, then B.
    assert r.items == [["B", "C", "D"], ["A", "B", "D"], ["C", "A", "B"]]
    # Last category: point 1 saw x only; later points saw y most recently; z is unseen.
    assert r.categories == [
        [["root"], ["x", "y"]],
        [["root"], ["y", "x"]],
        [["root"], ["y", "x"]],
    ]


def test_item_knn_sums_the_cosine_to_every_input_sku() -> None:
    model = ItemKNN()
    model.fit(TRAIN, VALID)
    assert model.similar("A") == pytest.approx(
        {"B": 2 / math.sqrt(2 * 3), "C": 1 / math.sqrt(2 * 2)}
    )
    assert model.similar("C") == pytest.approx(
        {"D": 1 / math.sqrt(2 * 1), "A": 1 / math.sqrt(2 * 2), "B": 1 / math.sqrt(2 * 3)}
    )
    assert "D" not in model.similar("A")  # never in a session together
    assert model.similar("V") == {}  # not a training sku
    # Distinct input skus, each once; unknown ones (E) add nothing.
    scores = model.scores(["A", "C", "C", "E"])
    assert scores == pytest.approx(
        {"B": 2 / math.sqrt(6) + 1 / math.sqrt(6), "D": 1 / math.sqrt(2), "C": 0.5, "A": 0.5}
    )
    r = ranked(model)
    # Point 1, input A: B .816, C .5, then POP D (A is the last input sku).
    # Point 2, input A, C: B 1.225 (.816 + .408), D .707, A .5 (C, the last input sku, is
    # removed). The last input sku alone would rank D, A, B: the sum changes the order.
    # Point 3, input A, C, E: the same scores (E unseen); A and C tie at .5 -> POP order.
    assert r.items == [["B", "C", "D"], ["B", "D", "A"], ["B", "D", "A"]]
    assert r.categories == ranked(SPop()).categories


def test_last_category_ranks_categories_only() -> None:
    r = ranked(LastCategory())
    assert r.items is None  # not applicable, which is not an empty (all-miss) ranking
    assert r.categories == ranked(SPop()).categories


def test_nothing_is_fitted_on_validation_sessions() -> None:
    for model in (POP(), SPop(), ItemKNN()):
        r = ranked(model, k_items=10, k_categories=10)
        assert all("V" not in items and "E" not in items for items in r.items)
        assert all("v" not in levels[1] and "z" not in levels[1] for levels in r.categories)
        # Every list is cut at k and never holds the point's last input sku.
        assert [len(items) for items in r.items] == [3, 3, 4]


def test_contract() -> None:
    models = (POP(), SPop(), ItemKNN(), LastCategory())
    for model in models:
        assert isinstance(model, Recommender)
    assert [m.name for m in models] == ["POP", "S-POP", "Item-KNN", "Last category"]
    with pytest.raises(RuntimeError, match="before fit"):
        POP().rank(TEST, prediction_points(TEST), 3, 2)


def test_the_protocol_baselines_are_the_tables_four() -> None:
    assert [b.name for b in protocol_baselines()] == ["POP", "S-POP", "Item-KNN", "Last category"]
