"""Zoo models behind the evaluation's `Recommender` contract: profiles at points -> rankings."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from hup.baselines import SPop
from hup.hup_recommender import profiles_at_points, rankings_from_ids, top_k_of_scores
from hup.points import PredictionPoint
from hup.recommender_contract import Rankings
from hup.sessions import Session
from hup.zoo.zoo_checkpoint import ZooCheckpoint

__all__ = ["ZooRecommender"]

_CHUNK = 1024  # points scored at once: [chunk, V] scores stay small on large vocabularies


class ZooRecommender:
    """Ranks every head's vocabulary by the model's `scores`, like `HupRecommender` by cosine.

    The OOV id and the point's last input sku never appear. A model without category heads
    gets the protocol's "last category" ranking (S-POP's: the input's categories, most recent
    first, then training popularity), fitted on the training split in `fit`.
    """

    def __init__(
        self,
        name: str,
        fit_fn: Callable[[Sequence[Session], Sequence[Session]], ZooCheckpoint] | None = None,
        checkpoint: ZooCheckpoint | None = None,
    ) -> None:
        """Either a trained checkpoint, or a function that trains one in `fit`."""
        self.name = name
        self._fit_fn = fit_fn
        self.checkpoint = checkpoint
        self._last_category: SPop | None = None

    def fit(self, train: Sequence[Session], valid: Sequence[Session]) -> None:
        """Train (unless constructed with a checkpoint); fit the category fallback if needed."""
        if self._fit_fn is not None:
            self.checkpoint = self._fit_fn(train, valid)
        if self.checkpoint is not None and not self.checkpoint.model.category_heads:
            self._last_category = SPop()
            self._last_category.fit(train, valid)

    def rank(
        self,
        sessions: Sequence[Session],
        points: Sequence[PredictionPoint],
        k_items: int,
        k_categories: int,
    ) -> Rankings:
        """Rank skus and categories for each point."""
        if self.checkpoint is None:
            raise RuntimeError(f"{self.name}: rank called before fit")
        model, vocab = self.checkpoint.model, self.checkpoint.vocabularies
        if not model.category_heads and self._last_category is None:
            raise RuntimeError(f"{self.name}: fit() fits the category ranking; call it first")
        if not points:
            return Rankings([], [])
        profiles = profiles_at_points(self.checkpoint, sessions, points)
        last_items = [vocab.items.lookup(p.last_input_item) or None for p in points]
        heads = model.heads
        item_ids: list[list[int]] = []
        per_level: list[list[list[int]]] = [[] for _ in heads[1:]]
        with torch.no_grad():
            for start in range(0, len(points), _CHUNK):
                chunk = {k: v[start : start + _CHUNK] for k, v in profiles.items()}
                excluded = last_items[start : start + _CHUNK]
                item_ids += top_k_of_scores(model.scores(chunk, "item"), k_items, excluded)
                for level, head in enumerate(heads[1:]):
                    scores = model.scores(chunk, head)
                    per_level[level] += top_k_of_scores(
                        scores, k_categories, [None] * len(excluded)
                    )
        rankings = rankings_from_ids(vocab, item_ids, per_level)
        if self._last_category is not None:
            fallback = self._last_category.rank(sessions, points, k_items, k_categories)
            rankings.categories = fallback.categories
        return rankings
