"""HUP behind the evaluation's `Recommender` contract: profiles at points -> rankings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from hup.baselines import Rankings
from hup.checkpoint import Checkpoint
from hup.data import Session
from hup.features import FeatureSpec, Featurizer
from hup.model import collate_features
from hup.points import PredictionPoint
from hup.sequences import featurize_session
from hup.vocab import Vocabularies

__all__ = [
    "HupRecommender",
    "ProfileSource",
    "model_device",
    "profiles_at_points",
    "rankings_from_ids",
    "top_k_excluding",
    "top_k_of_scores",
]


class ProfileSource(Protocol):
    """What `profiles_at_points` reads: a causal model and its featurizer's spec and vocabularies.

    A HUP `Checkpoint` is one; so is a zoo checkpoint (`hup.zoo.checkpoint`).
    """

    @property
    def model(self) -> nn.Module:
        """A causal model: ``forward(batch, positions) -> {head: [N, D]}``."""
        ...

    @property
    def spec(self) -> FeatureSpec:
        """The featurizer's bucket specification."""
        ...

    @property
    def vocabularies(self) -> Vocabularies:
        """The training vocabularies."""
        ...


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` lives (its first parameter's or buffer's device; CPU when it has none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def profiles_at_points(
    checkpoint: ProfileSource,
    sessions: Sequence[Session],
    points: Sequence[PredictionPoint],
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Profiles after each point's last input event, by the full-sequence forward pass.

    The forward pass is causal, so running it over the whole session and reading the
    profile at the point's last input event sees only that input. Batches are built on the
    CPU and moved to the model's device (``--device cuda``); the profiles stay there.
    """
    featurizer = Featurizer(checkpoint.spec, checkpoint.vocabularies)
    needed = sorted({p.session_index for p in points})
    featurized = {i: featurize_session(featurizer, sessions[i]) for i in needed}
    out: dict[str, list[Tensor]] = {}
    order: list[int] = []
    by_session: dict[int, list[int]] = {}
    for n, p in enumerate(points):
        by_session.setdefault(p.session_index, []).append(n)
    model = checkpoint.model.eval()
    device = model_device(model)
    for start in range(0, len(needed), batch_size):
        chunk = needed[start : start + batch_size]
        collated = collate_features([featurized[i].features for i in chunk])
        batch = {key: value.to(device) for key, value in collated.items()}
        positions = []
        for row, i in enumerate(chunk):
            for n in by_session[i]:
                positions.append((row, featurized[i].feature_at_event[points[n].n_input - 1]))
                order.append(n)
        with torch.no_grad():
            profiles = model(batch, torch.tensor(positions, dtype=torch.long, device=device))
        for name, value in profiles.items():
            out.setdefault(name, []).append(value)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return {name: torch.cat(parts)[inverse.to(parts[0].device)] for name, parts in out.items()}


def top_k_excluding(
    profiles: Tensor, table: Tensor, k: int, excluded: Sequence[int | None]
) -> list[list[int]]:
    """Ids of the k rows of `table` most cosine-similar to each profile (never OOV id 0).

    Args:
        profiles: [N, D]; table: embedding table [V, D]; excluded: one id per profile to
            leave out (the last input item), or None.
    """
    scores = F.normalize(profiles, dim=-1) @ F.normalize(table, dim=-1).T  # [N, V]
    return top_k_of_scores(scores, k, excluded)


def top_k_of_scores(scores: Tensor, k: int, excluded: Sequence[int | None]) -> list[list[int]]:
    """Ids of the k highest `scores` [N, V] per row, never OOV id 0 nor the row's excluded id.

    `scores` is overwritten at the left-out ids.
    """
    scores[:, 0] = float("-inf")
    rows = [n for n, e in enumerate(excluded) if e]
    if rows:
        scores[rows, [excluded[n] for n in rows]] = float("-inf")
    values, indices = scores.topk(min(k, scores.shape[1] - 1), dim=-1)
    # With k close to the vocabulary size the top k reach the excluded ids; drop them.
    return [
        [i for i, v in zip(row_ids, row_values, strict=True) if v != float("-inf")]
        for row_ids, row_values in zip(indices.tolist(), values.tolist(), strict=True)
    ]


class HupRecommender:
    """Ranks items by cosine to the item-level profile, categories per level likewise."""

    def __init__(
        self,
        name: str,
        fit_fn: Callable[[Sequence[Session], Sequence[Session]], Checkpoint] | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        """Either a trained checkpoint, or a function that trains one in `fit`."""
        self.name = name
        self._fit_fn = fit_fn
        self.checkpoint = checkpoint

    def fit(self, train: Sequence[Session], valid: Sequence[Session]) -> None:
        """Train (unless constructed with a checkpoint)."""
        if self._fit_fn is not None:
            self.checkpoint = self._fit_fn(train, valid)

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
        if not points:
            return Rankings([], [])
        model, vocab = self.checkpoint.model, self.checkpoint.vocabularies
        profiles = profiles_at_points(self.checkpoint, sessions, points)
        last_items = [vocab.items.lookup(p.last_input_item) or None for p in points]
        with torch.no_grad():
            item_ids = top_k_excluding(
                profiles["item"], model.item_embedding.weight, k_items, last_items
            )
            per_level = [
                top_k_excluding(
                    profiles[f"category{k}"],
                    model.category_embedding(k).weight,
                    k_categories,
                    [None] * len(points),
                )
                for k in range(model.config.n_levels)
            ]
        return rankings_from_ids(vocab, item_ids, per_level)


def rankings_from_ids(
    vocab: Vocabularies, item_ids: list[list[int]], per_level: list[list[list[int]]]
) -> Rankings:
    """Token rankings from id rankings: items [N][k], categories per level [K][N][k]."""
    items = [[vocab.items.tokens[i] for i in row] for row in item_ids]
    categories = [
        [[vocab.categories[k].tokens[i] for i in per_level[k][n]] for k in range(len(per_level))]
        for n in range(len(item_ids))
    ]
    return Rankings(items, categories)
