"""The Pyramid RNN of Behavior-LSTMs (HUP) and its full-sequence forward pass.

Every layer keeps a *committed* state (after its last closed entry: micro event, item
run or category run) and an *open* entry, recomputed from the committed state at each
event while the entry is open. This provisional step is what lets every event yield a
profile at every level; when the entry closes, its last provisional step becomes the
committed one. The same rule runs here over whole sequences (training, evaluation) and
in `hup.incremental` one event at a time (the stream); the parity test holds them equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from hup.config import HupConfig
from hup.features import EventFeatures
from hup.layers import AttentionPool, BehaviorLSTMCell
from hup.model_contract import ProfileModel
from hup.neighbours import NeighbourTable
from hup.repeat import CATEGORY_FEATURES, ITEM_FEATURES, REPEAT_SLOTS, RepeatInputs
from hup.vocab import OOV

__all__ = [
    "FEATURE_KEYS",
    "REPEAT_KEYS",
    "HupModel",
    "LayerInput",
    "Mixture",
    "NEIGHBOUR_PART",
    "Neighbours",
    "RepeatHeads",
    "collate_features",
    "collate_repeat",
    "repeat_channel",
]

FEATURE_KEYS = EventFeatures._fields


class LayerInput(NamedTuple):
    """What one layer sees at each event (any leading shape S)."""

    x: Tensor  # [*S, X]
    dt: Tensor  # [*S, G]
    a: Tensor  # [*S, A]
    change: Tensor  # [*S] bool: a new entry starts (the open one is committed first)
    recompute: Tensor  # [*S] bool: the open entry is stepped again
    signal: Tensor  # [*S] long: attention signal id of the entry (behaviour or dwell bucket)


@dataclass(frozen=True)
class _Head:
    source: str  # layer whose attention context feeds the head
    level: int | None  # category level, None for item-space heads


def collate_features(sequences: list[list[EventFeatures]]) -> dict[str, Tensor]:
    """Pad sequences to [B, T] (category fields [B, T, K]) with a `valid` mask."""
    longest = max(len(s) for s in sequences)
    padding = sequences[0][0]._replace(is_micro=0)
    rows = [list(s) + [padding] * (longest - len(s)) for s in sequences]
    batch = {
        key: torch.tensor([[getattr(f, key) for f in row] for row in rows], dtype=torch.long)
        for key in FEATURE_KEYS
    }
    lengths = torch.tensor([len(s) for s in sequences])
    batch["valid"] = torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)
    return batch


REPEAT_KEYS = (
    "repeat_items",
    "repeat_item_features",
    "repeat_categories",
    "repeat_category_features",
    "repeat_open_item",
)
"""Keys of the per-point repeat inputs (`collate_repeat`) inside a batch dict."""


def collate_repeat(inputs: list[RepeatInputs]) -> dict[str, Tensor]:
    """Stack one `RepeatInputs` per point into the batch tensors the repeat heads read."""
    return {
        "repeat_items": torch.from_numpy(np.stack([i.items for i in inputs])),
        "repeat_item_features": torch.from_numpy(np.stack([i.item_features for i in inputs])),
        "repeat_categories": torch.from_numpy(np.stack([i.categories for i in inputs])),
        "repeat_category_features": torch.from_numpy(
            np.stack([i.category_features for i in inputs])
        ),
        "repeat_open_item": torch.tensor([i.open_item for i in inputs], dtype=torch.long),
    }


NEIGHBOUR_PART = "neighbour_part"
"""Batch key: per point, which `Neighbours` table it reads (absent = 0, every training session)."""


def _scorer(features: int, hidden: int) -> nn.Sequential:
    # Candidate features plus the candidate's cosine to the profile (and its co-visitation
    # score when the model has neighbours) -> one logit.
    return nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1))


NEIGHBOUR_GAIN = 100.0
"""Initial weight of the most recent id's co-visitation row (1 / (1 + rank) after it).

