"""Item ranking for large vocabularies: an ANN candidate set scored by the exact mixture.

Exact ranking scores every id of the vocabulary for every event: a [N, V] product, a
softmax, a dense co-visitation scatter and a top-k over V. From `RankingOptions.min_items`
ids on, the repeat-aware model ranks a candidate set instead:

* the ANN top-M ids by the explore logit without its co-visitation term,
  ``scale * cos(profile, e_v) + bias_v``, which is the inner product of
  ``[scale * unit(profile), 1]`` and ``[unit(e_v), bias_v]``. A faiss IVF-Flat index answers
  it as an L2 search after the standard MIPS-to-NN reduction (each item vector gains a
  coordinate ``sqrt(max_norm^2 - |x|^2)``, the query a 0), so the bias counts;
* the co-visitation neighbours of the user's remembered ids (the only ids whose
  co-visitation score is not 0), the remembered ids themselves (the repeat channel) and the
  top-P ids by prior (bias).

Candidates are scored with the same mixture as `hup.model.mixture`. The explore softmax
keeps its exact normaliser: a log-sum-exp over the whole vocabulary, computed as one
[N, D] x [D, V] product in chunks of at most `NORMALISER_ELEMENTS` scores (no [N, V]
matrix is kept, no dense scatter, no top-k over V). It is the part whose cost still grows
with V, but it makes every published score the exact path's probability of that id, so
the candidate path differs from exact ranking only in the ids the candidate set misses. An estimate from the candidates
plus a tail bound would drop that product but move the explore channel's mass against the
repeat channel's, which reorders revisits against new items.

The index is built deterministically from the model's weights (a fixed sample and seed,
one thread), so the offline evaluation and the stream build the same index from the same
checkpoint and rank identically; nothing is stored and the model version is unchanged.
Without faiss (the ``ann`` extra) large vocabularies fall back to exact ranking with one
logged warning.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from hup.exceptions import RankingOptionsError
from hup.model import NEIGHBOUR_PART, HupModel, RepeatHeads, repeat_channel
from hup.recommender_contract import Ranked
from hup.vocab import OOV

__all__ = [
    "NORMALISER_ELEMENTS",
    "ItemIndex",
    "RankingOptions",
    "build_item_index",
    "rank_item_candidates",
]

logger = logging.getLogger(__name__)

NORMALISER_ELEMENTS = 1 << 22
"""Scores per chunk of the normaliser's product (16 MiB): bounds its [N, chunk] matrix.

