"""The contract every model of the evaluation implements, and what its rankings look like.

Baselines (`hup.baselines`, `hup.peers`), HUP (`hup.hup_recommender`) and the zoo
(`hup.zoo.zoo_recommender`) all rank through `Recommender`, so `hup.evaluate` scores
them alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from hup.points import PredictionPoint
from hup.sessions import Session

__all__ = ["Ranked", "Rankings", "Recommender"]


@dataclass
class Rankings:
    """What a recommender returns for a batch of prediction points.

    Attributes:
        items: Per point, at most ``k_items`` sku ids, best first; training skus only and never
            the point's last input sku. None for a method that ranks categories only ("last
            category"): its item metrics are not applicable, which is not the same as zero.
        categories: Per point, per category level (coarse..fine), at most ``k_categories``
            training category ids, best first.
    """

    items: list[list[str]] | None
    categories: list[list[list[str]]]


@runtime_checkable
class Recommender(Protocol):
    """The contract every model in the evaluation table implements (baselines and HUP alike).

    `fit` sees only train (to fit) and valid (to tune); `rank` is then called once on the test
    sessions with their prediction points and must only read ``events[:n_input]`` of each.
    """

    name: str

    def fit(self, train: Sequence[Session], valid: Sequence[Session]) -> None:
        """Fit on ``train``; ``valid`` is for tuning only."""
        ...

    def rank(
        self,
        sessions: Sequence[Session],
        points: Sequence[PredictionPoint],
        k_items: int,
        k_categories: int,
    ) -> Rankings:
        """Rank skus and categories for each point of ``sessions``."""
        ...


Ranked = list[tuple[list[int], list[float]]]
"""Per row: the ranked ids, best first, and their scores (a model's rankings before
`Rankings` turns ids into tokens)."""