Table weights are about 0.01..1 (`hup.neighbours`); without a gain their log1p is a
fraction of a nat, and the explore channel, whose cosine logits span about 20 nats, would
need many epochs to learn to trust them. With it a co-visited id starts 1-4 nats up.
"""


class Neighbours(nn.Module):
    """The co-visitation score of every id from a user's recent ids (`hup.neighbours`).

    score(v) = log(1 + sum over the recent ids r of w_rank(r) * table[r, v]), with a
    learned positive weight per recency rank (starting at ``NEIGHBOUR_GAIN / (1 + rank)``).
    The table is a buffer, saved with the checkpoint: [P, V, k], where table 0 counts
    every training session and the others are the held-out tables training points read
    (the saved model keeps table 0 only).
    """

    ids: torch.Tensor
    weights: torch.Tensor

    def __init__(self, n_ids: int, k: int) -> None:
        """Empty tables for `n_ids` ids of `k` neighbours each; `install` fills them."""
        super().__init__()
        k = min(k, n_ids)
        self.register_buffer("ids", torch.zeros(1, n_ids, k, dtype=torch.long))
        self.register_buffer("weights", torch.zeros(1, n_ids, k))
        ranks = torch.arange(REPEAT_SLOTS, dtype=torch.float32)
        self.log_rank_weight = nn.Parameter(torch.log(NEIGHBOUR_GAIN / (1.0 + ranks)))

    def install(self, table: NeighbourTable) -> None:
        """Use `table` ([V, k] or stacked [P, V, k], see `hup.neighbours.stacked_tables`)."""
        ids = torch.as_tensor(table.ids, dtype=torch.long)
        weights = torch.as_tensor(table.weights, dtype=torch.float32)
        if ids.dim() == 2:
            ids, weights = ids.unsqueeze(0), weights.unsqueeze(0)
        if ids.shape[1:] != self.ids.shape[1:] or weights.shape != ids.shape:
            raise ValueError(
                f"neighbour table of shape {tuple(ids.shape)} does not fit "
                f"{tuple(self.ids.shape[1:])}"
            )
        device = self.ids.device
        self.ids, self.weights = ids.to(device), weights.to(device)

    def keep_full_table(self) -> None:
        """Drop the held-out tables: what is saved and served reads table 0 only."""
        self.ids, self.weights = self.ids[:1].contiguous(), self.weights[:1].contiguous()

    def forward(self, recent: Tensor, part: Tensor | None) -> Tensor:
        """Scores [N, V] of the recent ids [N, R] (most recent first, 0 = empty).

        Row n reads table ``part[n]`` (None: table 0 for every row).
        """
        ids, weights = self.rows(recent, part)
        scores = weights.new_zeros(recent.shape[0], self.ids.shape[1])
        return torch.log1p(scores.scatter_add(1, ids, weights))

    def rows(self, recent: Tensor, part: Tensor | None) -> tuple[Tensor, Tensor]:
        """The neighbour ids [N, R*k] of the recent ids [N, R] and their weights [N, R*k].

        The score of an id is log1p of the sum of its weights in the row (`forward`); an id
        absent from the row scores 0. Ranking a large vocabulary reads these sparse rows
        instead of the dense [N, V] scores.
        """
        n_rows, n_recent = recent.shape
        if part is None:
            part = recent.new_zeros(n_rows)
        table = (part.unsqueeze(1), recent)
        ids = self.ids[table]  # [N, R, k]
        weights = self.weights[table] * self.log_rank_weight[:n_recent].exp().view(1, -1, 1)
        return ids.flatten(1), weights.flatten(1)


class RepeatHeads(nn.Module):
    """Repeat and explore channels mixed by a gate, for items and every category level.

    In the spirit of RepeatNet (Ren et al., AAAI 2019): P(v) = g * P_repeat(v) +
    (1 - g) * P_explore(v). P_explore is a softmax over the whole vocabulary of the
    profile's cosine to each embedding (a learned scale); P_repeat is a softmax over the
    user's remembered items (`hup.repeat`), each scored by a small net from what the user
    did with it and its cosine to the profile; the gate g reads every profile vector and
    how many candidates there are. Items the user has not seen can only come from the
    explore channel, so the profile vectors keep their meaning for consumers. With
    ``config.neighbours`` the explore logits also add the co-visitation score of each id
    from the user's recent ids (`Neighbours`), which the repeat scorer reads too.
    """

    def __init__(self, config: HupConfig, profile_dim: int) -> None:
        """Create the scorers and gates; `profile_dim` is the width of all profiles joined."""
        super().__init__()
        hidden = config.repeat_hidden
        extra = 2 if config.neighbours else 1  # cosine (and co-visitation score)
        self.item_scorer = _scorer(ITEM_FEATURES + extra, hidden)
        self.item_gate = nn.Linear(profile_dim + 1, 1)
        self.item_log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        # A learned prior per item and category in the explore channel: it learns their
        # popularity, which a profile's cosine alone does not carry.
        self.item_bias = nn.Parameter(torch.zeros(config.n_items))
        self.category_biases = nn.ParameterList(
            nn.Parameter(torch.zeros(n)) for n in config.n_categories
        )
        levels = range(config.n_levels)
        self.category_scorers = nn.ModuleList(
            _scorer(CATEGORY_FEATURES + extra, hidden) for _ in levels
        )
        self.category_gates = nn.ModuleList(nn.Linear(profile_dim + 1, 1) for _ in levels)
        self.category_log_scale = nn.Parameter(torch.full((config.n_levels,), math.log(10.0)))
        self.item_neighbours: Neighbours | None = None
        self.category_neighbours: nn.ModuleList | None = None
        if config.neighbours:
            self.item_neighbours = Neighbours(config.n_items, config.neighbours)
            self.category_neighbours = nn.ModuleList(
                Neighbours(n, config.neighbours) for n in config.n_categories
            )
            # How much the explore channel trusts the co-visitation score, per space.
            self.item_neighbour_scale = nn.Parameter(torch.tensor(1.0))
            self.category_neighbour_scale = nn.Parameter(torch.ones(config.n_levels))

    def neighbour_modules(self) -> list[Neighbours]:
        """The item table, then each category level's (empty without neighbours)."""
        if self.item_neighbours is None or self.category_neighbours is None:
            return []
        return [self.item_neighbours, *cast(list[Neighbours], list(self.category_neighbours))]

    def set_priors(self, item_counts: np.ndarray, category_counts: Sequence[np.ndarray]) -> None:
        """Start the explore channel's per-id biases at the log of the training visit counts.

        A profile's cosine carries no popularity; a zero bias leaves the explore channel to
        learn it from scratch, and on small data it ranks rare ids similar to the profile
        above the popular ids users actually move to next.
        """
        for bias, counts in zip(
            [self.item_bias, *self.category_biases], [item_counts, *category_counts], strict=True
        ):
            prior = torch.as_tensor(np.log1p(counts), dtype=bias.dtype)
            bias.data.copy_(prior - prior.mean())