One event's row then covers up to 4M ids in one chunk, so a small call pays for few ops.
"""

_SEED = 1234  # k-means seed and training sample of the index: fixed, so builds are equal
_TRAIN_PER_LIST = 40  # k-means training points per list (faiss warns below 39)
_KMEANS_ITERATIONS = 10


@dataclass(frozen=True)
class RankingOptions:
    """When and how items are ranked from candidates (environment: `from_env`)."""

    # Vocabularies with at least this many items (OOV included) rank candidates; 0 = never.
    min_items: int = 100_000
    # M: ids the ANN index returns per event (the explore logit's approximate top-M).
    ann_candidates: int = 200
    # P: ids of the largest prior (bias) added to every event's candidates.
    prior_candidates: int = 100
    # IVF lists probed per query: recall against cost (bench/ranking_cost.py measures both).
    nprobe: int = 64

    def __post_init__(self) -> None:
        """Reject values that cannot rank anything."""
        if self.min_items < 0 or self.prior_candidates < 0:
            raise RankingOptionsError(f"min_items and prior_candidates must be >= 0: {self}")
        if self.ann_candidates < 1 or self.nprobe < 1:
            raise RankingOptionsError(f"ann_candidates and nprobe must be >= 1: {self}")

    @classmethod
    def from_env(cls) -> RankingOptions:
        """Options from ``HUP_ANN_MIN_ITEMS``, ``HUP_ANN_CANDIDATES``, ``HUP_ANN_PRIOR``, ``HUP_ANN_NPROBE``.

        Unset variables keep the defaults. The stream and the offline evaluation both read
        them, so both rank the same way.
        """
        names = {
            "min_items": "HUP_ANN_MIN_ITEMS",
            "ann_candidates": "HUP_ANN_CANDIDATES",
            "prior_candidates": "HUP_ANN_PRIOR",
            "nprobe": "HUP_ANN_NPROBE",
        }
        values: dict[str, int] = {}
        for field, name in names.items():
            raw = os.environ.get(name)
            if raw is None or not raw.strip():
                continue
            try:
                values[field] = int(raw)
            except ValueError:
                raise RankingOptionsError(f"{name} must be an integer, got {raw!r}") from None
        try:
            return cls(**values)
        except RankingOptionsError as exc:
            raise RankingOptionsError(f"HUP_ANN_* variables: {exc}") from exc

    def applies_to(self, n_items: int) -> bool:
        """Whether a vocabulary of `n_items` ranks candidates."""
        return self.min_items > 0 and n_items >= self.min_items


def _faiss() -> Any | None:
    try:
        import faiss  # noqa: PLC0415 - optional dependency (the ann extra)
    except ImportError:
        return None
    return faiss


@functools.cache
def _warn_without_faiss() -> None:
    # Once per process: every Profiler and offline ranking call would repeat it.
    logger.warning(
        "faiss is not installed (pip install 'hup-stream[ann]'): items of large "
        "vocabularies are ranked exactly, at a cost per event that grows with the vocabulary"
    )


def _heads(model: HupModel) -> RepeatHeads:
    if model.repeat_heads is None:
        raise ValueError("candidate ranking needs the repeat-aware model (config.repeat)")
    return cast(RepeatHeads, model.repeat_heads)


@contextmanager
def _one_thread(faiss: Any) -> Iterator[None]:
    """Run faiss on one OpenMP thread: a deterministic k-means, no threads racing torch's."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class ItemIndex:
    """The item vectors of one model's explore channel and a faiss index over them."""

    def __init__(self, model: HupModel, options: RankingOptions, faiss: Any) -> None:
        """Index the model's current item embeddings and biases (see the module docstring)."""
        heads = _heads(model)
        with torch.no_grad():
            # [V, D] unit embeddings and [V] biases: a snapshot the index and scoring share.
            self.unit = F.normalize(model.item_embedding.weight.detach(), dim=-1)
            self.bias = heads.item_bias.detach().clone()
            self.unit_t = self.unit.T.contiguous()  # [D, V]: the normaliser's product reads it
        self.options = options
        self._faiss = faiss
        n_items, dim = self.unit.shape
        prior = self.bias.clone()
        prior[OOV] = -math.inf
        order = torch.sort(prior, descending=True, stable=True).indices
        self.prior_ids = order[: min(options.prior_candidates, n_items - 1)]  # [P]
        vectors = torch.cat([self.unit, self.bias.unsqueeze(1)], dim=1).double().cpu()
        squared = (vectors**2).sum(dim=1)
        lift = (squared.max() - squared).clamp(min=0).sqrt().unsqueeze(1)
        points = torch.cat([vectors, lift], dim=1).float().numpy()  # [V, D + 2]
        self.lists = max(1, min(int(2 * math.sqrt(n_items)), n_items // _TRAIN_PER_LIST))
        sample = min(n_items, _TRAIN_PER_LIST * self.lists)
        rows = np.sort(np.random.default_rng(_SEED).choice(n_items, sample, replace=False))
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim + 2), dim + 2, self.lists)
        self.index.cp.seed = _SEED
        self.index.cp.niter = _KMEANS_ITERATIONS
        with _one_thread(faiss):
            self.index.train(np.ascontiguousarray(points[rows]))
            self.index.add(points)
        self.index.nprobe = min(options.nprobe, self.lists)

    def __len__(self) -> int:
        """Items indexed (the vocabulary, OOV included)."""
        return int(self.unit.shape[0])

    def search(self, unit_profiles: Tensor, scale: Tensor) -> Tensor:
        """The ANN top-M ids [N, M] by ``scale * cos + bias`` (OOV 0 where fewer are found)."""
        n_rows = unit_profiles.shape[0]
        query = torch.cat(
            [
                unit_profiles * scale,
                unit_profiles.new_ones(n_rows, 1),
                unit_profiles.new_zeros(n_rows, 1),
            ],
            dim=1,
        )
        m = min(self.options.ann_candidates, len(self))
        with _one_thread(self._faiss):
            _, ids = self.index.search(
                np.ascontiguousarray(query.detach().float().cpu().numpy()), m
            )
        return torch.from_numpy(ids).to(unit_profiles.device).clamp(min=OOV)


