"""A repeat-aware model of any vocabulary size with ranking inputs: what ranking is measured on.

Ranking cost and the candidate path's recall (`hup.candidates`) depend on the vocabulary
size, the embedding geometry and the prior, not on training: a trained model's item
embeddings form clusters (items co-visited end up close) and its prior spreads a few nats.
This builds such a model directly, at sizes no sample data reaches (1M items), for the
tests and `bench/ranking_cost.py`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from hup.config import VARIANTS, HupConfig
from hup.hup_checkpoint import randomize_neighbours
from hup.model import HupModel
from hup.repeat import CATEGORY_FEATURES, ITEM_FEATURES, REPEAT_SLOTS

__all__ = ["CLUSTERS", "PRIOR_SPREAD", "ranking_inputs", "ranking_model"]

CLUSTERS = 200
"""Directions the item embeddings gather around."""

PRIOR_SPREAD = 1.5
"""Standard deviation of the per-item prior (bias), in nats."""

_NOISE = 0.7  # spread of an embedding (and an item profile) around its cluster direction
_CATEGORIES = (8, 64)


def _centres(dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(CLUSTERS, dim))


@torch.no_grad()
def ranking_model(n_items: int, seed: int = 0, **config: object) -> HupModel:
    """The default model (`VARIANTS["hup"]`) over `n_items` items with clustered embeddings.

    Item embeddings lie around `CLUSTERS` directions, the prior is normal with
    `PRIOR_SPREAD`, the co-visitation table random (`randomize_neighbours`); every other
    weight is seeded-random. ``config`` overrides `HupConfig` fields.
    """
    torch.manual_seed(seed)
    model = HupModel(
        HupConfig(n_items=n_items, n_categories=_CATEGORIES, **{**VARIANTS["hup"], **config})  # type: ignore[arg-type]
    ).eval()
    rng = np.random.default_rng(seed + 1)
    dim = model.config.item_dim
    centres = _centres(dim, seed)
    vectors = centres[rng.integers(0, CLUSTERS, n_items)] + _NOISE * rng.normal(size=(n_items, dim))
    model.item_embedding.weight.copy_(torch.as_tensor(vectors, dtype=torch.float32))
    heads = model.repeat_heads
    assert heads is not None  # noqa: S101 - VARIANTS["hup"] is repeat-aware
    heads.item_bias.copy_(torch.as_tensor(rng.normal(0, PRIOR_SPREAD, n_items)))
    randomize_neighbours(model, seed)
    return model


@torch.no_grad()
def ranking_inputs(model: HupModel, n_points: int, seed: int = 0) -> dict[str, Tensor]:
    """Profiles and repeat inputs of `n_points` users, as `rank_profiles` reads them.

    Item profiles point near a cluster direction of `ranking_model` (built with the same
    ``seed``); each user remembers 1..`REPEAT_SLOTS` distinct items, the first of them open.
    """
    generator = torch.Generator().manual_seed(seed + 2)
    rng = np.random.default_rng(seed + 3)
    cfg = model.config
    centres = _centres(cfg.item_dim, seed)
    near = centres[rng.integers(0, CLUSTERS, n_points)]
    item = near + _NOISE * rng.normal(size=near.shape)
    profiles: dict[str, Tensor] = {}
    for name in model.head_specs:
        dim = cfg.item_dim if name in ("micro", "item") else cfg.category_dim
        profiles[name] = torch.tanh(torch.randn(n_points, dim, generator=generator))
    scale = 1 / math.sqrt(cfg.item_dim)  # tanh's linear range, the direction kept
    profiles["item"] = torch.tanh(torch.as_tensor(item * scale, dtype=torch.float32))
    items = torch.zeros(n_points, REPEAT_SLOTS, dtype=torch.long)
    categories = torch.zeros(n_points, cfg.n_levels, REPEAT_SLOTS, dtype=torch.long)
    for n in range(n_points):
        count = int(rng.integers(1, REPEAT_SLOTS + 1))
        items[n, :count] = torch.as_tensor(rng.choice(np.arange(1, cfg.n_items), count, False))
        for level, size in enumerate(cfg.n_categories):
            distinct = min(count, size - 1)
            chosen = rng.choice(np.arange(1, size), distinct, False)
            categories[n, level, :distinct] = torch.as_tensor(chosen)
    profiles["repeat_items"] = items
    profiles["repeat_item_features"] = torch.rand(
        n_points, REPEAT_SLOTS, ITEM_FEATURES, generator=generator
    ) * (items != 0).unsqueeze(-1)
    profiles["repeat_categories"] = categories
    profiles["repeat_category_features"] = torch.rand(
        n_points, cfg.n_levels, REPEAT_SLOTS, CATEGORY_FEATURES, generator=generator
    ) * (categories != 0).unsqueeze(-1)
    profiles["repeat_open_item"] = items[:, 0].clone()
    return profiles