class Mixture(NamedTuple):
    """The two channels of `RepeatHeads` at N points, before they are mixed.

    P(v) = gate * sum of ``repeat`` over the candidates equal to v + (1 - gate) * exp(explore[v]).
    """

    explore: Tensor  # [N, V] log-probabilities of the explore channel (-inf: never ranked)
    candidates: Tensor  # [N, R] remembered ids
    repeat: Tensor  # [N, R] probabilities of the repeat channel (0 on empty/excluded slots)
    gate: Tensor  # [N] weight of the repeat channel (0 when it has no candidate)

    def probabilities(self) -> Tensor:
        """P(v) [N, V]: what ranking reads."""
        probs = (1 - self.gate).unsqueeze(1) * self.explore.exp()
        return probs.scatter_add(1, self.candidates, self.gate.unsqueeze(1) * self.repeat)

    def nll(self, target: Tensor) -> Tensor:
        """Mean -log P(target) over the targets that are not OOV (0 when none is).

        Reads only the target's entries, so training never builds the mixed [N, V] matrix.
        """
        keep = target != OOV
        if not bool(keep.any()):
            return self.explore.sum() * 0.0
        target = target[keep]
        explore = self.explore[keep].gather(1, target.unsqueeze(1)).squeeze(1).exp()
        repeat = (self.repeat[keep] * (self.candidates[keep] == target.unsqueeze(1))).sum(1)
        gate = self.gate[keep]
        return -torch.log((1 - gate) * explore + gate * repeat + 1e-9).mean()


