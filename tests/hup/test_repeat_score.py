"""The repeat score: what it reads of a point's input (causally) and how it orders own skus."""

from __future__ import annotations

import math

import pytest

from hup.points import PredictionPoint, prediction_points
from hup.repeat_score import (
    BEHAVIOUR_LEVEL,
    REPEAT_GRID,
    RepeatWeights,
    SessionInput,
    repeat_orders,
    tune_repeat,
)
from hup.schema import Behavior, DwellEvent, Event, MicroEvent
from hup.sessions import Session


def micro(ts: float, sku: str, behavior: int = 5) -> MicroEvent:
    return MicroEvent(user_id="u", ts=ts, item_id=sku, categories=["c"], behavior=behavior)


def dwell(ts: float, sku: str, seconds: float) -> DwellEvent:
    return DwellEvent(kind="dwell", user_id="u", ts=ts, item_id=sku, dwell_s=seconds)


# A: visit (dwell 30), B: two micro events (cart), dwell 50, A again (dwell 7), then C, whose
# visit is still open: 4 s elapsed between its two micro events.
EVENTS: list[Event] = [
    micro(0, "A"),
    dwell(10, "A", 30),
    micro(10, "B", 6),
    micro(20, "B", 9),
    dwell(25, "B", 50),
    dwell(26, "Z", 99),  # no open visit of Z: ignored, as the featurizer drops it
    micro(25, "A"),
    dwell(30, "A", 7),
    micro(30, "C"),
    micro(34, "C", 7),
]


def test_read_tracks_runs_visits_strongest_behaviour_and_dwell_so_far() -> None:
    s = SessionInput.read(EVENTS)
    assert s.runs == ["A", "B", "A", "C"]
    assert s.last_run == {"A": 2, "B": 1, "C": 3}
    assert s.visits == {"A": 2, "B": 1, "C": 1}
    assert s.level == {"A": 0, "B": 3, "C": 2}  # Cart beats comments; specification: 2
    # Closed visits give their reported dwell; the open visit of C only its elapsed 4 s.
    assert s.dwell == {"A": 37.0, "B": 50.0, "C": 4.0}
    assert s.last_item == "C"
    assert s.features("A") == (1, 2, 0, 37.0)
    assert s.features("B") == (2, 1, 3, 50.0)


def test_a_dwell_event_closing_the_open_visit_replaces_its_elapsed_time() -> None:
    s = SessionInput.read([*EVENTS, dwell(40, "C", 12)])
    assert s.dwell["C"] == 12.0
    # A micro event after a dwell event of the same run opens a new visit of that run.
    s = SessionInput.read([*EVENTS, dwell(40, "C", 12), micro(41, "C"), micro(44, "C")])
    assert s.runs == ["A", "B", "A", "C"] and s.dwell["C"] == 12.0 + 3.0


def test_read_points_equals_reading_each_prefix() -> None:
    session = Session("s", "u", tuple(EVENTS))
    points = prediction_points([session])
    assert [p.n_input for p in points] == [1, 4, 7]
    # Out of order and repeated: the reader restarts instead of reading past a point.
    shuffled = [points[2], points[0], points[0], points[1]]
    expected = [SessionInput.read(EVENTS[: p.n_input]) for p in shuffled]
    assert SessionInput.read_points([session], shuffled) == expected


def test_what_is_read_at_a_point_ignores_everything_after_it() -> None:
    later: list[Event] = [micro(50, "D", 10), dwell(60, "D", 500), micro(60, "B", 9)]
    whole = Session("s", "u", tuple(EVENTS + later))
    point = PredictionPoint(0, len(EVENTS), "D", ("c",), "C", False)
    assert SessionInput.read_points([whole], [point]) == [SessionInput.read(EVENTS)]


def test_with_zero_weights_the_order_is_spops() -> None:
    s = SessionInput.read(EVENTS)
    # Most recent first, the last input sku (C) left out, skus outside training dropped.
    assert repeat_orders([s], {"A", "B", "C"}, RepeatWeights()) == [["A", "B"]]
    assert repeat_orders([s], {"B", "C"}, RepeatWeights()) == [["B"]]
    assert repeat_orders([SessionInput()], {"A"}, RepeatWeights()) == [[]]


def test_the_score_is_the_documented_sum() -> None:
    w = RepeatWeights(visits=0.5, behaviour=1.0, dwell=0.1)
    a = w.score(1, 2, 0, 37.0)
    b = w.score(2, 1, 3, 50.0)
    assert a == pytest.approx(-math.log(1) + 0.5 * math.log(2) + 0.1 * math.log(38.0))
    assert b == pytest.approx(-math.log(2) + 1.0 * 3 + 0.1 * math.log(51.0))
    # B (carted, longer dwell) now outranks the more recent A.
    assert b > a
    assert repeat_orders([SessionInput.read(EVENTS)], {"A", "B", "C"}, w) == [["B", "A"]]


def test_equal_scores_go_to_the_more_recent_sku() -> None:
    # X and Y are visited once, same behaviour, same dwell; X is older.
    events = [micro(0, "X"), dwell(1, "X", 5), micro(1, "Y"), dwell(2, "Y", 5), micro(2, "L")]
    s = SessionInput.read(events)
    w = RepeatWeights(visits=1.0, behaviour=1.0, dwell=1.0)
    assert repeat_orders([s], {"X", "Y", "L"}, w) == [["Y", "X"]]


def test_behaviour_levels_rank_arriving_below_reading_below_cart() -> None:
    assert set(BEHAVIOUR_LEVEL) == set(Behavior)
    assert BEHAVIOUR_LEVEL[Behavior.SearchList2Product] < BEHAVIOUR_LEVEL[Behavior.Detail_bottom]
    assert BEHAVIOUR_LEVEL[Behavior.Detail_bottom] < BEHAVIOUR_LEVEL[Behavior.Detail_comments]
    assert BEHAVIOUR_LEVEL[Behavior.Detail_comments] < BEHAVIOUR_LEVEL[Behavior.Cart]


def test_tuning_finds_the_signal_that_predicts_revisits() -> None:
    # The target is always the sku visited twice, never the most recent one: a visit weight
    # ranks it first, S-POP's order second.
    inputs, targets = [], []
    for n in range(20):
        a, b, c = f"a{n}", f"b{n}", f"c{n}"
        inputs.append(
            SessionInput.read([micro(0, a), micro(1, b), micro(2, a), micro(3, c), micro(4, "L")])
        )
        targets.append(b if n % 10 == 0 else a)
    known = {f"{x}{n}" for n in range(20) for x in "abc"} | {"L"}
    # In these inputs a (visited twice) is also older than c, so recency alone puts c first.
    for s in inputs:
        assert repeat_orders([s], known, RepeatWeights())[0][0].startswith("c")
    weights = tune_repeat(inputs, targets, known)
    assert weights.visits > 0
    assert repeat_orders([inputs[1]], known, weights)[0][0] == "a1"
    assert weights.visits in REPEAT_GRID["visits"]


def test_tuning_without_revisit_points_keeps_spops_order() -> None:
    inputs = [SessionInput.read([micro(0, "A"), micro(1, "B")])]
    assert tune_repeat(inputs, ["Q"], {"A", "B", "Q"}) == RepeatWeights()
