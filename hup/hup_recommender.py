"""HUP behind the evaluation's `Recommender` contract: profiles at points -> rankings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from hup.candidates import ItemIndex, RankingOptions, build_item_index, rank_item_candidates
from hup.features import FeatureSpec, Featurizer
from hup.hup_checkpoint import Checkpoint
from hup.model import HupModel, collate_features, collate_repeat
from hup.model_contract import ProfileModel
from hup.points import PredictionPoint
from hup.recommender_contract import Ranked, Rankings
from hup.repeat import repeat_inputs
from hup.sequences import featurize_session
from hup.sessions import Session
from hup.vocab import Vocabularies

__all__ = [
    "RANK_CHUNK",
    "HupRecommender",
    "rank_profiles",
    "ProfileSource",
    "model_device",
    "profiles_at_points",
    "rankings_from_ids",
    "cosine_scores",
    "top_k_of_scores",
]


class ProfileSource(Protocol):
    """What `profiles_at_points` reads: a causal model and its featurizer's spec and vocabularies.

    A HUP `Checkpoint` is one; so is a zoo checkpoint (`hup.zoo.zoo_checkpoint`).
    """

    @property
    def model(self) -> ProfileModel:
        """The model (HUP's or a zoo model)."""
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
    with_repeat: bool = False,
) -> dict[str, Tensor]:
    """Profiles after each point's last input event, by the full-sequence forward pass.

    The forward pass is causal, so running it over the whole session and reading the
    profile at the point's last input event sees only that input. Batches are built on the
    CPU and moved to the model's device (``--device cuda``); the profiles stay there. With
    ``with_repeat`` the result also holds each point's repeat inputs (`REPEAT_KEYS`), read
    from the featurizer's memory at that event.
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
        memories = []
        for row, i in enumerate(chunk):
            for n in by_session[i]:
                at = featurized[i].feature_at_event[points[n].n_input - 1]
                positions.append((row, at))
                order.append(n)
                if with_repeat:
                    memories.append(repeat_inputs(featurized[i].states[at]))
        with torch.no_grad():
            profiles = model(batch, torch.tensor(positions, dtype=torch.long, device=device))
        if with_repeat:
            profiles.update({k: v.to(device) for k, v in collate_repeat(memories).items()})
        for name, value in profiles.items():
            out.setdefault(name, []).append(value)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return {name: torch.cat(parts)[inverse.to(parts[0].device)] for name, parts in out.items()}


def top_k_of_scores(scores: Tensor, k: int, excluded: Sequence[int | None]) -> list[list[int]]:
    """Ids of the k highest `scores` [N, V] per row, never OOV id 0 nor the row's excluded id.

    `scores` is overwritten at the left-out ids.
    """
    return [ids for ids, _ in _top_k(scores, k, excluded)]


def _top_k(scores: Tensor, k: int, excluded: Sequence[int | None]) -> Ranked:
    """(ids, scores) of the k highest `scores` per row, as `top_k_of_scores` leaves them out.

    The scores come from the same `topk` call as the ids: no per-row indexing.
    """
    scores[:, 0] = float("-inf")
    rows = [n for n, e in enumerate(excluded) if e]
    if rows:
        scores[rows, [excluded[n] for n in rows]] = float("-inf")
    values, indices = scores.topk(min(k, scores.shape[1] - 1), dim=-1)
    out: Ranked = []
    for row_ids, row_values in zip(indices.tolist(), values.tolist(), strict=True):
        # With k close to the vocabulary size the top k reach the excluded ids; drop them.
        if row_values and row_values[-1] == float("-inf"):
            kept = [(i, v) for i, v in zip(row_ids, row_values, strict=True) if v != float("-inf")]
            row_ids, row_values = [i for i, _ in kept], [v for _, v in kept]
        out.append((row_ids, row_values))
    return out


class HupRecommender:
    """Ranks items by cosine to the item-level profile, categories per level likewise."""

    def __init__(
        self,
        name: str,
        fit_fn: Callable[[Sequence[Session], Sequence[Session]], Checkpoint] | None = None,
        checkpoint: Checkpoint | None = None,
        ranking: RankingOptions | None = None,
    ) -> None:
        """Either a trained checkpoint, or a function that trains one in `fit`.

        ``ranking`` decides when items are ranked from candidates (default: the
        environment's, as the stream reads them).
        """
        self.name = name
        self._fit_fn = fit_fn
        self.checkpoint = checkpoint
        self.ranking = ranking if ranking is not None else RankingOptions.from_env()

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
        repeat = model.repeat_heads is not None
        profiles = profiles_at_points(self.checkpoint, sessions, points, with_repeat=repeat)
        index = build_item_index(model, self.ranking)
        last_items = [vocab.items.lookup(p.last_input_item) or None for p in points]
        item_ids: list[list[int]] = []
        per_level: list[list[list[int]]] = [[] for _ in range(model.config.n_levels)]
        for start in range(0, len(points), RANK_CHUNK):
            chunk = {k: v[start : start + RANK_CHUNK] for k, v in profiles.items()}
            items, levels = rank_profiles(
                model, chunk, k_items, k_categories, last_items[start : start + RANK_CHUNK], index
            )
            item_ids.extend(ids for ids, _ in items)
            for k, level in enumerate(levels):
                per_level[k].extend(ids for ids, _ in level)
        return rankings_from_ids(vocab, item_ids, per_level)


RANK_CHUNK = 1024
"""Points ranked at once offline: bounds the [points, vocabulary] score matrix."""


@torch.no_grad()
def rank_profiles(
    model: HupModel,
    profiles: dict[str, Tensor],
    k_items: int,
    k_categories: int,
    excluded: Sequence[int | None],
    item_index: ItemIndex | None = None,
    levels: Sequence[int] | None = None,
) -> tuple[Ranked, list[Ranked]]:
    """Top items and top categories of each level, with scores, from profiles at points.

    The one ranking rule of the offline evaluation and the stream's published profiles.
    The repeat-aware model ranks by its mixture probabilities (`HupModel.item_mixture`;
    ``profiles`` then holds the `REPEAT_KEYS` tensors too, whose open item is never ranked);
    the paper's model by the cosine of each profile to the embeddings. ``excluded`` is an id
    per row never to rank (the last input sku offline), or None; OOV id 0 is never ranked.
    With ``item_index`` (`hup.candidates.build_item_index`: large vocabularies) items are
    ranked from candidates by the same mixture; categories are always ranked exactly.
    ``levels`` names the category levels to rank, in the order returned (default: all): the
    stream publishes the finest only, and each level costs a [rows, categories] mixture.
    """
    items: Ranked | None = None
    ranked_levels = range(model.config.n_levels) if levels is None else levels
    if model.repeat_heads is not None:
        if item_index is not None:
            items = rank_item_candidates(model, item_index, profiles, k_items, excluded)
        else:
            item_scores = model.item_mixture(profiles, profiles).probabilities()
        level_scores = [
            model.category_mixture(k, profiles, profiles).probabilities() for k in ranked_levels
        ]
    else:
        item_scores = cosine_scores(profiles["item"], model.item_embedding.weight)
        level_scores = [
            cosine_scores(profiles[f"category{k}"], model.category_embedding(k).weight)
            for k in ranked_levels
        ]
    if items is None:
        items = _top_k(item_scores, k_items, excluded)
    return items, [_top_k(s, k_categories, [None] * len(s)) for s in level_scores]


def cosine_scores(profiles: Tensor, table: Tensor) -> Tensor:
    """Cosine of each profile [N, D] to each row of an embedding table [V, D]: [N, V]."""
    return F.normalize(profiles, dim=-1) @ F.normalize(table, dim=-1).T


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
