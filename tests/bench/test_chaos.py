"""bench/chaos.py's verdict: lost, applied twice, repeats and rankings against the offline pass."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import chaos  # noqa: E402
from harness import Reference, ranking_agreement  # noqa: E402  (chaos puts the integration harness on the path)


def reference_profile(items: list[tuple[str, float]]) -> dict:
    vectors = {head: torch.zeros(2) for head in ("item", "micro", "category0")}
    return {**vectors, "top_items": items, "top_categories": [("c1", 0.9)]}


def published(user: str, seq: int, items: list[tuple[str, float]]) -> tuple[bytes, bytes]:
    message = {
        "user_id": user,
        "seq": seq,
        "profile": {"item": [0.0, 0.0], "micro": [0.0, 0.0], "category": [[0.0, 0.0]]},
        "top_items": [{"id": i, "score": round(s, 6)} for i, s in items],
        "top_categories": [{"id": "c1", "score": 0.9}],
    }
    return user.encode(), orjson.dumps(message)


TIED = [("a", 0.5), ("b", 0.42333537), ("c", 0.42333536)]


def test_a_swap_of_tied_ids_is_counted_apart_from_a_different_ranking() -> None:
    reference = Reference({"u": [reference_profile(TIED)] * 3, "v": [reference_profile(TIED)]}, {})
    swapped = [TIED[0], TIED[2], TIED[1]]
    wrong = [TIED[1], TIED[0], TIED[2]]  # 0.5 and 0.42 do not tie
    messages = [published("u", 1, TIED), published("u", 2, swapped), published("u", 3, wrong)]
    figures = chaos.check(messages, reference)
    assert figures["rankings_tie_order"] == 1
    assert figures["rankings_differing"] == 1
    assert [(m["user_id"], m["seq"]) for m in figures["mismatches"]] == [("u", 3)]
    assert figures["lost"] == 1  # v's only profile never came


def test_a_seq_beyond_the_users_events_is_applied_twice_and_a_changed_repeat_differs() -> None:
    reference = Reference({"u": [reference_profile(TIED)]}, {})
    other = [TIED[0], TIED[1], ("d", 0.1)]
    messages = [published("u", 1, TIED), published("u", 2, TIED), published("u", 1, other)]
    figures = chaos.check(messages, reference)
    assert figures["applied_twice"] == 1
    assert figures["repeats"] == 1 and figures["repeats_differing"] == 1
    assert figures["rankings_differing"] == 1  # "d" is not in the reference's top items


BEYOND = [("d", 0.42333535), ("e", 0.1)]


@pytest.mark.parametrize(
    ("published_ids", "agreement"),
    [
        (["a", "b", "c"], "same"),
        (["a", "c", "b"], "tie_order"),  # b and c tie within the tolerance
        (["a", "b", "d"], "tie_order"),  # so does d, the first id past the cut
        (["b", "a", "c"], "differs"),  # 0.5 and 0.42 do not tie
        (["a", "b", "e"], "differs"),  # e is past the cut and scores far lower
        (["a", "b", "f"], "differs"),  # f is nowhere in the reference
        (["a", "b", "b"], "differs"),
        (["a", "b"], "differs"),
    ],
)
def test_ranking_agreement(published_ids: list[str], agreement: str) -> None:
    scores = dict(TIED + BEYOND)
    ranking = [(i, scores.get(i, 0.0)) for i in published_ids]
    assert ranking_agreement(ranking, TIED, BEYOND) == agreement
