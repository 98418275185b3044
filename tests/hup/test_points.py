from __future__ import annotations

from hup.points import PredictionPoint, prediction_points, revisits
from hup.schema import DwellEvent, Event, MicroEvent
from hup.sessions import Session


def micro(item: str, cat: str = "c1", ts: float = 0.0) -> MicroEvent:
    return MicroEvent(user_id="u", ts=ts, item_id=item, categories=["top", cat], behavior=1)


def dwell(item: str, ts: float = 0.0) -> DwellEvent:
    return DwellEvent(kind="dwell", user_id="u", ts=ts, item_id=item, dwell_s=5.0)


def session(*events: Event, sid: str = "s") -> Session:
    return Session(session_id=sid, user_id="u", events=tuple(events))


def test_points_on_hand_made_session() -> None:
    # idx: 0 A, 1 A, 2 dwell A, 3 A (same run across a dwell), 4 dwell A,
    #      5 B, 6 dwell B, 7 C, 8 C, 9 dwell C, 10 A, 11 dwell A
    s = session(
        micro("A"), micro("A"), dwell("A"), micro("A"), dwell("A"),
        micro("B", "c2"), dwell("B"),
        micro("C", "c3"), micro("C", "c3"), dwell("C"),
        micro("A"), dwell("A"),
    )  # fmt: skip
    points = prediction_points([session(micro("X"), dwell("X")), s])
    assert points == [
        PredictionPoint(1, 4, "B", ("top", "c2"), "A", False),
        PredictionPoint(1, 6, "C", ("top", "c3"), "B", False),
        PredictionPoint(1, 9, "A", ("top", "c1"), "C", True),
    ]


def test_input_excludes_the_dwell_event_closing_the_last_visit() -> None:
    s = session(micro("A"), dwell("A"), micro("B"), dwell("B"))
    (point,) = prediction_points([s])
    # The input is [micro A]: the dwell event of A (which reveals the time until B) is left out.
    assert point.n_input == 1
    assert s.events[: point.n_input] == (s.events[0],)
    assert point.is_last


def test_sessions_with_empty_input_are_skipped() -> None:
    single_run = session(micro("A"), micro("A"), dwell("A"), micro("A"), dwell("A"))
    only_dwell = session(dwell("A"))
    empty = session()
    assert prediction_points([single_run, only_dwell, empty]) == []


def test_session_index_refers_to_input_order_and_last_mode_is_one_per_session() -> None:
    sessions = [
        session(micro("A"), micro("B"), micro("C")),
        session(micro("A")),
        session(micro("D"), dwell("D"), micro("E")),
    ]
    points = prediction_points(sessions)
    assert [(p.session_index, p.target_item, p.n_input) for p in points] == [
        (0, "B", 1),
        (0, "C", 2),
        (2, "E", 1),
    ]
    last = [p for p in points if p.is_last]
    assert [(p.session_index, p.target_item) for p in last] == [(0, "C"), (2, "E")]


def test_revisits_flag_targets_whose_sku_is_in_the_input() -> None:
    # Targets: B (new), C (new), A (seen at the start: a revisit), B (a revisit).
    s = session(micro("A"), dwell("A"), micro("B"), micro("C"), micro("A"), micro("B"))
    other = session(micro("X"), micro("Y"), micro("X"))  # Y new, X revisit
    points = prediction_points([s, other])
    assert [p.target_item for p in points] == ["B", "C", "A", "B", "Y", "X"]
    assert revisits([s, other], points) == [False, False, True, True, False, True]
    # Any subset, in any order, gets the same flags.
    subset = [points[5], points[2], points[0]]
    assert revisits([s, other], subset) == [True, True, False]