def mixture(
    profile: Tensor,
    table: Tensor,
    candidates: Tensor,
    features: Tensor,
    scorer: nn.Module,
    gate: nn.Module,
    gate_input: Tensor,
    log_scale: Tensor,
    bias: Tensor,
    excluded: Tensor | None,
    neighbours: Tensor | None = None,
    neighbour_scale: Tensor | None = None,
) -> Mixture:
    """The repeat and explore channels of N points (see `RepeatHeads`).

    Args:
        profile: [N, D] profiles; table: [V, D] the embedding table of that space.
        candidates: [N, R] remembered ids (0 = empty); features: [N, R, F] their features.
        scorer, gate, log_scale, bias: the channel's modules and parameters (bias [V] is
            the explore channel's prior per id); gate_input: [N, G] profiles joined.
        excluded: [N] an id per row never to recommend (0 = none), or None.
        neighbours: [N, V] co-visitation scores (`Neighbours`) added to the explore logits
            times ``neighbour_scale`` and read by the repeat scorer, or None.

    The OOV id 0 and the excluded ids get probability 0 in both channels.
    """
    cosine = F.normalize(profile, dim=-1) @ F.normalize(table, dim=-1).T  # [N, V]
    logits = cosine * log_scale.exp() + bias
    candidate_inputs = [features, cosine.gather(1, candidates).unsqueeze(-1)]
    if neighbours is not None and neighbour_scale is not None:
        logits = logits + neighbour_scale * neighbours
        candidate_inputs.append(neighbours.gather(1, candidates).unsqueeze(-1))
    logits[:, OOV] = -math.inf
    if excluded is not None:
        rows = torch.arange(len(excluded), device=excluded.device)
        logits[rows, excluded] = -math.inf  # an excluded 0 is OOV, blocked already
    explore = torch.log_softmax(logits, dim=-1)
    repeat, g = repeat_channel(candidate_inputs, candidates, excluded, scorer, gate, gate_input)
    return Mixture(explore, candidates, repeat, g)


def repeat_channel(
    inputs: list[Tensor],
    candidates: Tensor,
    excluded: Tensor | None,
    scorer: nn.Module,
    gate: nn.Module,
    gate_input: Tensor,
) -> tuple[Tensor, Tensor]:
    """The repeat channel's probabilities [N, R] and the gate [N] of `mixture`.

    Shared with the candidate ranking of large vocabularies (`hup.candidates`), which
    scores the explore channel on a subset of ids but the repeat channel the same way.
    ``inputs`` are the scorer's inputs per remembered id: features [N, R, F], then the
    cosine (and co-visitation score) of each, [N, R, 1] apiece.
    """
    valid = candidates != OOV
    if excluded is not None:
        valid = valid & (candidates != excluded.unsqueeze(1))
    scores = scorer(torch.cat(inputs, dim=-1)).squeeze(-1)
    any_valid = valid.any(dim=1)
    scores = scores.masked_fill(~valid, -math.inf).masked_fill(~any_valid.unsqueeze(1), 0.0)
    repeat = torch.softmax(scores, dim=-1) * valid
    count = torch.log1p(valid.sum(dim=1, keepdim=True).to(gate_input.dtype))
    g = torch.sigmoid(gate(torch.cat([gate_input, count], dim=-1))).squeeze(-1) * any_valid
    return repeat, g