def build_item_index(model: HupModel, options: RankingOptions) -> ItemIndex | None:
    """The candidate index of `model`, or None where items are ranked exactly.

    None for the paper's model (no explore channel), below `RankingOptions.min_items`, and
    without faiss (warned once per process).
    """
    if model.repeat_heads is None or not options.applies_to(model.config.n_items):
        return None
    faiss = _faiss()
    if faiss is None:
        _warn_without_faiss()
        return None
    return ItemIndex(model, options, faiss)


class _Candidates:
    """Each row's candidate ids, unique and padded with OOV, and where its parts landed."""

    def __init__(self, parts: list[Tensor], weights: Tensor, n_items: int) -> None:
        # parts: [N, L_i] id tensors; weights: [N, sum L_i] co-visitation weights aligned
        # with their concatenation (0 outside the neighbour part).
        ids = torch.cat(parts, dim=1)  # [N, L]
        n_rows, width = ids.shape
        keys = torch.arange(n_rows, device=ids.device).unsqueeze(1) * n_items + ids
        unique, inverse = torch.unique(keys.flatten(), sorted=True, return_inverse=True)
        totals = weights.new_zeros(len(unique)).scatter_add(0, inverse, weights.flatten())
        rows = unique // n_items
        counts = torch.bincount(rows, minlength=n_rows)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(unique), device=ids.device) - starts[rows]
        self.ids = ids.new_zeros(n_rows, int(counts.max()))  # [N, C]
        self.ids[rows, slot] = unique % n_items
        self.covisit = weights.new_zeros(self.ids.shape)  # [N, C] log1p of weight sums
        self.covisit[rows, slot] = torch.log1p(totals)
        self.slot_of = slot[inverse].view(n_rows, width)  # [N, L]: position of each input id


