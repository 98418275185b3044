"""Prediction points of the offline protocol: where in a test session a next sku is predicted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from hup.schema import MicroEvent
from hup.sessions import Session

__all__ = ["PredictionPoint", "prediction_points", "revisits"]


@dataclass(frozen=True)
class PredictionPoint:
    """One next-sku prediction inside a test session.

    Attributes:
        session_index: Position of the session in the sequence the points were built from.
        n_input: The model input is ``session.events[:n_input]``; it ends with the last micro
            event before the target run, so the dwell event closing that visit is excluded.
        target_item: The sku of the run that starts right after the input.
        target_categories: The target's categories, coarse to fine, as its event carries them;
            the evaluation expands sessions through the model's taxonomy first, so these are
            then the K levels the model ranks (`hup.sessions.with_category_paths`).
        last_input_item: The sku of the last input micro event (never equal to the target).
        is_last: True when the target run is the session's final run (the paper's `last` mode).
    """

    session_index: int
    n_input: int
    target_item: str
    target_categories: tuple[str, ...]
    last_input_item: str
    is_last: bool


def _session_points(session_index: int, session: Session) -> list[PredictionPoint]:
    points: list[PredictionPoint] = []
    previous_index: int | None = None  # index in session.events of the previous micro event
    previous_item: str | None = None
    for index, event in enumerate(session.events):
        # Dwell events never start or end a run: a run is consecutive micro events on one sku.
        if not isinstance(event, MicroEvent):
            continue
        if (
            previous_index is not None
            and previous_item is not None
            and event.item_id != previous_item
        ):
            # The input stops right after the previous micro event. The dwell event that
            # closes that visit arrives when the user leaves the page, i.e. it reveals the time
            # until the target, which the causal rule forbids.
            points.append(
                PredictionPoint(
                    session_index=session_index,
                    n_input=previous_index + 1,
                    target_item=event.item_id,
                    target_categories=tuple(event.categories),
                    last_input_item=previous_item,
                    is_last=False,
                )
            )
        previous_index = index
        previous_item = event.item_id
    if points:
        points[-1] = replace(points[-1], is_last=True)
    return points


def prediction_points(sessions: Sequence[Session]) -> list[PredictionPoint]:
    """Build the `every`-mode prediction points of ``sessions``.

    Every run start after a session's first run is a point: the target is that run's sku, the
    input is everything up to and including the last micro event before it. A session with a
    single run has an empty input for its only run and yields no point. The `last` mode of the
    protocol is the subset with ``is_last=True``: one point per session with at least two runs.

    Args:
        sessions: Test sessions in file order; ``session_index`` refers to positions in it.

    Returns:
        The points, session by session, in arrival order.
    """
    points: list[PredictionPoint] = []
    for session_index, session in enumerate(sessions):
        points.extend(_session_points(session_index, session))
    return points


def revisits(sessions: Sequence[Session], points: Sequence[PredictionPoint]) -> list[bool]:
    """Whether each point's target sku occurs among the skus of its input (a revisit target).

    The protocol reports `every` figures split by this target kind: revisits, which "repeat
    the session's items" can rank, and new items, which it cannot.

    Args:
        sessions: The sessions the points were built from.
        points: Points of those sessions (`prediction_points`).

    Returns:
        One flag per point, in order.
    """
    flags: list[bool] = []
    current, seen, scanned = -1, set[str](), 0
    for point in points:
        if point.session_index != current or point.n_input < scanned:
            current, seen, scanned = point.session_index, set(), 0
        for event in sessions[point.session_index].events[scanned : point.n_input]:
            if isinstance(event, MicroEvent):
                seen.add(event.item_id)
        scanned = point.n_input
        flags.append(point.target_item in seen)
    return flags