class HupModel(ProfileModel):
    """HUP: embeddings, pyramid layers, attention pools and profile heads."""

    config: HupConfig

    def __init__(self, config: HupConfig) -> None:
        """Build the layers `config` asks for (the full model or an ablation)."""
        super().__init__()
        cfg = self.config = config
        self.item_embedding = nn.Embedding(cfg.n_items, cfg.item_dim)
        self.category_embeddings = nn.ModuleList(
            nn.Embedding(n, cfg.category_dim) for n in cfg.n_categories
        )
        self.behavior_embedding = nn.Embedding(cfg.n_behaviors, cfg.behavior_dim)
        self.gap_embedding = nn.Embedding(cfg.n_gap_buckets, cfg.gap_dim)
        self.dwell_embedding = nn.Embedding(cfg.n_dwell_buckets, cfg.dwell_dim)

        levels = range(cfg.n_levels - 1, -1, -1)  # finest first: each feeds the next coarser
        if cfg.single:
            self.layer_names = ["micro"]
        elif cfg.use_micro:
            self.layer_names = ["micro", "item", *(f"category{k}" for k in levels)]
        else:
            self.layer_names = ["item", *(f"category{k}" for k in levels)]

        self.cells = nn.ModuleDict()
        self.pools = nn.ModuleDict()
        for name in self.layer_names:
            signal_dim = cfg.behavior_dim if name == "micro" else cfg.dwell_dim
            self.cells[name] = BehaviorLSTMCell(
                self._input_dim(name), cfg.gap_dim, signal_dim, cfg.hidden, cfg.cell
            )
            if cfg.attention:
                self.pools[name] = AttentionPool(cfg.hidden, signal_dim, cfg.attention_hidden)

        self.head_specs: dict[str, _Head] = {}
        if "micro" in self.layer_names:
            self.head_specs["micro"] = _Head("micro", None)
        self.head_specs["item"] = _Head("micro" if cfg.single else "item", None)
        for k in range(cfg.n_levels):
            self.head_specs[f"category{k}"] = _Head("micro" if cfg.single else f"category{k}", k)
        self.heads = nn.ModuleDict(
            {
                name: nn.Linear(cfg.hidden, cfg.item_dim if h.level is None else cfg.category_dim)
                for name, h in self.head_specs.items()
            }
        )
        self.repeat_heads = (
            RepeatHeads(cfg, sum(self.head_of(h).out_features for h in self.head_specs))
            if cfg.repeat
            else None
        )

    def _input_dim(self, name: str) -> int:
        cfg = self.config
        if name == "micro":
            return (
                cfg.item_dim
                + cfg.n_levels * cfg.category_dim
                + cfg.behavior_dim
                + cfg.gap_dim
                + cfg.dwell_dim
            )
        if name == "item":
            return cfg.item_dim + (cfg.hidden if cfg.use_micro else 0)
        return cfg.category_dim + cfg.hidden

    # ---- typed access to the module containers ------------------------------------------------

    def cell_of(self, name: str) -> BehaviorLSTMCell:
        """The recurrent cell of layer `name`."""
        return cast(BehaviorLSTMCell, self.cells[name])

    def pool_of(self, name: str) -> AttentionPool:
        """The attention pooling of layer `name`."""
        return cast(AttentionPool, self.pools[name])

    def head_of(self, name: str) -> nn.Linear:
        """The dense profile head `name`."""
        return cast(nn.Linear, self.heads[name])

    def category_embedding(self, level: int) -> nn.Embedding:
        """The category embedding table of `level` (0 = coarsest)."""
        return cast(nn.Embedding, self.category_embeddings[level])

    # ---- shared by the sequence forward and the incremental step -------------------------

    def layer_input(self, name: str, f: dict[str, Tensor], finer: Tensor | None) -> LayerInput:
        """Inputs of layer `name` from feature tensors of any leading shape.

        `finer` is the open output of the next finer layer at the same events (None for
        the bottom layer).
        """
        if name == "micro":
            categories = torch.cat(
                [emb(f["categories"][..., k]) for k, emb in enumerate(self.category_embeddings)],
                dim=-1,
            )
            gap = self.gap_embedding(f["gap"])
            behavior = self.behavior_embedding(f["behavior"])
            x = torch.cat(
                [
                    self.item_embedding(f["item"]),
                    categories,
                    behavior,
                    gap,
                    self.dwell_embedding(f["dwell"]),
                ],
                dim=-1,
            )
            is_micro = f["is_micro"].bool()
            return LayerInput(x, gap, behavior, is_micro, is_micro, f["behavior"])
        if name == "item":
            parts = [self.item_embedding(f["item"])] + ([finer] if finer is not None else [])
            return LayerInput(
                torch.cat(parts, dim=-1),
                self.gap_embedding(f["item_gap"]),
                self.dwell_embedding(f["dwell"]),
                f["item_change"].bool(),
                torch.ones_like(f["item_change"], dtype=torch.bool),
                f["dwell"],
            )
        k = int(name.removeprefix("category"))
        assert finer is not None, "a category layer always has a finer layer"  # noqa: S101
        dwell = f["category_dwell"][..., k]
        return LayerInput(
            torch.cat([self.category_embedding(k)(f["categories"][..., k]), finer], dim=-1),
            self.gap_embedding(f["category_gap"][..., k]),
            self.dwell_embedding(dwell),
            f["category_change"][..., k].bool(),
            torch.ones_like(dwell, dtype=torch.bool),
            dwell,
        )

    def signal_embedding(self, name: str, ids: Tensor) -> Tensor:
        """Embedding of attention signals of layer `name`."""
        return self.behavior_embedding(ids) if name == "micro" else self.dwell_embedding(ids)

    def heads_of(self, layer: str) -> list[str]:
        """The profile heads fed by `layer`'s attention context, in a fixed order."""
        return [name for name, spec in self.head_specs.items() if spec.source == layer]

    def entry_summary(self, name: str, ys: Tensor, signals: Tensor) -> tuple[Tensor, Tensor]:
        """What a window entry contributes, reduced to what pooling needs.

        The attention score's first layer and the heads are linear, so an entry enters
        the profile only through its key (score-layer term, [*, A]) and its head
        projections without bias ([*, sum of head sizes]). Storing these instead of the
        output itself makes a user's state several times smaller.
        """
        keys = self.pool_of(name).keys(ys, self.signal_embedding(name, signals))
        values = torch.cat([F.linear(ys, self.head_of(h).weight) for h in self.heads_of(name)], -1)
        return keys, values

    def pooled_profiles(
        self, name: str, keys: Tensor, values: Tensor, mask: Tensor, last: Tensor
    ) -> dict[str, Tensor]:
        """Profiles of the heads of `name` from a window of entry summaries [N, W, *]."""
        weights = self.pool_of(name).weights(keys, mask, last)
        pooled = torch.einsum("nw,nwv->nv", weights, values)
        heads = self.heads_of(name)
        sizes = [self.head_of(h).out_features for h in heads]
        return {
            h: torch.tanh(part + self.head_of(h).bias)
            for h, part in zip(heads, pooled.split(sizes, dim=-1), strict=True)
        }

    def profiles(
        self, contexts: dict[str, Tensor], only: list[str] | None = None
    ) -> dict[str, Tensor]:
        """Profile vectors per head from the layers' contexts (tanh dense, as the authors)."""
        return {
            name: torch.tanh(self.heads[name](contexts[spec.source]))
            for name, spec in self.head_specs.items()
            if only is None or name in only
        }

    # ---- ranking -------------------------------------------------------------------------------

    def _repeat_heads(self) -> RepeatHeads:
        if self.repeat_heads is None:
            raise ValueError("this model has no repeat channel (config.repeat is False)")
        return cast(RepeatHeads, self.repeat_heads)

    def gate_input(self, profiles: dict[str, Tensor]) -> Tensor:
        """Every profile vector joined [N, G]: what the repeat/explore gates read."""
        return torch.cat([profiles[h] for h in self.head_specs], dim=-1)

    def item_mixture(self, profiles: dict[str, Tensor], repeat: dict[str, Tensor]) -> Mixture:
        """The next-item distribution of the repeat-aware model (0 for OOV and the open item).

        `repeat` holds the `collate_repeat` tensors of the same points as `profiles`.
        """
        heads = self._repeat_heads()
        recent = repeat["repeat_items"]
        neighbours, scale = None, None
        if heads.item_neighbours is not None:
            neighbours = heads.item_neighbours(recent, repeat.get(NEIGHBOUR_PART))
            scale = heads.item_neighbour_scale
        return mixture(
            profiles["item"],
            self.item_embedding.weight,
            recent,
            repeat["repeat_item_features"],
            heads.item_scorer,
            heads.item_gate,
            self.gate_input(profiles),
            heads.item_log_scale,
            heads.item_bias,
            repeat["repeat_open_item"],
            neighbours,
            scale,
        )

    def category_mixture(
        self, level: int, profiles: dict[str, Tensor], repeat: dict[str, Tensor]
    ) -> Mixture:
        """The next-category distribution of `level` of the repeat-aware model (0 for OOV)."""
        heads = self._repeat_heads()
        recent = repeat["repeat_categories"][:, level]
        neighbours, scale = None, None
        if heads.category_neighbours is not None:
            neighbours = heads.category_neighbours[level](recent, repeat.get(NEIGHBOUR_PART))
            scale = heads.category_neighbour_scale[level]
        return mixture(
            profiles[f"category{level}"],
            self.category_embedding(level).weight,
            recent,
            repeat["repeat_category_features"][:, level],
            heads.category_scorers[level],
            heads.category_gates[level],
            self.gate_input(profiles),
            heads.category_log_scale[level],
            heads.category_biases[level],
            None,
            neighbours,
            scale,
        )

    # ---- full-sequence forward -------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor], positions: Tensor) -> dict[str, Tensor]:
        """Profiles after the events at `positions`, from whole padded sequences.

        Args:
            batch: `collate_features` output, tensors [B, T] (category fields [B, T, K]).
            positions: [N, 2] (row, time) pairs of valid events.

        Returns:
            Profile per head, [N, D] (D = item_dim or category_dim).
        """
        valid = batch["valid"]
        finer = None
        contexts: dict[str, Tensor] = {}
        pooled: dict[str, Tensor] = {}
        for name in self.layer_names:
            inputs = self.layer_input(name, batch, finer)
            ys = self._run_layer(name, inputs, valid)  # [B, T, H]
            if self.config.attention:
                pooled.update(self._pool_at(name, ys, inputs, valid, positions))
            else:
                rows, times = positions[:, 0], positions[:, 1]
                contexts[name] = ys[rows, times]
            finer = ys
        if not self.config.attention:
            return self.profiles(contexts)
        return {name: pooled[name] for name in self.head_specs}

    def _run_layer(self, name: str, inputs: LayerInput, valid: Tensor) -> Tensor:
        batch_size, steps = valid.shape
        zeros = inputs.x.new_zeros(batch_size, self.config.hidden)
        h_committed, c_committed, h_open, c_open = zeros, zeros, zeros, zeros
        outputs = []
        cell = self.cell_of(name)
        x = F.dropout(inputs.x, self.config.dropout, self.training)
        x_gates, scale = cell.input_part(x, inputs.dt, inputs.a)  # [B, T, 4H], [B, T, H]
        commits = (inputs.change & valid).unsqueeze(-1)
        steps_mask = (inputs.recompute & valid).unsqueeze(-1)
        for t in range(steps):
            commit = commits[:, t]
            h_committed = torch.where(commit, h_open, h_committed)
            c_committed = torch.where(commit, c_open, c_committed)
            h_new, c_new = cell.recur(
                x_gates[:, t], None if scale is None else scale[:, t], h_committed, c_committed
            )
            step = steps_mask[:, t]
            h_open = torch.where(step, h_new, h_open)
            c_open = torch.where(step, c_new, c_open)
            outputs.append(h_open)
        return torch.stack(outputs, dim=1)

    def _pool_at(
        self, name: str, ys: Tensor, inputs: LayerInput, valid: Tensor, positions: Tensor
    ) -> dict[str, Tensor]:
        """Profiles of `name`'s heads at `positions`: attention over each one's window.

        Every entry enters through its summary (`entry_summary`), as in the stream.
        """
        rows, times = positions[:, 0], positions[:, 1]
        last = ys[rows, times]  # [N, H]
        batch_size, steps = valid.shape
        change = inputs.change & valid
        entry = change.long().cumsum(dim=1) - 1  # [B, T] index of the open entry at each event
        # The time of each entry's final event: that is the value it was committed with.
        arange = torch.arange(steps, device=ys.device).expand(batch_size, steps)
        entry_end = torch.full_like(entry, -1).scatter_reduce(
            1, entry.clamp(min=0), torch.where(valid, arange, -1), reduce="amax"
        )
        # Only as many earlier entries as the fullest window here has: the slots no point
        # fills would be masked out of the softmax anyway, and they cost memory and time.
        current = entry[rows, times]
        back = self.config.window - 1
        if len(current) and not current.is_meta:  # a meta tensor has no values to size by
            back = min(back, int(current.max()))
        offsets = torch.arange(-back, 0, device=ys.device)  # [<= W-1]
        past = current.unsqueeze(1) + offsets  # [N, back] earlier entries
        has_past = past >= 0
        past_times = entry_end[rows.unsqueeze(1), past.clamp(min=0)]
        window_times = torch.cat([past_times, times.unsqueeze(1)], dim=1)  # [N, W]
        mask = torch.cat([has_past, has_past.new_ones(has_past.shape[0], 1)], dim=1)
        window_times = torch.where(mask, window_times, 0)
        keys, values = self.entry_summary(name, ys, inputs.signal)  # [B, T, A], [B, T, V]
        window = (rows.unsqueeze(1), window_times)
        return self.pooled_profiles(name, keys[window], values[window], mask, last)

    # ---- training ----------------------------------------------------------------------------

    def loss(
        self, batch: dict[str, Tensor], positions: Tensor, targets: dict[str, Tensor]
    ) -> Tensor:
        """Eq. 7 (cosine proximity of each level's profile to the next item/categories), and more.

        The repeat-aware model adds its mixture's negative log-likelihood of the next item
        and of each level's next category (`REPEAT_KEYS` must then be in `batch`).

        A target that is the OOV id (a sku or category below the vocabulary's min-count) is
        left out of its level's term: the OOV embedding stands for every rare id at once, and
        pulling profiles toward it teaches nothing about the next item. Each level averages
        over its own remaining points.

        Args:
            batch, positions: as for `forward` (positions = the prediction points).
            targets: `item` [N] and `categories` [N, K] ids of what the user moved to next.
        """
        cfg = self.config
        profiles = self(batch, positions)
        levels: list[tuple[str, nn.Embedding, Tensor, float]] = [
            ("item", self.item_embedding, targets["item"], cfg.lambda_item)
        ]
        if "micro" in profiles and cfg.lambda_micro:
            levels.append(("micro", self.item_embedding, targets["item"], cfg.lambda_micro))
        for k in range(cfg.n_levels):
            emb = self.category_embedding(k)
            levels.append((f"category{k}", emb, targets["categories"][:, k], cfg.lambda_category))
        # Zero, but attached to the graph, so a batch whose targets are all OOV still backprops.
        total = profiles["item"].sum() * 0.0
        if self.repeat_heads is not None:
            total = total + self.item_mixture(profiles, batch).nll(targets["item"])
            for k in range(cfg.n_levels):
                category = self.category_mixture(k, profiles, batch)
                total = total + category.nll(targets["categories"][:, k]) / cfg.n_levels
        for head, table, target, weight in levels:
            keep = target != OOV
            if not bool(keep.any()):
                continue
            profile, target = profiles[head][keep], target[keep]
            loss = _cosine_loss(profile, table(target))
            if cfg.softmax_weight:
                loss = loss + cfg.softmax_weight * self._softmax_loss(profile, table.weight, target)
            total = total + weight * loss
        return total

    def _softmax_loss(self, profile: Tensor, table: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy over cosine scores: keeps trained target embeddings apart.

        Cosine proximity alone is minimised by collapsing every embedding onto one
        direction when the targets are trainable; the negatives of this term prevent it.
        """
        cfg = self.config
        if cfg.softmax_negatives and cfg.softmax_negatives < table.shape[0]:
            negatives = torch.randint(
                1, table.shape[0], (cfg.softmax_negatives,), device=table.device
            )
            candidates = torch.cat([target, negatives])
            labels = torch.arange(target.shape[0], device=table.device)
        else:
            candidates = torch.arange(table.shape[0], device=table.device)
            labels = target
        scores = F.normalize(profile, dim=-1) @ F.normalize(table[candidates], dim=-1).T
        return F.cross_entropy(scores / cfg.softmax_temperature, labels)


def _cosine_loss(profile: Tensor, target: Tensor) -> Tensor:
    return -F.cosine_similarity(profile, target, dim=-1).mean()