def _normaliser(
    index: ItemIndex,
    unit_profiles: Tensor,
    scale: Tensor,
    boosts: tuple[Tensor, Tensor, Tensor],
    open_items: Tensor,
) -> Tensor:
    """The explore softmax's normaliser [N]: log sum_v exp(logit_v) over the vocabulary.

    logit_v = scale * cos + bias_v (+ the co-visitation boost of the ids in ``boosts``:
    rows, ids and values), -inf for OOV and each row's open item.
    """
    rows, ids, values = boosts
    scaled = unit_profiles * scale  # [N, D]: scaling the profile, not the [N, V] logits
    parts = []
    width = max(1, NORMALISER_ELEMENTS // max(1, len(unit_profiles)))
    for start in range(0, len(index), width):
        end = min(start + width, len(index))
        logits = torch.addmm(index.bias[start:end], scaled, index.unit_t[:, start:end])
        inside = (ids >= start) & (ids < end)
        where = (rows[inside], ids[inside] - start)
        logits[where] = logits[where] + values[inside]
        if start == 0:
            logits[:, OOV] = -math.inf
        blocked = (open_items >= start) & (open_items < end) & (open_items != OOV)
        logits[blocked.nonzero().squeeze(1), open_items[blocked] - start] = -math.inf
        parts.append(torch.logsumexp(logits, dim=1))
    return torch.logsumexp(torch.stack(parts, dim=1), dim=1)


@torch.no_grad()
def rank_item_candidates(
    model: HupModel,
    index: ItemIndex,
    profiles: dict[str, Tensor],
    k: int,
    excluded: Sequence[int | None],
) -> Ranked:
    """Top-k items with their mixture probabilities, scored on each row's candidates.

    The candidate-set counterpart of ranking `HupModel.item_mixture(...).probabilities()`
    (`hup.hup_recommender.rank_profiles`): same inputs, same rule (OOV, the open item and the
    row's ``excluded`` id are never ranked), the same scores for the ids it ranks.
    """
    heads = _heads(model)
    unit_profiles = F.normalize(profiles["item"], dim=-1)  # [N, D]
    scale = heads.item_log_scale.exp()
    recent = profiles["repeat_items"]  # [N, R]
    open_items = profiles["repeat_open_item"]  # [N]
    n_rows, n_recent = recent.shape
    ann = index.search(unit_profiles, scale)  # [N, M]
    parts = [ann, recent, index.prior_ids.expand(n_rows, -1)]
    weights = [unit_profiles.new_zeros(p.shape) for p in parts]
    neighbours = heads.item_neighbours
    if neighbours is not None:
        near, near_weights = neighbours.rows(recent, profiles.get(NEIGHBOUR_PART))
        parts.append(near)
        weights.append(near_weights)
    candidates = _Candidates(parts, torch.cat(weights, dim=1), len(index))
    ids = candidates.ids  # [N, C]
    recent_slot = candidates.slot_of[:, ann.shape[1] : ann.shape[1] + n_recent]  # [N, R]

    cosine = torch.bmm(index.unit[ids], unit_profiles.unsqueeze(2)).squeeze(2)  # [N, C]
    logits = cosine * scale + index.bias[ids]
    inputs = [profiles["repeat_item_features"], cosine.gather(1, recent_slot).unsqueeze(-1)]
    boost_rows = torch.empty(0, dtype=torch.long, device=ids.device)
    boost_ids, boost_values = boost_rows, unit_profiles.new_zeros(0)
    if neighbours is not None:
        boost = heads.item_neighbour_scale * candidates.covisit
        logits = logits + boost
        inputs.append(candidates.covisit.gather(1, recent_slot).unsqueeze(-1))
        boosted = (candidates.covisit != 0).nonzero(as_tuple=True)
        boost_rows, boost_ids, boost_values = boosted[0], ids[boosted], boost[boosted]
    blocked = (ids == OOV) | (ids == open_items.unsqueeze(1))
    logits = logits.masked_fill(blocked, -math.inf)
    log_z = _normaliser(
        index, unit_profiles, scale, (boost_rows, boost_ids, boost_values), open_items
    )
    explore = logits - log_z.unsqueeze(1)  # [N, C] log-probabilities of the explore channel

    repeat, gate = repeat_channel(
        inputs, recent, open_items, heads.item_scorer, heads.item_gate, model.gate_input(profiles)
    )
    probs = (1 - gate).unsqueeze(1) * explore.exp()
    probs = probs.scatter_add(1, recent_slot, gate.unsqueeze(1) * repeat)
    left_out = torch.tensor([e or OOV for e in excluded], dtype=torch.long, device=ids.device)
    probs = probs.masked_fill((ids == OOV) | (ids == left_out.unsqueeze(1)), -math.inf)
    values, slots = probs.topk(min(k, ids.shape[1]), dim=1)
    ranked: Ranked = []
    for row_ids, row_values, row_slots in zip(
        ids.tolist(), values.tolist(), slots.tolist(), strict=True
    ):
        kept = [
            (row_ids[s], v) for s, v in zip(row_slots, row_values, strict=True) if v != -math.inf
        ]
        ranked.append(([i for i, _ in kept], [v for _, v in kept]))
    return ranked
